"""Explicit-state exploration of ``send_protocol``: breadth-first over canonical states with a
visited set and a parent map, so the first violation found has a shortest trace; then a
liveness pass over the fault-free edges of the explored graph.

Liveness: from every reachable state, some fault-free continuation (no kills, no lost
answers, no delayed requests, leases expiring only under dead owners, the sweeper running)
reaches a state where the row is settled (sent, failed or unknown). Computed as backward
reachability from the settled states over fault-free edges; a state outside that set is stuck.
"""

from __future__ import annotations

import itertools
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from tests.model.send_protocol import (
    COMPLETED,
    DECIDER,
    DELETE,
    FORGET,
    NO_WRITER,
    RESEND_RECORDED,
    SWEEPER,
    Event,
    Record,
    Request,
    SendProtocol,
    State,
    Transition,
    canonical,
    initial_state,
)


@dataclass(frozen=True)
class Step:
    event: Event
    names: dict[int, str]  # identities in this step's event -> W1, W2, ... (stable over the trace)
    text: str


@dataclass
class Trace:
    steps: list[Step]
    final: str = ""  # the state the trace ends in
    cycle_from: int | None = None  # steps from here on are a fault-free cycle of stuck states

    def render(self) -> str:
        lines = [f"{n:3}. {step.text}" for n, step in enumerate(self.steps, 1)]
        if self.cycle_from is not None:
            lines.insert(
                self.cycle_from, "     -- stuck from here: every fault-free continuation cycles, e.g.:"
            )
        return "\n".join([*lines, f"     then: {self.final}"] if self.final else lines)

    def accepting_calls(self) -> list[str]:
        """The invocations whose provider call was accepted, in order."""
        return [self.steps[k].names[self.steps[k].event[1]] for k in self.acceptances()]

    def acceptances(self) -> list[int]:
        """Indices of the steps where the provider accepted the key."""
        return [k for k, s in enumerate(self.steps) if s.event[0] == "call" and s.event[3]]

    def resend_decisions(self) -> list[int]:
        """Indices of the steps that recorded a resend decision."""
        return [
            k
            for k, s in enumerate(self.steps)
            if (s.event[0] == "resend" and s.event[3])
            or (s.event[0] == "apply" and s.event[5] == RESEND_RECORDED)
        ]

    def removals_of_another_writers_record(self) -> list[str]:
        """Deletes that landed on a record written by someone other than the request's writer."""
        found = []
        for step in self.steps:
            if step.event[0] != "apply":
                continue
            request, before, answer = step.event[1], step.event[2], step.event[4]
            removal = request[0] in (DELETE, FORGET) and answer == "deleted"
            if removal and before is not None and before[-1] != request[1]:
                found.append(step.text)
        return found

    def verbs(self) -> list[str]:
        return [str(step.event[0]) for step in self.steps]


@dataclass
class Exploration:
    label: str
    bounds: str
    states: int = 0
    edges: int = 0
    fault_free_edges: int = 0
    depth: int = 0
    seconds: float = 0.0
    violation: str = ""
    counterexample: Trace | None = None
    stuck_states: int = 0
    stuck_trace: Trace | None = None
    transitions: set[Transition] = field(default_factory=set)
    findings: dict[str, Trace] = field(default_factory=dict)  # the shortest trace of each
    steps_taken: set[str] = field(default_factory=set)  # kinds of step taken somewhere
    complete: bool = True  # False when the search stopped at the first violation

    def summary(self) -> str:
        findings = f"; findings: {'; '.join(sorted(self.findings))}" if self.findings else ""
        verdict = (
            f"VIOLATION ({self.violation}) at depth {len(self.counterexample.steps) if self.counterexample else '?'}"
            if self.violation
            else f"no violation, {self.stuck_states} stuck states"
        )
        scope = "" if self.complete else " (stopped at the first violation)"
        return (
            f"{self.label}: {self.states:,} states, {self.edges:,} edges, depth {self.depth}, "
            f"{self.seconds:.1f} s{scope}; {verdict}{findings}; bounds: {self.bounds}"
        )


