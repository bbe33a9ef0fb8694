"""Which contacts of an enqueue (or import) join the campaign, and with what text.

Inside the enqueue transaction, before members are added:

1. suppressed addresses (``shared.suppression``) are left out;
2. each new member's fields are the request's merged over the stored ones, and every step is
   rendered for it (``shared.content``); a contact whose text cannot be sent (a variable it
   lacks and no fallback, an empty text, a text over its channel's limit) is left out with the
   reason;
3. with the channel windows on (``Settings.channel_windows``), a new member a step needing
   Meta's 24-hour window could never reach (``shared.windows``) is left out with the reason;
4. contacts already members keep the text rendered when they joined.

``add_members`` stores each new member with its rendered texts, and :func:`store` the contacts'
fields, before the sequences start: step 1's queue row, and every later one, copies that text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from pydantic import BaseModel

from shared.addresses import mask_address
from shared.content import ContentRejected, StepTemplate, field_key, render_steps
from shared.events import EnqueueContact
from shared.providers.outcome import Channel
from shared.storage import sql
from shared.suppression import suppressed_among
from shared.windows import WINDOW_CLOSED, campaign_dues, window_problem

MAX_REJECTED_EXAMPLES = 20


class RejectedContact(BaseModel):
    index: int  # position in the request (for an import: the CSV line number)
    address: str  # masked
    reason: str
    detail: str


@dataclass(frozen=True)
class Profile:
    display_name: str
    fields: Mapping[str, str]
    linkedin_profile_url: str | None = None


def profiles_of(contacts: Sequence[EnqueueContact], index_of: Mapping[str, int]) -> dict[str, Profile]:
    """The request's profile per stored address, from the contact it first appeared as (as
    for display names). ``index_of``: stored address -> request index."""
    profiles: dict[str, Profile] = {}
    for address, index in index_of.items():
        contact = contacts[index]
        profiles[address] = Profile(
            contact.display_name,
            {field_key(k): v for k, v in contact.fields.items() if field_key(k)},
            contact.linkedin_profile_url,
        )
    return profiles


@dataclass
class Admission:
    admitted: dict[str, str] = field(default_factory=dict)  # stored address -> display name
    profiles: dict[str, Profile] = field(default_factory=dict)
    rendered: dict[str, list[str]] = field(default_factory=dict)
    suppressed: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    rejected_examples: list[RejectedContact] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def reject(self, index: int, address: str, reason: str, detail: str) -> None:
        self.rejected_by_reason[reason] += 1
        if len(self.rejected_examples) < MAX_REJECTED_EXAMPLES:
            self.rejected_examples.append(
                RejectedContact(index=index, address=address, reason=reason, detail=detail)
            )


def admit(
    conn: psycopg.Connection[DictRow],
    *,
    campaign_id: UUID,
    channel: Channel,
    sender_ids: Sequence[UUID],
    steps: Sequence[StepTemplate],
    profiles: Mapping[str, Profile],
    origin: Mapping[str, int],
    windows: bool = False,
    now: datetime | None = None,
) -> Admission:
    """``windows``: refuse contacts a window step could never reach (the campaign's steps must
    be stored); ``now``: the enqueue's clock (tests freeze it)."""
    result = Admission()
    addresses = sorted(profiles)
    if not addresses:
        return result
    suppressed = suppressed_among(conn, channel, addresses, sender_ids)
    result.suppressed = len(suppressed)
    candidates = [a for a in addresses if a not in suppressed]
    members = {
        r["address"]
        for r in conn.execute(
            sql.EXISTING_MEMBERS,
            {"campaign_id": campaign_id, "channel": channel.value, "addresses": candidates},
        ).fetchall()
    }
    stored = {
        r["address"]: r
        for r in conn.execute(
            sql.CONTACT_PROFILES, {"channel": channel.value, "addresses": candidates}
        ).fetchall()
    }
    clock = now or datetime.now(UTC)
    dues = campaign_dues(conn, campaign_id, channel, clock) if windows else []
    for address in candidates:
        given = profiles[address]
        result.profiles[address] = given
        if address in members:
            result.admitted[address] = given.display_name
            continue
        row = stored.get(address)
        fields = {**(row["fields"] if row else {}), **given.fields}
        display = given.display_name or (row["display_name"] if row else "")
        masked = mask_address(channel, address)
        try:
            rendered = render_steps(campaign_id, channel, address, display, fields, steps)
        except ContentRejected as exc:
            result.reject(origin.get(address, -1), masked, exc.problem.value, exc.detail)
            continue
        closed = window_problem(dues, row["last_inbound_at"] if row else None, clock) if dues else None
        if closed is not None:
            result.reject(origin.get(address, -1), masked, WINDOW_CLOSED, closed)
            continue
        result.rendered[address] = rendered
        result.admitted[address] = given.display_name
    return result


def store(conn: psycopg.Connection[DictRow], channel: Channel, admission: Admission) -> None:
    """After ``add_members`` (which stored the new members' rendered texts): the contacts'
    fields, for future campaigns (``sql.MERGE_CONTACT_FIELDS`` locks what it changes)."""
    rows: list[dict[str, Any]] = [
        {
            "address": address,
            "display_name": profile.display_name,
            "fields": dict(profile.fields),
            "linkedin_profile_url": profile.linkedin_profile_url,
        }
        for address, profile in admission.profiles.items()
        if address in admission.admitted
        and (profile.fields or profile.linkedin_profile_url or profile.display_name)
    ]
    if rows:
        conn.execute(sql.MERGE_CONTACT_FIELDS, {"channel": channel.value, "rows": json.dumps(rows)})
