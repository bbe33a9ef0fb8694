"""HTTP plumbing shared by the three provider adapters.

The one question every line here answers: *could the provider have acted on this request?*

* Nothing was sent (the token could not be read, the request could not be built, the
  connection was never established, no pooled connection was free): ``retry_later``. These
  are the only network outcomes that may lead to another call for the same message.
* The request may have been written (write/read timeouts, a reset or closed connection, a
  5xx, any exception we did not foresee): ``ambiguous``. Nobody offers a send-side
  idempotency key, so a blind resend could duplicate the message.
* The provider answered with an error it documents as rejected before processing:
  classified by the adapter's table into ``retry_later``, ``sender_blocked`` or ``permanent``.
  Every table entry that frees a message names the documentation that says so.
* Any other answer (an error code or type the table does not list, a 4xx without a
  recognisable error body): ``ambiguous``. An undocumented error proves nothing about
  whether the provider acted, so it must never free the message for another call.

``HttpAdapter`` is the send loop all three adapters share; ``GraphAdapter`` adds the Graph
error shape and classification used by both WhatsApp Cloud API and the Messenger Send API.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Literal

import httpx

from shared.observability import logger
from shared.providers.deadline import call_deadline
from shared.providers.outcome import (
    PROVABLY_NOT_SENT,
    BeforeCall,
    Channel,
    OutboundMessage,
    OutcomeKind,
    SendOutcome,
    ThrottleScope,
)

DETAIL_LIMIT = 500
USER_AGENT = "sendonce/0.1"

# Exceptions raised before a single byte of the request can have left this process. Order
# matters: the first matching class names the reason.
_NOT_WRITTEN: tuple[tuple[type[Exception], str], ...] = (
    (httpx.ConnectTimeout, "connect_timeout"),
    (httpx.PoolTimeout, "pool_timeout"),
    (httpx.ConnectError, "connect_error"),
    # Raised by the transport on a URL without http(s); no connection is ever opened.
    (httpx.UnsupportedProtocol, "unsupported_protocol"),
)

# Raised once the request may (partly or wholly) have been written. The provider may have
# accepted it; only read-back or webhook evidence can tell.
_MAYBE_WRITTEN: tuple[tuple[type[Exception], str], ...] = (
    (httpx.WriteTimeout, "write_timeout"),
    (httpx.ReadTimeout, "read_timeout"),
    (httpx.WriteError, "write_error"),
    (httpx.ReadError, "read_error"),
    (httpx.RemoteProtocolError, "remote_protocol_error"),
    (httpx.LocalProtocolError, "local_protocol_error"),
    (httpx.TimeoutException, "timeout"),
    (httpx.TransportError, "transport_error"),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def build_timeout(
    connect: float, read: float, *, write: float | None = None, pool: float | None = None
) -> httpx.Timeout:
    """Every phase bounded explicitly. ``write`` defaults to ``read`` and ``pool`` to ``connect``,
    which is what ``Settings.provider_call_budget_seconds`` (2 x connect + 2 x read) assumes."""
    return httpx.Timeout(
        connect=connect,
        read=read,
        write=read if write is None else write,
        pool=connect if pool is None else pool,
    )


def truncate(text: str, limit: int = DETAIL_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def redact(text: str, secret: str | None) -> str:
    """Defence in depth: no provider is known to echo a token, but a detail string must never
    carry one into logs, the queue or an alarm."""
    if secret and len(secret) >= 4 and secret in text:
        return text.replace(secret, "[redacted]")
    return text


def retry_after(response: httpx.Response, now: datetime | None = None) -> timedelta | None:
    """``Retry-After`` as delta-seconds or an HTTP-date; ``None`` when absent or unreadable."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return timedelta(seconds=max(0.0, float(raw)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(timedelta(0), when - (now or utcnow()))


def exception_outcome(exc: Exception) -> SendOutcome:
    """Classify an exception raised by ``httpx.Client.send``."""
    detail = truncate(f"{type(exc).__name__}: {exc}")
    for cls, name in _NOT_WRITTEN:
        if isinstance(exc, cls):
            return SendOutcome.retry_later(None, f"network:{name}", detail)
    for cls, name in _MAYBE_WRITTEN:
        if isinstance(exc, cls):
            return SendOutcome.ambiguous(f"network:{name}", detail)
    return SendOutcome.ambiguous("network:unexpected_error", detail)


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None


