"""The DynamoDB gate (Powertools idempotency on moto): one provider call per key."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError

from devstack.aws import FAKE_CREDENTIALS, LocalAwsResources, MotoServer, aws_client
from devstack.lambda_context import LocalLambdaContext
from devstack.lossy_proxy import LossyProxy
from shared.config import Settings
from shared.idempotency import (
    KEY_PREFIX,
    BlockingDynamoDBPersistenceLayer,
    GuardVerdict,
    RecordState,
    SendGuard,
)
from shared.providers.outcome import SendOutcome
from shared.runtime import dynamodb_client

pytestmark = pytest.mark.integration
KEY = "so1-" + "a" * 64


# How long a held send or a waiting test gives up after: a hang guard, never reached when the
# code under test is right, however slow the machine.
HANG_GUARD_SECONDS = 120


class CountingSend:
    """A provider call that counts itself. With ``release`` its first call stays in flight
    (``in_flight`` set) until the test releases it, so a second caller meets it mid-call
    however slowly the threads are scheduled."""

    def __init__(self, outcome: SendOutcome | Exception, release: threading.Event | None = None) -> None:
        self.outcome = outcome
        self.release = release
        self.in_flight = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> SendOutcome:
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        self.in_flight.set()
        if self.release is not None and first:
            self.release.wait(HANG_GUARD_SECONDS)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def racing_verdicts(guard: SendGuard, send: CountingSend, callers: int) -> list[GuardVerdict]:
    """``callers`` threads deliver the same key at once; their verdicts, in finishing order.
    A caller that gets to send holds its call open until every other caller has its verdict,
    so each of them meets the record while the call is in flight, not after it completed."""
    verdicts: list[GuardVerdict] = []
    answered = threading.Condition()

    def send_once_the_others_answered() -> SendOutcome:
        with answered:
            # Two callers that both got to send wait for each other: the hang guard ends the
            # wait and the test fails on the call count, as it must.
            answered.wait_for(lambda: len(verdicts) >= callers - 1, HANG_GUARD_SECONDS)
        return send()

    def caller() -> None:
        verdict = guard.deliver_once(KEY, send_once_the_others_answered).verdict
        with answered:
            verdicts.append(verdict)
            answered.notify_all()

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return verdicts


def test_first_call_sends_and_second_replays_without_calling(guard: SendGuard) -> None:
    send = CountingSend(SendOutcome.sent("wamid.1"))
    first = guard.deliver_once(KEY, send)
    second = guard.deliver_once(KEY, send)
    assert first.verdict is GuardVerdict.CALLED
    assert second.verdict is GuardVerdict.REPLAYED
    assert second.outcome is not None and second.outcome.provider_message_id == "wamid.1"
    assert send.calls == 1
    assert guard.lookup(KEY).state is RecordState.COMPLETED


@pytest.mark.parametrize(
    "outcome",
    [
        SendOutcome.retry_later(None, "whatsapp:130429"),
        SendOutcome.permanent("whatsapp:131026"),
    ],
)
def test_provably_not_sent_outcome_frees_the_key(guard: SendGuard, outcome: SendOutcome) -> None:
    send = CountingSend(outcome)
    assert guard.deliver_once(KEY, send).verdict is GuardVerdict.CALLED
    assert guard.lookup(KEY).state is RecordState.ABSENT
    assert guard.deliver_once(KEY, send).verdict is GuardVerdict.CALLED
    assert send.calls == 2


def test_ambiguous_outcome_blocks_any_resend(guard: SendGuard) -> None:
    send = CountingSend(SendOutcome.ambiguous("network:read_timeout"))
    guard.deliver_once(KEY, send)
    again = guard.deliver_once(KEY, send)
    assert again.verdict is GuardVerdict.REPLAYED
    assert again.outcome is not None and again.outcome.reason == "network:read_timeout"
    assert send.calls == 1


def test_adapter_exception_is_stored_as_ambiguous_not_deleted(guard: SendGuard) -> None:
    """Powertools deletes the record when the function raises; an adapter bug after the
    request went out must not become a licence to resend."""
    send = CountingSend(RuntimeError("bug after the request was written"))
    result = guard.deliver_once(KEY, send)
    assert result.outcome is not None and result.outcome.reason == "adapter:unexpected_error"
    assert guard.deliver_once(KEY, send).verdict is GuardVerdict.REPLAYED
    assert send.calls == 1


def test_concurrent_callers_only_one_calls(guard: SendGuard) -> None:
    send = CountingSend(SendOutcome.sent("wamid.c"))
    verdicts = racing_verdicts(guard, send, callers=6)
    assert send.calls == 1
    assert verdicts.count(GuardVerdict.CALLED) == 1
    assert set(verdicts) <= {GuardVerdict.CALLED, GuardVerdict.IN_PROGRESS, GuardVerdict.REPLAYED}


def _stock_powertools_send(
    table: str, client: Any, context: LocalLambdaContext, send: CountingSend
) -> dict[str, Any] | None:
    """Powertools as documented: the Lambda context registered, stock persistence layer."""
    config = IdempotencyConfig(event_key_jmespath="idempotency_key", expires_after_seconds=3600)
    config.register_lambda_context(context)  # type: ignore[arg-type]
    persistence = DynamoDBPersistenceLayer(table_name=table, boto3_client=client)

    def run(record: dict[str, str]) -> dict[str, Any]:
        return send().model_dump(mode="json")

    guarded = idempotent_function(
        data_keyword_argument="record", config=config, persistence_store=persistence, key_prefix=KEY_PREFIX
    )(run)
    result: dict[str, Any] | None = guarded(record={"idempotency_key": KEY})
    return result


def test_control_stock_powertools_reruns_a_send_that_outlived_its_deadline(
    aws: LocalAwsResources, moto_server: Any
) -> None:
    """The failure this project must not have, demonstrated on stock Powertools: once the
    first invocation's deadline passes, a second caller gets to call the provider again."""
    client = aws_client("dynamodb", moto_server.endpoint)
    release = threading.Event()
    send = CountingSend(SendOutcome.sent("wamid.slow"), release=release)
    short_lived = LocalLambdaContext(timeout_seconds=0.5)
    first = threading.Thread(
        target=_stock_powertools_send, args=(aws.idempotency_table, client, short_lived, send)
    )
    first.start()
    try:
        assert send.in_flight.wait(HANG_GUARD_SECONDS), "the first call never started"
        _wait_until_inprogress_expired(client, aws.idempotency_table)  # it is still sending
        _stock_powertools_send(aws.idempotency_table, client, LocalLambdaContext(), send)
    finally:
        release.set()
        first.join(HANG_GUARD_SECONDS)
    assert send.calls == 2


