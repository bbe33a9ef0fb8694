"""WhatsApp webhooks (``X-Hub-Signature-256``): statuses and inbound messages."""

from __future__ import annotations

from collections.abc import Mapping
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


_WHATSAPP_KNOWN_KEYS = frozenset({"statuses", "messages", "contacts", "metadata", "messaging_product"})


def parse_whatsapp(document: Any) -> list[ProviderEvent]:
    events: list[ProviderEvent] = []
    doc = as_obj(document)
    for entry in as_list(doc.get("entry")) if doc else []:
        changes = as_list(entry.get("changes")) if isinstance(entry, dict) else []
        if not changes:
            events.append(unrecognised(entry))
            continue
        for change in changes:
            value = as_obj(change.get("value")) if isinstance(change, dict) else None
            if value is None:
                events.append(unrecognised(change))
                continue
            statuses = as_list(value.get("statuses"))
            for item in statuses:
                events.append(_whatsapp_status(item) or unrecognised(item))
            messages = as_list(value.get("messages"))
            business = as_str((as_obj(value.get("metadata")) or {}).get("phone_number_id"))
            for item in messages:
                events.append(_whatsapp_inbound(item, business) or unrecognised(item))
            if not (statuses or messages) or set(value) - _WHATSAPP_KNOWN_KEYS:
                events.append(unrecognised(change))
    return events


# Inbound message types that are not something the person wrote (Meta, WhatsApp Business
# Platform, "Messages webhook reference": reaction, system). Their event type is the message
# type itself; everything else the person sent (text, media, button, interactive, ...) is a
# "message", i.e. a reply.
_WHATSAPP_NON_REPLY_TYPES = frozenset({"reaction", "system", "unsupported"})


def _whatsapp_inbound(item: Any, business: str | None) -> ProviderEvent | None:
    """``value.messages[]``: a message from a WhatsApp user (``from``: their number as digits,
    which is how contacts store it; ``id``: its wamid). Source: Meta, WhatsApp Business
    Platform, "Messages webhook reference" (text, reaction and system messages)."""
    message = as_obj(item)
    if message is None:
        return None
    wamid, sender, kind = as_str(message.get("id")), as_str(message.get("from")), as_str(message.get("type"))
    if wamid is None or sender is None:
        return None
    event_type = kind if kind in _WHATSAPP_NON_REPLY_TYPES else "message"
    return ProviderEvent(
        event_type=event_type,
        dedupe_key=f"inbound:{wamid}",
        payload=message,
        status=RECEIVED,
        provider_message_id=wamid,
        recipient=business,
        occurred_at=epoch(message.get("timestamp"), 1),
        contact=sender,
    )


def _whatsapp_status(item: Any) -> ProviderEvent | None:
    status = as_obj(item)
    if status is None:
        return None
    wamid, state = as_str(status.get("id")), as_str(status.get("status"))
    if wamid is None or state is None:
        return None
    return ProviderEvent(
        event_type="status",
        dedupe_key=f"{wamid}:{state}",
        # Verbatim, so errors[], conversation and pricing stay with the row.
        payload=status,
        status=state,
        provider_message_id=wamid,
        recipient=as_str(status.get("recipient_id")),
        idempotency_key=as_str(status.get("biz_opaque_callback_data")),
        occurred_at=epoch(status.get("timestamp"), 1),
        contact=as_str(status.get("recipient_id")),
    )