class Explorer:
    def __init__(self, model: SendProtocol) -> None:
        self.model = model
        self.states: list[State] = []
        self.parent = array("q")

    def explore(
        self, label: str, *, stop_at_violation: bool = True, check_liveness: bool = True
    ) -> Exploration:
        started = time.perf_counter()
        model = self.model
        result = Exploration(label=label, bounds=model.bounds.describe())
        root, _ = canonical(initial_state())
        index: dict[State, int] = {root: 0}
        states = self.states = [root]
        parent = self.parent = array("q", [-1])
        depth = array("i", [0])
        offsets = array("q")
        targets = array("q")
        transitions: set[Transition] = set()
        steps_taken: set[str] = set()
        first_violation = -1
        findings: dict[str, tuple[int, State]] = {}
        edges = 0
        head = 0
        while head < len(states):
            state = states[head]
            offsets.append(len(targets))
            for edge in model.successors(state):
                edges += 1
                steps_taken.add(edge.event[0])
                transitions.update(edge.transitions)
                if edge.finding and edge.finding not in findings:
                    findings[edge.finding] = (head, edge.state)
                successor, _ = canonical(edge.state)
                found = index.get(successor)
                if found is None:
                    found = len(states)
                    index[successor] = found
                    states.append(successor)
                    parent.append(head)
                    depth.append(depth[head] + 1)
                    if successor.flags.violation and first_violation < 0:
                        first_violation = found
                if not edge.fault:
                    targets.append(found)
            head += 1
            if first_violation >= 0 and stop_at_violation:
                result.complete = head >= len(states)
                break
        offsets.append(len(targets))
        result.states = len(states)
        result.edges = edges
        result.fault_free_edges = len(targets)
        result.depth = max(depth)
        result.transitions = transitions
        result.steps_taken = steps_taken
        for finding, (source, reached) in findings.items():
            result.findings[finding] = self.trace_to(source, then=reached)
        if first_violation >= 0:
            result.violation = states[first_violation].flags.violation
            result.counterexample = self.trace_to(first_violation)
        if check_liveness and first_violation < 0:
            stuck = self._stuck(offsets, targets)
            result.stuck_states = len(stuck)
            if stuck:
                cycle = self._fault_free_cycle(stuck[0], offsets, targets)
                result.stuck_trace = self.trace_to(stuck[0], onward=cycle)
        result.seconds = time.perf_counter() - started
        return result

    def _fault_free_cycle(self, start: int, offsets: array[int], targets: array[int]) -> list[int]:
        """A fault-free walk from a stuck state until it repeats a state: all of it is stuck
        (a stuck state has only stuck fault-free successors), so the row cycles unsettled."""
        walk, seen, current = [], {start}, start
        while True:
            successors = targets[offsets[current] : offsets[current + 1]]
            fresh = [k for k in successors if k not in seen]
            current = fresh[0] if fresh else successors[0]
            walk.append(current)
            if current in seen:
                return walk
            seen.add(current)

    def _stuck(self, offsets: array[int], targets: array[int]) -> list[int]:
        """States from which no fault-free path reaches a settled row, in BFS order."""
        count = len(self.states)
        # Predecessors over fault-free edges, as compressed rows.
        starts = array("q", bytes(8 * (count + 1)))
        for target in targets:
            starts[target + 1] += 1
        for k in range(count):
            starts[k + 1] += starts[k]
        fill = array("q", starts)
        preds = array("q", bytes(8 * len(targets)))
        for source in range(count):
            for position in range(offsets[source], offsets[source + 1]):
                target = targets[position]
                preds[fill[target]] = source
                fill[target] += 1
        good = bytearray(count)
        frontier = [k for k, state in enumerate(self.states) if self.model.settled(state)]
        for k in frontier:
            good[k] = 1
        while frontier:
            k = frontier.pop()
            for position in range(starts[k], starts[k + 1]):
                source = preds[position]
                if not good[source]:
                    good[source] = 1
                    frontier.append(source)
        return [k for k in range(count) if not good[k] and not self.states[k].flags.violation]

    def trace_to(self, target: int, then: State | None = None, onward: list[int] | None = None) -> Trace:
        """The BFS path to ``target`` (a shortest one), then the step to the raw ``then``, or
        the steps through the states ``onward``."""
        path: list[int] = []
        k = target
        while k >= 0:
            path.append(k)
            k = self.parent[k]
        path.reverse()
        names: dict[int, str] = {}
        invocations = 0
        steps: list[Step] = []
        hops: list[tuple[State, State, bool]] = [
            (self.states[a], self.states[b], False) for a, b in itertools.pairwise(path)
        ]
        if then is not None:
            hops.append((self.states[target], then, True))
        previous = target
        for k in onward or []:
            hops.append((self.states[previous], self.states[k], False))
            previous = k
        final = self.states[target]
        for state, wanted, raw in hops:
            for edge in self.model.successors(state):
                successor, mapping = canonical(edge.state)
                if (edge.state if raw else successor) == wanted:
                    break
            else:  # pragma: no cover - the search found this edge, so replay finds it too
                raise AssertionError(f"cannot replay the step to {wanted}")
            for ident in mapping:
                if ident not in names:
                    invocations += 1
                    names[ident] = f"W{invocations}"
            steps.append(Step(edge.event, dict(names), describe(edge.event, names)))
            names = {mapping[ident]: name for ident, name in names.items() if ident in mapping}
            final = successor
        return Trace(steps, render_state(final, names), len(path) - 1 if onward else None)


