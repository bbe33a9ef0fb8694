"""What every channel's webhook parser produces: ``ProviderEvent`` rows, and the small,
forgiving readers the parsers share (providers send numbers where ids are strings, and so on).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

UNRECOGNISED = "unrecognised"
# Events a sequence step can wait for (``EnqueueStep.after_event``): Unipile's new_relation,
# the LinkedIn invitation accepted.
WAITABLE_EVENTS = frozenset({"new_relation"})

# The status of an inbound message: the contact wrote to us.
RECEIVED = "received"
# Inbound event types that are a reply: a message the contact wrote. Reactions, postbacks and
# WhatsApp system notices (a number change) are not; a campaign can still stop on them by
# listing them in stop_on_events.
REPLY_EVENT_TYPES = frozenset({"message", "message_received"})


@dataclass(frozen=True)
class ProviderEvent:
    """One ``provider_events`` row. ``watermark`` is set for events that name no message but
    cover everything sent to ``recipient`` up to a time (Messenger reads and deliveries).
    ``contact`` is the person on the other side: who replied or reacted, or whose message the
    status is about."""

    event_type: str
    dedupe_key: str
    payload: Any
    status: str | None = None
    provider_message_id: str | None = None
    provider_thread_id: str | None = None
    recipient: str | None = None
    idempotency_key: str | None = None
    occurred_at: datetime | None = None
    watermark: datetime | None = None
    contact: str | None = None
    # Other ids the same person may be stored under (LinkedIn: the public identifier).
    aliases: tuple[str, ...] = ()

    @property
    def is_reply(self) -> bool:
        return self.status == RECEIVED and self.event_type in REPLY_EVENT_TYPES and self.contact is not None

    @property
    def stop_names(self) -> tuple[str, ...]:
        """How a campaign's ``stop_on_events`` names this event: its type, and type:status."""
        return (self.event_type, f"{self.event_type}:{self.status}") if self.status else (self.event_type,)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def unrecognised(item: Any) -> ProviderEvent:
    """Kept verbatim. Its dedupe key is the hash of its content, so a retried delivery of the
    same unknown shape is still stored once."""
    digest = hashlib.sha256(canonical_json(item).encode("utf-8")).hexdigest()
    return ProviderEvent(event_type=UNRECOGNISED, dedupe_key=f"{UNRECOGNISED}:{digest}", payload=item)


def as_obj(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str | None:
    """Ids are strings, but Graph occasionally sends numbers; booleans are never ids."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value)
    return None


def epoch(value: Any, divisor: int) -> datetime | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
        if number is None:
            return None
        return datetime.fromtimestamp(number / divisor, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def iso_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# WhatsApp value keys that accompany statuses and inbound messages; anything else (errors) is
# kept whole.