PauseCause = Literal["credentials", "throttle", "policy", "quota"]


@dataclass(frozen=True)
class PausePolicy:
    """How long a sender stays paused after the provider refused the *sender*.

    * ``credentials`` (token invalid, Unipile account disconnected): an operator rotates the
      secret or reconnects; a short pause means sending resumes soon after, and each expiry
      costs one rejected probe per sender.
    * ``throttle`` (WhatsApp 131048 spam rate limit): Meta restricts the number for hours;
      probing sooner only deepens the quality penalty.
    * ``policy`` (WhatsApp 368 policy block, 131031 account locked, Unipile account_restricted):
      days-long restrictions that need a human; pausing a day keeps the alarm meaningful.
    * ``quota`` (Unipile limit_exceeded, insufficient_credits): LinkedIn's daily/weekly limits
      and InMail credits refill on a day scale.
    """

    credentials: timedelta = timedelta(hours=1)
    throttle: timedelta = timedelta(hours=6)
    policy: timedelta = timedelta(hours=24)
    quota: timedelta = timedelta(hours=24)

    def for_cause(self, cause: PauseCause) -> timedelta:
        duration: timedelta = getattr(self, cause)
        return duration


@dataclass(frozen=True)
class Rule:
    """What one documented provider error means.

    ``wait`` is the default retry hint for ``retry_later`` (a ``Retry-After`` header wins);
    ``pause`` names the ``PausePolicy`` duration for ``sender_blocked``. ``source`` is where
    the provider documents the meaning: a rule that frees a message (any provably-not-sent
    kind) cannot be built without one."""

    kind: OutcomeKind
    wait: timedelta | None = None
    pause: PauseCause | None = None
    source: str = ""
    throttle: ThrottleScope | None = None

    def __post_init__(self) -> None:
        if self.kind in PROVABLY_NOT_SENT and not self.source.strip():
            raise ValueError(f"a {self.kind} rule must cite the documentation that proves it")


AMBIGUOUS = Rule(OutcomeKind.AMBIGUOUS)


def retry(source: str, seconds: float | None = None) -> Rule:
    wait = timedelta(seconds=seconds) if seconds is not None else None
    return Rule(OutcomeKind.RETRY_LATER, wait=wait, source=source)


def throttle(source: str, seconds: float | None = None, *, scope: ThrottleScope = "sender") -> Rule:
    """A rate-limit answer: not sent, and it never spends one of the message's attempts. A
    sender-wide throttle lowers the sender's rate (``shared.pacing.throttled``)."""
    wait = timedelta(seconds=seconds) if seconds is not None else None
    return Rule(OutcomeKind.RETRY_LATER, wait=wait, source=source, throttle=scope)


def blocked(cause: PauseCause, source: str) -> Rule:
    return Rule(OutcomeKind.SENDER_BLOCKED, pause=cause, source=source)


def permanent(source: str) -> Rule:
    return Rule(OutcomeKind.PERMANENT, source=source)


def ambiguous(source: str = "") -> Rule:
    """A documented code whose meaning does not rule out processing; the same outcome an
    unlisted code gets, listed so the table says it was looked at."""
    return Rule(OutcomeKind.AMBIGUOUS, source=source)


@dataclass(frozen=True)
class Verdict:
    """The facts one classification needs, gathered from a response."""

    rule: Rule
    reason: str
    detail: str
    http_status: int | None
    retry_after: timedelta | None = None


