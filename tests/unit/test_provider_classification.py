"""Every documented provider error, HTTP status and network failure maps to its outcome.

Responses go through ``httpx.MockTransport``, so the real adapter code (request building,
sending, parsing, classification) runs; only the socket is replaced. The tables here are
transcribed from providers.md, not from the adapters.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from shared.providers.http import HttpAdapter, PausePolicy
from shared.providers.messenger import MessengerSendAdapter
from shared.providers.outcome import Channel, OutboundMessage, OutcomeKind, SendOutcome
from shared.providers.unipile import UnipileLinkedInAdapter
from shared.providers.whatsapp import WhatsAppCloudAdapter

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
PAUSES = PausePolicy()
TOKENS = {
    Channel.WHATSAPP: "wa-token-SECRET-123",
    Channel.MESSENGER: "page-token-SECRET-456",
    Channel.LINKEDIN: "unipile-key-SECRET-789",
}

Handler = Callable[[httpx.Request], httpx.Response]


def make_adapter(channel: Channel, handler: Handler, token: Callable[[], str] | None = None) -> HttpAdapter:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    get_token = token or (lambda: TOKENS[channel])
    if channel is Channel.WHATSAPP:
        return WhatsAppCloudAdapter(client, "https://graph.test", get_token, "v23.0", clock=lambda: NOW)
    if channel is Channel.MESSENGER:
        return MessengerSendAdapter(client, "https://graph.test", get_token, "v23.0", clock=lambda: NOW)
    return UnipileLinkedInAdapter(client, "https://unipile.test", get_token, clock=lambda: NOW)


def message(channel: Channel) -> OutboundMessage:
    return OutboundMessage(
        queue_id=7,
        idempotency_key="key-0123456789abcdef",
        channel=channel,
        sender_account_id=uuid.uuid4(),
        sender_provider_id="sender-1",
        recipient="15550001111" if channel is Channel.WHATSAPP else "recipient-1",
        body="Hello there",
        message_type="intro",
    )


def send_with(
    channel: Channel, status: int, body: object | None = None, headers: dict[str, str] | None = None
) -> SendOutcome:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers=headers)
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return make_adapter(channel, handler).send(message(channel))


def graph_error(code: int, subcode: int | None = None, message: str = "boom") -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": f"(#{code}) {message}",
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": "details here"},
        "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam",
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


def unipile_error(status: int, kind: str, *, v2: bool = True) -> dict[str, Any]:
    if v2:
        return {"status": status, "type": f"errors/{kind}", "title": "Problem", "detail": "explained"}
    return {
        "title": "Problem",
        "detail": "explained",
        "instance": "/api/v1/chats",
        "type": kind,
        "status": status,
    }


R = OutcomeKind.RETRY_LATER
B = OutcomeKind.SENDER_BLOCKED
P = OutcomeKind.PERMANENT
A = OutcomeKind.AMBIGUOUS

# --- WhatsApp Cloud API (providers.md) ------------------------------------------------------

WHATSAPP_CASES = [
    # retry later (not sent); 130429 arrives as HTTP 400
    (130429, 400, R),
    (131056, 400, R),
    (80007, 400, R),
    (4, 400, R),
    (17, 400, R),
    (131057, 400, R),
    # stop the sender
    (131048, 400, B),
    (368, 400, B),
    (131031, 400, B),
    (190, 401, B),
    (190, 400, B),
    # permanent for this message
    (131026, 400, P),
    (131047, 400, P),
    (131051, 400, P),
    (132000, 400, P),
    (132001, 400, P),
    (132005, 400, P),
    (132012, 400, P),
    (132015, 400, P),
    (132999, 400, P),
    (100, 400, P),
    # ambiguous
    (131000, 400, A),
    (131000, 500, A),
    (131016, 503, A),
    (131016, 400, A),
]


@pytest.mark.parametrize(("code", "status", "kind"), WHATSAPP_CASES)
def test_whatsapp_graph_error_codes(code: int, status: int, kind: OutcomeKind) -> None:
    outcome = send_with(Channel.WHATSAPP, status, graph_error(code))
    assert outcome.kind is kind
    assert outcome.reason == f"whatsapp:{code}"
    assert outcome.http_status == status
    assert f"(#{code})" in outcome.detail
    assert outcome.provably_not_sent is (kind is not A)


@pytest.mark.parametrize(
    ("code", "pause"),
    [
        (131048, PAUSES.throttle),
        (368, PAUSES.policy),
        (131031, PAUSES.policy),
        (190, PAUSES.credentials),
    ],
)
def test_whatsapp_sender_pauses(code: int, pause: timedelta) -> None:
    outcome = send_with(Channel.WHATSAPP, 400, graph_error(code))
    assert outcome.blocked_until == NOW + pause


def test_whatsapp_pair_rate_limit_backs_off() -> None:
    outcome = send_with(Channel.WHATSAPP, 400, graph_error(131056))
    assert outcome.retry_after_seconds is not None and outcome.retry_after_seconds >= 6


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
@pytest.mark.parametrize("channel", list(Channel))
def test_any_5xx_is_ambiguous_with_or_without_a_body(channel: Channel, status: int) -> None:
    assert send_with(channel, status).kind is A
    assert send_with(channel, status, "<html>bad gateway</html>").kind is A


def test_whatsapp_5xx_with_a_not_sent_code_is_still_ambiguous() -> None:
    # A 5xx does not prove the request was rejected before processing.
    outcome = send_with(Channel.WHATSAPP, 500, graph_error(130429))
    assert outcome.kind is A
    assert outcome.reason == "whatsapp:130429"


def test_whatsapp_unknown_4xx_code_is_permanent_with_its_code() -> None:
    outcome = send_with(Channel.WHATSAPP, 400, graph_error(999_001))
    assert (outcome.kind, outcome.reason) == (P, "whatsapp:999001")


@pytest.mark.parametrize("channel", [Channel.WHATSAPP, Channel.MESSENGER])
def test_graph_http_429_retries_and_honours_retry_after(channel: Channel) -> None:
    outcome = send_with(channel, 429, headers={"Retry-After": "17"})
    assert outcome.kind is R
    assert outcome.retry_after_seconds == 17
    with_unknown_code = send_with(channel, 429, graph_error(424242), headers={"Retry-After": "3"})
    assert (with_unknown_code.kind, with_unknown_code.retry_after_seconds) == (R, 3)


def test_retry_after_http_date_is_honoured() -> None:
    when = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    outcome = send_with(Channel.WHATSAPP, 400, graph_error(130429), headers={"Retry-After": when})
    assert outcome.retry_after_seconds == 90


def test_retry_after_wins_over_the_default_hint() -> None:
    outcome = send_with(Channel.MESSENGER, 400, graph_error(613), headers={"Retry-After": "2"})
    assert outcome.retry_after_seconds == 2


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, P), (404, P), (401, B), (403, B), (408, A), (429, R)],
)
def test_graph_4xx_without_an_error_body(status: int, kind: OutcomeKind) -> None:
    outcome = send_with(Channel.WHATSAPP, status, "not json")
    assert outcome.kind is kind
    assert outcome.reason == f"whatsapp:http_{status}"


@pytest.mark.parametrize("status", [301, 302, 307])
def test_redirect_is_ambiguous(status: int) -> None:
    assert send_with(Channel.WHATSAPP, status, headers={"Location": "https://elsewhere.test"}).kind is A


# --- Messenger Send API ---------------------------------------------------------------------

MESSENGER_CASES = [
    (613, None, R),
    (4, None, R),
    (2, None, A),
    (10, 2018278, P),
    (10, None, P),
    (551, 1545041, P),
    (190, None, B),
    (190, 460, B),
]


@pytest.mark.parametrize(("code", "subcode", "kind"), MESSENGER_CASES)
def test_messenger_graph_error_codes(code: int, subcode: int | None, kind: OutcomeKind) -> None:
    outcome = send_with(Channel.MESSENGER, 400, graph_error(code, subcode))
    assert outcome.kind is kind
    assert outcome.reason == f"messenger:{code}"
    if subcode is not None:
        assert str(subcode) in outcome.detail


def test_messenger_token_pause() -> None:
    outcome = send_with(Channel.MESSENGER, 400, graph_error(190))
    assert outcome.blocked_until == NOW + PAUSES.credentials


def test_messenger_unexpected_error_on_500_is_ambiguous() -> None:
    body = graph_error(2, message="An unexpected error has occurred.")
    body["error"]["is_transient"] = True
    assert send_with(Channel.MESSENGER, 500, body).kind is A


# --- Unipile -------------------------------------------------------------------------------

UNIPILE_CASES = [
    (429, "too_many_requests", R),
    (422, "no_connection_with_recipient", P),
    (422, "not_allowed_inmail", P),
    (422, "blocked_recipient", P),
    (422, "user_unreachable", P),
    (422, "cannot_resend_yet", P),
    (422, "action_already_performed", P),
    (422, "limit_exceeded", B),
    (422, "insufficient_credits", B),
    (401, "disconnected_account", B),
    (403, "account_restricted", B),
    (500, "unexpected_error", A),
    (500, "provider_error", A),
    (503, "network_down", A),
    (503, "service_unavailable", A),
    (504, "request_timeout", A),
    (408, "request_timeout", A),
]


@pytest.mark.parametrize("v2", [True, False], ids=["rfc7807", "v1"])
@pytest.mark.parametrize(("status", "kind_name", "kind"), UNIPILE_CASES)
def test_unipile_error_types(status: int, kind_name: str, kind: OutcomeKind, v2: bool) -> None:
    outcome = send_with(Channel.LINKEDIN, status, unipile_error(status, kind_name, v2=v2))
    assert outcome.kind is kind
    assert outcome.reason == f"unipile:{kind_name}"
    assert outcome.http_status == status


@pytest.mark.parametrize(
    ("kind_name", "pause"),
    [
        ("limit_exceeded", PAUSES.quota),
        ("insufficient_credits", PAUSES.quota),
        ("disconnected_account", PAUSES.credentials),
        ("account_restricted", PAUSES.policy),
    ],
)
def test_unipile_sender_pauses(kind_name: str, pause: timedelta) -> None:
    status = {"disconnected_account": 401, "account_restricted": 403}.get(kind_name, 422)
    outcome = send_with(Channel.LINKEDIN, status, unipile_error(status, kind_name))
    assert outcome.blocked_until == NOW + pause


def test_unipile_429_backs_off_long_unless_told_otherwise() -> None:
    default = send_with(Channel.LINKEDIN, 429, unipile_error(429, "too_many_requests"))
    assert default.retry_after_seconds is not None and default.retry_after_seconds >= 60
    told = send_with(
        Channel.LINKEDIN, 429, unipile_error(429, "too_many_requests"), headers={"Retry-After": "5"}
    )
    assert told.retry_after_seconds == 5
    bare = send_with(Channel.LINKEDIN, 429)
    assert (bare.kind, bare.reason) == (R, "unipile:http_429")


@pytest.mark.parametrize(
    ("status", "body", "kind", "reason"),
    [
        (422, unipile_error(422, "some_new_type"), P, "unipile:some_new_type"),
        (400, unipile_error(400, "invalid_parameters"), P, "unipile:invalid_parameters"),
        (401, unipile_error(401, "missing_credentials"), B, "unipile:missing_credentials"),
        (403, unipile_error(403, "feature_not_subscribed"), B, "unipile:feature_not_subscribed"),
        (404, None, P, "unipile:http_404"),
        (408, None, A, "unipile:http_408"),
        (502, None, A, "unipile:http_502"),
    ],
)
def test_unipile_other_statuses(status: int, body: object, kind: OutcomeKind, reason: str) -> None:
    outcome = send_with(Channel.LINKEDIN, status, body)
    assert (outcome.kind, outcome.reason) == (kind, reason)


# --- Success bodies ----------------------------------------------------------------------------


def test_success_bodies() -> None:
    whatsapp = send_with(
        Channel.WHATSAPP,
        200,
        {
            "messaging_product": "whatsapp",
            "contacts": [{"input": "15550001111", "wa_id": "15550001111"}],
            "messages": [{"id": "wamid.HBgLMTY1", "message_status": "accepted"}],
        },
    )
    assert (whatsapp.kind, whatsapp.provider_message_id, whatsapp.http_status) == (
        OutcomeKind.SENT,
        "wamid.HBgLMTY1",
        200,
    )
    held = send_with(
        Channel.WHATSAPP,
        200,
        {"messages": [{"id": "wamid.X", "message_status": "held_for_quality_assessment"}]},
    )
    assert (held.kind, held.provider_message_id) == (OutcomeKind.SENT, "wamid.X")
    messenger = send_with(Channel.MESSENGER, 200, {"recipient_id": "recipient-1", "message_id": "m_abc"})
    assert (messenger.kind, messenger.provider_message_id) == (OutcomeKind.SENT, "m_abc")
    unipile = send_with(
        Channel.LINKEDIN, 201, {"object": "ChatStarted", "chat_id": "chat-1", "message_id": "msg-1"}
    )
    assert (unipile.kind, unipile.provider_message_id, unipile.provider_thread_id, unipile.http_status) == (
        OutcomeKind.SENT,
        "msg-1",
        "chat-1",
        201,
    )


@pytest.mark.parametrize(
    ("channel", "body"),
    [
        (Channel.WHATSAPP, {"messaging_product": "whatsapp", "messages": []}),
        (Channel.WHATSAPP, "not json at all"),
        (Channel.WHATSAPP, [1, 2, 3]),
        (Channel.MESSENGER, {"recipient_id": "x"}),
        (Channel.MESSENGER, None),
        (Channel.LINKEDIN, {"object": "ChatStarted"}),
    ],
)
def test_a_2xx_without_a_message_id_is_ambiguous(channel: Channel, body: object) -> None:
    outcome = send_with(channel, 200, body)
    assert outcome.kind is A
    assert outcome.reason.endswith(":accepted_without_message_id")


def test_unipile_2xx_without_message_id_keeps_the_chat_for_read_back() -> None:
    outcome = send_with(
        Channel.LINKEDIN, 201, {"object": "ChatStarted", "chat_id": "chat-9", "message_id": None}
    )
    assert (outcome.kind, outcome.provider_thread_id) == (A, "chat-9")


# --- Network failures --------------------------------------------------------------------------

NETWORK_CASES: list[tuple[type[Exception], OutcomeKind, str]] = [
    (httpx.ConnectError, R, "network:connect_error"),
    (httpx.ConnectTimeout, R, "network:connect_timeout"),
    (httpx.PoolTimeout, R, "network:pool_timeout"),
    (httpx.WriteTimeout, A, "network:write_timeout"),
    (httpx.ReadTimeout, A, "network:read_timeout"),
    (httpx.ReadError, A, "network:read_error"),
    (httpx.WriteError, A, "network:write_error"),
    (httpx.RemoteProtocolError, A, "network:remote_protocol_error"),
    (httpx.ProxyError, A, "network:transport_error"),
    (RuntimeError, A, "network:unexpected_error"),
    (ValueError, A, "network:unexpected_error"),
]


@pytest.mark.parametrize(("exc_type", "kind", "reason"), NETWORK_CASES)
@pytest.mark.parametrize("channel", list(Channel))
def test_network_exceptions(
    channel: Channel, exc_type: type[Exception], kind: OutcomeKind, reason: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if issubclass(exc_type, httpx.RequestError):
            raise exc_type("simulated", request=request)
        raise exc_type("simulated")

    outcome = make_adapter(channel, handler).send(message(channel))
    assert (outcome.kind, outcome.reason) == (kind, reason)
    assert outcome.retry_after_seconds is None


@pytest.mark.parametrize("channel", list(Channel))
def test_unreadable_token_is_retry_later_and_nothing_is_sent(channel: Channel) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200)

    def failing_token() -> str:
        raise RuntimeError("Secrets Manager throttled")

    for token in (failing_token, lambda: "", lambda: "has a\nnewline"):
        outcome = make_adapter(channel, handler, token).send(message(channel))
        assert (outcome.kind, outcome.reason) == (R, "secrets:token_unavailable")
    assert calls == []


@pytest.mark.parametrize("channel", list(Channel))
def test_send_never_raises_on_odd_responses(channel: Channel) -> None:
    odd: list[httpx.Response] = [
        httpx.Response(200, content=b"\xff\xfe\x00"),
        httpx.Response(400, json={"error": "string instead of object"}),
        httpx.Response(400, json={"error": {"code": "not-a-number"}}),
        httpx.Response(422, json={"type": 42}),
        httpx.Response(100),
        httpx.Response(418, json=[]),
    ]
    for response in odd:
        outcome = make_adapter(channel, lambda request, r=response: r).send(message(channel))  # type: ignore[misc]
        assert isinstance(outcome, SendOutcome)