def follow(model: SendProtocol, steps: list[str]) -> tuple[int, State]:
    """Replay a trace given as step texts (as ``Trace.render`` words them) on ``model``: how
    many steps it can take in that order, and the state after the last one taken."""
    state = initial_state()
    names: dict[int, str] = {}
    invocations = 0
    for taken, wanted in enumerate(steps):
        for edge in model.successors(state):
            fresh = {ident: name for ident, name in names.items()}
            count = invocations
            if edge.event[0] == "claim":
                count += 1
                fresh[edge.event[1]] = f"W{count}"
            if describe(edge.event, fresh) == wanted:
                state, names, invocations = edge.state, fresh, count
                break
        else:
            return taken, state
    return len(steps), state


# --- readable steps ----------------------------------------------------------------------------


def _name(ident: Any, names: dict[int, str]) -> str:
    if ident == SWEEPER:
        return "sweeper"
    if ident == DECIDER:
        return "decider"
    if ident == NO_WRITER or ident is None:
        return "no writer"
    return names.get(ident, f"#{ident}")


def _record(record: Record, names: dict[int, str]) -> str:
    if record is None:
        return "absent"
    if record[0] == COMPLETED:
        return f"COMPLETED({record[1]}, {_name(record[2], names)})"
    return f"INPROGRESS({_name(record[1], names)})"


def _request(request: Request, names: dict[int, str]) -> str:
    """Worded the same whatever the design: a recorded trace replays on the design and on its
    mutants alike, and the landing step shows what the condition did."""
    op, writer, outcome, _ = request
    suffix = f", {outcome}" if outcome else ""
    return f"{op}({_name(writer, names)}{suffix})"


