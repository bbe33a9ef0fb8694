"""Each sweeper rule on real Postgres and moto DynamoDB/SQS."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig

from devstack.aws import LocalAwsResources, MotoServer, aws_client
from devstack.testing import enqueue_contacts, expire_leases, make_settings
from shared.idempotency import KEY_PREFIX, BlockingDynamoDBPersistenceLayer, SendGuard
from shared.providers.outcome import SendOutcome
from shared.queue import ClaimedMessage, QueueRepository, QueueStatus
from shared.storage import sql
from shared.storage.db import Database
from shared.sweeper import SWEEPER_LEASE, SweepDeps, sweep

pytestmark = pytest.mark.integration


@pytest.fixture
def sweeper(
    db_url: str, aws: LocalAwsResources, moto_server: MotoServer, queue: QueueRepository, guard: SendGuard
) -> SweepDeps:
    settings = make_settings(db_url, aws, "http://127.0.0.1:9")
    return SweepDeps(settings=settings, queue=queue, guard=guard, sqs=aws_client("sqs", moto_server.endpoint))


def enqueue(database: Database, contacts: int = 1) -> None:
    enqueue_contacts(database, "whatsapp", [f"1555{i:07d}" for i in range(contacts)], sender="1065")


def sending_row(database: Database, queue: QueueRepository) -> ClaimedMessage:
    enqueue(database)
    [message] = queue.claim_batch(uuid.uuid4(), 1, 60)
    assert queue.mark_sending(message)
    return message


def status(database: Database, queue_id: int) -> dict[str, Any]:
    row = database.fetch_one("SELECT * FROM send_queue WHERE id = %(id)s", {"id": queue_id})
    assert row is not None
    return dict(row)


def write_inprogress(aws: LocalAwsResources, moto_server: MotoServer, key: str) -> None:
    layer = BlockingDynamoDBPersistenceLayer(
        table_name=aws.idempotency_table, boto3_client=aws_client("dynamodb", moto_server.endpoint)
    )
    layer.configure(IdempotencyConfig(event_key_jmespath="idempotency_key"), key_prefix=KEY_PREFIX)
    layer.save_inprogress(data={"idempotency_key": key})


def test_expired_claim_returns_to_pending_with_its_attempt_refunded(
    database: Database, queue: QueueRepository, sweeper: SweepDeps
) -> None:
    enqueue(database)
    [message] = queue.claim_batch(uuid.uuid4(), 1, 60)
    expire_leases(database)
    report = sweep(sweeper)
    row = status(database, message.queue_id)
    assert report.released_claims == 1
    assert (row["status"], row["attempts"], row["claim_token"]) == ("pending", 0, None)
    decisions = database.fetch_all(
        "SELECT from_status::text, to_status::text, decided_by FROM queue_decisions"
    )
    assert [tuple(d.values()) for d in decisions] == [("claimed", "pending", "sweeper")]


def test_live_leases_are_never_swept(
    database: Database,
    queue: QueueRepository,
    sweeper: SweepDeps,
    aws: LocalAwsResources,
    moto_server: MotoServer,
) -> None:
    enqueue(database, contacts=2)
    claimed, sending = queue.claim_batch(uuid.uuid4(), 2, 600)
    queue.mark_sending(sending)
    write_inprogress(aws, moto_server, sending.idempotency_key)
    report = sweep(sweeper)
    assert (report.released_claims, report.marked_unknown, report.returned_to_pending) == (0, 0, 0)
    assert status(database, claimed.queue_id)["status"] == "claimed"
    assert status(database, sending.queue_id)["status"] == "sending"


def test_expired_send_with_completed_record_is_recovered_as_sent(
    database: Database, queue: QueueRepository, sweeper: SweepDeps, guard: SendGuard
) -> None:
    message = sending_row(database, queue)
    guard.deliver_once(message.idempotency_key, lambda: SendOutcome.sent("wamid.recovered"))
    expire_leases(database)
    report = sweep(sweeper)
    row = status(database, message.queue_id)
    assert report.recovered_sent == 1
    assert (row["status"], row["provider_message_id"]) == ("sent", "wamid.recovered")
    ledger = database.fetch_one(
        "SELECT recovered_from FROM message_ledger WHERE queue_id = %(id)s", {"id": message.queue_id}
    )
    assert ledger is not None and ledger["recovered_from"] == "idempotency_record"


def test_expired_send_with_inprogress_record_becomes_unknown(
    database: Database,
    queue: QueueRepository,
    sweeper: SweepDeps,
    aws: LocalAwsResources,
    moto_server: MotoServer,
) -> None:
    message = sending_row(database, queue)
    write_inprogress(aws, moto_server, message.idempotency_key)
    expire_leases(database)
    report = sweep(sweeper)
    assert report.marked_unknown == 1
    assert report.unknown_rows == 1
    assert status(database, message.queue_id)["status"] == "unknown"


def test_expired_send_with_ambiguous_record_becomes_unknown(
    database: Database, queue: QueueRepository, sweeper: SweepDeps, guard: SendGuard
) -> None:
    message = sending_row(database, queue)
    guard.deliver_once(message.idempotency_key, lambda: SendOutcome.ambiguous("network:read_timeout"))
    expire_leases(database)
    sweep(sweeper)
    row = status(database, message.queue_id)
    assert row["status"] == "unknown"
    assert "ambiguous" in row["failure_reason"]


def test_expired_send_without_record_returns_to_pending(
    database: Database, queue: QueueRepository, sweeper: SweepDeps
) -> None:
    message = sending_row(database, queue)
    expire_leases(database)
    report = sweep(sweeper)
    assert report.returned_to_pending == 1
    assert (status(database, message.queue_id)["status"], status(database, message.queue_id)["attempts"]) == (
        "pending",
        0,
    )


def test_missing_record_proves_nothing_once_the_dedupe_window_may_have_passed(
    database: Database, queue: QueueRepository, sweeper: SweepDeps
) -> None:
    message = sending_row(database, queue)
    with database.connection() as conn:
        conn.execute("UPDATE send_queue SET sending_started_at = now() - interval '8 days'")
    expire_leases(database)
    sweep(sweeper)
    assert status(database, message.queue_id)["status"] == "unknown"


def test_unreadable_store_changes_nothing(
    database: Database, queue: QueueRepository, sweeper: SweepDeps, moto_server: MotoServer
) -> None:
    message = sending_row(database, queue)
    expire_leases(database)
    broken = SendGuard.for_table(
        "no-such-table", 3600, boto3_client=aws_client("dynamodb", moto_server.endpoint)
    )
    report = sweep(SweepDeps(sweeper.settings, queue, broken, sweeper.sqs))
    assert report.lookup_errors == 1
    assert status(database, message.queue_id)["status"] == "sending"


@pytest.fixture
def held_sweeper_lock(database: Database) -> Iterator[None]:
    """Another sweeper is mid-run: it holds the single-flight lease."""
    lease = {"name": SWEEPER_LEASE, "holder": uuid.uuid4()}
    assert database.fetch_one(sql.ACQUIRE_LEASE, {**lease, "seconds": 120}) is not None
    yield
    with database.connection() as conn:
        conn.execute(sql.RELEASE_LEASE, lease)


def test_a_second_sweeper_skips_while_one_runs(
    database: Database, queue: QueueRepository, sweeper: SweepDeps, held_sweeper_lock: None
) -> None:
    enqueue(database)
    queue.claim_batch(uuid.uuid4(), 1, 60)
    expire_leases(database)
    assert sweep(sweeper).ran is False
    assert queue.status_counts() == {"claimed": 1}


def test_failed_rows_are_dead_lettered_once_with_their_details(
    database: Database,
    queue: QueueRepository,
    sweeper: SweepDeps,
    aws: LocalAwsResources,
    moto_server: MotoServer,
) -> None:
    enqueue(database, contacts=12)
    for message in queue.claim_batch(uuid.uuid4(), 12, 60):
        queue.mark_sending(message)
        queue.settle_terminal(
            message,
            QueueStatus.FAILED,
            outcome=SendOutcome.permanent("whatsapp:131026", "undeliverable"),
            failure_reason="whatsapp:131026",
        )
    assert sweep(sweeper).dead_lettered == 12
    assert sweep(sweeper).dead_lettered == 0
    sqs = aws_client("sqs", moto_server.endpoint)
    bodies: list[dict[str, Any]] = []
    while batch := sqs.receive_message(QueueUrl=aws.failed_messages_queue_url, MaxNumberOfMessages=10).get(
        "Messages"
    ):
        bodies += [json.loads(m["Body"]) for m in batch]
        sqs.delete_message_batch(
            QueueUrl=aws.failed_messages_queue_url,
            Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in batch],
        )
    assert len(bodies) == 12
    assert len({b["queue_id"] for b in bodies}) == 12
    first = bodies[0]
    assert first["reason"] == "whatsapp:131026"
    assert first["attempts"] == 1
    assert first["idempotency_key"].startswith("so1-")
    assert "undeliverable" in first["last_error"]


def test_a_killed_sweepers_lease_expires(
    database: Database, sweeper: SweepDeps, held_sweeper_lock: None
) -> None:
    """A sweeper Lambda killed mid-run never releases its lease; its expiry frees it."""
    assert not sweep(sweeper).ran
    with database.connection() as conn:
        conn.execute("UPDATE single_flight_leases SET expires_at = now() - interval '1 second'")
    assert sweep(sweeper).ran
    assert sweep(sweeper).ran, "a finished sweep releases its lease"


def test_sweep_reports_backlog_its_age_and_paused_senders_per_channel(
    database: Database, queue: QueueRepository, sweeper: SweepDeps, capsys: pytest.CaptureFixture[str]
) -> None:
    enqueue(database, contacts=3)
    with database.connection() as conn:
        conn.execute(
            "UPDATE send_queue SET scheduled_for = now() - interval '1 hour'"
            " WHERE id = (SELECT min(id) FROM send_queue)"
        )
        conn.execute(
            "UPDATE sender_accounts SET paused_until = now() + interval '1 hour', paused_by = 'provider'"
        )
    capsys.readouterr()
    report = sweep(sweeper)
    whatsapp = report.channels["whatsapp"]
    assert (whatsapp.due_pending, whatsapp.paused_senders, whatsapp.provider_paused_senders) == (3, 1, 1)
    assert 3600 <= whatsapp.oldest_due_seconds < 7200
    assert report.channels["linkedin"].due_pending == 0
    assert report.oldest_due_seconds == whatsapp.oldest_due_seconds
    # The per-channel gauges are EMF documents of their own, with the channel dimension.
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    per_channel = {d["channel"]: d for d in documents if "channel" in d}
    assert set(per_channel) == {"whatsapp", "linkedin", "messenger"}
    assert per_channel["whatsapp"]["DuePendingRows"] == [3.0]
    assert per_channel["whatsapp"]["PausedSenders"] == [1.0]
    [dimensions] = per_channel["whatsapp"]["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    assert "channel" in dimensions
