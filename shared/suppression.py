"""The suppression list: addresses that get nothing, workspace-wide or for one sender account.

A contact lands here when an operator adds it (``sendonce suppress add``) or when it opts out:
an inbound message whose whole text is an opt-out keyword (``Settings.opt_out_keywords``), a
quick-reply, button or postback payload that means opt-out (``Settings.opt_out_payloads``),
WhatsApp's ``user_preferences`` webhook saying the user stopped marketing messages, or
Messenger's ``messaging_optins`` saying the person stopped notification messages. Adding a
suppression stops the contact's sequences in the same transaction (``shared.sequences``).

It is checked twice: at enqueue (a suppressed address is not added to the campaign) and at the
recovery point (``sql.MARK_SENDING``: a queued or already claimed row of a suppressed contact
ends ``cancelled``), so an opt-out that lands mid-sequence, even between claim and send, stops
everything that has not reached the provider.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from pydantic import BaseModel

from shared.addresses import normalise_address
from shared.config import DEFAULT_OPT_OUT_KEYWORDS, DEFAULT_OPT_OUT_PAYLOADS, Settings
from shared.providers.outcome import Channel
from shared.senders import UnknownSenderError
from shared.sequences import ContactStop, StopCause, stop_contacts_in
from shared.storage import sql
from shared.storage.db import Database

__all__ = [
    "OptOut",
    "OptOutRules",
    "SuppressionSource",
    "add_suppression",
    "find_opt_outs",
    "list_suppressions",
    "record_opt_outs",
    "remove_suppression",
    "suppressed_among",
]


class SuppressionSource(StrEnum):
    KEYWORD = "keyword"
    BUTTON = "button"
    PROVIDER_PREFERENCE = "provider_preference"
    OPERATOR = "operator"


def fold(text: str) -> str:
    """Case, accents, surrounding spaces and punctuation aside: "Arrêt." is "ARRET"."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    stripped = bare.strip().strip("!.,;:?¡¿'\"()[]-_ \t\r\n")
    return " ".join(stripped.split()).casefold()


