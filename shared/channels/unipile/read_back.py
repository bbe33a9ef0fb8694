"""Unipile read-back: the reconciler asks the chat what our account sent in it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

import httpx

from shared.providers.http import json_body
from shared.providers.outcome import Channel, OutboundMessage, SendOutcome


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
