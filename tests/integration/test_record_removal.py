"""Every removal and completion of an idempotency record is conditional on its writer, and a
record that outlives a writer who delivered nothing is released on Postgres' proof.

The faults come from ``LossyProxy`` in front of moto: a DynamoDB request held past the client's
read timeout (botocore retries, the held request lands later, as one delayed inside DynamoDB
would), and requests refused with 500 until botocore's attempts run out.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.config import Config as BotoConfig

from devstack.aws import LocalAwsResources, MotoServer, aws_client
from devstack.fake_provider import FakeProvider
from devstack.lossy_proxy import LossyProxy
from devstack.testing import enqueue_contacts, expire_leases, make_settings
from shared.dispatch import DispatchDeps, dispatch
from shared.events import DispatchRequest
from shared.idempotency import GuardVerdict, RecordState, SendGuard
from shared.providers.outcome import SendOutcome
from shared.queue import NOT_CALLED, ClaimedMessage, QueueRepository
from shared.storage.db import Database
from shared.sweeper import SweepDeps, sweep

pytestmark = pytest.mark.integration
MANUAL = DispatchRequest(source="sendonce.manual")
RECIPIENT = "15550001111"


class Plenty:
    def get_remaining_time_in_millis(self) -> int:
        return 10 * 60 * 1000


class Killed(BaseException):
    """The process dies here: neither Powertools nor the gate get to run another line."""


@pytest.fixture
def lossy(moto_server: MotoServer) -> Iterator[LossyProxy]:
    with LossyProxy(moto_server.endpoint) as proxy:
        yield proxy


def guard_through(proxy: LossyProxy, aws: LocalAwsResources) -> SendGuard:
    """A gate whose DynamoDB client gives up on an answer after 5 s (a request the proxy holds
    is retried; one moto answers on a busy machine is not), three attempts in all."""
    config = BotoConfig(
        connect_timeout=2, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 3}
    )
    client = aws_client("dynamodb", proxy.endpoint, config=config)
    return SendGuard.for_table(aws.idempotency_table, 7 * 24 * 3600, boto3_client=client)


def sending(database: Database, queue: QueueRepository) -> ClaimedMessage:
    [message] = queue.claim_batch(uuid.uuid4(), 1, 600)
    assert queue.mark_sending(message)
    return message


def sweeper(settings: Any, queue: QueueRepository, guard: SendGuard) -> SweepDeps:
    return SweepDeps(settings=settings, queue=queue, guard=guard, sqs=None)


def status(database: Database) -> str:
    row = database.fetch_one("SELECT status::text AS s FROM send_queue")
    assert row is not None
    return str(row["s"])


def copies(fake: FakeProvider) -> Counter[str]:
    return Counter(m["recipient"] for m in fake.ledger())


def test_a_delayed_delete_cannot_remove_the_next_writers_record(
    aws: LocalAwsResources,
    lossy: LossyProxy,
    database: Database,
    queue: QueueRepository,
    deps: DispatchDeps,
    fake_provider: FakeProvider,
) -> None:
    """Issue 6, item 1.1. W1 is throttled; its DeleteItem is held past the read timeout and
    botocore's retry deletes the record, so the row goes back to pending. W2 claims it, writes
    its record, the provider accepts, and W1's delayed delete lands now. W2 is killed before
    completing. With an unconditional delete the sweeper would find "no record", requeue, and
    the next dispatch would send a second copy."""
    enqueue_contacts(database, "whatsapp", [RECIPIENT])
    w1_guard = guard_through(lossy, aws)
    w1 = sending(database, queue)
    delayed_delete = lossy.hold_next("DeleteItem")
    throttled = SendOutcome.retry_later(None, "whatsapp:130429")
    first = w1_guard.deliver_once(w1.idempotency_key, lambda: throttled)
    assert first.verdict is GuardVerdict.CALLED
    assert delayed_delete.arrived.is_set() and lossy.forwarded["DeleteItem"] >= 1, "a retry went through"
    assert deps.guard.lookup(w1.idempotency_key).state is RecordState.ABSENT, "the retry deleted it"
    assert queue.settle_pending(w1, delay_seconds=0, outcome=throttled, writer=first.writer)

    w2 = sending(database, queue)

    def accepted_then_killed() -> SendOutcome:
        outcome = deps.adapters[w2.channel].send(w2)
        assert outcome.provider_message_id
        delayed_delete.release()
        assert delayed_delete.landed.wait(30), "W1's delete reached DynamoDB"
        raise Killed

    with pytest.raises(Killed):
        deps.guard.deliver_once(w2.idempotency_key, accepted_then_killed)
    assert deps.guard.lookup(w2.idempotency_key).state is RecordState.INPROGRESS, "W2's record survived"

    expire_leases(database)
    sweep(sweeper(deps.settings, queue, deps.guard))
    assert status(database) == "unknown"
    dispatch(deps, MANUAL, Plenty())
    assert copies(fake_provider) == {RECIPIENT: 1}


def test_a_delayed_completion_cannot_land_on_a_later_writers_record(
    aws: LocalAwsResources, lossy: LossyProxy, guard: SendGuard
) -> None:
    """W1's outcome was ambiguous; its completion is held and botocore's retry completes the
    record. An operator's resend forgets it, and W2 writes a new record. W1's delayed completion
    lands now: it must not touch W2's record (nor, had it landed in between, recreate one)."""
    key = "so1-" + "c" * 64
    w1_guard = guard_through(lossy, aws)
    delayed_completion = lossy.hold_next("UpdateItem")
    assert w1_guard.deliver_once(key, lambda: SendOutcome.ambiguous("network:read_timeout")).outcome
    completed = guard.lookup(key)
    assert completed.state is RecordState.COMPLETED
    assert guard.forget(key, completed)

    w2_holding = guard.lookup  # read W2's record while its send is in flight
    seen: list[RecordState] = []

    def w2_send() -> SendOutcome:
        delayed_completion.release()
        assert delayed_completion.landed.wait(30)
        seen.append(w2_holding(key).state)
        return SendOutcome.sent("wamid.w2")

    w2 = guard.deliver_once(key, w2_send)
    assert seen == [RecordState.INPROGRESS], "W1's late completion left W2's record alone"
    assert w2.verdict is GuardVerdict.CALLED
    final = guard.lookup(key)
    assert final.outcome is not None and final.outcome.provider_message_id == "wamid.w2"