class HttpAdapter(ABC):
    """The send loop shared by every adapter. ``send`` never raises for anything a provider
    or the network can do; see the module docstring for the split it makes."""

    channel: Channel
    provider: ClassVar[str]

    def __init__(
        self,
        client: httpx.Client,
        base_url: str,
        token: Callable[[], str],
        *,
        pauses: PausePolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        call_budget_seconds: float | None = None,
    ) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._pauses = pauses or PausePolicy()
        self._clock = clock
        # Enforced only by a client on ``DeadlineTransport`` (``registry.make_http_client``).
        self._call_budget = call_budget_seconds

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    @abstractmethod
    def _build_request(self, message: OutboundMessage, token: str) -> httpx.Request: ...

    @abstractmethod
    def _classify(self, response: httpx.Response) -> SendOutcome: ...

    def send(self, message: OutboundMessage, before_call: BeforeCall | None = None) -> SendOutcome:
        try:
            token = _checked_token(self._token())
        except Exception as exc:
            # Secrets Manager unreachable or the secret is empty: nothing was sent.
            return SendOutcome.retry_later(None, "secrets:token_unavailable", truncate(type(exc).__name__))
        try:
            request = self._build_request(message, token)
        except Exception as exc:
            return SendOutcome.retry_later(None, f"{self.provider}:request_not_built", _safe(exc, token))
        if before_call is not None:
            # Last, after the secret read (a network call on a cold cache): what the hook
            # times, the send-time gate, is then followed by the request alone.
            refused = before_call()
            if refused is not None:
                return refused

        try:
            with call_deadline(self._call_budget):
                response = self._client.send(request)
        except Exception as exc:
            outcome = exception_outcome(exc)
            if outcome.reason == "network:unexpected_error":
                logger.warning(
                    "provider call raised unexpectedly; outcome is ambiguous",
                    extra={"provider": self.provider, "error_type": type(exc).__name__},
                )
            return _redacted(outcome, token)

        try:
            outcome = self._classify(response)
        except Exception as exc:
            # The provider answered, but with something we cannot read: it may have sent.
            logger.warning(
                "provider response could not be classified; outcome is ambiguous",
                extra={"provider": self.provider, "http_status": response.status_code},
            )
            outcome = SendOutcome.ambiguous(
                f"{self.provider}:unreadable_response", _safe(exc, token), response.status_code
            )
        return _redacted(outcome, token)

    def _outcome(self, verdict: Verdict) -> SendOutcome:
        rule = verdict.rule
        if rule.kind is OutcomeKind.RETRY_LATER:
            wait = verdict.retry_after if verdict.retry_after is not None else rule.wait
            return SendOutcome.retry_later(
                wait, verdict.reason, verdict.detail, verdict.http_status, throttle=rule.throttle
            )
        if rule.kind is OutcomeKind.SENDER_BLOCKED:
            until = self._clock() + self._pauses.for_cause(rule.pause or "credentials")
            return SendOutcome.sender_blocked(until, verdict.reason, verdict.detail, verdict.http_status)
        if rule.kind is OutcomeKind.PERMANENT:
            return SendOutcome.permanent(verdict.reason, verdict.detail, verdict.http_status)
        return SendOutcome.ambiguous(verdict.reason, verdict.detail, verdict.http_status)


_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")


def _checked_token(token: str) -> str:
    # An illegal header value would only fail inside the transport, where it is classified
    # as "maybe written"; refusing it here keeps it provably unsent.
    if not isinstance(token, str) or not _TOKEN_CHARS.match(token):
        raise ValueError("token is empty or not printable ASCII")
    return token


def _safe(exc: Exception, token: str) -> str:
    return redact(truncate(f"{type(exc).__name__}: {exc}"), token)


def _redacted(outcome: SendOutcome, token: str) -> SendOutcome:
    detail = redact(outcome.detail, token)
    reason = redact(outcome.reason, token)
    if detail == outcome.detail and reason == outcome.reason:
        return outcome
    return outcome.model_copy(update={"detail": detail, "reason": reason})


# --- Graph API (WhatsApp Cloud API and Messenger Send API) ----------------------------------


