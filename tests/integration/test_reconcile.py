"""Resolving `unknown`, operator decisions, redrive, statistics, audit and duplicate detection."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.aws import LocalAwsResources
from devstack.testing import make_settings, outlive_claims
from shared.enqueue import enqueue_campaign
from shared.events import EnqueueRequest
from shared.idempotency import RecordState, SendGuard
from shared.providers.outcome import OutboundMessage, SendOutcome
from shared.queue import ClaimedMessage, QueueRepository, QueueStatus
from shared.reconcile import (
    DecisionError,
    OperatorAction,
    ReconcileDeps,
    audit,
    campaign_stats,
    detect_duplicates,
    reconcile_unknown,
    redrive,
    resolve,
)
from shared.storage.db import Database

pytestmark = pytest.mark.integration
CAMPAIGN = uuid.UUID("6f1c9a8e-0000-4000-8000-000000000001")


def make_deps(
    db_url: str, aws: LocalAwsResources, queue: QueueRepository, guard: SendGuard, **settings: Any
) -> ReconcileDeps:
    return ReconcileDeps(make_settings(db_url, aws, "http://127.0.0.1:9", **settings), queue, guard)


@pytest.fixture
def deps(db_url: str, aws: LocalAwsResources, queue: QueueRepository, guard: SendGuard) -> ReconcileDeps:
    return make_deps(db_url, aws, queue, guard)


def enqueue(
    database: Database,
    channel: str = "whatsapp",
    contacts: int = 1,
    body: str = "hello",
    *,
    campaign_id: uuid.UUID = CAMPAIGN,
    campaign_name: str = "reconcile",
) -> None:
    """Tests put one person in several campaigns on purpose (seed 000's duplicates, a known
    chat): the cross-campaign policy is off for these campaigns."""
    addresses = [f"1555{i:07d}" if channel == "whatsapp" else f"{channel}-{i}" for i in range(contacts)]
    enqueue_campaign(
        database,
        EnqueueRequest.model_validate(
            {
                "source": "sendonce.manual",
                "campaign_id": str(campaign_id),
                "campaign_name": campaign_name,
                "channel": channel,
                "sender_provider_id": "sender",
                "contacts": [{"address": a} for a in addresses],
                "steps": [{"message_type": "intro", "body": body}],
                "cross_campaign_policy": "allow",
            }
        ),
    )


def to_status(
    queue: QueueRepository, guard: SendGuard, target: QueueStatus, outcome: SendOutcome
) -> list[ClaimedMessage]:
    """Drive claimed rows the way the dispatcher would, through the gate."""
    messages = queue.claim_batch(uuid.uuid4(), 100, 60)
    for m in messages:
        queue.mark_sending(m)
        guard.deliver_once(m.idempotency_key, lambda: outcome)
        if target is QueueStatus.UNKNOWN:
            queue.settle_terminal(m, QueueStatus.UNKNOWN, outcome=outcome, failure_reason=outcome.reason)
        elif target is QueueStatus.FAILED:
            queue.settle_terminal(m, QueueStatus.FAILED, outcome=outcome, failure_reason=outcome.reason)
        else:
            unique = (
                outcome.provider_message_id
                if len(messages) == 1
                else f"{outcome.provider_message_id}-{m.queue_id}"
            )
            queue.settle_sent(m, outcome.model_copy(update={"provider_message_id": unique}))
    outlive_claims(queue.db)
    return messages


def add_event(database: Database, **values: Any) -> None:
    row = {
        "channel": "whatsapp",
        "event_type": "status",
        "dedupe_key": uuid.uuid4().hex,
        "idempotency_key": None,
        "provider_message_id": None,
        "provider_thread_id": None,
        "recipient": None,
        "status": "sent",
        "payload": "{}",
        **values,
    }
    with database.connection() as conn:
        conn.execute(
            "INSERT INTO provider_events (channel, event_type, dedupe_key, idempotency_key, provider_message_id, "
            "provider_thread_id, recipient, status, payload) VALUES (%(channel)s, %(event_type)s, %(dedupe_key)s, "
            "%(idempotency_key)s, %(provider_message_id)s, %(provider_thread_id)s, %(recipient)s, %(status)s, "
            "%(payload)s::jsonb)",
            row,
        )


def status_of(database: Database, queue_id: int) -> str:
    row = database.fetch_one("SELECT status::text AS s FROM send_queue WHERE id = %(id)s", {"id": queue_id})
    assert row is not None
    return str(row["s"])


def test_unknown_with_webhook_evidence_becomes_sent(
    database: Database, queue: QueueRepository, guard: SendGuard, deps: ReconcileDeps
) -> None:
    enqueue(database)
    [m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("network:read_timeout"))
    add_event(
        database, idempotency_key=m.idempotency_key, provider_message_id="wamid.evidence", status="delivered"
    )
    report = reconcile_unknown(deps)
    assert report.resolved_sent == 1
    assert status_of(database, m.queue_id) == "sent"
    ledger = database.fetch_one("SELECT provider_message_id, recovered_from FROM message_ledger")
    assert ledger is not None and (ledger["provider_message_id"], ledger["recovered_from"]) == (
        "wamid.evidence",
        "webhook",
    )
    decision = database.fetch_one("SELECT decided_by, to_status::text AS t FROM queue_decisions")
    assert decision is not None and (decision["decided_by"], decision["t"]) == ("reconciler", "sent")


def test_unipile_evidence_is_matched_by_recipient_and_text(
    database: Database, queue: QueueRepository, guard: SendGuard, deps: ReconcileDeps
) -> None:
    enqueue(database, channel="linkedin", body="Great to connect")
    [m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("unipile:request_timeout"))
    add_event(
        database,
        channel="linkedin",
        recipient="linkedin-0",
        provider_message_id="msg-other",
        payload=json.dumps({"text": "a different text"}),
    )
    assert reconcile_unknown(deps).resolved_sent == 0
    add_event(
        database,
        channel="linkedin",
        recipient="linkedin-0",
        provider_message_id="msg-1",
        provider_thread_id="chat-1",
        payload=json.dumps({"text": "Great to connect"}),
    )
    assert reconcile_unknown(deps).resolved_sent == 1
    assert status_of(database, m.queue_id) == "sent"


class FakeReadBack:
    def __init__(self, found: SendOutcome | None) -> None:
        self.found = found
        self.asked: list[tuple[str, str]] = []

    def find_sent(
        self, message: OutboundMessage, thread_id: str, *, not_before: datetime
    ) -> list[SendOutcome]:
        self.asked.append((message.recipient, thread_id))
        return [self.found] if self.found else []


def test_unipile_read_back_of_a_known_chat_resolves_unknown(
    database: Database, queue: QueueRepository, guard: SendGuard, deps: ReconcileDeps
) -> None:
    enqueue(database, channel="linkedin", contacts=1, body="first")
    to_status(queue, guard, QueueStatus.SENT, SendOutcome.sent("msg-first", thread_id="chat-9"))
    enqueue(database, channel="linkedin", body="second", campaign_id=uuid.uuid4(), campaign_name="second")
    [m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("unipile:request_timeout"))
    reader = FakeReadBack(SendOutcome.sent("msg-second", thread_id="chat-9"))
    deps.read_back = {m.channel: reader}
    assert reconcile_unknown(deps).resolved_sent == 1
    assert reader.asked == [("linkedin-0", "chat-9")]


def test_unknown_without_evidence_is_held_by_default(
    database: Database, queue: QueueRepository, guard: SendGuard, deps: ReconcileDeps
) -> None:
    enqueue(database)
    [m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("whatsapp:131000"))
    later = datetime.now(UTC) + timedelta(days=1)
    report = reconcile_unknown(deps, now=later)
    assert (report.held, report.resent) == (1, 0)
    assert status_of(database, m.queue_id) == "unknown"
    assert guard.lookup(m.idempotency_key).state is RecordState.COMPLETED, "the record still blocks a resend"


def test_resend_policy_requeues_after_grace_and_forgets_the_record(
    db_url: str, aws: LocalAwsResources, database: Database, queue: QueueRepository, guard: SendGuard
) -> None:
    # A grace period no busy machine outlasts between two statements; the clock then jumps past it.
    deps = make_deps(db_url, aws, queue, guard, unknown_policy_whatsapp="resend", unknown_grace_seconds=3600)
    enqueue(database)
    [m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("whatsapp:131000"))
    assert reconcile_unknown(deps).waiting == 1, "inside the grace period nothing happens"
    assert reconcile_unknown(deps, now=datetime.now(UTC) + timedelta(hours=2)).resent == 1
    assert status_of(database, m.queue_id) == "pending"
    assert guard.lookup(m.idempotency_key).state is RecordState.ABSENT


@pytest.mark.parametrize(
    ("action", "expected"),
    [(OperatorAction.MARK_SENT, "sent"), (OperatorAction.FAIL, "failed"), (OperatorAction.RESEND, "pending")],
)
def test_operator_decisions_are_applied_and_recorded(
    database: Database,
    queue: QueueRepository,
    guard: SendGuard,
    deps: ReconcileDeps,
    action: OperatorAction,
    expected: str,
) -> None:
    enqueue(database)
    [m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("x"))
    assert (
        resolve(deps, m.queue_id, action, "alice", "checked the inbox", provider_message_id="wamid.seen")
        == expected
    )
    assert status_of(database, m.queue_id) == expected
    decision = database.fetch_one("SELECT decided_by, reason FROM queue_decisions")
    assert decision is not None and decision["decided_by"] == "operator:alice"
    with pytest.raises(DecisionError, match="only unknown rows"):
        resolve(deps, m.queue_id, action, "bob", "again")


def test_a_resend_waits_until_the_invocation_that_claimed_the_row_has_stopped(
    database: Database, queue: QueueRepository, guard: SendGuard, deps: ReconcileDeps
) -> None:
    """A worker paused past its lease could still call the provider; forgetting its record
    then lets a second call through (the model check's counterexample). So a resend, or a
    redrive, refuses until the last claim's lease has run out."""
    enqueue(database)
    [m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("x"))
    with database.connection() as conn:
        conn.execute("UPDATE send_queue SET claimed_at = now()")
    with pytest.raises(DecisionError, match="may run until"):
        resolve(deps, m.queue_id, OperatorAction.RESEND, "alice", "impatient")
    assert status_of(database, m.queue_id) == "unknown"
    assert guard.lookup(m.idempotency_key).state is RecordState.COMPLETED, "the record was not forgotten"
    outlive_claims(database)
    assert resolve(deps, m.queue_id, OperatorAction.RESEND, "alice", "after the lease") == "pending"


def test_operator_cannot_touch_sent_rows(
    database: Database, queue: QueueRepository, guard: SendGuard, deps: ReconcileDeps
) -> None:
    enqueue(database)
    [m] = to_status(queue, guard, QueueStatus.SENT, SendOutcome.sent("wamid.done"))
    with pytest.raises(DecisionError):
        resolve(deps, m.queue_id, OperatorAction.RESEND, "mallory", "resend it")
    assert status_of(database, m.queue_id) == "sent"


def test_redrive_requeues_failed_rows_once_and_never_sent_ones(
    database: Database, queue: QueueRepository, guard: SendGuard, deps: ReconcileDeps
) -> None:
    enqueue(database, contacts=3)
    failed = to_status(queue, guard, QueueStatus.FAILED, SendOutcome.permanent("whatsapp:131047"))
    # A failed row whose idempotency record still exists (e.g. written by hand) must be skipped.
    guard.deliver_once(failed[2].idempotency_key, lambda: SendOutcome.ambiguous("late"))
    first = redrive(deps, campaign_id=CAMPAIGN)
    second = redrive(deps, campaign_id=CAMPAIGN)
    assert sorted(first.requeued) == sorted(m.queue_id for m in failed[:2])
    assert first.skipped == {failed[2].queue_id: "idempotency record is COMPLETED"}
    assert second.requeued == []
    assert queue.status_counts() == {"pending": 2, "failed": 1}


def test_stats_equal_a_recount(database: Database, queue: QueueRepository, guard: SendGuard) -> None:
    enqueue(database, contacts=10)
    batch = queue.claim_batch(uuid.uuid4(), 6, 60)
    for n, m in enumerate(batch):
        queue.mark_sending(m)
        if n < 4:
            queue.settle_sent(m, SendOutcome.sent(f"wamid.{n}"))
        else:
            queue.settle_terminal(m, QueueStatus.UNKNOWN, outcome=None, failure_reason="x")
    with database.connection() as conn:
        conn.execute(
            "UPDATE message_ledger SET delivery_status = 'read' WHERE provider_message_id = 'wamid.0'"
        )
        conn.execute(
            "UPDATE message_ledger SET delivery_status = 'delivered' WHERE provider_message_id = 'wamid.1'"
        )
    [stats] = campaign_stats(database, CAMPAIGN)
    assert {
        k: stats[k]
        for k in ("total", "pending", "in_flight", "sent", "delivered", "read", "failed", "unknown")
    } == {
        "total": 10,
        "pending": 4,
        "in_flight": 0,
        "sent": 4,
        "delivered": 2,
        "read": 1,
        "failed": 0,
        "unknown": 2,
    }


def test_audit_lists_everything_about_a_contact(
    database: Database, queue: QueueRepository, guard: SendGuard
) -> None:
    enqueue(database)
    [m] = to_status(queue, guard, QueueStatus.SENT, SendOutcome.sent("wamid.audit"))
    add_event(database, provider_message_id="wamid.audit", status="delivered", recipient=m.recipient)
    found = audit(database, address=m.recipient)
    assert [r["queue_id"] for r in found["queue"]] == [m.queue_id]
    assert [r["provider_message_id"] for r in found["ledger"]] == ["wamid.audit"]
    assert [r["outcome"] for r in found["attempts"]] == ["sent"]
    assert [r["status"] for r in found["provider_events"]] == ["delivered"]


def test_duplicate_detector_flags_two_ids_for_one_key_and_same_text_within_an_hour(
    database: Database, queue: QueueRepository, guard: SendGuard
) -> None:
    assert detect_duplicates(database) == []
    add_event(database, idempotency_key="so1-k", provider_message_id="wamid.a")
    add_event(database, idempotency_key="so1-k", provider_message_id="wamid.b")
    # The same person in two campaigns with the same text (seed 000).
    enqueue(database, body="same text")
    enqueue(database, body="same text", campaign_id=uuid.uuid4(), campaign_name="other")
    to_status(queue, guard, QueueStatus.SENT, SendOutcome.sent("wamid.x"))
    [first, second] = database.fetch_all("SELECT provider_message_id FROM message_ledger ORDER BY id")
    assert first and second
    kinds = sorted(d["kind"] for d in detect_duplicates(database))
    assert kinds == ["same_key", "same_text_within_1h"]


# --- review fixes: every path that could resend what was sent -------------------------------


def test_unknown_row_whose_record_proves_sending_is_recovered_from_the_record(
    database: Database, queue: QueueRepository, guard: SendGuard, deps: ReconcileDeps
) -> None:
    """The call outlived its lease and completed after the sweeper marked the row unknown."""
    enqueue(database)
    [_m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.sent("wamid.late"))
    assert reconcile_unknown(deps).resolved_sent == 1
    ledger = database.fetch_one("SELECT provider_message_id, recovered_from FROM message_ledger")
    assert ledger is not None
    assert (ledger["provider_message_id"], ledger["recovered_from"]) == ("wamid.late", "idempotency_record")


def test_resend_never_forgets_a_record_that_proves_sending(
    database: Database, queue: QueueRepository, guard: SendGuard, deps: ReconcileDeps
) -> None:
    enqueue(database)
    [m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.sent("wamid.proof"))
    with pytest.raises(DecisionError, match="proving it was sent"):
        resolve(deps, m.queue_id, OperatorAction.RESEND, "alice", "resend it")
    assert status_of(database, m.queue_id) == "unknown"
    assert guard.lookup(m.idempotency_key).state is RecordState.COMPLETED


def test_resend_policy_is_bounded_by_max_attempts(
    db_url: str, aws: LocalAwsResources, database: Database, queue: QueueRepository, guard: SendGuard
) -> None:
    deps = make_deps(db_url, aws, queue, guard, unknown_policy_whatsapp="resend", unknown_grace_seconds=0)
    enqueue(database)
    [m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("network:read_timeout"))
    with database.connection() as conn:
        conn.execute("UPDATE send_queue SET max_attempts = 1")
    report = reconcile_unknown(deps, now=datetime.now(UTC) + timedelta(hours=1))
    assert (report.resent, report.held) == (0, 1)
    assert status_of(database, m.queue_id) == "unknown"


def test_resent_unknown_row_keeps_its_attempts(
    db_url: str, aws: LocalAwsResources, database: Database, queue: QueueRepository, guard: SendGuard
) -> None:
    deps = make_deps(db_url, aws, queue, guard, unknown_policy_whatsapp="resend", unknown_grace_seconds=0)
    enqueue(database)
    [_m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("network:read_timeout"))
    assert reconcile_unknown(deps, now=datetime.now(UTC) + timedelta(hours=1)).resent == 1
    row = database.fetch_one("SELECT status::text AS s, attempts FROM send_queue")
    assert row is not None and (row["s"], row["attempts"]) == ("pending", 1)


def test_redrive_refuses_a_failed_row_that_may_have_been_delivered(
    database: Database, queue: QueueRepository, guard: SendGuard, deps: ReconcileDeps
) -> None:
    enqueue(database)
    [m] = to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("network:read_timeout"))
    resolve(deps, m.queue_id, OperatorAction.FAIL, "alice", "gave up")
    guard.forget(m.idempotency_key, guard.lookup(m.idempotency_key))  # as if TTL had removed it
    report = redrive(deps, campaign_id=CAMPAIGN)
    assert report.requeued == []
    assert "may have been delivered" in report.skipped[m.queue_id]


