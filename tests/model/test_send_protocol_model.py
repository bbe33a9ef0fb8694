"""The send protocol, model-checked (issue 6, section 3; docs/model.md).

``send_protocol.py`` models one message through every actor and fault the protocol spec
names; ``explorer.py`` walks every interleaving within the bounds below, breadth first, so a
counterexample is a shortest one. Properties:

* at most once: the provider accepts the key at most once, unless a resend decision (the
  reconciler's ``resend`` policy or an operator's) is recorded between the two acceptances;
* no row stuck: from every reachable state a fault-free continuation settles the row
  (``sent``, ``failed`` or ``unknown``).

Each safeguard of the design is then switched off in turn: the checker must find a
counterexample, or the test says why that safeguard is redundant under the model.
"""

from __future__ import annotations

import pytest

from shared import queue
from shared.idempotency import RecordState
from shared.providers.outcome import PROVABLY_NOT_SENT, OutcomeKind
from shared.queue import ALLOWED_TRANSITIONS
from tests.model.explorer import Exploration, Explorer, follow
from tests.model.send_protocol import (
    ACCEPTED_THEN_FAILED,
    CANCELLED_THEN_SENT,
    COMPLETED,
    INPROGRESS,
    MODEL_PROOF_OF_NO_DELIVERY,
    MODEL_PROVABLY_NOT_SENT,
    PROVIDER_RESULTS,
    SENT_WITHOUT_ACCEPTANCE,
    Bounds,
    Design,
    SendProtocol,
    canonical,
)

DUPLICATE = "the provider accepted the key twice with no resend decision in between"

# Two bounded worlds for the design as specified. A paused worker (a lease expiring under a
# live invocation) is one of the faults, so the first world spends its fault budget on fewer
# other faults; the second has no paused workers and more of everything else.
WITH_PAUSES = Bounds(workers=2, dynamo_attempts=2, orphans=1, max_attempts=2, faults=3)
WITHOUT_PAUSES = Bounds(
    workers=2, dynamo_attempts=2, orphans=2, max_attempts=2, faults=4, paused_workers=False
)
SHIPPED = {"with paused workers": WITH_PAUSES, "without paused workers": WITHOUT_PAUSES}
# Enough to show a stuck row (one kill), small enough to explore in a blink.
ONE_KILL = Bounds(workers=1, dynamo_attempts=1, orphans=0, max_attempts=2, faults=1)

_CACHE: dict[tuple[str, Bounds, Design], Exploration] = {}


def explore(
    record: list[Exploration], label: str, bounds: Bounds, design: Design | None = None
) -> Exploration:
    design = design or Design()
    key = (label, bounds, design)
    if key not in _CACHE:
        result = Explorer(SendProtocol(bounds, design)).explore(label)
        # Mutants are built so that they too stay inside the queue's transition table.
        assert result.transitions <= ALLOWED_TRANSITIONS, result.transitions - ALLOWED_TRANSITIONS
        _CACHE[key] = result
        record.append(result)
    return _CACHE[key]


# --- the model is tied to the code --------------------------------------------------------------


def test_the_model_takes_exactly_the_queue_transitions_the_code_allows(
    explorations: list[Exploration],
) -> None:
    taken = set()
    for label, bounds in SHIPPED.items():
        taken |= explore(explorations, f"design, {label}", bounds).transitions
    # Every transition the model takes is allowed, and every allowed one is modelled: a new
    # transition in shared.queue fails here until the model learns it.
    assert taken == ALLOWED_TRANSITIONS


def test_the_model_classifies_outcomes_as_the_code_does() -> None:
    assert {kind for kind, _ in PROVIDER_RESULTS} == set(OutcomeKind)
    assert MODEL_PROVABLY_NOT_SENT == PROVABLY_NOT_SENT
    assert not any(accepted for kind, accepted in PROVIDER_RESULTS if kind in PROVABLY_NOT_SENT)
    assert [RecordState.INPROGRESS.value, RecordState.COMPLETED.value] == [INPROGRESS, COMPLETED]


def test_the_model_takes_as_proof_what_the_code_takes_as_proof() -> None:
    """The attempt outcomes that let a record be released (``shared.queue``, issue 6)."""
    assert set(queue.PROOF_OF_NO_DELIVERY) == MODEL_PROOF_OF_NO_DELIVERY


