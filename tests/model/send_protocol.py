"""A model of the send protocol for one message, explored exhaustively by ``explorer.py``.

One queue row R and one DynamoDB idempotency record for its key K: absent, INPROGRESS(w) or
COMPLETED(outcome, w). An invocation claims the row at most once and sends it at most once, so
its claim token and its writer id are one identity, and "W2" names both. Identities no longer
referenced anywhere are forgotten and the rest renumbered (``canonical``), so the number of
invocations over the message's life is unbounded; only how many are alive at once is bounded.

Actors (each numbered step is one transition; any live actor may be killed between two steps):

* dispatcher invocations: claim; ``mark_sending`` (the recovery point, which also hands the
  row back to ``unknown`` when a webhook for an earlier attempt has arrived); conditional put of
  INPROGRESS(w); on a rival INPROGRESS with PROOF, a conditional delete of it and one retried
  put; the provider call; a conditional complete (sent, ambiguous) or a conditional delete
  (provably not sent); the settling CAS with its attempt row. A put that fails for good leads
  to a conditional clean-up delete and ``sending -> pending`` with a ``not_called`` attempt row.
  A claimed invocation may also release the row unsent (out of time).
* the sweeper (single flight): expired ``claimed -> pending``; expired ``sending`` settled from
  a read of K, including the conditional delete of an INPROGRESS record that has PROOF.
* the decider: a cancel (campaign cancelled, sequence stopped) of a ``pending`` or ``claimed``
  row at any moment; reconciler evidence and the operator's ``fail``, each one CAS; the ``resend``
  decision (reconciler policy or operator), which reads K, forgets it conditionally on the
  writer and status it saw and moves ``unknown -> pending`` in one transaction; redrive.
* the environment: every DynamoDB request is a copy in a bag of requests in flight and lands
  whenever the environment chooses. A landed request's answer reaches its caller or is lost.
  A caller whose answer does not come times out and, like botocore, sends the same request
  again (same writer) while the earlier copy may still land, until ``Bounds.dynamo_attempts``,
  then gives up. Leases expire when their owner is dead, or while it is alive (paused): a
  paused worker later resumes and tries its CASes and DynamoDB calls.

Faults, the edges a fault-free continuation may not take: kills, lost answers, a timeout while
the awaited copy is still in the bag (the request is delayed or lost on the way), and a lease
expiring under a live owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from shared.providers.outcome import OutcomeKind
from shared.queue import QueueStatus

PENDING = QueueStatus.PENDING
CLAIMED = QueueStatus.CLAIMED
SENDING = QueueStatus.SENDING
SENT = QueueStatus.SENT
FAILED = QueueStatus.FAILED
UNKNOWN = QueueStatus.UNKNOWN
CANCELLED = QueueStatus.CANCELLED
SETTLED = frozenset({SENT, FAILED, UNKNOWN, CANCELLED})

# One provider call: the classified outcome, and whether the provider accepted the message.
# Only an ambiguous outcome leaves both possibilities open.
PROVIDER_RESULTS: tuple[tuple[OutcomeKind, bool], ...] = (
    (OutcomeKind.SENT, True),
    (OutcomeKind.AMBIGUOUS, True),
    (OutcomeKind.AMBIGUOUS, False),
    (OutcomeKind.RETRY_LATER, False),
    (OutcomeKind.SENDER_BLOCKED, False),
    (OutcomeKind.PERMANENT, False),
)
# Outcomes the dispatcher stores as COMPLETED; the others delete the record and are PROOF.
STORED_OUTCOMES = frozenset({OutcomeKind.SENT, OutcomeKind.AMBIGUOUS})
MODEL_PROVABLY_NOT_SENT = frozenset(kind for kind, _ in PROVIDER_RESULTS) - STORED_OUTCOMES
# Attempt outcomes that are PROOF that a writer delivered nothing: its put failed for good, or
# its call was provably not sent.
MODEL_PROOF_OF_NO_DELIVERY = frozenset({"not_called", *(kind.value for kind in MODEL_PROVABLY_NOT_SENT)})

INPROGRESS = "INPROGRESS"
COMPLETED = "COMPLETED"
PUT = "put"
COMPLETE = "complete"
DELETE = "delete"  # conditional on (writer, INPROGRESS)
FORGET = "forget"  # the resend decision's delete, conditional on the writer and status it observed

SWEEPER = -1
DECIDER = -2
NO_WRITER = -3  # an item created by an unconditional UpdateItem has no writer attribute

# A record is None, (INPROGRESS, writer) or (COMPLETED, outcome, writer). A request is
# (op, writer, completion outcome or forget's observed status or None, issuer). A worker is
# (id, pc, datum, tries). The sweeper and the decider are None (idle) or (pc, token, datum,
# tries), the datum being the record they read (sweeper ``observe``, decider ``forget``) or
# the writer whose record they delete.
Record = tuple[Any, ...] | None
Request = tuple[str, int, Any, int]
Actor = tuple[Any, ...]
Transition = tuple[QueueStatus, QueueStatus]
Event = tuple[Any, ...]


class Row(NamedTuple):
    status: QueueStatus
    token: int | None
    attempts: int
    expired: bool


class Flags(NamedTuple):
    accepts: int  # provider acceptances since the last recorded resend decision
    delivered: bool  # the provider accepted the key at least once (the evidence oracle)
    past_unknown: bool  # redrive's "no past unknown"
    maybe_delivered: bool  # redrive's "no ambiguous/sent attempt row"
    faults: int  # faults spent, when ``Bounds.faults`` caps them
    violation: str


class State(NamedTuple):
    row: Row
    record: Record
    workers: tuple[Actor, ...]
    sweeper: Actor | None
    decider: Actor | None
    bag: tuple[Request, ...]
    proofs: tuple[int, ...]  # writers with an attempt row `not_called` or provably not sent
    flags: Flags
    next_id: int


class Edge(NamedTuple):
    event: Event
    fault: bool
    transitions: tuple[Transition, ...]
    state: State
    # Something worth knowing that is not a violation of the checked properties.
    finding: str = ""


ACCEPTED_THEN_FAILED = "a message the provider accepted was settled failed by a dispatcher"
SENT_WITHOUT_ACCEPTANCE = "a row was settled sent although the provider never accepted the key"
CANCELLED_THEN_SENT = "the provider accepted a message after it was cancelled"
RESEND_RECORDED = "records the resend decision and requeues"


@dataclass(frozen=True)
class Bounds:
    workers: int = 2  # dispatcher invocations alive at once (over the message's life: unbounded)
    dynamo_attempts: int = 2  # attempts per DynamoDB call, the first included
    orphans: int = 1  # request copies in flight that no live caller waits for
    max_attempts: int = 2  # SENDONCE_MAX_ATTEMPTS
    faults: int | None = None  # None: any number of faults
    paused_workers: bool = True  # a lease may expire while its owner is alive

    def describe(self) -> str:
        faults = "any number of" if self.faults is None else f"at most {self.faults}"
        return (
            f"{self.workers} invocations alive at once, {self.dynamo_attempts} attempts per DynamoDB "
            f"call, {self.orphans} orphaned request copies in flight, max_attempts {self.max_attempts}, "
            f"{faults} faults" + ("" if self.paused_workers else ", no paused workers")
        )


@dataclass(frozen=True)
class Design:
    """The safeguards. All on is the design as specified; each one off is a mutant."""

    # Every dispatcher and sweeper delete is conditional on (writer, INPROGRESS), and a
    # resend's forget on the writer and status it observed.
    conditional_removal: bool = True
    # COMPLETED is written only over INPROGRESS(own writer).
    conditional_completion: bool = True
    # A dispatcher releases a rival's INPROGRESS only with PROOF for that writer.
    release_needs_proof: bool = True
    # The sweeper releases an INPROGRESS record only with PROOF for its writer.
    sweeper_release_needs_proof: bool = True
    # The sweeper turns an unproven INPROGRESS into `unknown` (off: back to `pending`, record kept).
    sweeper_holds_unproven_inprogress: bool = True
    # `sending` is committed before the put (off: the put and the call happen while `claimed`,
    # and `claimed -> sending` is committed just before settling).
    mark_sending_first: bool = True
    # A timing assumption, not code: a resend decision (the reconciler's, after its grace
    # period; an operator's) happens when every invocation that ever held the row is dead.
    # Lambda kills an invocation at its timeout, and the grace period is longer.
    decisions_wait_for_dead_invocations: bool = True


def initial_state() -> State:
    return State(
        Row(PENDING, None, 0, False), None, (), None, None, (), (), Flags(0, False, False, False, 0, ""), 0
    )


def awaited_request(actor: Actor | None, kind: str) -> Request | None:
    """The request an actor waits for, if it waits for one. ``kind``: worker, sweeper, decider."""
    if actor is None:
        return None
    if kind == "worker":
        i, pc, datum, _ = actor
        if pc == "put":
            return (PUT, i, None, i)
        if pc == "release":
            return (DELETE, datum, None, i)
        if pc in ("cleanup", "undo"):
            return (DELETE, i, None, i)
        if pc == "complete":
            return (COMPLETE, i, datum, i)
        return None
    pc, _, datum, _ = actor
    if pc == "release":
        return (DELETE, datum, None, SWEEPER)
    if pc == "forget":
        return _forget_request(datum)
    return None


def _forget_request(seen: Record) -> Request:
    """The resend decision's delete: conditional on the writer and the status it observed."""
    assert seen is not None
    return (FORGET, seen[-1], seen[0], DECIDER)