def test_a_failed_removal_after_a_provably_unsent_outcome_does_not_strand_the_message(
    aws: LocalAwsResources,
    lossy: LossyProxy,
    database: Database,
    queue: QueueRepository,
    deps: DispatchDeps,
    fake_provider: FakeProvider,
) -> None:
    """Issue 6, item 1.6. The provider throttles; every attempt to delete the record fails.
    The record stays INPROGRESS under W1, but Postgres records W1's attempt as provably unsent,
    so the next dispatch releases that record and sends the message once."""
    enqueue_contacts(database, "whatsapp", [RECIPIENT])
    w1_guard = guard_through(lossy, aws)
    w1 = sending(database, queue)
    lossy.refuse("DeleteItem", 3)
    throttled = SendOutcome.retry_later(None, "whatsapp:130429")
    first = w1_guard.deliver_once(w1.idempotency_key, lambda: throttled)
    assert first.verdict is GuardVerdict.CALLED and first.record_unsettled
    assert lossy.refused["DeleteItem"] == 3
    assert queue.settle_pending(w1, delay_seconds=0, outcome=throttled, writer=first.writer)
    assert deps.guard.lookup(w1.idempotency_key).writer == first.writer

    report = dispatch(deps, MANUAL, Plenty())
    assert report.counts["StaleRecordReleased"] == 1
    assert report.counts["Sent"] == 1
    assert status(database) == "sent"
    assert copies(fake_provider) == {RECIPIENT: 1}


