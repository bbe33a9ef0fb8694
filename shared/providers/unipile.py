"""Unipile (LinkedIn): ``POST /api/v1/chats`` as multipart/form-data with ``X-API-KEY``.

Unipile carries no correlation field, so the chat id it returns is kept as the thread id:
``UnipileReadBack`` reads that chat back (``GET /api/v1/chats/{chat_id}/messages``,
``is_sender``) to resolve an ``unknown`` row.

Errors come in the v1 shape ``{"title","detail","instance","type","status"}`` or as RFC 7807
with ``type`` like ``errors/too_many_requests``; the type is matched by its last path segment
so both spellings work. Classification order:

1. 2xx with a ``message_id``: sent (``chat_id`` is the thread). A 2xx without one is
   ambiguous but keeps the ``chat_id``, so read-back can still settle it.
2. ``request_timeout`` (504 or 408), 1xx/3xx/5xx: ambiguous. Unipile relays to LinkedIn; a
   500/503 does not prove LinkedIn never saw the message.
3. A 4xx whose type is in the table: the table's rule.
4. Other 429: retry later (long backoff unless ``Retry-After`` says otherwise).
5. Other 401: pause the sender (credentials); other 403: pause the sender (policy).
6. Any other 4xx (400 invalid parameters, 404, an unknown 422 type): permanent, reason
   ``unipile:<type>`` - the request was rejected, not relayed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import httpx

from shared.providers.http import (
    AMBIGUOUS,
    PERMANENT,
    HttpAdapter,
    Rule,
    Verdict,
    blocked,
    json_body,
    retry,
    retry_after,
    truncate,
)
from shared.providers.outcome import Channel, OutboundMessage, OutcomeKind, SendOutcome

UNIPILE_ERROR_RULES: Mapping[str, Rule] = {
    "too_many_requests": retry(120),
    "no_connection_with_recipient": PERMANENT,
    "not_allowed_inmail": PERMANENT,
    "blocked_recipient": PERMANENT,
    "user_unreachable": PERMANENT,
    "cannot_resend_yet": PERMANENT,
    "action_already_performed": PERMANENT,
    "limit_exceeded": blocked("quota"),
    "insufficient_credits": blocked("quota"),
    "disconnected_account": blocked("credentials"),
    "account_restricted": blocked("policy"),
    "request_timeout": AMBIGUOUS,
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
        if kind == "request_timeout" or status == 408 or not 400 <= status < 500:
            return SendOutcome.ambiguous(reason, detail, status)
        rule = self.error_rules.get(kind) if kind else None
        if rule is None:
            if status == 429:
                rule = self.error_rules["too_many_requests"]
            elif status == 401:
                rule = blocked("credentials")
            elif status == 403:
                rule = blocked("policy")
            else:
                rule = PERMANENT
        return self._outcome(Verdict(rule, reason, detail, status, retry_after(response, self._clock())))


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
    """``find_sent`` for the reconciler: the newest message in the chat that we sent
    (``is_sender``) with exactly this text, or ``None`` when the chat shows none."""

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

    def find_sent(self, message: OutboundMessage, thread_id: str) -> SendOutcome | None:
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
            for item in items:
                if (
                    isinstance(item, Mapping)
                    and item.get("is_sender")
                    and isinstance(item.get("id"), str)
                    and str(item.get("text") or "").strip() == message.body.strip()
                ):
                    return SendOutcome.sent(str(item["id"]), thread_id=thread_id)
            next_cursor = data.get("cursor") if isinstance(data, Mapping) else None
            if not isinstance(next_cursor, str) or not next_cursor:
                return None
            cursor = next_cursor
        return None
