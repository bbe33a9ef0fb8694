"""What the adapters put on the wire, the HTTP client they share, and where tokens never go."""

from __future__ import annotations

import copy
import json
import logging
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import httpx
import pytest
from aws_lambda_powertools.utilities import parameters

from shared.channels.messenger.adapter import MessengerSendAdapter
from shared.channels.unipile.adapter import UnipileLinkedInAdapter
from shared.channels.whatsapp.adapter import WhatsAppCloudAdapter
from shared.config import Settings
from shared.providers.http import PausePolicy, exception_outcome
from shared.providers.outcome import Channel, OutboundMessage, OutcomeKind, SendOutcome
from shared.providers.registry import build_adapters, build_read_backs, make_http_client
from shared.providers.secrets import StaticTokenSource, TokenSource, TokenUnavailableError

SPEC = Path("/work/shared/reference/whatsapp-cloud-api-openapi-v23.0.yaml")
TOKENS = {
    "whatsapp": "wa-token-SECRET-123",
    "messenger": "page-token-SECRET-456",
    "linkedin": "unipile-key-SECRET-789",
}
SETTINGS = Settings(
    graph_api_base_url="https://graph.test/",
    graph_api_version="v23.0",
    unipile_base_url="https://api9.unipile.test:13999",
    provider_connect_timeout_seconds=2.5,
    provider_read_timeout_seconds=7.5,
    send_concurrency=12,
)


def message(channel: Channel, body: str = "Hi Ana, your order shipped") -> OutboundMessage:
    return OutboundMessage(
        queue_id=42,
        idempotency_key="idem-5f1c2a7e9b3d4c6a",
        channel=channel,
        sender_account_id=uuid.uuid4(),
        sender_provider_id={
            Channel.WHATSAPP: "106540352242922",
            Channel.MESSENGER: "1234567890",
            Channel.LINKEDIN: "unipile-account-1",
        }[channel],
        recipient={
            Channel.WHATSAPP: "15550100001",
            Channel.MESSENGER: "6543210987654321",
            Channel.LINKEDIN: "ACoAAB1234567",
        }[channel],
        body=body,
        message_type="intro",
    )


