"""Unipile (LinkedIn): ``POST /api/v1/chats`` as multipart/form-data with ``X-API-KEY``.

Unipile carries no correlation field, so the chat id it returns is kept as the thread id:
``UnipileReadBack`` reads that chat back (``GET /api/v1/chats/{chat_id}/messages``,
``is_sender``) to resolve an ``unknown`` row.

Errors come in the v1 shape ``{"title","detail","instance","type","status"}`` or as RFC 7807
with ``type`` like ``errors/too_many_requests``; the type is matched by its last path segment
so both spellings work. Classification order:

1. 2xx with a ``message_id``: sent (``chat_id`` is the thread). A 2xx without one is
   ambiguous but keeps the ``chat_id``, so read-back can still settle it.
2. 408, 1xx/3xx/5xx: ambiguous. Unipile relays to LinkedIn; a 500/503 does not prove
   LinkedIn never saw the message.
3. A 4xx whose type is in the table: the table's rule. Only types Unipile documents as a
   refusal (throttled, credentials, not connected, invalid parameters) free the message.
4. Anything else is ambiguous: an unlisted type, whatever its status (429, 401 and 403
   included), and a 4xx without a readable error type. The reason ``unipile:<type>`` or
   ``unipile:http_<status>`` is recorded for the operator who decides the row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

import httpx

from shared.providers.http import (
    HttpAdapter,
    Rule,
    Verdict,
    ambiguous,
    blocked,
    json_body,
    permanent,
    retry_after,
    throttle,
    truncate,
)
from shared.providers.outcome import Channel, OutboundMessage, OutcomeKind, SendOutcome

# The error types (per HTTP status) of POST /api/v1/chats, with their titles; the v2 error
# page explains the api/ and provider/ throwers.
START_CHAT = "https://developer.unipile.com/reference/chatscontroller_startnewchat"
ERROR_RESPONSES = "https://developer.unipile.com/v2.0/reference/error-responses"

# Only types Unipile documents as a refusal of the request free a message; a type missing
# here is ambiguous, never "provably not sent".
UNIPILE_ERROR_RULES: Mapping[str, Rule] = {
    "too_many_requests": throttle(START_CHAT, 120),  # 429 "The provider cannot accept any more requests"
    # 422 "Unprocessable Entity": LinkedIn refuses this message.
    "no_connection_with_recipient": permanent(START_CHAT),  # "Recipient cannot be reached"
    "not_allowed_inmail": permanent(START_CHAT),
    "blocked_recipient": permanent(START_CHAT),
    "user_unreachable": permanent(START_CHAT),
    "cannot_resend_yet": permanent(START_CHAT),
    "action_already_performed": permanent(START_CHAT),
    # 400 "The given parameters ... does not respect the required shape"
    "invalid_parameters": permanent(ERROR_RESPONSES),
    # 422, sender-level: LinkedIn's limits and InMail credits.
    "limit_exceeded": blocked("quota", START_CHAT),
    "insufficient_credits": blocked("quota", START_CHAT),
    # 401: the request is not authenticated.
    "missing_credentials": blocked("credentials", START_CHAT),  # the API key is missing or wrong
    "disconnected_account": blocked("credentials", START_CHAT),  # "Disconnected account"
    # 403: the account may not do this.
    "account_restricted": blocked("policy", START_CHAT),  # "restricted by the provider"
    "feature_not_subscribed": blocked("policy", START_CHAT),  # "Feature not subscribed"
    # 504 "Request timed out": documented, and proves nothing either way.
    "request_timeout": ambiguous(START_CHAT),
}

_TYPE_CHARS = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class UnipileError:
    type: str | None
    status: int | None
    title: str
    detail: str

    @property
    def text(self) -> str:
        return truncate(" | ".join(p for p in (self.title, self.detail) if p))


def error_type(raw: object) -> str | None:
    """``"errors/too_many_requests"`` and ``"too_many_requests"`` both give the latter."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    suffix = raw.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    cleaned = _TYPE_CHARS.sub("_", suffix).strip("_")[:64]
    return cleaned or None


def parse_unipile_error(data: object) -> UnipileError | None:
    if not isinstance(data, Mapping):
        return None
    status = data.get("status")
    return UnipileError(
        type=error_type(data.get("type")),
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        title=str(data.get("title") or ""),
        detail=str(data.get("detail") or data.get("message") or ""),
    )