def _wait_until_inprogress_expired(client: Any, table: str) -> None:
    """Until the first invocation's deadline, as Powertools stored it in the record, is past
    by DynamoDB's own comparison (``in_progress_expiration < now`` in milliseconds)."""
    key = {"id": {"S": f"{KEY_PREFIX}#" + _md5_key()}}
    expires_ms = int(client.get_item(TableName=table, Key=key)["Item"]["in_progress_expiration"]["N"])
    while int(time.time() * 1000) <= expires_ms:
        time.sleep(0.05)


def test_guard_blocks_a_send_that_outlived_its_deadline(aws: LocalAwsResources, moto_server: Any) -> None:
    """Same timeline through SendGuard: the INPROGRESS record carries no deadline, so the
    second caller is refused for the whole dedupe window."""
    client = aws_client("dynamodb", moto_server.endpoint)
    guard = SendGuard.for_table(aws.idempotency_table, 7 * 24 * 3600, boto3_client=client)
    release = threading.Event()
    send = CountingSend(SendOutcome.sent("wamid.slow"), release=release)
    short_lived = LocalLambdaContext(timeout_seconds=0.5)  # the first invocation's deadline
    first = threading.Thread(target=guard.deliver_once, args=(KEY, send))
    first.start()
    try:
        assert send.in_flight.wait(HANG_GUARD_SECONDS), "the first call never started"
        while short_lived.get_remaining_time_in_millis() > 0:
            time.sleep(0.05)
        second = guard.deliver_once(KEY, send)
    finally:
        release.set()
        first.join(HANG_GUARD_SECONDS)
    assert second.verdict is GuardVerdict.IN_PROGRESS
    assert send.calls == 1
    item = client.get_item(TableName=aws.idempotency_table, Key={"id": {"S": f"{KEY_PREFIX}#" + _md5_key()}})
    assert "in_progress_expiration" not in item.get("Item", {})