@dataclass(frozen=True)
class OptOutRules:
    keywords: frozenset[str] = field(
        default_factory=lambda: frozenset(fold(k) for k in DEFAULT_OPT_OUT_KEYWORDS)
    )
    payloads: frozenset[str] = field(
        default_factory=lambda: frozenset(fold(p) for p in DEFAULT_OPT_OUT_PAYLOADS)
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> OptOutRules:
        return cls(
            frozenset(fold(k) for k in settings.opt_out_keywords),
            frozenset(fold(p) for p in settings.opt_out_payloads),
        )

    def is_keyword(self, text: object) -> bool:
        return isinstance(text, str) and len(text) <= 64 and fold(text) in self.keywords

    def is_payload(self, payload: object) -> bool:
        return isinstance(payload, str) and len(payload) <= 256 and fold(payload) in self.payloads


@dataclass(frozen=True)
class OptOut:
    contact: str
    source: SuppressionSource
    reason: str


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _whatsapp(payload: dict[str, Any], contact: str | None, rules: OptOutRules) -> list[OptOut]:
    found: list[OptOut] = []
    # Meta, WhatsApp Business Platform, "user_preferences webhook reference": value.user_preferences[]
    # with wa_id, category "marketing_messages" and value "stop" when the user stops marketing
    # messages (Meta's "Marketing opt-out" template button, or the chat's settings). Stored as an
    # unrecognised change, so it is read from the change here.
    for pref in _obj(payload.get("value")).get("user_preferences") or []:
        pref = _obj(pref)
        wa_id = pref.get("wa_id")
        if (
            isinstance(wa_id, str)
            and pref.get("category") == "marketing_messages"
            and pref.get("value") == "stop"
        ):
            found.append(
                OptOut(wa_id, SuppressionSource.PROVIDER_PREFERENCE, "whatsapp user_preferences: stop")
            )
    if contact is None:
        return found
    # Inbound messages ("Messages webhook reference"): text.body; a template's quick-reply button
    # arrives as type "button" with button.payload and button.text; an interactive reply button as
    # interactive.button_reply.id / .title.
    kind = payload.get("type")
    if kind == "text" and rules.is_keyword(_obj(payload.get("text")).get("body")):
        found.append(OptOut(contact, SuppressionSource.KEYWORD, "whatsapp keyword"))
    elif kind == "button":
        button = _obj(payload.get("button"))
        if rules.is_payload(button.get("payload")) or rules.is_keyword(button.get("text")):
            found.append(OptOut(contact, SuppressionSource.BUTTON, "whatsapp quick-reply button"))
    elif kind == "interactive":
        reply = _obj(_obj(payload.get("interactive")).get("button_reply"))
        if rules.is_payload(reply.get("id")) or rules.is_keyword(reply.get("title")):
            found.append(OptOut(contact, SuppressionSource.BUTTON, "whatsapp reply button"))
    return found


def _messenger(payload: dict[str, Any], rules: OptOutRules) -> list[OptOut]:
    sender = _obj(payload.get("sender")).get("id")
    if not isinstance(sender, str):
        return []
    message = _obj(payload.get("message"))
    if message.get("is_echo") is True:
        return []
    # Meta, Messenger Platform, "messaging_optins Webhook Event Reference": optin.type
    # "notification_messages" with notification_messages_status STOP_NOTIFICATIONS when the
    # person stops marketing (notification) messages.
    optin = _obj(payload.get("optin"))
    status = optin.get("notification_messages_status")
    if isinstance(status, str) and status.replace(" ", "_").upper() == "STOP_NOTIFICATIONS":
        return [OptOut(sender, SuppressionSource.PROVIDER_PREFERENCE, "messenger: stop notifications")]
    # "messages" webhook: message.quick_reply.payload for a quick reply; "messaging_postbacks":
    # postback.payload and postback.title for a button.
    quick = _obj(message.get("quick_reply")).get("payload")
    postback = _obj(payload.get("postback"))
    if (
        rules.is_payload(quick)
        or rules.is_payload(postback.get("payload"))
        or rules.is_keyword(postback.get("title"))
    ):
        return [OptOut(sender, SuppressionSource.BUTTON, "messenger quick reply / postback")]
    if rules.is_keyword(message.get("text")):
        return [OptOut(sender, SuppressionSource.KEYWORD, "messenger keyword")]
    return []


def find_opt_outs(channel: Channel, events: Iterable[Any], rules: OptOutRules) -> list[OptOut]:
    """The opt-outs among stored provider events (``shared.webhooks.ProviderEvent``: its
    ``payload``, ``contact`` and ``status``). Only what the contact sent counts."""
    found: list[OptOut] = []
    for event in events:
        payload = _obj(event.payload)
        inbound = event.status == "received"
        if channel is Channel.WHATSAPP:
            found.extend(_whatsapp(payload, event.contact if inbound else None, rules))
        elif channel is Channel.MESSENGER:
            found.extend(_messenger(payload, rules))
        elif inbound and event.contact is not None and rules.is_keyword(payload.get("text")):
            # Unipile "message_received" from the contact: the text is `message` (kept as `text`).
            found.append(OptOut(event.contact, SuppressionSource.KEYWORD, "linkedin keyword"))
    unique: dict[str, OptOut] = {}
    for opt_out in found:
        unique.setdefault(opt_out.contact, opt_out)
    return list(unique.values())


def _suppress_in(
    conn: psycopg.Connection[DictRow],
    channel: Channel,
    addresses: Sequence[str],
    reasons: Sequence[str],
    *,
    source: SuppressionSource,
    created_by: str,
    sender_account_id: UUID | None,
) -> tuple[int, int]:
    """Insert the suppressions and stop the contacts' sequences, in the caller's transaction.
    Returns (suppressions added, sequences stopped)."""
    added = conn.execute(
        sql.ADD_SUPPRESSIONS,
        {
            "channel": channel.value,
            "addresses": list(addresses),
            "reasons": list(reasons),
            "sender_account_id": sender_account_id,
            "source": source.value,
            "created_by": created_by,
        },
    ).fetchall()
    stops = [ContactStop(a, f"suppressed: {r}") for a, r in zip(addresses, reasons, strict=True)]
    if sender_account_id is None:
        stopped = stop_contacts_in(
            conn, channel, stops, StopCause.OPT_OUT, decided_by=created_by
        ).sequences_stopped
    else:
        stopped = 0
        for stop in stops:
            campaigns = conn.execute(
                sql.CAMPAIGNS_OF_CONTACT_SENDER,
                {"channel": channel.value, "address": stop.address, "sender_account_id": sender_account_id},
            ).fetchall()
            for row in campaigns:
                stopped += stop_contacts_in(
                    conn,
                    channel,
                    [stop],
                    StopCause.OPT_OUT,
                    decided_by=created_by,
                    campaign_id=row["campaign_id"],
                ).sequences_stopped
    return len(added), stopped


def record_opt_outs(conn: psycopg.Connection[DictRow], channel: Channel, opt_outs: Sequence[OptOut]) -> int:
    """Suppress (workspace-wide) and stop, in the webhook's transaction: the event and its effect
    commit together. Returns the sequences stopped."""
    stopped = 0
    for source in SuppressionSource:
        mine = [o for o in opt_outs if o.source is source]
        if mine:
            stopped += _suppress_in(
                conn,
                channel,
                [o.contact for o in mine],
                [o.reason for o in mine],
                source=source,
                created_by="webhook",
                sender_account_id=None,
            )[1]
    return stopped


class SuppressionReport(BaseModel):
    channel: str
    address: str
    sender: str | None
    changed: bool
    sequences_stopped: int = 0


def _sender_id(conn: psycopg.Connection[DictRow], channel: Channel, sender: str | None) -> UUID | None:
    if sender is None:
        return None
    row = conn.execute(
        sql.SENDER_BY_NATURAL_KEY, {"channel": channel.value, "provider_account_id": sender}
    ).fetchone()
    if row is None:
        raise UnknownSenderError(f"no {channel.value} sender account {sender!r}")
    sender_id: UUID = row["id"]
    return sender_id


def add_suppression(
    db: Database,
    channel: Channel,
    address: str,
    *,
    reason: str,
    operator: str,
    sender: str | None = None,
    region: str | None = None,
) -> SuppressionReport:
    stored = normalise_address(channel, address, region)
    with db.connection() as conn, conn.transaction():
        sender_id = _sender_id(conn, channel, sender)
        added, stopped = _suppress_in(
            conn,
            channel,
            [stored],
            [reason],
            source=SuppressionSource.OPERATOR,
            created_by=f"operator:{operator}",
            sender_account_id=sender_id,
        )
    return SuppressionReport(
        channel=channel.value, address=stored, sender=sender, changed=bool(added), sequences_stopped=stopped
    )


def remove_suppression(
    db: Database,
    channel: Channel,
    address: str,
    *,
    reason: str,
    operator: str,
    sender: str | None = None,
    region: str | None = None,
) -> SuppressionReport:
    """Lift a suppression. Stopped sequences stay stopped: the contact can be enqueued again."""
    stored = normalise_address(channel, address, region)
    with db.connection() as conn, conn.transaction():
        sender_id = _sender_id(conn, channel, sender)
        removed = conn.execute(
            sql.REMOVE_SUPPRESSION,
            {
                "channel": channel.value,
                "address": stored,
                "sender_account_id": sender_id,
                "removed_by": f"operator:{operator}",
                "reason": reason,
            },
        ).fetchall()
    return SuppressionReport(channel=channel.value, address=stored, sender=sender, changed=bool(removed))


def list_suppressions(
    db: Database,
    *,
    channel: Channel | None = None,
    address: str | None = None,
    include_removed: bool = False,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in db.fetch_all(
            sql.LIST_SUPPRESSIONS,
            {
                "channel": channel.value if channel else None,
                "address": address,
                "include_removed": include_removed,
                "limit": limit,
            },
        )
    ]


def suppressed_among(
    conn: psycopg.Connection[DictRow], channel: Channel, addresses: Iterable[str], sender_ids: Sequence[UUID]
) -> set[str]:
    rows = conn.execute(
        sql.SUPPRESSED_AMONG,
        {"channel": channel.value, "addresses": list(addresses), "sender_ids": list(sender_ids)},
    ).fetchall()
    return {r["address"] for r in rows}
