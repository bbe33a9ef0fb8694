"""The campaign lifecycle, for operators (CLI and the control function) and the sweeper.

    draft --start--> active <--pause/resume--> paused
      \\               |  \\--(sweeper: nothing left to send)--> completed --(contacts added,
       \\              |                                                    a row requeued)--> active
        `--cancel-----+----cancel------------------------------------------> cancelled

* **Pause** stops the claim from serving the campaign; a row claimed before the pause goes back
  to ``pending`` at the recovery point (``MARK_SENDING``), its attempt refunded.
* **Resume** only makes the pending rows claimable again. Nothing is requeued or reset, so it
  never resends: a row that was sent stays sent, one that is ``unknown`` stays unknown.
* **Cancel** stops every running sequence and marks the pending and claimed rows
  ``cancelled``. Sent rows stay as they are; a ``sending`` row is in flight and settles from
  its outcome, and nothing follows it.
* **Completed** is set by the sweeper when nothing is queued or in flight, nobody waits to
  start, and no ``unknown`` row could still lead to a next step.

Every change is recorded in ``campaign_decisions`` with who did it and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from pydantic import BaseModel

from shared import admission
from shared.config import Settings
from shared.enqueue import (
    CampaignConflictError,
    UnknownCampaignError,
    add_members,
    admit_contacts,
    as_stored,
    hold_campaign,
    normalise_contacts,
    reject_unsendable_steps,
    start_members,
    step_params,
    stored_region,
    stored_steps,
    upsert_sender,
)
from shared.events import (
    CampaignSpec,
    CancelCampaign,
    ConfigureSender,
    ControlCommand,
    CreateCampaign,
    PauseCampaign,
    PauseSender,
    ResumeCampaign,
    ResumeSender,
    StartCampaign,
    StopContact,
)
from shared.observability import logger
from shared.pacing import policy_from_settings
from shared.senders import configure_sender, pause_sender, resume_sender, sender_status
from shared.sequences import EngineConfig, QueueingResult, StopCause, StopReport, stop_contact
from shared.storage import sql
from shared.storage.db import Database

__all__ = [
    "CampaignReport",
    "CampaignStateError",
    "CampaignStatus",
    "campaign_status",
    "cancel_campaign",
    "create_campaign",
    "pause_campaign",
    "resume_campaign",
    "run_control_command",
    "settle_campaigns",
    "start_campaign",
]

# Rows that raced a stop appear within a lease or two of it; a day covers them with room.
STRAGGLER_LOOKBACK = timedelta(days=1)


class CampaignStateError(ValueError):
    """The command does not apply to the campaign in its current state."""


class CampaignReport(BaseModel):
    campaign_id: str
    status: str
    changed: bool
    contacts_added: int = 0
    contacts_started: int = 0
    rows_queued: int = 0
    rows_cancelled: int = 0
    sequences_stopped: int = 0
    skipped_by_reason: dict[str, int] = {}
    assigned_by_sender: dict[str, int] = {}
    invalid_contacts: int = 0
    invalid_by_reason: dict[str, int] = {}
    contacts_suppressed: int = 0
    contacts_rejected: int = 0
    rejected_by_reason: dict[str, int] = {}


def _operator(name: str) -> str:
    return f"operator:{name}"


def _campaign(conn: psycopg.Connection[DictRow], campaign_id: UUID) -> dict[str, Any]:
    row = conn.execute(sql.CAMPAIGN_ROW, {"campaign_id": campaign_id}).fetchone()
    if row is None:
        raise UnknownCampaignError(f"no campaign {campaign_id}")
    return dict(row)


def _set_status(
    conn: psycopg.Connection[DictRow],
    campaign_id: UUID,
    source: str,
    target: str,
    action: str,
    decided_by: str,
    reason: str,
) -> bool:
    changed = conn.execute(
        sql.SET_CAMPAIGN_STATUS,
        {
            "campaign_id": campaign_id,
            "from_statuses": [source],
            "from_status": source,
            "to_status": target,
            "action": action,
            "decided_by": decided_by,
            "reason": reason,
        },
    ).fetchone()
    return changed is not None


def _queueing(report: CampaignReport, result: QueueingResult) -> CampaignReport:
    report.contacts_started = result.contacts_started
    report.rows_queued = result.rows_queued
    report.skipped_by_reason = result.skipped_by_reason
    report.assigned_by_sender = result.assigned_by_sender
    return report


# --- create, start ---------------------------------------------------------------------------


def create_campaign(
    db: Database, spec: CampaignSpec, *, operator: str, config: EngineConfig, start: bool = False
) -> CampaignReport:
    """Create the campaign in ``draft`` with its steps, sender pool, cross-campaign policy,
    stop events and contacts (waiting until it starts). Repeating the same create changes
    nothing and adds any new contacts; a different description of an existing campaign is a
    ``CampaignConflictError``. With ``start``, it starts in the same transaction."""
    first = spec.senders[0]
    region = stored_region(db, spec.channel, first, spec.sender_default_region)
    contacts = normalise_contacts(spec.channel, spec.contacts, region)
    who = _operator(operator)
    with db.connection() as conn, conn.transaction():
        senders = [upsert_sender(conn, spec.channel, s, spec.sender_default_region) for s in spec.senders]
        created = conn.execute(
            sql.CREATE_CAMPAIGN,
            {
                "campaign_id": spec.campaign_id,
                "name": spec.name,
                "sender_account_id": senders[0]["id"],
                "cross_campaign_policy": spec.cross_campaign_policy,
                "stop_on_events": list(spec.stop_on_events),
            },
        ).fetchone()
        if created is not None:
            for sender in senders:
                conn.execute(
                    sql.ADD_CAMPAIGN_SENDER,
                    {"campaign_id": spec.campaign_id, "sender_account_id": sender["id"]},
                )
            reject_unsendable_steps(conn, spec.channel, [s["id"] for s in senders], spec.steps)
            conn.execute(sql.INSERT_CAMPAIGN_STEPS, step_params(spec.campaign_id, spec.steps))
            if spec.send_at is not None:
                conn.execute(
                    sql.SET_CAMPAIGN_SEND_AT,
                    {
                        "campaign_id": spec.campaign_id,
                        "send_at": spec.send_at,
                        "send_at_timezone": spec.send_at_timezone,
                    },
                )
            conn.execute(
                sql.RECORD_CAMPAIGN_DECISION,
                {
                    "campaign_id": spec.campaign_id,
                    "action": "create",
                    "from_status": None,
                    "to_status": "draft",
                    "decided_by": who,
                    "reason": "",
                },
            )
        campaign = hold_campaign(conn, spec.campaign_id)
        if created is None:
            _check_same_spec(conn, spec, campaign)
        if contacts.unique and campaign["status"] == "cancelled":
            raise CampaignStateError(f"campaign {spec.campaign_id} is cancelled; no contacts were added")
        admitted = admit_contacts(
            conn,
            spec.campaign_id,
            spec.channel,
            spec.steps,
            spec.contacts,
            contacts,
            windows=config.channel_windows,
        )
        ids = (
            add_members(conn, spec.campaign_id, spec.channel, admitted.admitted, admitted.rendered)
            if admitted.admitted
            else []
        )
        admission.store(conn, spec.channel, admitted)
        if start and campaign["status"] == "draft":
            _set_status(conn, spec.campaign_id, "draft", "active", "start", who, "started at creation")
            campaign["status"] = "active"
            result = start_members(conn, campaign, config, None, who)
        else:
            result = start_members(conn, campaign, config, ids, who)
        status = _campaign(conn, spec.campaign_id)["status"]
    report = CampaignReport(
        campaign_id=str(spec.campaign_id),
        status=status,
        changed=created is not None,
        contacts_added=len(ids),
        invalid_contacts=contacts.invalid,
        invalid_by_reason=dict(contacts.invalid_by_reason),
        contacts_suppressed=admitted.suppressed,
        contacts_rejected=admitted.rejected,
        rejected_by_reason=dict(admitted.rejected_by_reason),
    )
    return _queueing(report, result)


def _check_same_spec(
    conn: psycopg.Connection[DictRow], spec: CampaignSpec, campaign: Mapping[str, Any]
) -> None:
    problems = []
    pool = conn.execute(sql.CAMPAIGN_POOL, {"campaign_id": spec.campaign_id}).fetchall()
    if campaign["channel"] != spec.channel.value:
        problems.append(f"channel is {campaign['channel']}")
    if sorted(p["provider_account_id"] for p in pool) != sorted(spec.senders):
        problems.append(f"senders are {sorted(p['provider_account_id'] for p in pool)}")
    if stored_steps(conn, spec.campaign_id) != as_stored(spec.steps):
        problems.append("steps differ")
    if campaign["cross_campaign_policy"] != spec.cross_campaign_policy:
        problems.append(f"cross_campaign_policy is {campaign['cross_campaign_policy']!r}")
    if sorted(campaign["stop_on_events"]) != sorted(spec.stop_on_events):
        problems.append(f"stop_on_events are {sorted(campaign['stop_on_events'])}")
    if problems:
        raise CampaignConflictError(
            f"campaign {spec.campaign_id} exists and differs: {'; '.join(problems)}. Nothing was changed."
        )


def start_campaign(db: Database, campaign_id: UUID, *, operator: str, config: EngineConfig) -> CampaignReport:
    """``draft -> active``: queue step 1 for every waiting contact. Starting an active
    campaign again only starts contacts still waiting (none, normally)."""
    who = _operator(operator)
    with db.connection() as conn, conn.transaction():
        campaign = _campaign(conn, campaign_id)
        locked = conn.execute(sql.LOCK_CAMPAIGN, {"campaign_id": campaign_id}).fetchone()
        assert locked is not None
        campaign["status"] = locked["status"]
        if campaign["status"] not in ("draft", "active"):
            raise CampaignStateError(
                f"campaign {campaign_id} is {campaign['status']}; only a draft campaign starts"
                + (" (use resume)" if campaign["status"] == "paused" else "")
            )
        changed = campaign["status"] == "draft" and _set_status(
            conn, campaign_id, "draft", "active", "start", who, ""
        )
        campaign["status"] = "active"
        result = start_members(conn, campaign, config, None, who)
    return _queueing(CampaignReport(campaign_id=str(campaign_id), status="active", changed=changed), result)


# --- pause, resume, cancel ---------------------------------------------------------------------


def _transition(
    db: Database,
    campaign_id: UUID,
    *,
    source: str,
    target: str,
    action: str,
    operator: str,
    reason: str,
) -> CampaignReport:
    with db.connection() as conn, conn.transaction():
        current = _campaign(conn, campaign_id)["status"]
        if current == target:
            return CampaignReport(campaign_id=str(campaign_id), status=current, changed=False)
        if current != source or not _set_status(
            conn, campaign_id, source, target, action, _operator(operator), reason
        ):
            now = _campaign(conn, campaign_id)["status"]
            raise CampaignStateError(
                f"campaign {campaign_id} is {now}; {action} applies only to "
                f"{'an' if source[0] in 'aeiou' else 'a'} {source} campaign"
            )
    return CampaignReport(campaign_id=str(campaign_id), status=target, changed=True)


def pause_campaign(db: Database, campaign_id: UUID, *, operator: str, reason: str = "") -> CampaignReport:
    """``active -> paused``. Its rows stay pending and are not claimed; a row already claimed
    returns to the queue at the recovery point, its attempt refunded; one already sending
    finishes."""
    return _transition(
        db, campaign_id, source="active", target="paused", action="pause", operator=operator, reason=reason
    )


def resume_campaign(db: Database, campaign_id: UUID, *, operator: str) -> CampaignReport:
    """``paused -> active``: the pending rows become claimable again. Nothing else changes, so
    nothing that was sent (or may have been) is sent again."""
    return _transition(
        db, campaign_id, source="paused", target="active", action="resume", operator=operator, reason=""
    )


def cancel_campaign(db: Database, campaign_id: UUID, *, operator: str, reason: str = "") -> CampaignReport:
    """Cancel a draft, active or paused campaign: its running sequences stop, its pending and
    claimed rows become ``cancelled``. Sent rows stay sent; a sending row finishes."""
    who = _operator(operator)
    why = f"campaign cancelled by {who}" + (f": {reason}" if reason else "")
    with db.connection() as conn, conn.transaction():
        current = _campaign(conn, campaign_id)["status"]
        if current == "cancelled":
            return CampaignReport(campaign_id=str(campaign_id), status=current, changed=False)
        changed = False
        for source in ("draft", "active", "paused"):
            if current == source:
                changed = _set_status(conn, campaign_id, source, "cancelled", "cancel", who, reason)
        if not changed:
            now = _campaign(conn, campaign_id)["status"]
            raise CampaignStateError(
                f"campaign {campaign_id} is {now}; only a draft, active or paused one cancels"
            )
        # Separate statements, in this order: see sql.STOP_CAMPAIGN_SEQUENCES.
        stopped = conn.execute(
            sql.STOP_CAMPAIGN_SEQUENCES, {"campaign_id": campaign_id, "reason": why}
        ).fetchall()
        row = conn.execute(
            sql.CANCEL_CAMPAIGN_ROWS, {"campaign_id": campaign_id, "reason": why, "decided_by": who}
        ).fetchone()
    return CampaignReport(
        campaign_id=str(campaign_id),
        status="cancelled",
        changed=True,
        sequences_stopped=len(stopped),
        rows_cancelled=int(row["cancelled"]) if row else 0,
    )


# --- the sweeper's step ----------------------------------------------------------------------------


class CampaignSweep(BaseModel):
    rows_cancelled: int = 0
    # Sequences stopped because the provider event their next step waits for never came.
    event_waits_expired: int = 0
    campaigns_completed: list[str] = []


def settle_campaigns(db: Database, *, limit: int) -> CampaignSweep:
    """Cancel rows that raced a stop, then complete every active campaign with nothing left to
    send. Each completion locks the campaign row first, then re-checks in a later statement,
    so an enqueue adding contacts (which holds the row in SHARE mode) is either seen or comes
    after and reopens it."""
    sweep = CampaignSweep()
    row = db.fetch_one(
        sql.CANCEL_STRAGGLERS, {"lookback_seconds": STRAGGLER_LOOKBACK.total_seconds(), "limit": limit}
    )
    sweep.rows_cancelled = int(row["cancelled"]) if row else 0
    sweep.event_waits_expired = len(db.fetch_all(sql.EXPIRE_EVENT_WAITS, {"limit": limit}))
    for candidate in db.fetch_all(sql.COMPLETABLE_CAMPAIGNS, {"limit": limit}):
        with db.connection() as conn, conn.transaction():
            conn.execute(sql.LOCK_CAMPAIGN, {"campaign_id": candidate["id"]})
            if conn.execute(sql.COMPLETE_CAMPAIGN, {"campaign_id": candidate["id"]}).fetchone():
                sweep.campaigns_completed.append(str(candidate["id"]))
    if sweep.campaigns_completed:
        logger.info("campaigns completed", extra={"campaigns": sweep.campaigns_completed})
    return sweep


# --- status ---------------------------------------------------------------------------------------


class StepStats(BaseModel):
    position: int
    message_type: str
    delay_seconds: int
    queued: int
    sent: int
    failed: int
    unknown: int
    cancelled: int
    replied: int


class SenderStats(BaseModel):
    provider_account_id: str
    channel: str
    paused_until: datetime | None
    pause_reason: str | None
    contacts: int
    queued: int
    sent: int
    failed: int
    unknown: int
    cancelled: int


class CampaignStatus(BaseModel):
    campaign_id: str
    name: str
    channel: str
    status: str
    cross_campaign_policy: str
    stop_on_events: list[str]
    steps: list[StepStats]
    senders: list[SenderStats]
    contacts: dict[str, int]  # "state" or "state:cause" -> contacts
    as_of: datetime


def campaign_status(db: Database, campaign_id: UUID) -> CampaignStatus:
    """Progress per step and per sender, counted from state (never from counters)."""
    with db.connection() as conn, conn.transaction():
        # One snapshot for every figure: a repeatable-read transaction.
        conn.execute(sql.READ_ONLY_SNAPSHOT)
        campaign = _campaign(conn, campaign_id)
        params = {"campaign_id": campaign_id}
        replied = {
            r["position"]: int(r["replied"])
            for r in conn.execute(sql.CAMPAIGN_REPLIES_BY_STEP, params).fetchall()
        }
        steps = [
            StepStats(**{**dict(r), "replied": replied.get(r["position"], 0)})
            for r in conn.execute(sql.CAMPAIGN_STEP_STATS, params).fetchall()
        ]
        senders = [
            SenderStats.model_validate({k: r[k] for k in SenderStats.model_fields})
            for r in conn.execute(sql.CAMPAIGN_SENDER_STATS, params).fetchall()
        ]
        contacts = {
            (f"{r['sequence_state']}:{r['stop_cause']}" if r["stop_cause"] else r["sequence_state"]): int(
                r["contacts"]
            )
            for r in conn.execute(sql.CAMPAIGN_CONTACT_STATES, params).fetchall()
        }
    return CampaignStatus(
        campaign_id=str(campaign_id),
        name=campaign["name"],
        channel=campaign["channel"],
        status=campaign["status"],
        cross_campaign_policy=campaign["cross_campaign_policy"],
        stop_on_events=list(campaign["stop_on_events"]),
        steps=steps,
        senders=senders,
        contacts=contacts,
        as_of=datetime.now(UTC),
    )


# --- the control function ------------------------------------------------------------------------


class StopContactReport(StopReport):
    channel: str
    address: str


def run_control_command(db: Database, settings: Settings, command: ControlCommand) -> BaseModel:
    """One operator command (the control function's event), by its library function."""
    config = EngineConfig.from_settings(settings)
    match command:
        case CreateCampaign():
            return create_campaign(
                db, command.campaign, operator=command.operator, config=config, start=command.start
            )
        case StartCampaign():
            return start_campaign(db, command.campaign_id, operator=command.operator, config=config)
        case PauseCampaign():
            return pause_campaign(db, command.campaign_id, operator=command.operator, reason=command.reason)
        case ResumeCampaign():
            return resume_campaign(db, command.campaign_id, operator=command.operator)
        case CancelCampaign():
            return cancel_campaign(db, command.campaign_id, operator=command.operator, reason=command.reason)
        case StopContact():
            stopped = stop_contact(
                db,
                command.channel,
                command.address,
                cause=StopCause.OPERATOR,
                reason=f"stopped by {_operator(command.operator)}"
                + (f": {command.reason}" if command.reason else ""),
                decided_by=_operator(command.operator),
                campaign_id=command.campaign_id,
            )
            return StopContactReport(
                **stopped.model_dump(), channel=command.channel.value, address=command.address
            )
        case PauseSender() | ResumeSender() | ConfigureSender():
            return _sender_command(db, settings, command)


def _sender_command(
    db: Database, settings: Settings, command: PauseSender | ResumeSender | ConfigureSender
) -> BaseModel:
    channel, account = command.channel, command.provider_account_id
    match command:
        case PauseSender():
            pause_sender(
                db, channel, account, until=command.until, reason=command.reason, operator=command.operator
            )
        case ResumeSender():
            resume_sender(db, channel, account, operator=command.operator)
        case ConfigureSender():
            configure_sender(db, channel, account, command.pacing, command.operator)
    return sender_status(db, policy_from_settings(settings), channel, account)