def test_every_unknown_row_is_examined_even_when_held_rows_fill_a_batch(
    db_url: str, aws: LocalAwsResources, database: Database, queue: QueueRepository, guard: SendGuard
) -> None:
    deps = make_deps(db_url, aws, queue, guard, sweep_batch_size=1)
    enqueue(database, contacts=3)
    to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("x"))
    later = datetime.now(UTC) + timedelta(days=1)
    for _ in range(3):
        assert reconcile_unknown(deps, now=later).held == 1
    examined = database.fetch_one("SELECT count(*) AS n FROM send_queue WHERE reconciled_at IS NOT NULL")
    assert examined is not None and examined["n"] == 3


def test_text_evidence_from_before_the_send_is_ignored(
    database: Database, queue: QueueRepository, guard: SendGuard, deps: ReconcileDeps
) -> None:
    enqueue(database, channel="linkedin", body="Great to connect")
    to_status(queue, guard, QueueStatus.UNKNOWN, SendOutcome.ambiguous("unipile:request_timeout"))
    add_event(
        database,
        channel="linkedin",
        recipient="linkedin-0",
        provider_message_id="msg-old",
        payload=json.dumps({"text": "Great to connect"}),
    )
    with database.connection() as conn:
        conn.execute("UPDATE provider_events SET occurred_at = now() - interval '2 days'")
    assert reconcile_unknown(deps).resolved_sent == 0