def describe(event: Event, names: dict[int, str]) -> str:
    verb = event[0]
    who = _name(event[1], names) if len(event) > 1 and isinstance(event[1], int) else ""
    if verb == "claim":
        return f"{who} claims the row: pending -> claimed (attempt {event[2]})"
    if verb == "mark_sending":
        return f"{who} commits claimed -> sending, then sends put INPROGRESS({who})"
    if verb == "mark_sending_heard":
        return (
            f"{who}: mark_sending finds a webhook for an earlier acceptance: claimed -> unknown; {who} stops"
        )
    if verb == "put_while_claimed":
        return f"{who} sends put INPROGRESS({who}) with the row still claimed (no recovery point)"
    if verb == "mark_sending_refused":
        return f"{who}: mark_sending refused (lease expired or row taken over); {who} stops"
    if verb == "release_unsent":
        return f"{who} releases the row unsent: claimed -> pending"
    if verb == "call":
        _, _, kind, accepted = event
        then = "complete" if kind in ("sent", "ambiguous") else "delete of its own record"
        verdict = "ACCEPTED by the provider" if accepted else "not accepted"
        return f"{who} calls the provider: outcome {kind}, {verdict}; sends {then}"
    if verb == "settle":
        _, _, kind, replayed, target = event
        source = "the stored outcome" if replayed else f"outcome {kind} (attempt row written)"
        result = f"sending -> {target}" if target else "CAS refused, the row moved on"
        return f"{who} settles from {source}: {result}"
    if verb == "settle_not_called":
        result = "sending -> pending" if event[2] else "CAS refused, the row moved on"
        return f"{who} writes attempt row not_called (the put failed for good): {result}"
    if verb == "expire":
        state = "while it is alive (paused)" if event[2] else "(its owner is dead)"
        return f"lease of {who} expires {state}"
    if verb == "sweep_claim":
        return f"sweeper: {who}'s claim expired: claimed -> pending"
    if verb == "sweep_observe":
        return f"sweeper reads K for {who}'s expired sending row: {_record(event[2], names)}"
    if verb == "sweep_release":
        writer = _name(event[2], names)
        proof = f"holds proof for {writer}" if event[3] else f"has NO proof for {writer}"
        return f"sweeper {proof} and sends {_request((DELETE, event[2], None, SWEEPER), names)}"
    if verb == "sweep_settle":
        target = event[3]
        return f"sweeper settles {who}'s row: " + (
            f"sending -> {target}" if target else "CAS refused, the row moved on"
        )
    if verb == "evidence":
        return "reconciler finds evidence (webhook, read-back or COMPLETED sent): unknown -> sent"
    if verb == "operator_fail":
        return "operator resolves the row as failed: unknown -> failed"
    if verb == "resend_forget":
        seen = event[2]
        forget = _request((FORGET, seen[-1], seen[0], DECIDER), names)
        return f"resend decision begins: reads K = {_record(seen, names)}, sends {forget}"
    if verb == "resend":
        result = "unknown -> pending" if event[3] else "CAS refused, the row moved on"
        return f"resend decision recorded: {result}"
    if verb == "redrive":
        return "redrive: failed -> pending"
    if verb == "apply":
        _, request, before, after, answer, reaction = event
        issuer = _name(request[3], names)
        if isinstance(answer, tuple):
            answer = f"conflict with {_record(answer[1], names)}"
        text = (
            f"DynamoDB applies {issuer}'s {_request(request, names)}: "
            f"{_record(before, names)} -> {_record(after, names)}, answer {answer}"
        )
        if reaction is None:
            return text + " (nobody waits for it)"
        if reaction == "lost":
            return text + "; the answer is LOST"
        return f"{text}; {issuer} {reaction}"
    if verb == "timeout":
        _, actor, request, fate, then = event
        return f"{_name(actor, names)} times out on {_request(request, names)} ({fate}) and {then}"
    if verb == "kill":
        detail = f" ({event[2]})" if event[2] else ""
        return f"{_name(event[1], names)} is KILLED{detail}"
    return repr(event)  # pragma: no cover


def render_state(state: State, names: dict[int, str]) -> str:
    row = state.row
    owner = f"({_name(row.token, names)})" if row.token is not None else ""
    lease = ", lease expired" if row.expired else ""
    workers = ", ".join(f"{_name(w[0], names)} at {w[1]}" for w in state.workers) or "none"
    flight = ", ".join(_request(r, names) for r in state.bag) or "nothing"
    return (
        f"row {row.status}{owner}{lease}, attempts {row.attempts}; K {_record(state.record, names)}; "
        f"live invocations: {workers}; in flight: {flight}"
    )