@dataclass(frozen=True)
class GraphError:
    """``{"error": {"message", "type", "code", "error_subcode", "error_data", "fbtrace_id"}}``."""

    code: int | None
    subcode: int | None
    message: str
    type: str
    details: str
    fbtrace_id: str

    @property
    def detail(self) -> str:
        parts = [self.message]
        if self.subcode is not None:
            parts.append(f"subcode {self.subcode}")
        if self.details and self.details not in self.message:
            parts.append(self.details)
        if self.fbtrace_id:
            parts.append(f"fbtrace_id {self.fbtrace_id}")
        return truncate(" | ".join(p for p in parts if p))


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def parse_graph_error(data: object) -> GraphError | None:
    if not isinstance(data, Mapping):
        return None
    error = data.get("error")
    if not isinstance(error, Mapping):
        return None
    error_data = error.get("error_data")
    if isinstance(error_data, Mapping):
        details = str(error_data.get("details") or "")
    elif isinstance(error_data, str):
        details = error_data
    else:
        details = ""
    return GraphError(
        code=_as_int(error.get("code")),
        subcode=_as_int(error.get("error_subcode")),
        message=str(error.get("message") or error.get("error_user_msg") or ""),
        type=str(error.get("type") or ""),
        details=details,
        fbtrace_id=str(error.get("fbtrace_id") or ""),
    )


class GraphAdapter(HttpAdapter):
    """``POST {base}/{version}/{sender_provider_id}/messages`` with a bearer token; errors in the
    Graph shape, classified by the subclass's code table.

    Classification order:
    1. 2xx: the subclass reads the message id (unreadable => ambiguous: it was accepted).
    2. 1xx/3xx/5xx: ambiguous, whatever the body says; the provider may have acted.
    3. 4xx with a code in the table: the table's rule. Only codes Meta documents as a
       rejection (throttled, not permitted, invalid, undeliverable) free the message.
    4. Anything else is ambiguous: a 4xx with a code the table does not list (Meta's own
       code 1 reads "invalid request or possible server error"), whatever its HTTP status,
       including 429; and a 4xx without a readable Graph error, including 401/403/408/429.
       The reason (``<provider>:<code>`` or ``<provider>:http_<status>``) is recorded, so an
       operator can decide the row and the table can learn the code from its documentation.
    """

    error_rules: ClassVar[Mapping[int, Rule]]

    def __init__(
        self,
        client: httpx.Client,
        base_url: str,
        token: Callable[[], str],
        api_version: str,
        *,
        pauses: PausePolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        call_budget_seconds: float | None = None,
    ) -> None:
        super().__init__(
            client, base_url, token, pauses=pauses, clock=clock, call_budget_seconds=call_budget_seconds
        )
        self._api_version = api_version.strip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r}, api_version={self._api_version!r})"

    @abstractmethod
    def _payload(self, message: OutboundMessage) -> dict[str, Any]: ...

    @abstractmethod
    def _success(self, data: object, http_status: int) -> SendOutcome | None:
        """The ``sent`` outcome, or ``None`` when the 2xx body carries no message id."""

    def _rule_for(self, error: GraphError) -> Rule | None:
        return self.error_rules.get(error.code) if error.code is not None else None

    def _build_request(self, message: OutboundMessage, token: str) -> httpx.Request:
        url = f"{self._base_url}/{self._api_version}/{message.sender_provider_id}/messages"
        return self._client.build_request(
            "POST",
            url,
            json=self._payload(message),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )

    def _classify(self, response: httpx.Response) -> SendOutcome:
        status = response.status_code
        data = json_body(response)
        if 200 <= status < 300:
            sent = self._success(data, status)
            if sent is not None:
                return sent
            return SendOutcome.ambiguous(
                f"{self.provider}:accepted_without_message_id", truncate(response.text), status
            )
        error = parse_graph_error(data)
        if not 400 <= status < 500:
            code = error.code if error is not None and error.code is not None else f"http_{status}"
            detail = error.detail if error is not None else truncate(response.text)
            return SendOutcome.ambiguous(f"{self.provider}:{code}", detail, status)
        return self._outcome(self._client_error_verdict(response, error))

    def _client_error_verdict(self, response: httpx.Response, error: GraphError | None) -> Verdict:
        status = response.status_code
        if error is not None and error.code is not None:
            rule = self._rule_for(error) or AMBIGUOUS
            return Verdict(
                rule,
                f"{self.provider}:{error.code}",
                error.detail,
                status,
                retry_after(response, self._clock()),
            )
        detail = error.detail if error is not None else truncate(response.text)
        return Verdict(AMBIGUOUS, f"{self.provider}:http_{status}", detail, status)
