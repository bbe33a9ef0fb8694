"""Sequences: which contacts start one, from which sender, and how a sequence stops.

A contact's sequence in a campaign (``campaign_contacts``) is a small state machine:

    waiting -> active -> completed
                 |  \\-> halted -> active (the halted step is sent after all)
                 v
    (any but skipped) -> stopped        skipped (the cross-campaign policy; never queued)

Step 1 is queued when the contact starts (``queue_waiting_contacts``); each later step is
queued by the statement that settles the previous one ``sent`` (``sql.SETTLE_SENT``), so no
process, crash or race can skip, repeat or reorder a step, and nothing follows a step that
ended ``failed``, ``unknown`` or ``cancelled``.

A stop (a reply, an opt-out, an operator, a configured provider event, a cancelled campaign)
is two statements in one transaction: the first locks and stops the sequences, the second,
with a fresh snapshot, cancels their pending rows. SETTLE_SENT locks the same sequence row
before queueing a next step, so whichever runs second sees the other: a step queued just
before the stop is cancelled by the stop's second statement, and a settle after the stop
queues nothing. A step already claimed is refused at the recovery point (``MARK_SENDING``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from pydantic import BaseModel

from shared.addresses import normalise_address
from shared.config import Settings
from shared.pacing import WEEK, Action, PacingPolicy, Usage, cap_room, local_day_start, policy_from_settings
from shared.providers.outcome import Channel
from shared.storage import sql
from shared.storage.db import Database


class StopCause(StrEnum):
    REPLY = "reply"
    OPT_OUT = "opt_out"
    OPERATOR = "operator"
    EVENT = "event"
    CAMPAIGN_CANCELLED = "campaign_cancelled"
    # Set by the sweeper only: the event a step waited for did not come in time.
    EVENT_TIMEOUT = "event_timeout"


class SkipReason(StrEnum):
    CROSS_CAMPAIGN = "cross_campaign"


@dataclass(frozen=True)
class EngineConfig:
    """What starting sequences needs besides the database, from ``Settings``."""

    max_attempts: int = 5
    cross_campaign_window: timedelta = timedelta(days=30)
    pacing: PacingPolicy = field(default_factory=PacingPolicy)
    # Refuse at enqueue a contact a window step could never reach (shared.windows). Off in a
    # bare config, like its unpaced policy (the library's tests enqueue to contacts that never
    # wrote); deployed functions build it from Settings, where it is on by default.
    channel_windows: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            max_attempts=settings.max_attempts,
            cross_campaign_window=timedelta(seconds=settings.cross_campaign_window_seconds),
            pacing=policy_from_settings(settings),
            channel_windows=settings.channel_windows,
        )


# --- stops -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContactStop:
    """One contact to stop: its address on the channel, why, and (for a configured event) the
    event names that must appear in a campaign's ``stop_on_events`` for it to stop there."""

    address: str
    reason: str
    event_names: tuple[str, ...] = ()


class StopReport(BaseModel):
    sequences_stopped: int
    campaigns: list[str]
    rows_cancelled: int


def stop_contacts_in(
    conn: psycopg.Connection[DictRow],
    channel: Channel,
    stops: Sequence[ContactStop],
    cause: StopCause,
    *,
    decided_by: str,
    campaign_id: UUID | None = None,
) -> StopReport:
    """Stop these contacts' sequences, inside the caller's transaction (the webhook stops in
    the transaction that stores the reply, so the two commit together or not at all)."""
    addresses: list[str] = []
    names: list[str | None] = []
    reasons: list[str] = []
    for stop in stops:
        for name in stop.event_names or (None,):
            addresses.append(stop.address)
            names.append(name)
            reasons.append(stop.reason)
    if not addresses:
        return StopReport(sequences_stopped=0, campaigns=[], rows_cancelled=0)
    stopped = conn.execute(
        sql.STOP_SEQUENCES,
        {
            "channel": channel.value,
            "addresses": addresses,
            "event_names": names,
            "reasons": reasons,
            "cause": cause.value,
            "campaign_id": campaign_id,
        },
    ).fetchall()
    cancelled = 0
    if stopped:
        row = conn.execute(
            sql.CANCEL_STOPPED_ROWS,
            {
                "campaign_ids": [r["campaign_id"] for r in stopped],
                "contact_ids": [r["contact_id"] for r in stopped],
                "decided_by": decided_by,
            },
        ).fetchone()
        cancelled = int(row["cancelled"]) if row else 0
    return StopReport(
        sequences_stopped=len(stopped),
        campaigns=sorted({str(r["campaign_id"]) for r in stopped}),
        rows_cancelled=cancelled,
    )


def stop_contact(
    db: Database,
    channel: Channel,
    address: str,
    *,
    cause: StopCause,
    reason: str,
    decided_by: str,
    campaign_id: UUID | None = None,
    region: str | None = None,
) -> StopReport:
    """Stop one contact's sequences for good: in ``campaign_id``, or in every campaign that
    holds it. Its pending rows are cancelled; a row already claimed is refused when the
    dispatcher tries to send it; a row already ``sending`` finishes. For keyword opt-outs
    (issue 8) call it with ``cause=StopCause.OPT_OUT``; ``address`` is read like an enqueued
    one (``region`` reads a national-format phone number)."""
    stored = normalise_address(channel, address, region)
    with db.connection() as conn, conn.transaction():
        return stop_contacts_in(
            conn,
            channel,
            [ContactStop(stored, reason or cause.value)],
            cause,
            decided_by=decided_by,
            campaign_id=campaign_id,
        )


# --- starting sequences ----------------------------------------------------------------------


@dataclass(frozen=True)
class SenderLoad:
    """One sender of a pool as balancing sees it. ``room``: how many more rows of the first
    step's action it can take today after what is already queued for it (``None``: no cap);
    a paused or disabled sender has none."""

    sender_id: UUID
    room: int | None
    contacts: int