def test_a_put_that_lands_after_its_writer_gave_up_does_not_strand_the_message(
    db_url: str,
    aws: LocalAwsResources,
    lossy: LossyProxy,
    database: Database,
    queue: QueueRepository,
    deps: DispatchDeps,
    fake_provider: FakeProvider,
) -> None:
    """The put is held inside "DynamoDB", the retries are refused, so the write fails and the
    row goes back to pending, recorded as not called under W1. The held put then lands and
    leaves an INPROGRESS record nobody will complete. The next dispatch finds W1's proof,
    releases the record and sends once."""
    enqueue_contacts(database, "whatsapp", [RECIPIENT])
    delayed_put = lossy.hold_next("PutItem")
    lossy.refuse("PutItem", 2)
    through_lossy = DispatchDeps(
        settings=make_settings(db_url, aws, fake_provider.url),
        queue=queue,
        guard=guard_through(lossy, aws),
        adapters=deps.adapters,
    )
    first = dispatch(through_lossy, MANUAL, Plenty())
    assert first.stopped_because == "idempotency store unavailable"
    assert status(database) == "pending"
    attempt = database.fetch_one("SELECT outcome, writer FROM send_attempts")
    assert attempt is not None and attempt["outcome"] == NOT_CALLED and attempt["writer"]
    delayed_put.release()
    assert delayed_put.landed.wait(30)
    [row] = database.fetch_all("SELECT idempotency_key FROM send_queue")
    left = deps.guard.lookup(row["idempotency_key"])
    assert (left.state, left.writer) == (RecordState.INPROGRESS, attempt["writer"])

    second = dispatch(deps, MANUAL, Plenty())
    assert second.counts["StaleRecordReleased"] == 1
    assert status(database) == "sent"
    assert copies(fake_provider) == {RECIPIENT: 1}


def test_the_sweeper_releases_a_proven_writers_record_and_requeues(
    aws: LocalAwsResources,
    lossy: LossyProxy,
    database: Database,
    queue: QueueRepository,
    deps: DispatchDeps,
    fake_provider: FakeProvider,
) -> None:
    """W1's throttled call could not remove its record, and W1's settle lost the lease (the
    row was taken over); its attempt is recorded anyway. The sweeper, finding the row's lease
    expired and the record INPROGRESS under a proven writer, releases it and requeues."""
    enqueue_contacts(database, "whatsapp", [RECIPIENT])
    w1 = sending(database, queue)
    lossy.refuse("DeleteItem", 3)
    throttled = SendOutcome.retry_later(None, "whatsapp:130429")
    first = guard_through(lossy, aws).deliver_once(w1.idempotency_key, lambda: throttled)
    stale = w1.model_copy(update={"claim_token": uuid.uuid4()})
    assert not queue.settle_pending(stale, delay_seconds=0, outcome=throttled, writer=first.writer)
    expire_leases(database)
    report = sweep(sweeper(deps.settings, queue, deps.guard))
    assert report.returned_to_pending == 1
    assert deps.guard.lookup(w1.idempotency_key).state is RecordState.ABSENT
    dispatch(deps, MANUAL, Plenty())
    assert copies(fake_provider) == {RECIPIENT: 1}


def test_an_unproven_writers_record_is_never_released(
    aws: LocalAwsResources, database: Database, queue: QueueRepository, deps: DispatchDeps
) -> None:
    """A record whose writer has no proof in Postgres (killed mid-call) blocks the message:
    the sweeper settles it unknown and nothing is released."""
    enqueue_contacts(database, "whatsapp", [RECIPIENT])
    message = sending(database, queue)

    def killed_mid_call() -> SendOutcome:
        raise Killed

    with pytest.raises(Killed):
        deps.guard.deliver_once(message.idempotency_key, killed_mid_call)
    expire_leases(database)
    report = sweep(sweeper(deps.settings, queue, deps.guard))
    assert (report.returned_to_pending, report.marked_unknown) == (0, 1)
    assert deps.guard.lookup(message.idempotency_key).state is RecordState.INPROGRESS


def test_forget_is_conditional_on_the_record_it_was_decided_on(guard: SendGuard) -> None:
    key = "so1-" + "f" * 64
    guard.deliver_once(key, lambda: SendOutcome.ambiguous("network:read_timeout"))
    seen = guard.lookup(key)
    assert guard.forget(key, seen)
    guard.deliver_once(key, lambda: SendOutcome.sent("wamid.later"))
    assert not guard.forget(key, seen), "a later writer's record is not the one decided on"
    assert guard.lookup(key).state is RecordState.COMPLETED