class UnipileLinkedInAdapter(HttpAdapter):
    channel: Channel = Channel.LINKEDIN
    provider: ClassVar[str] = "unipile"
    error_rules: ClassVar[Mapping[str, Rule]] = UNIPILE_ERROR_RULES

    def _build_request(self, message: OutboundMessage, token: str) -> httpx.Request:
        # Unipile requires multipart/form-data; ``files`` with no file name forces it even
        # though every part is a plain field.
        fields = [
            ("account_id", (None, message.sender_provider_id)),
            ("text", (None, message.body)),
            ("attendees_ids", (None, message.recipient)),
        ]
        return self._client.build_request(
            "POST",
            f"{self._base_url}/api/v1/chats",
            files=fields,
            headers={"X-API-KEY": token, "Accept": "application/json"},
        )

    def _classify(self, response: httpx.Response) -> SendOutcome:
        status = response.status_code
        data = json_body(response)
        if 200 <= status < 300:
            return _started(data, status, response)
        error = parse_unipile_error(data)
        kind = error.type if error is not None else None
        detail = error.text if error is not None and error.text else truncate(response.text)
        reason = f"unipile:{kind or f'http_{status}'}"
        rule = self.error_rules.get(kind) if kind and 400 <= status < 500 and status != 408 else None
        return self._outcome(
            Verdict(rule or ambiguous(), reason, detail, status, retry_after(response, self._clock()))
        )


def _started(data: object, status: int, response: httpx.Response) -> SendOutcome:
    chat_id = data.get("chat_id") if isinstance(data, Mapping) else None
    message_id = data.get("message_id") if isinstance(data, Mapping) else None
    thread = chat_id if isinstance(chat_id, str) and chat_id else None
    if isinstance(message_id, str) and message_id:
        return SendOutcome.sent(message_id, thread_id=thread, http_status=status)
    return SendOutcome(
        kind=OutcomeKind.AMBIGUOUS,
        provider_thread_id=thread,
        reason="unipile:accepted_without_message_id",
        detail=truncate(response.text),
        http_status=status,
    )


class ReadBackError(OSError):
    """The chat could not be read. An ``OSError`` so the reconciler counts it as a transient
    I/O error and leaves the row ``unknown``: a failed lookup is not evidence of absence."""


class UnipileReadBack:
    """``find_sent`` for the reconciler: the messages in the chat that we sent (``is_sender``)
    with exactly this text, no earlier than a given time, newest first.

    Unipile's message objects carry ``timestamp``, an ISO 8601 UTC string such as
    "2022-10-14T10:00:00.000Z", and the list comes most recent first:
    https://developer.unipile.com/reference/chatscontroller_listchatmessages
    """

    channel: Channel = Channel.LINKEDIN

    def __init__(
        self, client: httpx.Client, base_url: str, token: Callable[[], str], *, max_pages: int = 5
    ) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._max_pages = max_pages

    def __repr__(self) -> str:
        return f"UnipileReadBack(base_url={self._base_url!r})"

    def find_sent(
        self, message: OutboundMessage, thread_id: str, *, not_before: datetime
    ) -> list[SendOutcome]:
        """A message sent before ``not_before`` (a hand-typed one, an older campaign's) proves
        nothing about this attempt, and neither does one whose ``timestamp`` cannot be read."""
        found: list[SendOutcome] = []
        cursor: str | None = None
        for _ in range(self._max_pages):
            params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
            try:
                response = self._client.get(
                    f"{self._base_url}/api/v1/chats/{thread_id}/messages",
                    params=params,
                    headers={"X-API-KEY": self._token(), "Accept": "application/json"},
                )
            except Exception as exc:
                raise ReadBackError(f"unipile read-back failed: {type(exc).__name__}") from exc
            if response.status_code != 200:
                raise ReadBackError(f"unipile read-back answered HTTP {response.status_code}")
            data = json_body(response)
            items = data.get("items") if isinstance(data, Mapping) else None
            if not isinstance(items, list):
                raise ReadBackError("unipile read-back returned no items list")
            reached_older = False
            for item in items:
                if not isinstance(item, Mapping):
                    continue
                sent_at = message_time(item.get("timestamp"))
                if sent_at is None:
                    continue
                if sent_at < not_before:
                    # Most recent first: everything after this is older still.
                    reached_older = True
                    continue
                if (
                    item.get("is_sender")
                    and isinstance(item.get("id"), str)
                    and str(item.get("text") or "").strip() == message.body.strip()
                ):
                    found.append(SendOutcome.sent(str(item["id"]), thread_id=thread_id))
            next_cursor = data.get("cursor") if isinstance(data, Mapping) else None
            if reached_older or not isinstance(next_cursor, str) or not next_cursor:
                return found
            cursor = next_cursor
        return found


def message_time(raw: object) -> datetime | None:
    """A chat message's ``timestamp``; ``None`` unless it is an ISO 8601 time with a zone."""
    if not isinstance(raw, str):
        return None
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    # Unipile documents UTC ("...Z"); a time without a zone could be anyone's local time.
    return when if when.tzinfo is not None else None