def _md5_key() -> str:
    import hashlib
    import json

    return hashlib.md5(json.dumps(KEY).encode()).hexdigest()  # noqa: S324 - Powertools' own default


def test_store_unavailable_means_no_call(moto_server: Any) -> None:
    client = aws_client("dynamodb", moto_server.endpoint)
    guard = SendGuard.for_table("no-such-table", 3600, boto3_client=client)
    send = CountingSend(SendOutcome.sent("wamid.never"))
    result = guard.deliver_once(KEY, send)
    assert result.verdict is GuardVerdict.STORE_UNAVAILABLE
    assert send.calls == 0
    assert "ResourceNotFound" in result.error or "table" in result.error.lower()


def test_lookup_raises_rather_than_reporting_absent_when_store_is_down(moto_server: Any) -> None:
    client = aws_client("dynamodb", moto_server.endpoint)
    guard = SendGuard.for_table("no-such-table", 3600, boto3_client=client)
    with pytest.raises(Exception, match=r"(?i)resource|table|not found"):
        guard.lookup(KEY)


def test_in_progress_record_is_reported(guard: SendGuard) -> None:
    release = threading.Event()
    holder = CountingSend(SendOutcome.sent("wamid.h"), release=release)
    t = threading.Thread(target=guard.deliver_once, args=(KEY, holder))
    t.start()
    try:
        assert holder.in_flight.wait(HANG_GUARD_SECONDS), "the call never started"
        assert guard.lookup(KEY).state is RecordState.INPROGRESS
    finally:
        release.set()
        t.join(HANG_GUARD_SECONDS)
    assert guard.lookup(KEY).state is RecordState.COMPLETED


# --- a write whose response is lost ----------------------------------------------------------


@pytest.fixture
def lossy(moto_server: MotoServer) -> Iterator[LossyProxy]:
    with LossyProxy(moto_server.endpoint) as proxy:
        yield proxy


def lossy_client(proxy: LossyProxy) -> Any:
    """Two attempts in all, in standard mode."""
    config = BotoConfig(
        connect_timeout=2, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 2}
    )
    return aws_client("dynamodb", proxy.endpoint, config=config)


def test_put_whose_response_was_lost_is_recognised_on_retry_and_sends_once(
    aws: LocalAwsResources, lossy: LossyProxy, guard: SendGuard
) -> None:
    """The first put commits but its answer is lost; botocore's retry meets that record.
    It carries this call's writer id, so the call goes ahead instead of giving up."""
    lossy.lose_responses("PutItem", 1)
    through_lossy = SendGuard.for_table(aws.idempotency_table, 3600, boto3_client=lossy_client(lossy))
    send = CountingSend(SendOutcome.sent("wamid.lost-answer"))
    result = through_lossy.deliver_once(KEY, send)
    assert (lossy.dropped["PutItem"], lossy.forwarded["PutItem"]) == (1, 1), "the put was retried"
    assert result.verdict is GuardVerdict.CALLED
    assert send.calls == 1
    assert guard.lookup(KEY).state is RecordState.COMPLETED
    assert guard.deliver_once(KEY, send).verdict is GuardVerdict.REPLAYED
    assert send.calls == 1