# --- the design as specified ----------------------------------------------------------------------


@pytest.mark.parametrize("label", SHIPPED)
def test_the_design_never_accepts_a_key_twice_without_a_decision(
    explorations: list[Exploration], label: str
) -> None:
    result = explore(explorations, f"design, {label}", SHIPPED[label])
    assert result.complete
    assert not result.violation, result.counterexample.render() if result.counterexample else ""


@pytest.mark.parametrize("label", SHIPPED)
def test_the_design_leaves_no_row_unsettled(explorations: list[Exploration], label: str) -> None:
    result = explore(explorations, f"design, {label}", SHIPPED[label])
    assert result.stuck_states == 0, result.stuck_trace.render() if result.stuck_trace else ""


@pytest.mark.parametrize("label", SHIPPED)
def test_the_design_settles_sent_only_what_the_provider_accepted(
    explorations: list[Exploration], label: str
) -> None:
    result = explore(explorations, f"design, {label}", SHIPPED[label])
    assert SENT_WITHOUT_ACCEPTANCE not in result.findings, result.findings[SENT_WITHOUT_ACCEPTANCE].render()


def test_the_bounds_exercise_every_actor(explorations: list[Exploration]) -> None:
    """Not vacuous: within the bounds every kind of step happens somewhere, among them the
    sweeper's release by proof, a put that fails for good, redrive and a resend decision."""
    taken = set()
    for label, bounds in SHIPPED.items():
        taken |= explore(explorations, f"design, {label}", bounds).steps_taken
    assert taken == {
        "claim", "mark_sending", "mark_sending_heard", "mark_sending_refused", "release_unsent", "call", "settle",
        "settle_not_called", "expire", "sweep_claim", "sweep_observe", "sweep_release",
        "sweep_settle", "evidence", "operator_fail", "resend_forget", "resend", "redrive",
        "apply", "timeout", "kill", "cancel",
    }  # fmt: skip


def test_an_accepted_message_is_settled_failed_only_with_a_paused_worker(
    explorations: list[Exploration],
) -> None:
    """A known limit, kept visible: a worker paused past its lease whose put was delayed can
    win the key after a later attempt got a provably-not-sent outcome and freed it. The paused
    worker then sends, while the later attempt settles the row ``failed``: delivered, but
    ``failed`` (never a duplicate: the record blocks every other call). Lambda's hard timeout
    rules the pause out; without it, this never happens."""
    paused = explore(explorations, "design, with paused workers", WITH_PAUSES)
    assert ACCEPTED_THEN_FAILED in paused.findings
    steps = paused.findings[ACCEPTED_THEN_FAILED].steps
    assert any(step.event[0] == "expire" and step.event[2] for step in steps), (
        "a lease expired under a live worker"
    )
    unpaused = explore(explorations, "design, without paused workers", WITHOUT_PAUSES)
    assert ACCEPTED_THEN_FAILED not in unpaused.findings


def test_a_cancelled_message_goes_out_only_with_a_paused_worker(
    explorations: list[Exploration],
) -> None:
    """Cancel moves only `pending` and `claimed` rows, and `mark_sending` refuses a cancelled
    row, so no invocation starts a send after a cancel. The known limit, as above: a worker
    paused past its lease, whose put is still in flight when the sweeper reads "absent" and
    requeues the row, may send the row that was cancelled meanwhile (once: its record blocks
    every other call). Lambda's hard timeout rules the pause out; without it, never."""
    paused = explore(explorations, "design, with paused workers", WITH_PAUSES)
    assert CANCELLED_THEN_SENT in paused.findings
    steps = paused.findings[CANCELLED_THEN_SENT].steps
    assert any(step.event[0] == "expire" and step.event[2] for step in steps), (
        "a lease expired under a live worker"
    )
    unpaused = explore(explorations, "design, without paused workers", WITHOUT_PAUSES)
    assert CANCELLED_THEN_SENT not in unpaused.findings, unpaused.findings[CANCELLED_THEN_SENT].render()


