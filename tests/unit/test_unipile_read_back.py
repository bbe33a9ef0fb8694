"""What ``UnipileReadBack`` accepts as evidence, over ``httpx.MockTransport``: only our own
messages with the exact text and a readable ``timestamp`` no earlier than the bound."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared.channels.unipile.read_back import UnipileReadBack, message_time
from shared.providers.outcome import Channel, OutboundMessage

ATTEMPT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOT_BEFORE = ATTEMPT - timedelta(minutes=5)
TEXT = "Great to connect"


def outbound() -> OutboundMessage:
    return OutboundMessage(
        queue_id=1,
        idempotency_key="so1-0123456789abcdef",
        channel=Channel.LINKEDIN,
        sender_account_id=uuid.uuid4(),
        sender_provider_id="acct-1",
        recipient="ACoAA1",
        body=TEXT,
        message_type="intro",
    )


def item(message_id: str, timestamp: object, *, text: str = TEXT, is_sender: int = 1) -> dict[str, Any]:
    return {
        "object": "Message",
        "id": message_id,
        "text": text,
        "timestamp": timestamp,
        "is_sender": is_sender,
    }


def reader_over(pages: list[list[dict[str, Any]]], asked: list[httpx.Request]) -> UnipileReadBack:
    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        page = int(request.url.params.get("cursor") or 0)
        cursor = str(page + 1) if page + 1 < len(pages) else None
        return httpx.Response(200, json={"object": "MessageList", "items": pages[page], "cursor": cursor})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    return UnipileReadBack(client, "https://unipile.test", lambda: "key")


def found_ids(pages: list[list[dict[str, Any]]]) -> list[str]:
    reader = reader_over(pages, [])
    return [
        o.provider_message_id or "" for o in reader.find_sent(outbound(), "chat-1", not_before=NOT_BEFORE)
    ]


def test_only_messages_at_or_after_the_bound_are_evidence() -> None:
    page = [
        item("after", "2025-03-01T12:00:01.000Z"),
        item("at-the-bound", "2025-03-01T11:55:00.000Z"),
        item("just-before", "2025-03-01T11:54:59.999Z"),
        item("days-before", "2025-02-27T09:00:00.000Z"),
    ]
    assert found_ids([page]) == ["after", "at-the-bound"]


@pytest.mark.parametrize(
    "timestamp",
    [None, "", "yesterday", "2025-03-01 12:00", "2025-03-01T12:00:01", 1740830401, 1740830401.5, ["x"]],
)
def test_a_message_without_a_readable_timestamp_is_not_evidence(timestamp: object) -> None:
    assert found_ids([[item("unreadable", timestamp)]]) == []


def test_other_texts_and_messages_we_did_not_send_are_not_evidence() -> None:
    page = [
        item("theirs", "2025-03-01T12:00:01Z", is_sender=0),
        item("other-text", "2025-03-01T12:00:02Z", text="Something else"),
        item("ours", "2025-03-01T12:00:03+00:00", text=f"  {TEXT} "),
    ]
    assert found_ids([page]) == ["ours"]


def test_every_candidate_is_returned_newest_first_across_pages() -> None:
    pages = [
        [item("newest", "2025-03-01T12:10:00Z"), item("newer", "2025-03-01T12:05:00Z")],
        [item("new", "2025-03-01T12:01:00Z")],
    ]
    assert found_ids(pages) == ["newest", "newer", "new"]


def test_paging_stops_once_the_chat_is_older_than_the_bound() -> None:
    asked: list[httpx.Request] = []
    pages = [
        [item("new", "2025-03-01T12:01:00Z"), item("old", "2025-02-01T12:00:00Z")],
        [item("never-read", "2025-03-01T12:30:00Z")],
    ]
    found = reader_over(pages, asked).find_sent(outbound(), "chat-1", not_before=NOT_BEFORE)
    assert [o.provider_message_id for o in found] == ["new"]
    assert len(asked) == 1


def test_message_time_needs_a_zone() -> None:
    assert message_time("2022-10-14T10:00:00.000Z") == datetime(2022, 10, 14, 10, 0, tzinfo=UTC)
    assert message_time("2022-10-14T10:00:00.000") is None
