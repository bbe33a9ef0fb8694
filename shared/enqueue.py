"""Enqueueing a campaign: contacts are normalised and de-duplicated, added to the campaign,
and each contact's sequence is started (step 1 queued) in one transaction.

The seed incidents duplicated contacts in the request (003) and raced two enqueues of the
same sequence step (004). Here the database decides: contacts are unique per (channel,
address), memberships per (campaign, contact) and queue rows per (campaign, contact, step),
and every insert is ON CONFLICT DO NOTHING, so a repeated, retried or concurrent enqueue can
only ever add what is missing. Addresses reach that constraint in one canonical form
(``shared.addresses``), so two spellings of one number are one contact.

Only step 1 is queued here; each later step is queued when the one before it is sent
(``shared.sequences``). A contact another campaign of the same sender queued or messaged
recently is skipped (the cross-campaign policy, seed 000), with the reason recorded.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from pydantic import BaseModel

from shared import admission
from shared.addresses import AddressProblem, InvalidAddressError, mask_address, normalise_address
from shared.content import StepTemplate
from shared.events import EnqueueContact, EnqueueRequest, EnqueueStep
from shared.providers.outcome import Channel
from shared.providers.registry import channel_spec
from shared.sequences import EngineConfig, QueueingResult, queue_waiting_contacts
from shared.storage import sql
from shared.storage.db import Database

__all__ = [
    "MAX_INVALID_EXAMPLES",
    "CampaignClosedError",
    "CampaignConflictError",
    "CampaignSenderConflictError",
    "EnqueueReport",
    "InvalidAddressError",
    "InvalidContact",
    "StepRejectedError",
    "UnknownCampaignError",
    "enqueue_campaign",
    "normalise_address",
]

# The report names this many refused contacts; the rest are only counted. 50,000 refused
# addresses echoed whole made a 6.99 MB answer, over Lambda's 6 MB response limit.
MAX_INVALID_EXAMPLES = 20


class CampaignConflictError(ValueError):
    """The campaign id exists and the request describes it differently (steps, policy).
    Raised inside the transaction, so nothing the request would have written is kept."""


class CampaignSenderConflictError(CampaignConflictError):
    """The campaign id exists and does not send from this sender account. Raised inside the
    enqueue transaction, so nothing the request would have written is kept."""


class CampaignClosedError(ValueError):
    """The campaign was cancelled: nothing more is added to it."""


class UnknownCampaignError(LookupError):
    pass


class InvalidContact(BaseModel):
    index: int  # position in the request's `contacts`, to find it in the source list
    address: str  # masked: enough to recognise, not the whole number or id
    reason: AddressProblem
    detail: str


class EnqueueReport(BaseModel):
    campaign_id: str
    campaign_status: str
    sender_default_region: str | None
    contacts_received: int
    duplicate_contacts_dropped: int
    invalid_contacts: int
    invalid_by_reason: dict[str, int]
    invalid_examples: list[InvalidContact]
    # Step-1 rows this request queued, and contacts of it whose sequence had started before.
    rows_enqueued: int
    rows_already_queued: int
    # Contacts of this request never queued in this campaign, by reason (cross_campaign).
    contacts_skipped: int
    skipped_by_reason: dict[str, int]
    assigned_by_sender: dict[str, int]
    # Contacts left out because they are suppressed, or because a step cannot be sent to them
    # (a variable they lack, an empty or too long text: shared.content; a step needing Meta's
    # 24-hour window they could never be in, "window_closed": shared.windows), with the reasons.
    contacts_suppressed: int = 0
    contacts_rejected: int = 0
    rejected_by_reason: dict[str, int] = {}
    rejected_examples: list[admission.RejectedContact] = []


@dataclass
class NormalisedContacts:
    region: str | None
    unique: dict[str, str] = field(default_factory=dict)  # stored address -> display name
    index_of: dict[str, int] = field(default_factory=dict)  # stored address -> first request index
    invalid_by_reason: Counter[str] = field(default_factory=Counter)
    invalid_examples: list[InvalidContact] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        return sum(self.invalid_by_reason.values())


def normalise_contacts(
    channel: Channel, contacts: Sequence[EnqueueContact], region: str | None
) -> NormalisedContacts:
    result = NormalisedContacts(region)
    for index, contact in enumerate(contacts):
        try:
            address = normalise_address(channel, contact.address, region)
        except InvalidAddressError as exc:
            result.invalid_by_reason[exc.problem.value] += 1
            if len(result.invalid_examples) < MAX_INVALID_EXAMPLES:
                result.invalid_examples.append(
                    InvalidContact(
                        index=index,
                        address=mask_address(channel, contact.address),
                        reason=exc.problem,
                        detail=exc.detail,
                    )
                )
            continue
        result.unique.setdefault(address, contact.display_name)
        result.index_of.setdefault(address, index)
    return result


def stored_region(db: Database, channel: Channel, provider_account_id: str, given: str | None) -> str | None:
    if given is not None or channel is not Channel.WHATSAPP:
        return given
    found = db.fetch_one(
        sql.SENDER_DEFAULT_REGION, {"channel": channel.value, "provider_account_id": provider_account_id}
    )
    return None if found is None else found["default_region"]


def upsert_sender(
    conn: psycopg.Connection[DictRow], channel: Channel, provider_account_id: str, region: str | None
) -> dict[str, Any]:
    params = {"channel": channel.value, "provider_account_id": provider_account_id, "default_region": region}
    row = (
        conn.execute(sql.UPSERT_SENDER, params).fetchone()
        or conn.execute(sql.SENDER_BY_NATURAL_KEY, params).fetchone()
    )
    assert row is not None
    return dict(row)


def step_params(campaign_id: UUID, steps: Sequence[EnqueueStep]) -> dict[str, Any]:
    return {
        "campaign_id": campaign_id,
        "message_types": [s.message_type for s in steps],
        "bodies": [s.body for s in steps],
        "delays": [s.delay_seconds for s in steps],
        "actions": [s.action.value for s in steps],
        "contents": [json.dumps(s.content, sort_keys=True) if s.content is not None else None for s in steps],
        "after_events": [s.after_event for s in steps],
        "event_timeouts": [s.event_timeout_seconds for s in steps],
        "send_ats": [s.send_at for s in steps],
        "send_at_timezones": [s.send_at_timezone for s in steps],
    }


StoredStep = tuple[str, str, int, str, dict[str, Any] | None, str | None, int | None, datetime | None]


def stored_steps(conn: psycopg.Connection[DictRow], campaign_id: UUID) -> list[StoredStep]:
    rows = conn.execute(sql.CAMPAIGN_STEPS, {"campaign_id": campaign_id}).fetchall()
    return [
        (
            r["message_type"],
            r["body"],
            r["delay_seconds"],
            r["action"],
            r["content"],
            r["after_event"],
            r["event_timeout_seconds"],
            r["send_at"],
        )
        for r in rows
    ]


def as_stored(steps: Sequence[EnqueueStep]) -> list[StoredStep]:
    return [
        (
            s.message_type,
            s.body,
            s.delay_seconds,
            s.action.value,
            s.content,
            s.after_event,
            s.event_timeout_seconds,
            s.send_at,
        )
        for s in steps
    ]


class StepRejectedError(ValueError):
    """A step names something the provider would refuse (an unapproved or paused WhatsApp
    template, a wrong parameter count). Raised inside the transaction: nothing is written."""


def reject_unsendable_steps(
    conn: psycopg.Connection[DictRow],
    channel: Channel,
    sender_ids: Sequence[UUID],
    steps: Sequence[EnqueueStep],
) -> None:
    spec = channel_spec(channel)
    for step in steps:
        if step.content is None:
            continue
        parsed = spec.parse_content(step.content)
        for sender_id in sender_ids:
            problem = spec.enqueue_problem(conn, sender_id, parsed)
            if problem is not None:
                raise StepRejectedError(f"step {step.message_type}: {problem}. Nothing was enqueued.")


def hold_campaign(conn: psycopg.Connection[DictRow], campaign_id: UUID) -> dict[str, Any]:
    """Hold the campaign row while contacts are added: in SHARE mode, so enqueues run side by
    side while a pause, cancel or completion waits for them. A completed campaign is held
    exclusively instead, because adding contacts reopens it (nothing of it is in flight, so
    holding it up costs nothing). If it completes between the read and the lock, the SHARE
    lock is upgraded by the reopen: two enqueues doing that at the same instant deadlock and
    Postgres aborts one, which its caller retries."""
    row = conn.execute(sql.CAMPAIGN_ROW, {"campaign_id": campaign_id}).fetchone()
    if row is None:
        raise UnknownCampaignError(f"no campaign {campaign_id}")
    lock = sql.LOCK_CAMPAIGN if row["status"] == "completed" else sql.LOCK_CAMPAIGN_SHARED
    locked = conn.execute(lock, {"campaign_id": campaign_id}).fetchone()
    assert locked is not None
    return {**row, "status": locked["status"]}


def add_members(
    conn: psycopg.Connection[DictRow],
    campaign_id: UUID,
    channel: Channel,
    contacts: Mapping[str, str],
    rendered: Mapping[str, list[str]] | None = None,
) -> list[UUID]:
    """Upsert the contacts, lock them (see ``sql.LOCK_CONTACTS``) and make them members of the
    campaign, each new one with its rendered texts (``shared.admission``); returns their ids.
    New members wait until their sequence is started."""
    # Sorted: concurrent inserts of overlapping contact lists take their locks in one order.
    addresses = sorted(contacts)
    conn.execute(
        sql.UPSERT_CONTACTS,
        {"channel": channel.value, "addresses": addresses, "display_names": [contacts[a] for a in addresses]},
    )
    rows = conn.execute(sql.LOCK_CONTACTS, {"channel": channel.value, "addresses": addresses}).fetchall()
    ids = [r["id"] for r in rows]
    texts = rendered or {}
    conn.execute(
        sql.ADD_CAMPAIGN_CONTACTS,
        {
            "campaign_id": campaign_id,
            "contact_ids": ids,
            "rendered": [json.dumps(texts[r["address"]]) if r["address"] in texts else None for r in rows],
        },
    )
    return ids


def start_members(
    conn: psycopg.Connection[DictRow],
    campaign: Mapping[str, Any],
    config: EngineConfig,
    contact_ids: Sequence[UUID] | None,
    decided_by: str,
) -> QueueingResult:
    """Queue step 1 for waiting members of a campaign that runs (active, paused or completed;
    a completed one is reopened when that queues anything)."""
    if campaign["status"] not in ("active", "paused", "completed"):
        return QueueingResult()
    result = queue_waiting_contacts(conn, campaign, config, contact_ids)
    if campaign["status"] == "completed" and result.rows_queued:
        conn.execute(
            sql.SET_CAMPAIGN_STATUS,
            {
                "campaign_id": campaign["id"],
                "from_statuses": ["completed"],
                "from_status": "completed",
                "to_status": "active",
                "action": "reopen",
                "decided_by": decided_by,
                "reason": "contacts added",
            },
        )
    return result


def pool_conflict(campaign_id: UUID, pool: Sequence[Mapping[str, Any]], channel: Channel, sender: str) -> str:
    accounts = ", ".join(repr(p["provider_account_id"]) for p in pool)
    plural = "s" if len(pool) > 1 else ""
    return (
        f"campaign {campaign_id} sends from {pool[0]['channel']} sender account{plural} {accounts}, "
        f"not from {channel.value} sender account {sender!r}: a campaign sends from its own pool, so use "
        "a new campaign_id for this sender. Nothing was enqueued."
    )


def admit_contacts(
    conn: psycopg.Connection[DictRow],
    campaign_id: UUID,
    channel: Channel,
    steps: Sequence[EnqueueStep],
    given: Sequence[EnqueueContact],
    contacts: NormalisedContacts,
    *,
    windows: bool = False,
) -> admission.Admission:
    """Suppression, personalisation and (``windows``) the 24-hour windows
    (``shared.admission``) for the normalised contacts."""
    pool = [p["id"] for p in conn.execute(sql.CAMPAIGN_POOL, {"campaign_id": campaign_id}).fetchall()]
    return admission.admit(
        conn,
        campaign_id=campaign_id,
        channel=channel,
        sender_ids=pool,
        steps=[StepTemplate(s.body, s.action) for s in steps],
        profiles=admission.profiles_of(given, contacts.index_of),
        origin=contacts.index_of,
        windows=windows,
    )


def enqueue_campaign(
    db: Database, request: EnqueueRequest, *, max_attempts: int = 5, config: EngineConfig | None = None
) -> EnqueueReport:
    config = config or EngineConfig(max_attempts=max_attempts)
    # Only phone numbers depend on the region; normalising before the transaction keeps the
    # sender row (locked by the upsert) free while 50,000 numbers are parsed.
    region = stored_region(db, request.channel, request.sender_provider_id, request.sender_default_region)
    contacts = normalise_contacts(request.channel, request.contacts, region)

    with db.connection() as conn, conn.transaction():
        sender = upsert_sender(
            conn, request.channel, request.sender_provider_id, request.sender_default_region
        )
        if request.channel is Channel.WHATSAPP and sender["default_region"] != contacts.region:
            # Another request changed the sender's region since it was read.
            contacts = normalise_contacts(request.channel, request.contacts, sender["default_region"])
        created = conn.execute(
            sql.UPSERT_CAMPAIGN,
            {
                "campaign_id": request.campaign_id,
                "name": request.campaign_name,
                "sender_account_id": sender["id"],
                "status": "active",
                "cross_campaign_policy": request.cross_campaign_policy or "skip",
            },
        ).fetchone()
        if created is not None:
            conn.execute(
                sql.ADD_CAMPAIGN_SENDER,
                {"campaign_id": request.campaign_id, "sender_account_id": sender["id"]},
            )
            conn.execute(sql.INSERT_CAMPAIGN_STEPS, step_params(request.campaign_id, request.steps))
            if request.send_at is not None:
                conn.execute(
                    sql.SET_CAMPAIGN_SEND_AT,
                    {
                        "campaign_id": request.campaign_id,
                        "send_at": request.send_at,
                        "send_at_timezone": request.send_at_timezone,
                    },
                )
            conn.execute(
                sql.RECORD_CAMPAIGN_DECISION,
                {
                    "campaign_id": request.campaign_id,
                    "action": "create",
                    "from_status": None,
                    "to_status": "active",
                    "decided_by": "enqueue",
                    "reason": "first enqueue of this campaign",
                },
            )
        campaign = hold_campaign(conn, request.campaign_id)
        _check_same_campaign(conn, request, sender["id"], campaign)
        reject_unsendable_steps(conn, request.channel, [sender["id"]], request.steps)
        if campaign["status"] == "cancelled":
            raise CampaignClosedError(f"campaign {request.campaign_id} is cancelled; nothing was enqueued")
        admitted = admit_contacts(
            conn,
            request.campaign_id,
            request.channel,
            request.steps,
            request.contacts,
            contacts,
            windows=config.channel_windows,
        )
        ids = add_members(conn, request.campaign_id, request.channel, admitted.admitted, admitted.rendered)
        admission.store(conn, request.channel, admitted)
        result = start_members(conn, campaign, config, ids, "enqueue")
        states = conn.execute(
            sql.MEMBERSHIP_STATES, {"campaign_id": request.campaign_id, "contact_ids": ids}
        ).fetchall()
        status_after = conn.execute(sql.CAMPAIGN_ROW, {"campaign_id": request.campaign_id}).fetchone()
        assert status_after is not None

    skipped = Counter(r["stop_cause"] for r in states if r["sequence_state"] == "skipped")
    started = sum(1 for r in states if r["sequence_state"] not in ("waiting", "skipped"))
    addresses = len(contacts.unique)
    return EnqueueReport(
        contacts_suppressed=admitted.suppressed,
        contacts_rejected=admitted.rejected,
        rejected_by_reason=dict(admitted.rejected_by_reason),
        rejected_examples=admitted.rejected_examples,
        campaign_id=str(request.campaign_id),
        campaign_status=status_after["status"],
        sender_default_region=sender["default_region"],
        contacts_received=len(request.contacts),
        duplicate_contacts_dropped=len(request.contacts) - contacts.invalid - addresses,
        invalid_contacts=contacts.invalid,
        invalid_by_reason=dict(contacts.invalid_by_reason),
        invalid_examples=contacts.invalid_examples,
        rows_enqueued=result.rows_queued,
        rows_already_queued=started - result.rows_queued,
        contacts_skipped=sum(skipped.values()),
        skipped_by_reason=dict(skipped),
        assigned_by_sender=result.assigned_by_sender,
    )


def _check_same_campaign(
    conn: psycopg.Connection[DictRow], request: EnqueueRequest, sender_id: UUID, campaign: Mapping[str, Any]
) -> None:
    pool = conn.execute(sql.CAMPAIGN_POOL, {"campaign_id": request.campaign_id}).fetchall()
    if sender_id not in {p["id"] for p in pool}:
        raise CampaignSenderConflictError(
            pool_conflict(request.campaign_id, pool, request.channel, request.sender_provider_id)
        )
    steps = stored_steps(conn, request.campaign_id)
    if steps != as_stored(request.steps):
        raise CampaignConflictError(
            f"campaign {request.campaign_id} has the steps {[s[0] for s in steps]} (with their own bodies, "
            f"delays and actions); this request describes {[s.message_type for s in request.steps]} "
            "differently. A campaign's steps do not change; use a new campaign_id. Nothing was enqueued."
        )
    policy = request.cross_campaign_policy
    if policy is not None and policy != campaign["cross_campaign_policy"]:
        stored = campaign["cross_campaign_policy"]
        raise CampaignConflictError(
            f"campaign {request.campaign_id} has cross_campaign_policy {stored!r}, not {policy!r}. "
            "Nothing was enqueued."
        )