def test_stored_states_are_canonical() -> None:
    explorer = Explorer(SendProtocol(ONE_KILL))
    explorer.explore("canonical forms")
    assert all(canonical(state)[0] == state for state in explorer.states)


# --- each safeguard off ---------------------------------------------------------------------------

# The shortest counterexample with unconditional removal and no paused worker: the issue's
# item 1.1. W1's delete of its own record is delayed and lands on W2's record; W2 is killed
# after the provider accepted; the sweeper sees no record and requeues; W3 sends again.
ISSUE_1_1_TRACE = [
    "W1 claims the row: pending -> claimed (attempt 1)",
    "W1 commits claimed -> sending, then sends put INPROGRESS(W1)",
    "DynamoDB applies W1's put(W1): absent -> INPROGRESS(W1), answer ok; W1 goes on to call",
    "W1 calls the provider: outcome retry_later, not accepted; sends delete of its own record",
    "W1 times out on delete(W1) (request delayed, still in flight) and retries the same request",
    "DynamoDB applies W1's delete(W1): INPROGRESS(W1) -> absent, answer deleted; W1 settles",
    "W1 settles from outcome retry_later (attempt row written): sending -> pending",
    "W2 claims the row: pending -> claimed (attempt 2)",
    "W2 commits claimed -> sending, then sends put INPROGRESS(W2)",
    "DynamoDB applies W2's put(W2): absent -> INPROGRESS(W2), answer ok; W2 goes on to call",
    "W2 calls the provider: outcome sent, ACCEPTED by the provider; sends complete",
    "DynamoDB applies W1's delete(W1): INPROGRESS(W2) -> absent, answer deleted (nobody waits for it)",
    "W2 is KILLED (its request never lands)",
    "lease of W2 expires (its owner is dead)",
    "sweeper reads K for W2's expired sending row: absent",
    "sweeper settles W2's row: sending -> pending",
    "W3 claims the row: pending -> claimed (attempt 2)",
    "W3 commits claimed -> sending, then sends put INPROGRESS(W3)",
    "DynamoDB applies W3's put(W3): absent -> INPROGRESS(W3), answer ok; W3 goes on to call",
    "W3 calls the provider: outcome sent, ACCEPTED by the provider; sends complete",
]
DELAYED_DELETE_LANDS = 11  # index of the step where W1's delete meets W2's record


def test_unconditional_removal_duplicates_as_in_issue_item_1_1(explorations: list[Exploration]) -> None:
    result = explore(
        explorations, "mutant: unconditional removal", WITHOUT_PAUSES, Design(conditional_removal=False)
    )
    assert result.violation == DUPLICATE
    assert result.counterexample is not None
    trace = result.counterexample
    assert trace.accepting_calls() == ["W2", "W3"]
    assert trace.removals_of_another_writers_record() == [ISSUE_1_1_TRACE[DELAYED_DELETE_LANDS]]
    assert [step.text for step in trace.steps] == ISSUE_1_1_TRACE, trace.render()


def test_the_issue_1_1_trace_is_refused_by_the_design() -> None:
    """The kept counterexample, replayed step by step: the mutant takes all of it, the design
    stops where W1's delayed delete meets W2's record (the condition refuses it)."""
    mutant = SendProtocol(WITHOUT_PAUSES, Design(conditional_removal=False))
    taken, end = follow(mutant, ISSUE_1_1_TRACE)
    assert (taken, end.flags.violation) == (len(ISSUE_1_1_TRACE), DUPLICATE)
    taken, end = follow(SendProtocol(WITHOUT_PAUSES, Design()), ISSUE_1_1_TRACE)
    assert taken == DELAYED_DELETE_LANDS
    assert end.record == (INPROGRESS, end.workers[0][0])  # W2's record stands


def test_releasing_a_rival_record_without_proof_duplicates(explorations: list[Exploration]) -> None:
    """A dispatcher whose put meets INPROGRESS(w) deletes it without PROOF for w. The holder
    may be an invocation that already called the provider (here a paused one), so the key is
    sent twice."""
    result = explore(
        explorations,
        "mutant: dispatcher releases without proof",
        WITH_PAUSES,
        Design(release_needs_proof=False),
    )
    assert result.violation == DUPLICATE
    assert result.counterexample is not None
    assert len(result.counterexample.accepting_calls()) == 2, result.counterexample.render()


