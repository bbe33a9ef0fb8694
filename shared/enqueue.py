"""Enqueueing a campaign: contacts are normalised and de-duplicated, then every step is
inserted once per contact in one transaction.

The seed incidents duplicated contacts in the request (003) and raced two enqueues of the
same sequence step (004). Here the database decides: contacts are unique per (channel,
address) and queue rows per (campaign, contact, step), and every insert is ON CONFLICT DO
NOTHING, so a repeated, retried or concurrent enqueue can only ever add what is missing.
Addresses reach that constraint in one canonical form (``shared.addresses``), so two
spellings of one number are one contact.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from shared.addresses import AddressProblem, InvalidAddressError, mask_address, normalise_address
from shared.events import EnqueueRequest
from shared.providers.outcome import Channel
from shared.storage import sql
from shared.storage.db import Database

__all__ = [
    "MAX_INVALID_EXAMPLES",
    "CampaignSenderConflictError",
    "EnqueueReport",
    "InvalidAddressError",
    "InvalidContact",
    "enqueue_campaign",
    "normalise_address",
]

# The report names this many refused contacts; the rest are only counted. 50,000 refused
# addresses echoed whole made a 6.99 MB answer, over Lambda's 6 MB response limit.
MAX_INVALID_EXAMPLES = 20


class CampaignSenderConflictError(ValueError):
    """The campaign id exists and sends from another sender account. Raised inside the
    enqueue transaction, so nothing the request would have written is kept."""


class InvalidContact(BaseModel):
    index: int  # position in the request's `contacts`, to find it in the source list
    address: str  # masked: enough to recognise, not the whole number or id
    reason: AddressProblem
    detail: str


class EnqueueReport(BaseModel):
    campaign_id: str
    sender_default_region: str | None
    contacts_received: int
    duplicate_contacts_dropped: int
    invalid_contacts: int
    invalid_by_reason: dict[str, int]
    invalid_examples: list[InvalidContact]
    rows_enqueued: int
    rows_already_queued: int


@dataclass
class _Contacts:
    region: str | None
    unique: dict[str, str] = field(default_factory=dict)  # stored address -> display name
    invalid_by_reason: Counter[str] = field(default_factory=Counter)
    invalid_examples: list[InvalidContact] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        return sum(self.invalid_by_reason.values())


def _normalise_contacts(request: EnqueueRequest, region: str | None) -> _Contacts:
    contacts = _Contacts(region)
    for index, contact in enumerate(request.contacts):
        try:
            address = normalise_address(request.channel, contact.address, region)
        except InvalidAddressError as exc:
            contacts.invalid_by_reason[exc.problem.value] += 1
            if len(contacts.invalid_examples) < MAX_INVALID_EXAMPLES:
                contacts.invalid_examples.append(
                    InvalidContact(
                        index=index,
                        address=mask_address(request.channel, contact.address),
                        reason=exc.problem,
                        detail=exc.detail,
                    )
                )
            continue
        contacts.unique.setdefault(address, contact.display_name)
    return contacts


def _stored_region(db: Database, request: EnqueueRequest) -> str | None:
    if request.sender_default_region is not None:
        return request.sender_default_region
    found = db.fetch_one(
        sql.SENDER_DEFAULT_REGION,
        {"channel": request.channel.value, "provider_account_id": request.sender_provider_id},
    )
    return None if found is None else found["default_region"]


def enqueue_campaign(db: Database, request: EnqueueRequest, *, max_attempts: int = 5) -> EnqueueReport:
    # Only phone numbers depend on the region; normalising before the transaction keeps the
    # sender row (locked by the upsert) free while 50,000 numbers are parsed.
    reads_region = request.channel is Channel.WHATSAPP
    contacts = _normalise_contacts(request, _stored_region(db, request) if reads_region else None)

    with db.connection() as conn, conn.transaction():
        sender = conn.execute(
            sql.UPSERT_SENDER,
            {
                "channel": request.channel.value,
                "provider_account_id": request.sender_provider_id,
                "default_region": request.sender_default_region,
            },
        ).fetchone()
        assert sender is not None
        if reads_region and sender["default_region"] != contacts.region:
            # Another request changed the sender's region since it was read.
            contacts = _normalise_contacts(request, sender["default_region"])
        conn.execute(
            sql.UPSERT_CAMPAIGN,
            {
                "campaign_id": request.campaign_id,
                "name": request.campaign_name,
                "sender_account_id": sender["id"],
            },
        )
        owner = conn.execute(sql.CAMPAIGN_SENDER, {"campaign_id": request.campaign_id}).fetchone()
        assert owner is not None
        if owner["sender_account_id"] != sender["id"]:
            raise CampaignSenderConflictError(
                f"campaign {request.campaign_id} sends from {owner['channel']} sender account "
                f"{owner['provider_account_id']!r}, not from {request.channel.value} sender account "
                f"{request.sender_provider_id!r}: one campaign sends from one account, so use a new "
                "campaign_id for this sender. Nothing was enqueued."
            )
        addresses = list(contacts.unique)
        params: dict[str, Any] = {
            "channel": request.channel.value,
            "campaign_id": request.campaign_id,
            "addresses": addresses,
            "display_names": [contacts.unique[a] for a in addresses],
            "message_types": [s.message_type for s in request.steps],
            "bodies": [s.body for s in request.steps],
            "delays": [s.delay_seconds for s in request.steps],
            "max_attempts": max_attempts,
        }
        conn.execute(sql.ADD_CAMPAIGN_SENDER, {**params, "sender_account_id": sender["id"]})
        conn.execute(sql.UPSERT_CONTACTS, params)
        conn.execute(sql.ADD_CAMPAIGN_CONTACTS, params)
        inserted = conn.execute(sql.ENQUEUE_STEPS, {**params, "sender_account_id": sender["id"]}).fetchall()

    expected_rows = len(addresses) * len(request.steps)
    return EnqueueReport(
        campaign_id=str(request.campaign_id),
        sender_default_region=sender["default_region"],
        contacts_received=len(request.contacts),
        duplicate_contacts_dropped=len(request.contacts) - contacts.invalid - len(addresses),
        invalid_contacts=contacts.invalid,
        invalid_by_reason=dict(contacts.invalid_by_reason),
        invalid_examples=contacts.invalid_examples,
        rows_enqueued=len(inserted),
        rows_already_queued=expected_rows - len(inserted),
    )