def _writer(record: Record) -> int | None:
    return None if record is None else int(record[-1])


def _with(items: tuple[Any, ...], index: int, item: Any) -> tuple[Any, ...]:
    return (*items[:index], item, *items[index + 1 :])


def _without(items: tuple[Any, ...], index: int) -> tuple[Any, ...]:
    return items[:index] + items[index + 1 :]


def _bag_add(bag: tuple[Request, ...], request: Request) -> tuple[Request, ...]:
    return tuple(sorted((*bag, request), key=_request_key))


def _bag_remove(bag: tuple[Request, ...], request: Request) -> tuple[Request, ...]:
    index = bag.index(request)
    return bag[:index] + bag[index + 1 :]


def _request_key(request: Request) -> tuple[str, int, str, int]:
    op, writer, outcome, issuer = request
    return (op, writer, outcome or "", issuer)


class SendProtocol:
    def __init__(self, bounds: Bounds | None = None, design: Design | None = None) -> None:
        self.bounds = bounds or Bounds()
        self.design = design or Design()

    # --- the properties -------------------------------------------------------------------

    @staticmethod
    def violation(state: State) -> str:
        return state.flags.violation

    @staticmethod
    def settled(state: State) -> bool:
        return state.row.status in SETTLED

    # --- successors ---------------------------------------------------------------------------

    def successors(self, state: State) -> list[Edge]:
        if state.flags.violation:
            return []
        out: list[Edge] = []
        self._claim(state, out)
        for index in range(len(state.workers)):
            self._worker_step(state, index, out)
        self._lease(state, out)
        self._sweeper(state, out)
        self._decider(state, out)
        self._dynamodb(state, out)
        self._timeouts(state, out)
        self._kills(state, out)
        for k, edge in enumerate(out):
            if edge.transitions and edge.transitions[-1][1] is SENT and not edge.state.flags.delivered:
                out[k] = edge._replace(finding=SENT_WITHOUT_ACCEPTANCE)
        return out

    def _fault_allowed(self, state: State) -> bool:
        return self.bounds.faults is None or state.flags.faults < self.bounds.faults

    def _spend_fault(self, state: State) -> State:
        if self.bounds.faults is None:
            return state
        return state._replace(flags=state.flags._replace(faults=state.flags.faults + 1))

    def _orphans(self, state: State) -> int:
        waited = 0
        for worker in state.workers:
            request = awaited_request(worker, "worker")
            if request is not None and request in state.bag:
                waited += 1
        for actor, kind in ((state.sweeper, "sweeper"), (state.decider, "decider")):
            request = awaited_request(actor, kind)
            if request is not None and request in state.bag:
                waited += 1
        return len(state.bag) - waited

    def _accepted(self, flags: Flags) -> Flags:
        if flags.accepts:
            return flags._replace(
                delivered=True,
                accepts=2,
                violation="the provider accepted the key twice with no resend decision in between",
            )
        return flags._replace(accepts=1, delivered=True)

    # --- dispatcher invocations ---------------------------------------------------------------

    def _claim(self, state: State, out: list[Edge]) -> None:
        row = state.row
        if row.status is not PENDING or len(state.workers) >= self.bounds.workers:
            return
        new = state.next_id
        out.append(
            Edge(
                ("claim", new, row.attempts + 1),
                False,
                ((PENDING, CLAIMED),),
                state._replace(
                    row=Row(CLAIMED, new, row.attempts + 1, False),
                    workers=(*state.workers, (new, "claimed", None, 0)),
                    next_id=new + 1,
                ),
            )
        )

    def _worker_step(self, state: State, index: int, out: list[Edge]) -> None:
        i, pc, datum, _ = state.workers[index]
        row = state.row
        if pc == "claimed":
            put = (PUT, i, None, i)
            waiting = (i, "put", 0, 1)
            if not self.design.mark_sending_first:
                out.append(
                    Edge(
                        ("put_while_claimed", i),
                        False,
                        (),
                        state._replace(
                            workers=_with(state.workers, index, waiting), bag=_bag_add(state.bag, put)
                        ),
                    )
                )
            elif row.status is CLAIMED and row.token == i and not row.expired:
                if state.flags.delivered:
                    # A webhook for an earlier attempt may have arrived (or not yet): the
                    # recovery point then refuses the call and hands the row to the reconciler.
                    out.append(
                        Edge(
                            ("mark_sending_heard", i),
                            False,
                            ((CLAIMED, UNKNOWN),),
                            state._replace(
                                row=Row(UNKNOWN, i, row.attempts - 1, False),
                                workers=_without(state.workers, index),
                                flags=state.flags._replace(past_unknown=True),
                            ),
                        )
                    )
                out.append(
                    Edge(
                        ("mark_sending", i),
                        False,
                        ((CLAIMED, SENDING),),
                        state._replace(
                            row=row._replace(status=SENDING),
                            workers=_with(state.workers, index, waiting),
                            bag=_bag_add(state.bag, put),
                        ),
                    )
                )
            else:
                out.append(
                    Edge(
                        ("mark_sending_refused", i),
                        False,
                        (),
                        state._replace(workers=_without(state.workers, index)),
                    )
                )
            if row.status is CLAIMED and row.token == i:
                out.append(
                    Edge(
                        ("release_unsent", i),
                        False,
                        ((CLAIMED, PENDING),),
                        state._replace(
                            row=Row(PENDING, None, row.attempts - 1, False),
                            workers=_without(state.workers, index),
                        ),
                    )
                )
        elif pc == "call":
            for kind, accepted in PROVIDER_RESULTS:
                flags = self._accepted(state.flags) if accepted else state.flags
                if kind in STORED_OUTCOMES:
                    worker: Actor = (i, "complete", kind, 1)
                    request: Request = (COMPLETE, i, kind, i)
                else:
                    worker, request = (i, "undo", kind, 1), (DELETE, i, None, i)
                out.append(
                    Edge(
                        ("call", i, kind, accepted),
                        False,
                        (),
                        state._replace(
                            workers=_with(state.workers, index, worker),
                            bag=_bag_add(state.bag, request),
                            flags=flags,
                        ),
                        CANCELLED_THEN_SENT if accepted and row.status is CANCELLED else "",
                    )
                )
        elif pc in ("settle", "replay"):
            self._settle(state, index, datum, replayed=pc == "replay", out=out)
        elif pc == "not_called":
            self._settle_not_called(state, index, out)

    def _owned_for_settling(self, row: Row, i: int) -> tuple[bool, tuple[Transition, ...]]:
        if self.design.mark_sending_first:
            return row.status is SENDING and row.token == i, ()
        return row.status is CLAIMED and row.token == i, ((CLAIMED, SENDING),)

    def _settle(
        self, state: State, index: int, kind: OutcomeKind, *, replayed: bool, out: list[Edge]
    ) -> None:
        i = state.workers[index][0]
        row, flags, proofs = state.row, state.flags, state.proofs
        if not replayed:  # the attempt row is written whether or not the CAS wins
            if kind in STORED_OUTCOMES:
                flags = flags._replace(maybe_delivered=True)
            elif i not in proofs:
                proofs = tuple(sorted((*proofs, i)))
        owned, transitions = self._owned_for_settling(row, i)
        target, finding = None, ""
        if owned:
            if kind is OutcomeKind.SENT:
                row = Row(SENT, None, row.attempts, False)
            elif kind is OutcomeKind.AMBIGUOUS:
                row = Row(UNKNOWN, i, row.attempts, False)
                flags = flags._replace(past_unknown=True)
            elif kind is OutcomeKind.SENDER_BLOCKED:
                row = Row(PENDING, None, row.attempts - 1, False)
            elif kind is OutcomeKind.RETRY_LATER and row.attempts < self.bounds.max_attempts:
                row = Row(PENDING, None, row.attempts, False)
            else:  # permanent, or retry_later with the attempts spent
                row = Row(FAILED, i, row.attempts, False)
                if flags.accepts:
                    finding = ACCEPTED_THEN_FAILED
            target = row.status
            transitions = (*transitions, (SENDING, row.status))
        else:
            transitions = ()
        out.append(
            Edge(
                ("settle", i, kind, replayed, target),
                False,
                transitions,
                state._replace(row=row, workers=_without(state.workers, index), flags=flags, proofs=proofs),
                finding,
            )
        )

    def _settle_not_called(self, state: State, index: int, out: list[Edge]) -> None:
        i = state.workers[index][0]
        row = state.row
        proofs = state.proofs if i in state.proofs else tuple(sorted((*state.proofs, i)))
        owned, transitions = self._owned_for_settling(row, i)
        if owned:
            row = Row(PENDING, None, row.attempts - 1, False)
            transitions = (*transitions, (SENDING, PENDING))
        else:
            transitions = ()
        out.append(
            Edge(
                ("settle_not_called", i, owned),
                False,
                transitions,
                state._replace(row=row, workers=_without(state.workers, index), proofs=proofs),
            )
        )

    def _worker_answer(self, state: State, index: int, answer: Any) -> tuple[State, str]:
        """A waiting worker receives the answer to its request."""
        i, pc, datum, _ = state.workers[index]
        workers = state.workers
        if pc == "put":
            if answer == "ok":
                return state._replace(workers=_with(workers, index, (i, "call", None, 0))), "goes on to call"
            record = answer[1]
            if record[0] == COMPLETED:
                return state._replace(
                    workers=_with(workers, index, (i, "replay", record[1], 0))
                ), "replays it"
            holder = record[1]
            if holder == i:
                return (
                    state._replace(workers=_with(workers, index, (i, "call", None, 0))),
                    "recognises its own write and goes on to call",
                )
            proven = holder in state.proofs
            if datum == 0 and (proven or not self.design.release_needs_proof):
                return (
                    state._replace(
                        workers=_with(workers, index, (i, "release", holder, 1)),
                        bag=_bag_add(state.bag, (DELETE, holder, None, i)),
                    ),
                    "holds proof for its writer and sends a delete of it"
                    if proven
                    else "sends a delete of it WITHOUT proof",
                )
            return state._replace(
                workers=_without(workers, index)
            ), "makes no call and leaves the row to the sweeper"
        if pc == "release":
            if answer != "deleted":
                return state._replace(
                    workers=_without(workers, index)
                ), "makes no call and leaves the row to the sweeper"
            return (
                state._replace(
                    workers=_with(workers, index, (i, "put", 1, 1)),
                    bag=_bag_add(state.bag, (PUT, i, None, i)),
                ),
                "puts again",
            )
        if pc == "cleanup":
            return state._replace(workers=_with(workers, index, (i, "not_called", None, 0))), "settles"
        return state._replace(workers=_with(workers, index, (i, "settle", datum, 0))), "settles"

    def _worker_gives_up(self, state: State, index: int) -> State:
        i, pc, datum, _ = state.workers[index]
        if pc == "release":  # the delete raised: the row is left to the sweeper, no call
            return state._replace(workers=_without(state.workers, index))
        if pc == "put":  # the store is unavailable: clean up, no call
            return state._replace(
                workers=_with(state.workers, index, (i, "cleanup", None, 1)),
                bag=_bag_add(state.bag, (DELETE, i, None, i)),
            )
        if pc == "cleanup":
            return state._replace(workers=_with(state.workers, index, (i, "not_called", None, 0)))
        return state._replace(workers=_with(state.workers, index, (i, "settle", datum, 0)))

    # --- leases ---------------------------------------------------------------------------

    def _lease(self, state: State, out: list[Edge]) -> None:
        row = state.row
        if row.status not in (CLAIMED, SENDING) or row.expired:
            return
        alive = any(worker[0] == row.token for worker in state.workers)
        if alive and not (self.bounds.paused_workers and self._fault_allowed(state)):
            return
        expired = state._replace(row=row._replace(expired=True))
        out.append(
            Edge(("expire", row.token, alive), alive, (), self._spend_fault(expired) if alive else expired)
        )

    # --- the sweeper --------------------------------------------------------------------------

    def _sweeper(self, state: State, out: list[Edge]) -> None:
        row, sweeper = state.row, state.sweeper
        if sweeper is None:
            if row.status is CLAIMED and row.expired:
                out.append(
                    Edge(
                        ("sweep_claim", row.token),
                        False,
                        ((CLAIMED, PENDING),),
                        state._replace(row=Row(PENDING, None, row.attempts - 1, False)),
                    )
                )
            elif row.status is SENDING and row.expired:
                out.append(
                    Edge(
                        ("sweep_observe", row.token, state.record),
                        False,
                        (),
                        state._replace(sweeper=("observe", row.token, state.record, 0)),
                    )
                )
            return
        pc, token, seen, _ = sweeper
        if pc != "observe":
            return
        if seen is not None and seen[0] == INPROGRESS:
            proven = seen[1] in state.proofs
            if proven or not self.design.sweeper_release_needs_proof:
                out.append(
                    Edge(
                        ("sweep_release", token, seen[1], proven),
                        False,
                        (),
                        state._replace(
                            sweeper=("release", token, seen[1], 1),
                            bag=_bag_add(state.bag, (DELETE, seen[1], None, SWEEPER)),
                        ),
                    )
                )
                return
            target = UNKNOWN if self.design.sweeper_holds_unproven_inprogress else PENDING
        elif seen is None:
            target = PENDING
        else:
            target = SENT if seen[1] is OutcomeKind.SENT else UNKNOWN
        out.append(self._sweep_settle(state._replace(sweeper=None), token, target, seen))

    def _sweep_settle(self, state: State, token: int, target: QueueStatus, seen: Record) -> Edge:
        row, flags = state.row, state.flags
        if row.status is not SENDING or row.token != token:
            return Edge(("sweep_settle", token, seen, None), False, (), state)
        if target is PENDING:
            new_row = Row(PENDING, None, row.attempts - 1, False)
        elif target is SENT:
            new_row = Row(SENT, None, row.attempts, False)
        else:
            new_row = Row(UNKNOWN, token, row.attempts, False)
            flags = flags._replace(past_unknown=True)
        return Edge(
            ("sweep_settle", token, seen, target),
            False,
            ((SENDING, target),),
            state._replace(row=new_row, flags=flags),
        )

    def _sweeper_answer(self, state: State, answer: Any) -> tuple[State, str]:
        assert state.sweeper is not None
        _, token, writer, _ = state.sweeper
        idle = state._replace(sweeper=None)
        # Refused: the record changed since it was read, and the row is judged as read.
        target = PENDING if answer == "deleted" else UNKNOWN
        edge = self._sweep_settle(idle, token, target, (INPROGRESS, writer))
        return edge.state, f"settles the row {target}" if edge.transitions else "finds the row moved on"

    # --- reconciler, operator, redrive ----------------------------------------------------------

    def _decider(self, state: State, out: list[Edge]) -> None:
        row, record = state.row, state.record
        if row.status in (PENDING, CLAIMED):
            # A campaign cancel or a stopped sequence, at any moment, even under a live claim.
            # Marked as a fault edge (without spending the fault budget) so the liveness pass
            # never counts an operator's cancel as the system settling the row by itself.
            out.append(
                Edge(
                    ("cancel", row.token),
                    True,
                    ((row.status, CANCELLED),),
                    state._replace(row=Row(CANCELLED, None, row.attempts, False)),
                )
            )
        if row.status is UNKNOWN:
            proven_sent = record is not None and record[0] == COMPLETED and record[1] is OutcomeKind.SENT
            if state.flags.delivered or proven_sent:
                out.append(
                    Edge(
                        ("evidence", row.token),
                        False,
                        ((UNKNOWN, SENT),),
                        state._replace(row=Row(SENT, None, row.attempts, False)),
                    )
                )
            out.append(
                Edge(
                    ("operator_fail", row.token),
                    False,
                    ((UNKNOWN, FAILED),),
                    state._replace(row=row._replace(status=FAILED)),
                )
            )
            if (
                state.decider is None
                and not proven_sent
                and row.attempts < self.bounds.max_attempts
                and not (self.design.decisions_wait_for_dead_invocations and state.workers)
            ):
                if record is None:
                    out.append(self._commit_resend(state, row.token, None))
                else:
                    out.append(
                        Edge(
                            ("resend_forget", row.token, record),
                            False,
                            (),
                            state._replace(
                                decider=("forget", row.token, record, 1),
                                bag=_bag_add(state.bag, _forget_request(record)),
                            ),
                        )
                    )
        elif (
            row.status is FAILED
            and record is None
            and state.decider is None
            and not state.flags.past_unknown
            and not state.flags.maybe_delivered
        ):
            out.append(
                Edge(
                    ("redrive", row.token),
                    False,
                    ((FAILED, PENDING),),
                    state._replace(row=Row(PENDING, None, 0, False)),
                )
            )

    def _commit_resend(self, state: State, token: int | None, forgotten: Record) -> Edge:
        row = state.row
        if row.status is not UNKNOWN or row.token != token:
            return Edge(("resend", token, forgotten, False), False, (), state)
        return Edge(
            ("resend", token, forgotten, True),
            False,
            ((UNKNOWN, PENDING),),
            state._replace(
                row=Row(PENDING, None, row.attempts, False), flags=state.flags._replace(accepts=0)
            ),
        )

    def _decider_answer(self, state: State, answer: Any) -> tuple[State, str]:
        assert state.decider is not None
        _, token, seen, _ = state.decider
        idle = state._replace(decider=None)
        if answer != "deleted":
            return idle, "rolls back"
        edge = self._commit_resend(idle, token, seen)
        return edge.state, RESEND_RECORDED if edge.transitions else "finds the row moved on"

    # --- the environment: DynamoDB, timeouts, kills ------------------------------------------

    def _apply(self, record: Record, request: Request) -> tuple[Record, Any]:
        op, writer, outcome, _ = request
        if op == PUT:
            return ((INPROGRESS, writer), "ok") if record is None else (record, ("conflict", record))
        if op == COMPLETE:
            if not self.design.conditional_completion:
                # An unconditional UpdateItem keeps whatever writer attribute the item had.
                return (COMPLETED, outcome, NO_WRITER if record is None else record[-1]), "ok"
            if record == (INPROGRESS, writer):
                return (COMPLETED, outcome, writer), "ok"
            return record, "refused"
        if not self.design.conditional_removal:
            return None, "deleted"
        if op == DELETE and record == (INPROGRESS, writer):
            return None, "deleted"
        if op == FORGET and record is not None and record[-1] == writer and record[0] == outcome:
            return None, "deleted"
        return record, "refused"

    def _waiter(self, state: State, request: Request) -> tuple[str, int] | None:
        issuer = request[3]
        if issuer == SWEEPER:
            return ("sweeper", 0) if awaited_request(state.sweeper, "sweeper") == request else None
        if issuer == DECIDER:
            return ("decider", 0) if awaited_request(state.decider, "decider") == request else None
        for index, worker in enumerate(state.workers):
            if worker[0] == issuer and awaited_request(worker, "worker") == request:
                return ("worker", index)
        return None

    def _answer(self, state: State, waiter: tuple[str, int], answer: Any) -> tuple[State, str]:
        kind, index = waiter
        if kind == "worker":
            return self._worker_answer(state, index, answer)
        if kind == "sweeper":
            return self._sweeper_answer(state, answer)
        return self._decider_answer(state, answer)

    def _dynamodb(self, state: State, out: list[Edge]) -> None:
        previous = None
        for request in state.bag:
            if request == previous:
                continue
            previous = request
            record, answer = self._apply(state.record, request)
            landed = state._replace(record=record, bag=_bag_remove(state.bag, request))
            waiter = self._waiter(state, request)
            if waiter is None:
                out.append(Edge(("apply", request, state.record, record, answer, None), False, (), landed))
                continue
            answered, reaction = self._answer(landed, waiter, answer)
            transitions = _row_change(landed, answered)
            out.append(
                Edge(("apply", request, state.record, record, answer, reaction), False, transitions, answered)
            )
            if self._fault_allowed(state):
                out.append(
                    Edge(
                        ("apply", request, state.record, record, answer, "lost"),
                        True,
                        (),
                        self._spend_fault(landed),
                    )
                )

    def _actors(self, state: State) -> list[tuple[str, int, Actor]]:
        actors: list[tuple[str, int, Actor]] = [("worker", index, w) for index, w in enumerate(state.workers)]
        if state.sweeper is not None:
            actors.append(("sweeper", 0, state.sweeper))
        if state.decider is not None:
            actors.append(("decider", 0, state.decider))
        return actors

    def _replace_actor(self, state: State, kind: str, index: int, actor: Actor | None) -> State:
        if kind == "worker":
            workers = _without(state.workers, index) if actor is None else _with(state.workers, index, actor)
            return state._replace(workers=workers)
        if kind == "sweeper":
            return state._replace(sweeper=actor)
        return state._replace(decider=actor)

    def _timeouts(self, state: State, out: list[Edge]) -> None:
        for kind, index, actor in self._actors(state):
            request = awaited_request(actor, kind)
            if request is None:
                continue
            tries = actor[3]
            in_flight = request in state.bag
            fates: list[tuple[str, tuple[Request, ...], bool]] = []
            if not in_flight:
                fates.append(("answer was lost", state.bag, False))
            elif self._fault_allowed(state):
                fates.append(("request lost", _bag_remove(state.bag, request), True))
                if self._orphans(state) < self.bounds.orphans:
                    fates.append(("request delayed, still in flight", state.bag, True))
            for fate, bag, fault in fates:
                base = state._replace(bag=bag)
                if tries < self.bounds.dynamo_attempts:
                    retried = (*actor[:3], tries + 1)
                    nxt = self._replace_actor(base, kind, index, retried)._replace(bag=_bag_add(bag, request))
                    then = "retries the same request"
                elif kind == "worker":
                    nxt, then = self._worker_gives_up(base, index), "gives up"
                else:
                    nxt, then = self._replace_actor(base, kind, index, None), "gives up"
                if fault:
                    nxt = self._spend_fault(nxt)
                out.append(Edge(("timeout", _actor_id(kind, actor), request, fate, then), fault, (), nxt))

    def _kills(self, state: State, out: list[Edge]) -> None:
        if not self._fault_allowed(state):
            return
        for kind, index, actor in self._actors(state):
            request = awaited_request(actor, kind)
            killed = self._spend_fault(self._replace_actor(state, kind, index, None))
            if request is not None and request in state.bag:
                out.append(
                    Edge(
                        ("kill", _actor_id(kind, actor), "its request never lands"),
                        True,
                        (),
                        killed._replace(bag=_bag_remove(state.bag, request)),
                    )
                )
                if self._orphans(state) < self.bounds.orphans:
                    out.append(
                        Edge(
                            ("kill", _actor_id(kind, actor), "its request still in flight"), True, (), killed
                        )
                    )
            else:
                out.append(Edge(("kill", _actor_id(kind, actor), ""), True, (), killed))