def assign_senders(count: int, loads: Sequence[SenderLoad]) -> list[UUID]:
    """Give each of ``count`` new contacts the sender with the most room left today, then the
    fewest contacts in this campaign (water-filling): uncapped senders share evenly, capped
    ones take what their caps allow first, and once no sender has room left (or all are
    paused) the contacts even out by count."""
    if not loads:
        raise ValueError("a campaign needs at least one sender")
    room = {load.sender_id: math.inf if load.room is None else float(load.room) for load in loads}
    carried = {load.sender_id: load.contacts for load in loads}
    order = [load.sender_id for load in loads]
    assigned: list[UUID] = []
    for _ in range(count):
        best = max(order, key=lambda s: (max(room[s], 0.0), -carried[s]))
        assigned.append(best)
        room[best] -= 1
        carried[best] += 1
    return assigned


def _pool_loads(
    conn: psycopg.Connection[DictRow], campaign_id: UUID, action: Action, policy: PacingPolicy, now: datetime
) -> list[SenderLoad]:
    senders = conn.execute(
        sql.POOL_SENDERS_FOR_ASSIGNMENT, {"campaign_id": campaign_id, "action": action.value}
    ).fetchall()
    contacts = {
        r["sender_account_id"]: int(r["contacts"])
        for r in conn.execute(sql.POOL_ASSIGNED_CONTACTS, {"campaign_id": campaign_id}).fetchall()
    }
    pacing = {row["id"]: policy.effective(row) for row in senders}
    usage: dict[UUID, Usage] = {}
    capped = [row["id"] for row in senders if pacing[row["id"]].has_caps]
    if capped:
        for r in conn.execute(
            sql.SENDER_USAGE,
            {
                "sender_ids": capped,
                "day_starts": [local_day_start(pacing[s], now) for s in capped],
                "week_start": now - WEEK,
            },
        ).fetchall():
            if r["action"] == action.value:
                usage[r["sender_account_id"]] = Usage(int(r["today"]), int(r["this_week"]))
    loads = []
    for row in senders:
        paused = row["status"] != "active" or (row["paused_until"] is not None and row["paused_until"] > now)
        cap = cap_room(pacing[row["id"]], action, usage.get(row["id"], Usage()), now)
        room = 0 if paused else (None if cap is None else cap - int(row["pending"]))
        loads.append(SenderLoad(row["id"], room, contacts.get(row["id"], 0)))
    return loads


class QueueingResult(BaseModel):
    contacts_started: int = 0
    rows_queued: int = 0
    skipped_by_reason: dict[str, int] = {}
    assigned_by_sender: dict[str, int] = {}


def queue_waiting_contacts(
    conn: psycopg.Connection[DictRow],
    campaign: Mapping[str, Any],
    config: EngineConfig,
    contact_ids: Sequence[UUID] | None = None,
) -> QueueingResult:
    """Start the sequences of the campaign's waiting contacts (``contact_ids``, or all of
    them), inside the caller's transaction, which must already hold the campaign row: skip
    those the cross-campaign policy excludes, give each of the others its sender, and queue
    step 1. The contacts are locked before the policy reads other campaigns' rows (see
    ``sql.LOCK_CONTACTS``)."""
    campaign_id = campaign["id"]
    if contact_ids is None:
        locked = conn.execute(sql.LOCK_WAITING_CONTACTS, {"campaign_id": campaign_id}).fetchall()
        contact_ids = [r["id"] for r in locked]
    if not contact_ids:
        return QueueingResult()
    ids = list(contact_ids)
    skipped: Counter[str] = Counter()
    if campaign["cross_campaign_policy"] == "skip":
        rows = conn.execute(
            sql.SKIP_RECENTLY_CONTACTED,
            {
                "campaign_id": campaign_id,
                "contact_ids": ids,
                "window_seconds": int(config.cross_campaign_window.total_seconds()),
            },
        ).fetchall()
        if rows:
            skipped[SkipReason.CROSS_CAMPAIGN.value] = len(rows)
            gone = {r["contact_id"] for r in rows}
            ids = [i for i in ids if i not in gone]
    states = {
        r["contact_id"]: r["sequence_state"]
        for r in conn.execute(
            sql.MEMBERSHIP_STATES, {"campaign_id": campaign_id, "contact_ids": ids}
        ).fetchall()
    }
    waiting = sorted((i for i in ids if states.get(i) == "waiting"), key=str)
    steps = conn.execute(sql.CAMPAIGN_STEPS, {"campaign_id": campaign_id}).fetchall()
    action = Action(steps[0]["action"]) if steps else Action.MESSAGE
    assigned_by: Counter[str] = Counter()
    if waiting:
        now = config.pacing.clock()
        loads = _pool_loads(conn, campaign_id, action, config.pacing, now)
        senders = assign_senders(len(waiting), loads)
        conn.execute(
            sql.ASSIGN_SENDERS,
            {"campaign_id": campaign_id, "contact_ids": waiting, "sender_ids": senders},
        )
        names = {
            r["id"]: r["provider_account_id"]
            for r in conn.execute(sql.CAMPAIGN_POOL, {"campaign_id": campaign_id}).fetchall()
        }
        assigned_by.update(names[s] for s in senders)
    queued = conn.execute(
        sql.QUEUE_FIRST_STEP,
        {"campaign_id": campaign_id, "contact_ids": waiting, "max_attempts": config.max_attempts},
    ).fetchall()
    return QueueingResult(
        contacts_started=len(waiting),
        rows_queued=len(queued),
        skipped_by_reason=dict(skipped),
        assigned_by_sender=dict(assigned_by),
    )
