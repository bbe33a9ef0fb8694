"""Sender accounts as operators see them: pacing configuration, pause and resume, status.

A sender is named the way operators know it: its channel and its provider account id (the
WhatsApp phone_number_id, the Messenger page id, the Unipile account id). Every change is one
statement; a pause or resume is recorded with who did it and why.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from shared.pacing import (
    WEEK,
    Action,
    EffectivePacing,
    PacingPolicy,
    SenderPacing,
    Usage,
    cap_room,
    local_day_start,
    sender_pacing,
    window_open,
)
from shared.providers.outcome import Channel
from shared.storage import sql
from shared.storage.db import Database


class UnknownSenderError(LookupError):
    """No sender account has this channel and provider account id."""


class SenderStatus(BaseModel):
    id: UUID
    channel: Channel
    provider_account_id: str
    status: str
    paused_until: datetime | None
    pause_reason: str | None
    paused_by: str | None
    configured: SenderPacing
    effective_rate_per_second: float | None
    effective_burst: int
    throttle_factor: float
    next_slot_at: datetime | None
    window_open_now: bool
    usage_today: dict[str, int]
    usage_this_week: dict[str, int]
    room_now: dict[str, int | None]
    due_rows: int
    pending_rows: int


def _sender_row(db: Database, channel: Channel, provider_account_id: str) -> dict[str, Any]:
    row = db.fetch_one(
        sql.SENDER_BY_NATURAL_KEY, {"channel": channel.value, "provider_account_id": provider_account_id}
    )
    if row is None:
        raise UnknownSenderError(
            f"no {channel.value} sender account {provider_account_id!r}; "
            "a sender account is created by the first enqueue that names it"
        )
    return dict(row)


def configure_sender(
    db: Database, channel: Channel, provider_account_id: str, pacing: SenderPacing, operator: str
) -> None:
    """Replace the sender's pacing configuration (unset fields fall back to the channel's
    defaults). Its budget state is kept, so a reconfiguration never grants a fresh burst."""
    sender = _sender_row(db, channel, provider_account_id)
    db.fetch_one(
        sql.CONFIGURE_SENDER,
        {
            "id": sender["id"],
            **pacing.model_dump(),
            "window_days": list(pacing.window_days) if pacing.window_days is not None else None,
            "operator": operator,
        },
    )


def pause_sender(
    db: Database,
    channel: Channel,
    provider_account_id: str,
    *,
    until: datetime | None,
    reason: str,
    operator: str,
) -> None:
    """Stop claiming the sender's rows until ``until`` (``None``: until resumed). Rows it
    already claimed finish; its pending rows wait, never move to another sender."""
    sender = _sender_row(db, channel, provider_account_id)
    db.fetch_one(
        sql.OPERATOR_PAUSE_SENDER,
        {"id": sender["id"], "until": until, "reason": reason, "paused_by": f"operator:{operator}"},
    )


def resume_sender(db: Database, channel: Channel, provider_account_id: str, *, operator: str) -> None:
    """Lift any pause, the automatic ones included (e.g. after a token was rotated)."""
    sender = _sender_row(db, channel, provider_account_id)
    db.fetch_one(sql.RESUME_SENDER, {"id": sender["id"], "operator": f"operator:{operator}"})


def sender_status(
    db: Database,
    policy: PacingPolicy,
    channel: Channel,
    provider_account_id: str,
    now: datetime | None = None,
) -> SenderStatus:
    row = _sender_row(db, channel, provider_account_id)
    now = now or datetime.now(UTC)
    pacing: EffectivePacing = policy.effective(row)
    usage_rows = db.fetch_all(
        sql.SENDER_USAGE,
        {"sender_ids": [row["id"]], "day_starts": [local_day_start(pacing, now)], "week_start": now - WEEK},
    )
    usage = {Action(r["action"]): Usage(int(r["today"]), int(r["this_week"])) for r in usage_rows}
    counts = db.fetch_one(sql.SENDER_ROW_COUNTS, {"id": row["id"], "now": now})
    assert counts is not None
    return SenderStatus(
        id=row["id"],
        channel=Channel(row["channel"]),
        provider_account_id=row["provider_account_id"],
        status=row["status"],
        paused_until=row["paused_until"],
        pause_reason=row["pause_reason"],
        paused_by=row["paused_by"],
        configured=sender_pacing(row),
        effective_rate_per_second=pacing.rate_per_second,
        effective_burst=pacing.burst,
        throttle_factor=row["throttle_factor"],
        next_slot_at=row["next_slot_at"],
        window_open_now=window_open(pacing, now),
        usage_today={a.value: usage.get(a, Usage()).today for a in Action},
        usage_this_week={a.value: usage.get(a, Usage()).this_week for a in Action},
        room_now={a.value: cap_room(pacing, a, usage.get(a, Usage()), now) for a in Action},
        due_rows=int(counts["due"]),
        pending_rows=int(counts["pending"]),
    )