def _actor_id(kind: str, actor: Actor) -> int:
    if kind == "worker":
        return int(actor[0])
    return SWEEPER if kind == "sweeper" else DECIDER


def _row_change(before: State, after: State) -> tuple[Transition, ...]:
    """The row transition an answered request caused (a sweeper release or a resend commit)."""
    if before.row.status != after.row.status:
        return ((before.row.status, after.row.status),)
    return ()


# --- canonical form -----------------------------------------------------------------------------


def canonical(state: State) -> tuple[State, dict[int, int]]:
    """Renumber identities in order of first appearance and forget unreferenced ones (a proof
    for a writer nothing refers to can never be consulted again). Returns the mapping too.

    The order of appearance does not depend on the old numbers, except between requests in
    flight whose identities appear nowhere else and that tie on everything else; such states
    may keep two names, which costs a duplicate state, never a missed one."""
    mapping: dict[int, int] = {}
    order: list[int] = []  # identities in order of appearance
    row = state.row
    record = state.record
    if row.token is not None:
        order.append(row.token)
    if record is not None and record[-1] >= 0:
        order.append(record[-1])
    for worker in state.workers:
        order.append(worker[0])
        if worker[1] == "release":
            order.append(worker[2])
    for actor in (state.sweeper, state.decider):
        if actor is not None:
            if actor[1] is not None:
                order.append(actor[1])
            datum = _writer(actor[2]) if actor[0] in ("observe", "forget") else actor[2]
            if datum is not None and datum >= 0:
                order.append(datum)
    for ident in order:
        if ident not in mapping:
            mapping[ident] = len(mapping)
    bag = state.bag
    for r in bag:
        if r[1] not in mapping or (r[3] >= 0 and r[3] not in mapping):
            big = 1 << 30
            for r in sorted(
                bag, key=lambda r: (r[0], r[2] or "", mapping.get(r[1], big), mapping.get(r[3], big))
            ):
                if r[1] >= 0 and r[1] not in mapping:
                    mapping[r[1]] = len(mapping)
                if r[3] >= 0 and r[3] not in mapping:
                    mapping[r[3]] = len(mapping)
            break
    proofs = state.proofs
    if state.next_id == len(mapping):
        for old, new in mapping.items():
            if old != new:
                break
        else:
            for proof in proofs:
                if proof not in mapping:
                    break
            else:
                return state, mapping  # already canonical: bag and proofs are kept sorted

    def lab(ident: Any) -> Any:
        if ident is None or ident < 0:
            return ident
        return mapping[ident]

    def lab_record(record: Record) -> Record:
        if record is None:
            return None
        return (*record[:-1], lab(record[-1]))

    workers = tuple(
        (mapping[w[0]], w[1], mapping[w[2]] if w[1] == "release" else w[2], w[3]) for w in state.workers
    )
    actors: list[Actor | None] = []
    for actor in (state.sweeper, state.decider):
        if actor is None:
            actors.append(None)
        else:
            datum = lab_record(actor[2]) if actor[0] in ("observe", "forget") else lab(actor[2])
            actors.append((actor[0], lab(actor[1]), datum, actor[3]))
    if bag:
        bag = tuple(sorted(((r[0], lab(r[1]), r[2], lab(r[3])) for r in bag), key=_request_key))
    return (
        State(
            row if row.token is None else row._replace(token=mapping[row.token]),
            lab_record(record),
            workers,
            actors[0],
            actors[1],
            bag,
            tuple(sorted(mapping[p] for p in proofs if p in mapping)),
            state.flags,
            len(mapping),
        ),
        mapping,
    )
