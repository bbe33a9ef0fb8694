"""The 24-hour windows at enqueue: a contact is refused when a step that needs the window
could never be sent to it.

A step whose content needs the window (``ChannelSpec.window_rule``: WhatsApp free-form text
and media, Messenger RESPONSE and UPDATE, and the 7-day HUMAN_AGENT tag) may be sent only while
the contact's last message is younger than the window; before each send the dispatcher holds it
otherwise (the channels' ``hold_reason``). At enqueue this is decided once and for all, because
only a message from the contact reopens the window, and that message stops the sequence:

* the webhook records an inbound message (``sql.RECORD_INBOUND`` sets ``last_inbound_at``) in
  the transaction that stops the contact's sequences in every campaign (``StopCause.REPLY``:
  ``sql.STOP_SEQUENCES`` with no event name, states waiting, active, halted and completed; no
  campaign setting exempts a campaign from the reply stop);
* so for a sequence still running when a step is sent, ``last_inbound_at`` is the value read
  here, and a step first due at or after ``last_inbound_at`` + window is held for ever.

Such a contact is left out at enqueue with the reason (nothing is written for it), like a
contact whose text cannot be rendered. The check uses a lower bound of each step's due time,
so it only refuses what can never be sent; a step that may or may not fall in the window (a
delay the sender's hours stretch) is still held at send time as before.

Lower bounds, from the statements that queue the rows:

* step 1 (``sql.QUEUE_FIRST_STEP``): ``GREATEST(now() + delay, step send_at, campaign send_at)``,
  then moved into the sender's hours (only later); ``now()`` there is after this check runs;
* a later step (``sql.SETTLE_SENT``): ``GREATEST(sent_at + delay, step send_at)``, and the
  previous step was sent no earlier than its own due time (an operator's requeue or redrive
  only reschedules a row already due, to ``now()``);
* a step after an event (``sql.QUEUE_AFTER_EVENT``): queued only once the previous step was
  sent, so no earlier than that step's bound (the event's own time may be older) nor its
  ``send_at``.

The clock is this process's, as for the send-time check (``shared.dispatch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg
from psycopg.rows import DictRow

from shared.channels.content import WindowRule
from shared.providers.outcome import Channel
from shared.providers.registry import channel_spec
from shared.storage import sql

# The rejection reason's key in reports (``rejected_by_reason``).
WINDOW_CLOSED = "window_closed"


@dataclass(frozen=True)
class WindowStep:
    """What the check needs of one step (``position`` counts from 1)."""

    position: int
    message_type: str
    rule: WindowRule | None
    delay: timedelta = timedelta(0)
    send_at: datetime | None = None
    after_event: bool = False


@dataclass(frozen=True)
class Due:
    """A step that needs a window, and the earliest it can be sent."""

    step: WindowStep
    rule: WindowRule
    earliest: datetime


def earliest_dues(
    steps: Sequence[WindowStep], now: datetime, campaign_send_at: datetime | None = None
) -> list[Due]:
    """The window steps of a sequence starting ``now``, each with a lower bound of its send time."""
    dues: list[Due] = []
    bound = now
    for step in steps:
        floor = [bound if step.after_event else bound + step.delay]
        if step.send_at is not None:
            floor.append(step.send_at)
        if step.position == 1 and campaign_send_at is not None:
            floor.append(campaign_send_at)
        bound = max(floor)
        if step.rule is not None:
            dues.append(Due(step, step.rule, bound))
    return dues


def window_problem(dues: Sequence[Due], last_inbound_at: datetime | None, now: datetime) -> str | None:
    """Why this contact can never be sent one of these steps, or ``None``."""
    for due in dues:
        if due.rule.allows(last_inbound_at, due.earliest):
            continue
        step = due.step
        wrote = (
            "has never written"
            if last_inbound_at is None
            else f"last wrote at {last_inbound_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        )
        when = (
            "now"
            if due.earliest <= now
            else f"at {due.earliest.astimezone(UTC):%Y-%m-%d %H:%M} UTC at the earliest"
        )
        return (
            f"step {step.position} ({step.message_type}) needs {due.rule.rule}, but the contact {wrote} "
            f"and the step is due {when}, after that window has closed; a message from the "
            f"contact would stop the sequence, so it could never be sent: {due.rule.remedy}"
        )
    return None


def campaign_dues(
    conn: psycopg.Connection[DictRow], campaign_id: UUID, channel: Channel, now: datetime
) -> list[Due]:
    """The stored campaign's window steps (empty when none needs a window)."""
    spec = channel_spec(channel)
    rows = conn.execute(sql.WINDOW_STEPS, {"campaign_id": campaign_id}).fetchall()
    steps = [
        WindowStep(
            position=r["position"],
            message_type=r["message_type"],
            rule=spec.window_rule(None if r["content"] is None else spec.parse_content(r["content"])),
            delay=timedelta(seconds=r["delay_seconds"]),
            send_at=r["send_at"],
            after_event=r["after_event"] is not None,
        )
        for r in rows
    ]
    return earliest_dues(steps, now, rows[0]["campaign_send_at"] if rows else None)
