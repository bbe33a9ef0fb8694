"""Messenger webhooks (``X-Hub-Signature-256``): messages, echoes, reactions, deliveries, reads."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared.channels.auth import WebhookSecretSource, verify_meta_signature
from shared.channels.events import (
    RECEIVED,
    ProviderEvent,
    as_list,
    as_obj,
    as_str,
    epoch,
    unrecognised,
)


def authenticate(secrets: WebhookSecretSource, headers: Mapping[str, str], raw_body: bytes) -> bool:
    return verify_meta_signature(secrets.meta_app_secret(), headers, raw_body)


def parse_messenger(document: Any) -> list[ProviderEvent]:
    events: list[ProviderEvent] = []
    doc = as_obj(document)
    for entry in as_list(doc.get("entry")) if doc else []:
        messaging = as_list(entry.get("messaging")) if isinstance(entry, dict) else []
        if not messaging:
            events.append(unrecognised(entry))
            continue
        for item in messaging:
            events.extend(_messenger_item(item) or [unrecognised(item)])
    return events


def _watermark_event(
    event_type: str,
    status: str,
    item: dict[str, Any],
    sender: str | None,
    occurred_at: datetime | None,
    raw_watermark: Any,
) -> list[ProviderEvent]:
    """A Messenger delivery or read that names no message: everything the person (``sender``)
    received up to the watermark. The raw watermark keeps the dedupe key exact."""
    watermark = epoch(raw_watermark, 1000)
    if sender is None or watermark is None:
        return []
    return [
        ProviderEvent(
            event_type=event_type,
            dedupe_key=f"{event_type}:{sender}:{raw_watermark}",
            payload=item,
            status=status,
            recipient=sender,
            occurred_at=occurred_at,
            watermark=watermark,
            contact=sender,
        )
    ]


def _messenger_item(value: Any) -> list[ProviderEvent]:
    item = as_obj(value)
    if item is None:
        return []
    sender = as_str((as_obj(item.get("sender")) or {}).get("id"))
    recipient = as_str((as_obj(item.get("recipient")) or {}).get("id"))
    occurred_at = epoch(item.get("timestamp"), 1000)

    message = as_obj(item.get("message"))
    if message is not None and message.get("is_echo") is True:
        mid = as_str(message.get("mid"))
        if mid is None:
            return []
        # An echo is sent by the Page: `recipient` is the person.
        return [
            ProviderEvent(
                event_type="message_echo",
                dedupe_key=f"echo:{mid}",
                payload=item,
                status="sent",
                provider_message_id=mid,
                recipient=recipient,
                idempotency_key=as_str(message.get("metadata")),
                occurred_at=occurred_at,
                contact=recipient,
            )
        ]

    # A message from the person (Meta, Messenger Platform, "messages" webhook event: `sender`
    # is their PSID, `recipient` the Page, `message.mid` its id).
    if message is not None:
        mid = as_str(message.get("mid"))
        if mid is None or sender is None:
            return []
        return [
            ProviderEvent(
                event_type="message",
                dedupe_key=f"message:{mid}",
                payload=item,
                status=RECEIVED,
                provider_message_id=mid,
                recipient=recipient,
                occurred_at=occurred_at,
                contact=sender,
            )
        ]

    # A reaction to a message (Meta, Messenger Platform, "message_reactions Webhook Event
    # Reference": `reaction.mid` names the message reacted to, `action` react or unreact).
    reaction = as_obj(item.get("reaction"))
    if reaction is not None:
        mid, action = as_str(reaction.get("mid")), as_str(reaction.get("action"))
        if mid is None or sender is None or action is None:
            return []
        return [
            ProviderEvent(
                event_type="reaction",
                dedupe_key=f"reaction:{sender}:{mid}:{action}:{as_str(item.get('timestamp'))}",
                payload=item,
                status=RECEIVED,
                provider_message_id=None,
                recipient=recipient,
                occurred_at=occurred_at,
                contact=sender,
            )
        ]

    # Deliveries and reads are sent by the person: `sender` is who received our message.
    delivery = as_obj(item.get("delivery"))
    if delivery is not None:
        mids = [mid for mid in (as_str(m) for m in as_list(delivery.get("mids"))) if mid]
        if mids:
            watermark = epoch(delivery.get("watermark"), 1000)
            return [
                ProviderEvent(
                    event_type="delivery",
                    dedupe_key=f"delivery:{mid}",
                    payload=item,
                    status="delivered",
                    provider_message_id=mid,
                    recipient=sender,
                    occurred_at=occurred_at,
                    watermark=watermark,
                    contact=sender,
                )
                for mid in mids
            ]
        return _watermark_event("delivery", "delivered", item, sender, occurred_at, delivery.get("watermark"))

    read = as_obj(item.get("read"))
    if read is not None:
        return _watermark_event("read", "read", item, sender, occurred_at, read.get("watermark"))
    return []