class Recorder:
    """A MockTransport that keeps every request and answers like the provider would."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.startswith("/api/v1/chats"):
            return httpx.Response(201, json={"object": "ChatStarted", "chat_id": "c1", "message_id": "m1"})
        if b"messaging_product" in request.content:
            return httpx.Response(200, json={"messages": [{"id": "wamid.A"}]})
        return httpx.Response(200, json={"recipient_id": "r", "message_id": "m_A"})


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def adapters(recorder: Recorder) -> dict[Channel, Any]:
    client = make_http_client(SETTINGS, transport=httpx.MockTransport(recorder))
    return dict(build_adapters(SETTINGS, client, StaticTokenSource(TOKENS)))


def test_whatsapp_request(adapters: dict[Channel, Any], recorder: Recorder) -> None:
    outcome = adapters[Channel.WHATSAPP].send(message(Channel.WHATSAPP))
    assert outcome.kind is OutcomeKind.SENT
    [request] = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == "https://graph.test/v23.0/106540352242922/messages"
    assert request.headers["authorization"] == "Bearer wa-token-SECRET-123"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15550100001",
        "type": "text",
        "text": {"body": "Hi Ana, your order shipped"},
        "biz_opaque_callback_data": "idem-5f1c2a7e9b3d4c6a",
    }


def test_messenger_request(adapters: dict[Channel, Any], recorder: Recorder) -> None:
    outcome = adapters[Channel.MESSENGER].send(message(Channel.MESSENGER))
    assert (outcome.kind, outcome.provider_message_id) == (OutcomeKind.SENT, "m_A")
    [request] = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == "https://graph.test/v23.0/1234567890/messages"
    assert request.headers["authorization"] == "Bearer page-token-SECRET-456"
    assert json.loads(request.content) == {
        "recipient": {"id": "6543210987654321"},
        "messaging_type": "UPDATE",
        "message": {"text": "Hi Ana, your order shipped", "metadata": "idem-5f1c2a7e9b3d4c6a"},
    }


def test_unipile_request_is_multipart(adapters: dict[Channel, Any], recorder: Recorder) -> None:
    outcome = adapters[Channel.LINKEDIN].send(message(Channel.LINKEDIN, body="Ça va? ✓"))
    assert (outcome.kind, outcome.provider_message_id, outcome.provider_thread_id) == (
        OutcomeKind.SENT,
        "m1",
        "c1",
    )
    [request] = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == "https://api9.unipile.test:13999/api/v1/chats"
    assert request.headers["x-api-key"] == "unipile-key-SECRET-789"
    assert "authorization" not in request.headers
    content_type = request.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    parsed = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.content
    )
    fields: dict[str, str] = {}
    for part in parsed.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        fields[str(part.get_param("name", header="content-disposition"))] = payload.decode()
    assert fields == {
        "account_id": "unipile-account-1",
        "text": "Ça va? ✓",
        "attendees_ids": "ACoAAB1234567",
    }


def test_http_client_has_explicit_timeouts_and_limits() -> None:
    client = make_http_client(SETTINGS)
    try:
        assert client.timeout == httpx.Timeout(connect=2.5, read=7.5, write=7.5, pool=2.5)
        total = client.timeout.connect + client.timeout.read + client.timeout.write + client.timeout.pool  # type: ignore[operator]
        assert total == SETTINGS.provider_call_budget_seconds
        assert client.follow_redirects is False
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert pool._max_connections >= SETTINGS.send_concurrency
    finally:
        client.close()


def test_registry_builds_one_adapter_per_channel() -> None:
    client = make_http_client(SETTINGS)
    try:
        adapters = build_adapters(SETTINGS, client, StaticTokenSource(TOKENS), pauses=PausePolicy())
        assert {channel: type(a) for channel, a in adapters.items()} == {
            Channel.WHATSAPP: WhatsAppCloudAdapter,
            Channel.MESSENGER: MessengerSendAdapter,
            Channel.LINKEDIN: UnipileLinkedInAdapter,
        }
        assert all(adapter.channel is channel for channel, adapter in adapters.items())
        assert set(build_read_backs(SETTINGS, client, StaticTokenSource(TOKENS))) == {Channel.LINKEDIN}
    finally:
        client.close()


# --- Tokens never leak ---------------------------------------------------------------------------


def test_tokens_are_not_in_any_repr(adapters: dict[Channel, Any]) -> None:
    shown = " ".join(
        [repr(StaticTokenSource(TOKENS)), repr(TokenSource(SETTINGS)), *(repr(a) for a in adapters.values())]
    )
    for token in TOKENS.values():
        assert token not in shown


def test_a_provider_echoing_the_token_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("authorization", "") + request.headers.get("x-api-key", "")
        if request.url.path.startswith("/api/v1/chats"):
            body = {
                "status": 422,
                "type": "errors/no_connection_with_recipient",
                "detail": f"bad key {token}",
            }
            return httpx.Response(422, json=body)
        # Documented refusals for this message: 100 on WhatsApp, 551 on Messenger.
        code = 100 if b"messaging_product" in request.content else 551
        return httpx.Response(400, json={"error": {"code": code, "message": f"invalid token {token}"}})

    client = make_http_client(SETTINGS, transport=httpx.MockTransport(echo))
    adapters = build_adapters(SETTINGS, client, StaticTokenSource(TOKENS))
    with caplog.at_level(logging.DEBUG):
        outcomes = [adapter.send(message(channel)) for channel, adapter in adapters.items()]
    dumped = " ".join(o.model_dump_json() for o in outcomes) + caplog.text
    assert all(o.kind is OutcomeKind.PERMANENT for o in outcomes)
    assert "[redacted]" in dumped
    for token in TOKENS.values():
        assert token not in dumped


def test_tokens_are_not_logged_on_failures(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    def explode(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"transport bug near {request.url}")

    client = make_http_client(SETTINGS, transport=httpx.MockTransport(explode))
    adapters = build_adapters(SETTINGS, client, StaticTokenSource(TOKENS))
    with caplog.at_level(logging.DEBUG):
        outcomes = [adapter.send(message(channel)) for channel, adapter in adapters.items()]
    captured = capsys.readouterr()
    seen = caplog.text + captured.out + captured.err + " ".join(o.model_dump_json() for o in outcomes)
    assert all(o.kind is OutcomeKind.AMBIGUOUS for o in outcomes)
    for token in TOKENS.values():
        assert token not in seen


def test_network_outcome_detail_carries_no_headers() -> None:
    request = httpx.Request(
        "POST", "https://graph.test/x", headers={"Authorization": "Bearer wa-token-SECRET-123"}
    )
    outcome = exception_outcome(httpx.ReadTimeout("timed out", request=request))
    assert "SECRET" not in outcome.model_dump_json()


# --- Secrets -------------------------------------------------------------------------------------


def test_token_source_reads_each_channel_through_powertools(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int | None]] = []
    values: dict[str, object] = {
        "sendonce/whatsapp-token": " wa-token-SECRET-123\n",
        "sendonce/messenger-page-token": b"page-token-SECRET-456",
        "sendonce/unipile-api-key": "unipile-key-SECRET-789",
    }

    def fake_get_secret(name: str, max_age: int | None = None, **_: object) -> object:
        calls.append((name, max_age))
        return values[name]

    monkeypatch.setattr(parameters, "get_secret", fake_get_secret)
    source = TokenSource(Settings(secret_cache_seconds=123))
    assert source.whatsapp() == "wa-token-SECRET-123"
    assert source.messenger() == "page-token-SECRET-456"
    assert source.unipile() == "unipile-key-SECRET-789"
    assert source.token_for(Channel.LINKEDIN) == "unipile-key-SECRET-789"
    assert calls[:3] == [
        ("sendonce/whatsapp-token", 123),
        ("sendonce/messenger-page-token", 123),
        ("sendonce/unipile-api-key", 123),
    ]


def test_token_source_failures_name_the_secret_not_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(name: str, max_age: int | None = None, **_: object) -> object:
        raise RuntimeError("AccessDeniedException")

    monkeypatch.setattr(parameters, "get_secret", failing)
    with pytest.raises(TokenUnavailableError, match="sendonce/whatsapp-token"):
        TokenSource(SETTINGS).token_for(Channel.WHATSAPP)

    monkeypatch.setattr(parameters, "get_secret", lambda name, max_age=None: "   ")
    with pytest.raises(TokenUnavailableError, match="holds no token"):
        TokenSource(SETTINGS).token_for(Channel.MESSENGER)


def test_static_token_source() -> None:
    source = StaticTokenSource({Channel.WHATSAPP: "a-token", "messenger": "b-token"})
    assert source.token_for(Channel.WHATSAPP) == "a-token"
    assert source.token_for(Channel.MESSENGER) == "b-token"
    with pytest.raises(TokenUnavailableError):
        source.token_for(Channel.LINKEDIN)


# --- The WhatsApp request against Meta's published OpenAPI spec -----------------------------------


def _patched_message_schema() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("jsonschema")
    if not SPEC.exists():
        pytest.skip("the WhatsApp OpenAPI spec is not available")
    with SPEC.open() as handle:
        spec = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    components = copy.deepcopy(spec["components"])
    # providers.md: TextMessage's second allOf branch sets additionalProperties: false, which
    # rejects the base properties (messaging_product, to, ...) of every correct text message.
    components["schemas"]["TextMessage"]["allOf"][1].pop("additionalProperties")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "components": components}


def test_whatsapp_request_matches_the_openapi_spec(adapters: dict[Channel, Any], recorder: Recorder) -> None:
    root = _patched_message_schema()
    jsonschema = pytest.importorskip("jsonschema")
    adapters[Channel.WHATSAPP].send(message(Channel.WHATSAPP))
    body = json.loads(recorder.requests[0].content)
    validator = jsonschema.Draft202012Validator({**root, "$ref": "#/components/schemas/Message"})
    assert list(validator.iter_errors(body)) == []
    # The patch is narrow: the spec still rejects a text message without a text object.
    assert list(validator.iter_errors({k: v for k, v in body.items() if k != "text"}))


@pytest.mark.parametrize("channel", list(Channel))
def test_the_before_call_hook_runs_last_and_its_refusal_makes_no_request(
    adapters: dict[Channel, Any], recorder: Recorder, channel: Channel
) -> None:
    refused = SendOutcome.retry_later(None, "sendonce:no_call_slot")
    outcome = adapters[channel].send(message(channel), before_call=lambda: refused)
    assert outcome is refused
    assert recorder.requests == []

    seen_before_call: list[int] = []
    outcome = adapters[channel].send(
        message(channel), before_call=lambda: seen_before_call.append(len(recorder.requests))
    )
    assert outcome.kind is OutcomeKind.SENT
    assert seen_before_call == [0] and len(recorder.requests) == 1