def test_control_stock_powertools_gives_up_on_its_own_lost_write(
    aws: LocalAwsResources, lossy: LossyProxy
) -> None:
    """Same loss through stock Powertools: the retry meets its own record, takes it for a
    rival's, and the message is never sent (the row would end ``unknown``)."""
    lossy.lose_responses("PutItem", 1)
    persistence = DynamoDBPersistenceLayer(table_name=aws.idempotency_table, boto3_client=lossy_client(lossy))
    config = IdempotencyConfig(event_key_jmespath="idempotency_key", expires_after_seconds=3600)
    send = CountingSend(SendOutcome.sent("wamid.never"))

    def run(record: dict[str, str]) -> dict[str, Any]:
        return send().model_dump(mode="json")

    guarded = idempotent_function(
        data_keyword_argument="record", config=config, persistence_store=persistence, key_prefix=KEY_PREFIX
    )(run)
    with pytest.raises(IdempotencyAlreadyInProgressError):
        guarded(record={"idempotency_key": KEY})
    assert send.calls == 0


def test_failed_write_releases_its_own_record_so_the_next_attempt_sends(
    aws: LocalAwsResources, lossy: LossyProxy, guard: SendGuard
) -> None:
    """Every attempt's answer is lost, so the write fails; the record it left is removed."""
    lossy.lose_responses("PutItem", 2)
    through_lossy = SendGuard.for_table(aws.idempotency_table, 3600, boto3_client=lossy_client(lossy))
    send = CountingSend(SendOutcome.sent("wamid.second-try"))
    result = through_lossy.deliver_once(KEY, send)
    assert result.verdict is GuardVerdict.STORE_UNAVAILABLE
    assert result.own_record_released
    assert send.calls == 0
    assert lossy.dropped["PutItem"] == 2
    assert guard.lookup(KEY).state is RecordState.ABSENT
    assert through_lossy.deliver_once(KEY, send).verdict is GuardVerdict.CALLED
    assert send.calls == 1


def test_failed_write_never_releases_a_rival_record(
    aws: LocalAwsResources, lossy: LossyProxy, guard: SendGuard
) -> None:
    """A rival holds the key (its send may be in flight). Our write fails with lost answers
    (each one a conditional-check failure against the rival's record, so ours never commits);
    the clean-up is conditional on our writer id and must leave the rival's record. The proxy
    cannot lose an answer *before* the write commits, so a retry meeting a rival's record is
    covered by the races in tests/chaos instead."""
    rival_sending = threading.Event()
    finish_rival = threading.Event()

    def rival_send() -> SendOutcome:
        rival_sending.set()
        finish_rival.wait(HANG_GUARD_SECONDS)
        return SendOutcome.sent("wamid.rival")

    rival = threading.Thread(target=guard.deliver_once, args=(KEY, rival_send))
    rival.start()
    try:
        assert rival_sending.wait(HANG_GUARD_SECONDS)
        lossy.lose_responses("PutItem", 2)
        through_lossy = SendGuard.for_table(aws.idempotency_table, 3600, boto3_client=lossy_client(lossy))
        send = CountingSend(SendOutcome.sent("wamid.ours"))
        result = through_lossy.deliver_once(KEY, send)
        assert result.verdict is GuardVerdict.STORE_UNAVAILABLE
        assert not result.own_record_released
        assert send.calls == 0
        assert guard.lookup(KEY).state is RecordState.INPROGRESS
    finally:
        finish_rival.set()
        rival.join(HANG_GUARD_SECONDS)
    assert guard.lookup(KEY).state is RecordState.COMPLETED