def test_a_sweeper_releasing_without_proof_duplicates(explorations: list[Exploration]) -> None:
    """The sweeper treats an unproven INPROGRESS like a proven one: deletes it and requeues.
    Its writer may have called the provider and be paused, or dead before completing."""
    result = explore(
        explorations,
        "mutant: sweeper releases without proof",
        WITH_PAUSES,
        Design(sweeper_release_needs_proof=False),
    )
    assert result.violation == DUPLICATE
    assert result.counterexample is not None
    assert len(result.counterexample.accepting_calls()) == 2, result.counterexample.render()


def test_a_resend_decision_while_an_invocation_lives_duplicates_after_it(
    explorations: list[Exploration],
) -> None:
    """The timing assumption is load-bearing. A resend decision forgets INPROGRESS(w) while
    w's invocation is alive (paused past its lease, its put granted); the resent copy and w's
    late call are both accepted after the decision. The reconciler waits its grace period
    (longer than any invocation lives); an operator's ``resolve --resend`` has no such wait."""
    result = explore(
        explorations,
        "mutant: resend while an invocation lives",
        WITH_PAUSES,
        Design(decisions_wait_for_dead_invocations=False),
    )
    assert result.violation == DUPLICATE
    assert result.counterexample is not None
    trace = result.counterexample
    decisions, acceptances = trace.resend_decisions(), trace.acceptances()
    assert len(decisions) == 1
    assert len(acceptances) == 2
    assert decisions[0] < acceptances[0], f"both acceptances come after the decision:\n{trace.render()}"


def test_without_the_recovery_point_a_row_cycles_unsettled_forever(explorations: list[Exploration]) -> None:
    """``mark_sending`` skipped (the put and the call happen while the row is ``claimed``).
    Not a duplicate: the record still blocks every second call, so for at-most-once the
    recovery point is redundant under the model. It is what lets the sweeper tell "never
    offered" from "maybe offered": without it, a kill after the put leaves INPROGRESS with a
    ``claimed`` row that the sweeper requeues, the next invocation meets the record and stops,
    and so on: the row never settles."""
    result = explore(explorations, "mutant: no mark_sending", ONE_KILL, Design(mark_sending_first=False))
    assert not result.violation
    assert result.stuck_states > 0
    assert result.stuck_trace is not None
    assert "sweep_claim" in result.stuck_trace.verbs()[result.stuck_trace.cycle_from or 0 :]


def test_a_sweeper_requeueing_unproven_inprogress_cycles_unsettled_forever(
    explorations: list[Exploration],
) -> None:
    """The sweeper treats an unproven INPROGRESS as pending (keeping the record). Not a
    duplicate, for the record still blocks every call; but the next invocation meets it,
    stops, and the sweeper requeues again: the row never settles."""
    result = explore(
        explorations,
        "mutant: sweeper requeues unproven INPROGRESS",
        ONE_KILL,
        Design(sweeper_holds_unproven_inprogress=False),
    )
    assert not result.violation
    assert result.stuck_states > 0
    assert result.stuck_trace is not None


def test_conditional_completion_is_redundant_under_the_model(explorations: list[Exploration]) -> None:
    """Completion made unconditional finds no counterexample and no stuck row, and this is
    why: only a writer that called the provider completes, and it writes COMPLETED(sent or
    ambiguous). A COMPLETED record never lets anyone call: the put conflicts, the dispatcher's
    and the sweeper's deletes require INPROGRESS, redrive requires no record, and only a
    recorded resend decision forgets one. So an unconditional completion can only turn a
    record (or nothing) into a truthful COMPLETED that blocks, never free the key. The
    condition is still worth keeping: it keeps the record's writer and status consistent for
    audits, and it is what the README's Powertools section should now describe."""
    bounds = Bounds(workers=2, dynamo_attempts=2, orphans=1, max_attempts=2, faults=2)
    result = explore(
        explorations, "mutant: unconditional completion", bounds, Design(conditional_completion=False)
    )
    assert result.complete
    assert not result.violation, result.counterexample.render() if result.counterexample else ""
    assert result.stuck_states == 0
