"""Every documented provider error, HTTP status and network failure maps to its outcome.

Responses go through ``httpx.MockTransport``, so the real adapter code (request building,
sending, parsing, classification) runs; only the socket is replaced. The tables here are
transcribed from providers.md and the providers' error documentation (the URLs the adapters'
tables cite), not from the adapters. The one rule checked against the adapters' own tables is
the converse: every code they do not list as provably-not-sent is ambiguous.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from shared.channels.messenger.adapter import MessengerSendAdapter
from shared.channels.messenger.errors import MESSENGER_ERROR_RULES
from shared.channels.unipile.adapter import UnipileLinkedInAdapter
from shared.channels.unipile.errors import UNIPILE_ERROR_RULES, error_type
from shared.channels.whatsapp.adapter import WhatsAppCloudAdapter
from shared.channels.whatsapp.errors import WHATSAPP_ERROR_RULES
from shared.providers.http import HttpAdapter, PausePolicy, Rule
from shared.providers.outcome import PROVABLY_NOT_SENT, Channel, OutboundMessage, OutcomeKind, SendOutcome

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
    (132007, 400, P),
    (132012, 400, P),
    (132015, 400, P),
    (132016, 400, P),
    (100, 400, P),
    # ambiguous
    (131000, 400, A),
    (131000, 500, A),
    (131016, 503, A),
    (131016, 400, A),
    # Meta's "API Unknown: invalid request or possible server error"
    (1, 400, A),
    (2, 400, A),
    # inside the template range, but not a documented template error
    (132999, 400, A),
    (132100, 400, A),
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


@pytest.mark.parametrize("channel", [Channel.WHATSAPP, Channel.MESSENGER])
def test_graph_unknown_4xx_code_is_ambiguous_with_its_code(channel: Channel) -> None:
    outcome = send_with(channel, 400, graph_error(999_001))
    assert (outcome.kind, outcome.reason, outcome.http_status) == (A, f"{channel.value}:999001", 400)
    assert not outcome.provably_not_sent
    assert "(#999001)" in outcome.detail


@pytest.mark.parametrize(("channel", "code"), [(Channel.WHATSAPP, 4), (Channel.MESSENGER, 613)])
def test_graph_http_429_retries_only_with_a_documented_code(channel: Channel, code: int) -> None:
    documented = send_with(channel, 429, graph_error(code), headers={"Retry-After": "17"})
    assert (documented.kind, documented.retry_after_seconds) == (R, 17)
    # A bare 429 or an unlisted code proves nothing about what happened to the request.
    bare = send_with(channel, 429, headers={"Retry-After": "17"})
    assert (bare.kind, bare.reason, bare.retry_after_seconds) == (A, f"{channel.value}:http_429", None)
    with_unknown_code = send_with(channel, 429, graph_error(424242), headers={"Retry-After": "3"})
    assert (with_unknown_code.kind, with_unknown_code.reason) == (A, f"{channel.value}:424242")


def test_retry_after_http_date_is_honoured() -> None:
    when = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    outcome = send_with(Channel.WHATSAPP, 400, graph_error(130429), headers={"Retry-After": when})
    assert outcome.retry_after_seconds == 90


def test_retry_after_wins_over_the_default_hint() -> None:
    outcome = send_with(Channel.MESSENGER, 400, graph_error(613), headers={"Retry-After": "2"})
    assert outcome.retry_after_seconds == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 409, 422, 429])
@pytest.mark.parametrize("channel", [Channel.WHATSAPP, Channel.MESSENGER])
def test_graph_4xx_without_an_error_body_is_ambiguous(channel: Channel, status: int) -> None:
    for body in ("not json", None, {"error": {"message": "no code"}}, {"error": "a string"}):
        outcome = send_with(channel, status, body)
        assert (outcome.kind, outcome.reason, outcome.http_status) == (
            A,
            f"{channel.value}:http_{status}",
            status,
        )


@pytest.mark.parametrize("status", [301, 302, 307])
def test_redirect_is_ambiguous(status: int) -> None:
    assert send_with(Channel.WHATSAPP, status, headers={"Location": "https://elsewhere.test"}).kind is A


# --- Messenger Send API ---------------------------------------------------------------------

MESSENGER_CASES = [
    (613, None, R),
    (4, None, R),
    (17, None, R),
    (32, None, R),
    (2, None, A),
    (1, None, A),
    (10, 2018278, P),
    (10, None, P),
    (551, 1545041, P),
    (190, None, B),
    (190, 460, B),
    (230, None, B),
    (368, None, B),
    # not found in the Messenger docs as a rejection: ambiguous, never "not sent"
    (100, 2018001, A),
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
    # Only the documented type proves the refusal; a bare 429 or another type does not.
    bare = send_with(Channel.LINKEDIN, 429, headers={"Retry-After": "5"})
    assert (bare.kind, bare.reason, bare.retry_after_seconds) == (A, "unipile:http_429", None)
    other = send_with(Channel.LINKEDIN, 429, unipile_error(429, "slow_down"))
    assert (other.kind, other.reason) == (A, "unipile:slow_down")


@pytest.mark.parametrize(
    ("status", "body", "kind", "reason"),
    [
        (400, unipile_error(400, "invalid_parameters"), P, "unipile:invalid_parameters"),
        (400, {"type": "provider/invalid_parameters", "status": 400}, P, "unipile:invalid_parameters"),
        (401, unipile_error(401, "missing_credentials"), B, "unipile:missing_credentials"),
        (403, unipile_error(403, "feature_not_subscribed"), B, "unipile:feature_not_subscribed"),
        # unlisted types and bodies without a type: ambiguous, whatever the status
        (422, unipile_error(422, "some_new_type"), A, "unipile:some_new_type"),
        (422, unipile_error(422, "unprocessable_entity"), A, "unipile:unprocessable_entity"),
        (401, unipile_error(401, "invalid_credentials"), A, "unipile:invalid_credentials"),
        (403, unipile_error(403, "insufficient_permissions"), A, "unipile:insufficient_permissions"),
        (404, unipile_error(404, "resource_not_found"), A, "unipile:resource_not_found"),
        (400, None, A, "unipile:http_400"),
        (401, None, A, "unipile:http_401"),
        (403, None, A, "unipile:http_403"),
        (404, None, A, "unipile:http_404"),
        (408, None, A, "unipile:http_408"),
        (408, unipile_error(408, "too_many_requests"), A, "unipile:too_many_requests"),
        (422, {"type": 42}, A, "unipile:http_422"),
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


# --- Every code outside the provably-not-sent list is ambiguous ----------------------------------
#
# The property behind "an unknown code never frees a message": over thousands of generated
# codes (a seeded sample, so a failure names a reproducible code) and every 4xx status a
# provider might pair them with, nothing outside the adapters' documented refusals may come
# back as retry_later, sender_blocked or permanent.

PROPERTY_STATUSES = [400, 401, 403, 404, 405, 408, 409, 410, 413, 422, 429, 499]


def freeing(table: dict[Any, Rule]) -> set[Any]:
    return {code for code, rule in table.items() if rule.kind in PROVABLY_NOT_SENT}


def generated_graph_codes(channel: Channel) -> list[int | str]:
    listed = freeing(dict(WHATSAPP_ERROR_RULES if channel is Channel.WHATSAPP else MESSENGER_ERROR_RULES))
    rng = random.Random(20240606)
    near = [c + d for c in listed for d in (-1, 1)]  # neighbours of every documented code
    edges: list[int] = [-1, 1, 2, 3, 99, 101, 131000, 132999, 133000, 2**31 - 1, 2**31, 2**63]
    wide = [rng.randint(-(10**6), 10**7) for _ in range(1200)]
    meta_ranges = [rng.randint(130000, 136000) for _ in range(800)]
    codes: list[int | str] = [c for c in [*near, *edges, *wide, *meta_ranges] if c not in listed]
    # The same unlisted codes, spelled as strings the parser also accepts.
    codes += [f" {c} " for c in codes[:200]]
    return codes


def generated_unipile_types() -> list[str]:
    listed = freeing(dict(UNIPILE_ERROR_RULES))
    rng = random.Random(20240607)
    alphabet = "abcdefghijklmnopqrstuvwxyz_"
    made = ["".join(rng.choices(alphabet, k=rng.randint(1, 32))) for _ in range(2000)]
    near = [t[:-1] for t in listed] + [f"{t}_v2" for t in listed] + [f"not_{t}" for t in listed]
    edges = ["errors/", "errors/unprocessable_entity", "provider/unexpected_error", "api/invalid_auth_format"]
    candidates = [*near, *edges, *made]
    return [t for t in candidates if error_type(t) not in listed and error_type(f"errors/{t}") not in listed]


class Scripted:
    """One adapter per channel, answering whatever error the test sets next."""

    def __init__(self, channel: Channel) -> None:
        self.status = 400
        self.body: object = None
        self.adapter = make_adapter(channel, lambda request: httpx.Response(self.status, json=self.body))

    def send(self, channel: Channel, status: int, body: object) -> SendOutcome:
        self.status, self.body = status, body
        return self.adapter.send(message(channel))


@pytest.mark.parametrize("channel", [Channel.WHATSAPP, Channel.MESSENGER])
def test_every_unlisted_graph_code_is_ambiguous_on_every_4xx(channel: Channel) -> None:
    scripted = Scripted(channel)
    codes = generated_graph_codes(channel)
    assert len(codes) > 2000
    rng = random.Random(7)
    for index, code in enumerate(codes):
        # Every status for the first codes (neighbours of documented codes), then one drawn
        # per code: thousands of codes, without multiplying the run time by every status.
        statuses = PROPERTY_STATUSES if index < 60 else [rng.choice(PROPERTY_STATUSES)]
        for status in statuses:
            body = graph_error(0)
            body["error"]["code"] = code
            outcome = scripted.send(channel, status, body)
            assert outcome.kind is A, (code, status, outcome)
            assert not outcome.provably_not_sent
            assert outcome.reason == f"{channel.value}:{str(code).strip()}", (code, outcome.reason)


def test_every_unlisted_unipile_type_is_ambiguous_on_every_4xx() -> None:
    scripted = Scripted(Channel.LINKEDIN)
    types = generated_unipile_types()
    assert len(types) > 1500
    rng = random.Random(8)
    for index, kind in enumerate(types):
        statuses = PROPERTY_STATUSES if index < 60 else [rng.choice(PROPERTY_STATUSES)]
        for status in statuses:
            # Both spellings Unipile uses: RFC 7807 "errors/<type>" and the bare v1 type.
            body = unipile_error(status, kind, v2=index % 2 == 0)
            outcome = scripted.send(Channel.LINKEDIN, status, body)
            assert outcome.kind is A, (kind, status, outcome)
            assert not outcome.provably_not_sent
            assert outcome.reason == f"unipile:{error_type(kind) or f'http_{status}'}", (kind, outcome.reason)


@pytest.mark.parametrize("channel", list(Channel))
@pytest.mark.parametrize("status", PROPERTY_STATUSES)
def test_a_4xx_without_a_recognisable_error_body_is_ambiguous(channel: Channel, status: int) -> None:
    scripted = Scripted(channel)
    bodies: list[object] = [
        None,
        [],
        "",
        {},
        {"error": None},
        {"error": {"code": None}},
        {"error": {"code": True}},
        {"error": {"code": "not-a-number"}},
        {"type": None, "status": status},
        {"type": 42},
        {"detail": "no type"},
    ]
    for body in bodies:
        outcome = scripted.send(channel, status, body)
        assert outcome.kind is A, (body, status, outcome)


def test_every_rule_that_frees_a_message_cites_its_documentation() -> None:
    tables: list[dict[Any, Rule]] = [
        dict(WHATSAPP_ERROR_RULES),
        dict(MESSENGER_ERROR_RULES),
        dict(UNIPILE_ERROR_RULES),
    ]
    for table in tables:
        for code, rule in table.items():
            if rule.kind in PROVABLY_NOT_SENT:
                assert rule.source.startswith("https://developer"), (code, rule)
    with pytest.raises(ValueError, match="must cite"):
        Rule(OutcomeKind.PERMANENT)