def test_release_is_conditional_on_writer_and_status(aws: LocalAwsResources, moto_server: MotoServer) -> None:
    layer = BlockingDynamoDBPersistenceLayer(
        table_name=aws.idempotency_table, boto3_client=aws_client("dynamodb", moto_server.endpoint)
    )
    layer.configure(IdempotencyConfig(event_key_jmespath="idempotency_key"), key_prefix=KEY_PREFIX)
    data = {"idempotency_key": KEY}
    with layer.writing_as("writer-a"):
        layer.save_inprogress(data=data)
    guard = SendGuard(layer, 3600)
    assert not layer.delete_if_held_by(data, "writer-b")
    assert guard.lookup(KEY).state is RecordState.INPROGRESS
    assert layer.delete_if_held_by(data, "writer-a")
    assert guard.lookup(KEY).state is RecordState.ABSENT
    assert not layer.delete_if_held_by(data, "writer-a"), "nothing left to release"

    # A completed record proves a call: even its own writer's clean-up leaves it.
    with layer.writing_as("writer-a"):
        layer.save_inprogress(data=data)
        layer.save_success(data=data, result=SendOutcome.sent("wamid.done").model_dump(mode="json"))
    assert not layer.delete_if_held_by(data, "writer-a")
    assert guard.lookup(KEY).state is RecordState.COMPLETED


def test_writer_is_per_thread_when_puts_interleave(aws: LocalAwsResources, moto_server: MotoServer) -> None:
    """Two calls on one client set their writer ids before either put is built. With a writer
    shared across threads, the loser would take the winner's record for its own and send too."""
    client = aws_client("dynamodb", moto_server.endpoint)
    guard = SendGuard.for_table(aws.idempotency_table, 3600, boto3_client=client)
    both_set = threading.Barrier(2, timeout=HANG_GUARD_SECONDS)

    def hold(**_: Any) -> None:
        both_set.wait()

    client.meta.events.register("provide-client-params.dynamodb.PutItem", hold)
    send = CountingSend(SendOutcome.sent("wamid.once"))
    verdicts = racing_verdicts(guard, send, callers=2)
    assert send.calls == 1, verdicts
    assert sorted(verdicts) == sorted([GuardVerdict.CALLED, GuardVerdict.IN_PROGRESS])


@pytest.mark.parametrize("attempts", [1, 3])
def test_dispatcher_client_makes_at_most_the_attempts_the_budget_counts(
    monkeypatch: pytest.MonkeyPatch, aws: LocalAwsResources, lossy: LossyProxy, attempts: int
) -> None:
    """The stop-claiming margin multiplies each call's timeouts by ``dynamodb_max_attempts``;
    the client must not make more requests than that (botocore's own ``max_attempts`` would
    add one). Answers lost on every attempt use them all."""
    for name, value in {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": lossy.endpoint}.items():
        monkeypatch.setenv(name, value)
    client = dynamodb_client(Settings(dynamodb_max_attempts=attempts))
    lossy.lose_responses("GetItem", 10)
    with pytest.raises(BotoCoreError):
        client.get_item(TableName=aws.idempotency_table, Key={"id": {"S": "any"}})
    assert lossy.dropped["GetItem"] == attempts


def test_dispatcher_client_stamps_the_writer_from_its_helper_thread(
    monkeypatch: pytest.MonkeyPatch, aws: LocalAwsResources, lossy: LossyProxy, guard: SendGuard
) -> None:
    """The dispatcher's client runs each call on a helper thread (its wall-clock budget). The
    writer id must reach the put's hook there, or a retry after a lost answer meets an
    unsigned record, takes it for a rival's, and the message is not sent."""
    for name, value in {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": lossy.endpoint}.items():
        monkeypatch.setenv(name, value)
    lossy.lose_responses("PutItem", 1)
    bounded = SendGuard.for_table(
        aws.idempotency_table, 3600, boto3_client=dynamodb_client(Settings(dynamodb_max_attempts=2))
    )
    send = CountingSend(SendOutcome.sent("wamid.lost-answer"))
    result = bounded.deliver_once(KEY, send)
    assert (lossy.dropped["PutItem"], lossy.forwarded["PutItem"]) == (1, 1), "the put was retried"
    assert result.verdict is GuardVerdict.CALLED
    assert send.calls == 1
