"""The queue on a real Postgres: migrations, claims, compare-and-set transitions, enqueue."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from devstack.testing import run_in_threads
from shared.enqueue import enqueue_campaign
from shared.events import EnqueueRequest
from shared.providers.outcome import SendOutcome
from shared.queue import ClaimedMessage, IllegalTransitionError, QueueRepository, QueueStatus
from shared.storage.db import Database, DatabaseUnavailableError
from shared.storage.migrate import Migration, MigrationChecksumError, bundled_migrations, migrate

pytestmark = pytest.mark.integration


def campaign(
    contacts: int,
    *,
    steps: int = 1,
    channel: str = "whatsapp",
    sender: str = "106540352242922",
    campaign_id: uuid.UUID | None = None,
) -> EnqueueRequest:
    return EnqueueRequest.model_validate(
        {
            "source": "sendonce.manual",
            "campaign_id": str(campaign_id or uuid.uuid4()),
            "campaign_name": "test",
            "channel": channel,
            "sender_provider_id": sender,
            "contacts": [{"address": f"1555{i:07d}"} for i in range(contacts)],
            "steps": [{"message_type": f"step_{s}", "body": f"hello {s}"} for s in range(steps)],
        }
    )


def row(db: Database, queue_id: int) -> dict[str, object]:
    found = db.fetch_one("SELECT * FROM send_queue WHERE id = %(id)s", {"id": queue_id})
    assert found is not None
    return dict(found)


# --- migrations -------------------------------------------------------------------------


def test_migrations_are_idempotent(database: Database) -> None:
    report = migrate(database)
    assert report.applied == []
    assert report.already_applied == [m.version for m in bundled_migrations()]


def test_edited_migration_is_refused(database: Database) -> None:
    tampered = [Migration(m.version, m.text + "\n-- edited") for m in bundled_migrations()]
    with pytest.raises(MigrationChecksumError):
        migrate(database, tampered)


def test_new_migration_applies_once(database: Database) -> None:
    extra = [*bundled_migrations(), Migration("9999_probe", "CREATE TABLE probe (id int);")]
    assert migrate(database, extra).applied == ["9999_probe"]
    assert migrate(database, extra).applied == []


# --- enqueue -----------------------------------------------------------------------------


def test_enqueue_drops_duplicate_contacts_and_is_repeatable(
    database: Database, queue: QueueRepository
) -> None:
    request = EnqueueRequest.model_validate(
        {
            "source": "sendonce.manual",
            "campaign_id": str(uuid.uuid4()),
            "campaign_name": "dupes",
            "channel": "whatsapp",
            "sender_provider_id": "1",
            "contacts": [
                {"address": "+1 555 000 1111"},
                {"address": "15550001111"},
                {"address": " 1-555-000-1111 "},
                {"address": "15550002222"},
                {"address": "not a number"},
            ],
            "steps": [
                {"message_type": "intro", "body": "hi"},
                {"message_type": "follow_up", "body": "again"},
            ],
        }
    )
    first = enqueue_campaign(database, request)
    again = enqueue_campaign(database, request)
    # Two contacts; only step 1 is queued now, step 2 follows once step 1 is sent.
    assert (first.duplicate_contacts_dropped, first.rows_enqueued, first.invalid_contacts) == (2, 2, 1)
    assert (again.rows_enqueued, again.rows_already_queued) == (0, 2)
    assert queue.status_counts() == {"pending": 2}
    assert {r["message_type"] for r in database.fetch_all("SELECT message_type FROM send_queue")} == {"intro"}
    steps = database.fetch_all("SELECT position, message_type FROM campaign_steps ORDER BY position")
    assert [(s["position"], s["message_type"]) for s in steps] == [(1, "intro"), (2, "follow_up")]


def test_racing_enqueues_of_the_same_campaign_create_each_row_once(database: Database) -> None:
    request = campaign(300, steps=2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            enqueue_campaign(database, request)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    run_in_threads(run, 6)
    assert not errors
    counts = database.fetch_one(
        "SELECT count(*) AS n, count(DISTINCT (contact_id, message_type)) AS uniq,"
        " count(*) FILTER (WHERE message_type = 'step_0') AS first_steps,"
        " (SELECT count(*) FROM campaign_steps) AS steps,"
        " (SELECT count(*) FROM campaign_contacts WHERE sequence_state = 'active') AS started"
        " FROM send_queue"
    )
    # One step-1 row per contact (step 2 is queued when step 1 is sent), both steps stored once.
    assert counts is not None and counts["n"] == counts["uniq"] == counts["first_steps"] == 300
    assert (counts["steps"], counts["started"]) == (2, 300)


def test_unique_constraints_reject_duplicates_written_by_hand(database: Database) -> None:
    enqueue_campaign(database, campaign(1))
    with database.connection() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "INSERT INTO send_queue (campaign_id, contact_id, sender_account_id, message_type, body) "
            "SELECT campaign_id, contact_id, sender_account_id, message_type, 'again' FROM send_queue"
        )


def test_idempotency_key_is_deterministic_and_cannot_be_supplied(database: Database) -> None:
    enqueue_campaign(database, campaign(1))
    found = database.fetch_one(
        "SELECT idempotency_key, sendonce_idempotency_key(campaign_id, contact_id, message_type) AS derived "
        "FROM send_queue"
    )
    assert found is not None and found["idempotency_key"] == found["derived"]
    with database.connection() as conn, pytest.raises(psycopg.errors.GeneratedAlways):
        conn.execute("UPDATE send_queue SET idempotency_key = 'forged'")


# --- claim ---------------------------------------------------------------------------------


def test_overlapping_claims_are_disjoint(database: Database, queue: QueueRepository) -> None:
    enqueue_campaign(database, campaign(500))
    claimed: list[list[ClaimedMessage]] = []
    lock = threading.Lock()

    def claim() -> None:
        token = uuid.uuid4()
        while batch := queue.claim_batch(token, 20, 60):
            with lock:
                claimed.append(batch)

    run_in_threads(claim, 8)
    ids = [m.queue_id for batch in claimed for m in batch]
    assert len(ids) == len(set(ids)) == 500
    assert queue.status_counts() == {"claimed": 500}


def test_claim_increments_attempts_and_sets_lease(database: Database, queue: QueueRepository) -> None:
    enqueue_campaign(database, campaign(1))
    before = datetime.now(UTC)
    [message] = queue.claim_batch(uuid.uuid4(), 10, 90)
    after = datetime.now(UTC)
    stored = row(database, message.queue_id)
    assert message.attempts == stored["attempts"] == 1
    assert stored["claim_token"] == message.claim_token
    lease = stored["lease_expires_at"]
    assert isinstance(lease, datetime)
    # 90 s from the claim, whenever within the call it ran (Postgres shares this clock).
    assert before + timedelta(seconds=90) <= lease <= after + timedelta(seconds=90)


def test_rows_of_paused_senders_and_campaigns_are_not_claimed(
    database: Database, queue: QueueRepository
) -> None:
    paused_sender = campaign(3, sender="paused-sender")
    paused_campaign = campaign(3, sender="other-sender")
    enqueue_campaign(database, paused_sender)
    enqueue_campaign(database, paused_campaign)
    with database.connection() as conn:
        conn.execute(
            "UPDATE sender_accounts SET paused_until = now() + interval '1 hour' "
            "WHERE provider_account_id = 'paused-sender'"
        )
        conn.execute(
            "UPDATE campaigns SET status = 'paused' WHERE id = %(id)s", {"id": paused_campaign.campaign_id}
        )
    assert queue.claim_batch(uuid.uuid4(), 50, 60) == []
    with database.connection() as conn:
        conn.execute("UPDATE sender_accounts SET paused_until = now() - interval '1 second'")
    assert len(queue.claim_batch(uuid.uuid4(), 50, 60)) == 3


def test_future_rows_are_not_claimed(database: Database, queue: QueueRepository) -> None:
    enqueue_campaign(database, campaign(2))
    with database.connection() as conn:
        conn.execute("UPDATE send_queue SET scheduled_for = now() + interval '1 minute'")
    assert queue.claim_batch(uuid.uuid4(), 10, 60) == []


def test_claim_uses_the_partial_index_however_many_rows_are_done(database: Database) -> None:
    enqueue_campaign(database, campaign(20_000))
    with database.connection() as conn:
        conn.execute(
            "UPDATE send_queue SET status = 'sent', provider_message_id = 'x' || id, sent_at = now() "
            "WHERE id > 50"
        )
        conn.execute("ANALYZE send_queue")
        plan = "\n".join(
            r["QUERY PLAN"]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM send_queue WHERE status = 'pending' AND scheduled_for <= now() "
                "ORDER BY scheduled_for, id LIMIT 25 FOR UPDATE SKIP LOCKED"
            )
        )
        sweep_plan = "\n".join(
            r["QUERY PLAN"]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM send_queue WHERE status IN ('claimed', 'sending') "
                "AND lease_expires_at < now() LIMIT 500"
            )
        )
    assert "send_queue_due" in plan
    assert "send_queue_leases" in sweep_plan


# --- compare-and-set transitions ------------------------------------------------------------


def claimed_one(database: Database, queue: QueueRepository) -> ClaimedMessage:
    enqueue_campaign(database, campaign(1))
    [message] = queue.claim_batch(uuid.uuid4(), 1, 60)
    return message


def test_mark_sending_requires_the_claim_token(database: Database, queue: QueueRepository) -> None:
    message = claimed_one(database, queue)
    impostor = message.model_copy(update={"claim_token": uuid.uuid4()})
    assert not queue.mark_sending(impostor)
    assert queue.mark_sending(message)
    assert not queue.mark_sending(message), "sending is entered once"
    assert row(database, message.queue_id)["status"] == "sending"


def test_mark_sending_refuses_an_expired_lease(database: Database, queue: QueueRepository) -> None:
    message = claimed_one(database, queue)
    with database.connection() as conn:
        conn.execute("UPDATE send_queue SET lease_expires_at = now() - interval '1 second'")
    assert not queue.mark_sending(message)


def test_settle_sent_writes_queue_ledger_and_attempt_together(
    database: Database, queue: QueueRepository
) -> None:
    message = claimed_one(database, queue)
    queue.mark_sending(message)
    assert queue.settle_sent(message, SendOutcome.sent("wamid.A"))
    stored = row(database, message.queue_id)
    assert (stored["status"], stored["provider_message_id"]) == ("sent", "wamid.A")
    ledger = database.fetch_all("SELECT * FROM message_ledger")
    attempts = database.fetch_all("SELECT * FROM send_attempts")
    assert [(r["queue_id"], r["provider_message_id"]) for r in ledger] == [(message.queue_id, "wamid.A")]
    assert [(r["outcome"], r["attempt"]) for r in attempts] == [("sent", 1)]
    assert not queue.settle_sent(message, SendOutcome.sent("wamid.B")), (
        "a settled row cannot be settled again"
    )
    assert len(database.fetch_all("SELECT * FROM message_ledger")) == 1


def test_settle_with_a_stale_token_changes_nothing_but_records_the_attempt(
    database: Database, queue: QueueRepository
) -> None:
    message = claimed_one(database, queue)
    queue.mark_sending(message)
    stale = message.model_copy(update={"claim_token": uuid.uuid4()})
    assert not queue.settle_sent(stale, SendOutcome.sent("wamid.late"))
    assert row(database, message.queue_id)["status"] == "sending"
    assert database.fetch_all("SELECT * FROM message_ledger") == []
    assert len(database.fetch_all("SELECT * FROM send_attempts")) == 1, (
        "the call happened; the audit keeps it"
    )


def test_ledger_refuses_a_second_row_for_the_same_provider_message(
    database: Database, queue: QueueRepository
) -> None:
    enqueue_campaign(database, campaign(2))
    first, second = queue.claim_batch(uuid.uuid4(), 2, 60)
    for m in (first, second):
        queue.mark_sending(m)
    queue.settle_sent(first, SendOutcome.sent("wamid.same"))
    with pytest.raises(psycopg.errors.UniqueViolation):
        queue.settle_sent(second, SendOutcome.sent("wamid.same"))


def test_pending_again_clears_ownership_and_can_refund(database: Database, queue: QueueRepository) -> None:
    message = claimed_one(database, queue)
    queue.mark_sending(message)
    before = datetime.now(UTC)
    assert queue.settle_pending(message, delay_seconds=30, outcome=None, refund_attempt=True, last_error="x")
    after = datetime.now(UTC)
    stored = row(database, message.queue_id)
    assert (stored["status"], stored["claim_token"], stored["attempts"]) == ("pending", None, 0)
    scheduled = stored["scheduled_for"]
    assert isinstance(scheduled, datetime)
    assert before + timedelta(seconds=30) <= scheduled <= after + timedelta(seconds=30)


def test_repository_refuses_transitions_outside_the_state_machine(
    database: Database, queue: QueueRepository
) -> None:
    message = claimed_one(database, queue)
    with pytest.raises(IllegalTransitionError):
        queue.settle_terminal(
            message, QueueStatus.SENT, outcome=None, failure_reason="", expected=QueueStatus.PENDING
        )
    with pytest.raises(IllegalTransitionError):
        queue.settle_pending(message, delay_seconds=0, outcome=None, expected=QueueStatus.SENT)


def test_database_checks_forbid_inconsistent_rows(database: Database) -> None:
    enqueue_campaign(database, campaign(1))
    with database.connection() as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE send_queue SET status = 'sent'")
    with database.connection() as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE send_queue SET status = 'claimed'")


def test_unreachable_database_fails_fast_with_a_clear_error() -> None:
    db = Database("postgresql://nobody@127.0.0.1:1/none", max_size=1, connect_timeout_seconds=1)
    try:
        with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1/none is unreachable"):
            db.ping()
    finally:
        db.close()
