"""Enqueueing a campaign: contacts are normalised and de-duplicated, then every step is
inserted once per contact in one transaction.

The seed incidents duplicated contacts in the request (003) and raced two enqueues of the
same sequence step (004). Here the database decides: contacts are unique per (channel,
address) and queue rows per (campaign, contact, step), and every insert is ON CONFLICT DO
NOTHING, so a repeated, retried or concurrent enqueue can only ever add what is missing.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from shared.events import EnqueueRequest
from shared.providers.outcome import Channel
from shared.storage import sql
from shared.storage.db import Database

_NON_DIGITS = re.compile(r"[\s\-().+]")


class InvalidAddressError(ValueError):
    pass


def normalise_address(channel: Channel, raw: str) -> str:
    address = raw.strip()
    if channel is Channel.WHATSAPP:
        digits = _NON_DIGITS.sub("", address)
        if not digits.isdigit() or not 8 <= len(digits) <= 15:
            raise InvalidAddressError(f"{raw!r} is not an E.164 phone number")
        return digits
    if not address or any(ch.isspace() for ch in address):
        raise InvalidAddressError(f"{raw!r} is not a {channel} recipient id")
    return address


class EnqueueReport(BaseModel):
    campaign_id: str
    contacts_received: int
    duplicate_contacts_dropped: int
    invalid_contacts: list[str]
    rows_enqueued: int
    rows_already_queued: int


def enqueue_campaign(db: Database, request: EnqueueRequest, *, max_attempts: int = 5) -> EnqueueReport:
    unique: dict[str, str] = {}
    invalid: list[str] = []
    for contact in request.contacts:
        try:
            address = normalise_address(request.channel, contact.address)
        except InvalidAddressError as exc:
            invalid.append(str(exc))
            continue
        unique.setdefault(address, contact.display_name)

    addresses = list(unique)
    params = {
        "channel": request.channel.value,
        "campaign_id": request.campaign_id,
        "addresses": addresses,
        "display_names": [unique[a] for a in addresses],
        "message_types": [s.message_type for s in request.steps],
        "bodies": [s.body for s in request.steps],
        "delays": [s.delay_seconds for s in request.steps],
        "max_attempts": max_attempts,
    }
    with db.connection() as conn, conn.transaction():
        sender = conn.execute(
            sql.UPSERT_SENDER,
            {"channel": request.channel.value, "provider_account_id": request.sender_provider_id},
        ).fetchone()
        assert sender is not None
        conn.execute(
            sql.UPSERT_CAMPAIGN,
            {
                "campaign_id": request.campaign_id,
                "name": request.campaign_name,
                "sender_account_id": sender["id"],
            },
        )
        owner = conn.execute(sql.CAMPAIGN_SENDER, params).fetchone()
        assert owner is not None
        if owner["sender_account_id"] != sender["id"]:
            raise ValueError(
                f"campaign {request.campaign_id} belongs to another sender account; "
                "one campaign sends from one account"
            )
        conn.execute(sql.ADD_CAMPAIGN_SENDER, {**params, "sender_account_id": sender["id"]})
        conn.execute(sql.UPSERT_CONTACTS, params)
        conn.execute(sql.ADD_CAMPAIGN_CONTACTS, params)
        inserted = conn.execute(sql.ENQUEUE_STEPS, {**params, "sender_account_id": sender["id"]}).fetchall()

    expected_rows = len(addresses) * len(request.steps)
    return EnqueueReport(
        campaign_id=str(request.campaign_id),
        contacts_received=len(request.contacts),
        duplicate_contacts_dropped=len(request.contacts) - len(invalid) - len(addresses),
        invalid_contacts=invalid,
        rows_enqueued=len(inserted),
        rows_already_queued=expected_rows - len(inserted),
    )
