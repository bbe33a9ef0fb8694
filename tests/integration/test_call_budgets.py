"""Every send-path call ends within its budget, against servers that never trip a per-socket
timeout: a drip server answers one byte every 0.8 s, under every read timeout used here, so a
call ends early only if a wall-clock budget ends it.

Nothing here is timed. Each test asserts what only the budget can produce: an outcome or an
error that names the budget, where without it the dripped answer (``drip_seconds``, at least
40 s) would have arrived whole and the call would have succeeded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.aws import FAKE_CREDENTIALS, LocalAwsResources
from devstack.drip_server import DripServer
from devstack.testing import TEST_TOKENS, enqueue_contacts, make_settings
from shared.bounded_calls import CallBudgetExceededError
from shared.channels.whatsapp.adapter import WhatsAppCloudAdapter
from shared.config import Settings
from shared.dispatch import DispatchDeps, dispatch
from shared.events import DispatchRequest
from shared.idempotency import GuardVerdict, SendGuard
from shared.providers.outcome import Channel, OutboundMessage, OutcomeKind, SendOutcome
from shared.providers.registry import build_adapters, make_http_client
from shared.providers.secrets import StaticTokenSource
from shared.queue import QueueRepository
from shared.runtime import dynamodb_client
from shared.storage.db import Database, DatabaseUnavailableError

pytestmark = pytest.mark.integration

# Per-socket timeouts far above the drip interval (0.8 s), so a busy machine cannot make one
# fire: without a call budget each read succeeds.
PROVIDER_TIMEOUTS: dict[str, Any] = {
    "provider_connect_timeout_seconds": 0.5,
    "provider_read_timeout_seconds": 2.5,
}
DYNAMODB_TIMEOUTS: dict[str, Any] = {
    "dynamodb_connect_timeout_seconds": 0.5,
    "dynamodb_read_timeout_seconds": 2.5,
    "dynamodb_max_attempts": 2,
}
WHATSAPP_ACCEPTED = json.dumps(
    {"messaging_product": "whatsapp", "messages": [{"id": "wamid.drip"}]}, separators=(",", ":")
).encode()


class Plenty:
    def get_remaining_time_in_millis(self) -> int:
        return 10 * 60 * 1000


@pytest.fixture
def whatsapp_drip() -> Iterator[DripServer]:
    with DripServer(WHATSAPP_ACCEPTED) as server:
        assert server.drip_seconds >= 40
        yield server


@pytest.fixture
def dynamodb_drip() -> Iterator[DripServer]:
    with DripServer(b"{}", content_type="application/x-amz-json-1.0") as server:
        assert server.drip_seconds >= 40
        yield server


def whatsapp_message() -> OutboundMessage:
    return OutboundMessage(
        queue_id=1,
        idempotency_key=f"drip-{uuid.uuid4().hex}",
        channel=Channel.WHATSAPP,
        sender_account_id=uuid.uuid4(),
        sender_provider_id="106540352242922",
        recipient="15550100001",
        body="hello",
        message_type="intro",
    )


def call_provider(settings: Settings, message: OutboundMessage) -> SendOutcome:
    client = make_http_client(settings)
    adapter = build_adapters(settings, client, StaticTokenSource(TEST_TOKENS))[Channel.WHATSAPP]
    try:
        return adapter.send(message)
    finally:
        client.close()


def test_provider_call_cut_at_its_budget_is_ambiguous(whatsapp_drip: DripServer) -> None:
    settings = Settings.model_validate({"graph_api_base_url": whatsapp_drip.url, **PROVIDER_TIMEOUTS})
    assert settings.provider_call_budget_seconds == 6.0
    outcome = call_provider(settings, whatsapp_message())
    # The request was written and the provider started answering: it may have sent.
    assert outcome.kind is OutcomeKind.AMBIGUOUS, outcome
    assert outcome.reason == "network:read_timeout"
    assert "budget" in outcome.detail
    assert whatsapp_drip.requests == 1


def test_provider_call_whose_budget_is_spent_before_connecting_is_retry_later(
    whatsapp_drip: DripServer,
) -> None:
    """Nothing was written, so the message provably did not reach the provider."""
    client = make_http_client(Settings())
    adapter = WhatsAppCloudAdapter(
        client, whatsapp_drip.url, lambda: TEST_TOKENS["whatsapp"], "v23.0", call_budget_seconds=0.0
    )
    try:
        outcome = adapter.send(whatsapp_message())
    finally:
        client.close()
    assert outcome.kind is OutcomeKind.RETRY_LATER, outcome
    assert outcome.reason in {"network:connect_timeout", "network:pool_timeout"}
    assert whatsapp_drip.requests == 0


def test_dispatcher_settles_a_call_cut_at_its_budget_unknown(
    database: Database,
    queue: QueueRepository,
    guard: SendGuard,
    db_url: str,
    aws: LocalAwsResources,
    whatsapp_drip: DripServer,
) -> None:
    enqueue_contacts(database, "whatsapp", ["15550100001"])
    settings = make_settings(db_url, aws, whatsapp_drip.url, **PROVIDER_TIMEOUTS)
    client = make_http_client(settings)
    deps = DispatchDeps(
        settings=settings,
        queue=queue,
        guard=guard,
        adapters=build_adapters(settings, client, StaticTokenSource(TEST_TOKENS)),
    )
    try:
        report = dispatch(deps, DispatchRequest(source="sendonce.manual"), Plenty())
    finally:
        client.close()
    row = database.fetch_one("SELECT status::text AS status, failure_reason FROM send_queue")
    assert row == {"status": "unknown", "failure_reason": "network:read_timeout"}
    assert report.counts["Ambiguous"] == 1


@pytest.fixture
def drip_dynamodb(monkeypatch: pytest.MonkeyPatch, dynamodb_drip: DripServer) -> Any:
    """The dispatcher's DynamoDB client, pointed at the drip server by endpoint override."""
    for name, value in {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": dynamodb_drip.url}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.model_validate(DYNAMODB_TIMEOUTS)
    assert settings.dynamodb_call_budget_seconds == 6.0
    return dynamodb_client(settings)


def test_dynamodb_call_cut_at_its_budget(drip_dynamodb: Any, dynamodb_drip: DripServer) -> None:
    with pytest.raises(CallBudgetExceededError, match="GetItem did not finish within its 6s budget"):
        drip_dynamodb.get_item(TableName="sendonce-idempotency", Key={"id": {"S": "any"}})
    assert dynamodb_drip.requests == 1


def test_gate_on_a_dripping_store_calls_no_provider(drip_dynamodb: Any, dynamodb_drip: DripServer) -> None:
    """The INPROGRESS put and its clean-up delete each end at their budget: store
    unavailable, provider not called."""
    guard = SendGuard.for_table("sendonce-idempotency", 3600, boto3_client=drip_dynamodb)
    calls: list[str] = []

    def send() -> SendOutcome:
        calls.append("called")
        return SendOutcome.ambiguous("test:unreachable", "")

    result = guard.deliver_once(f"drip-{uuid.uuid4().hex}", send)
    assert result.verdict is GuardVerdict.STORE_UNAVAILABLE
    assert calls == []
    assert not result.own_record_released


def test_statement_timeout_cancels_a_long_statement(db_url: str) -> None:
    db = Database(db_url, max_size=1, statement_timeout_seconds=1)
    try:
        db.ping()  # the option took effect: the server reports the timeout the margin counts
        with pytest.raises(DatabaseUnavailableError, match="statement timeout"):
            db.fetch_one("SELECT pg_sleep(60)")
    finally:
        db.close()
