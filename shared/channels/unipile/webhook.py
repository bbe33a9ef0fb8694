"""Unipile webhooks (LinkedIn): the shared secret in ``Unipile-Auth``, and the messaging events."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from shared.channels.auth import WebhookSecretSource, lower_headers, required, supplied_bytes
from shared.channels.events import RECEIVED, ProviderEvent, as_list, as_obj, as_str, iso_time, unrecognised

UNIPILE_AUTH_HEADER = "unipile-auth"
# The users webhook's event for a new connection, an accepted invitation among them. Not real
# time: "may be triggered up to 8 hours after the relation is accepted". Shape:
# {"event":"new_relation","account_id","account_type":"LINKEDIN","user_full_name",
#  "user_provider_id","user_public_identifier","user_profile_url",...}
# https://developer.unipile.com/docs/detecting-accepted-invitations
NEW_RELATION = "new_relation"
ACCEPTED = "accepted"


def verify_unipile_secret(shared_secret: str, headers: Mapping[str, str]) -> bool:
    expected = required(shared_secret, "Unipile webhook secret")
    supplied = supplied_bytes(lower_headers(headers).get(UNIPILE_AUTH_HEADER))
    return supplied is not None and hmac.compare_digest(expected, supplied)


def authenticate(secrets: WebhookSecretSource, headers: Mapping[str, str], raw_body: bytes) -> bool:
    return verify_unipile_secret(secrets.unipile_webhook_secret(), headers)


def parse_unipile(document: Any) -> list[ProviderEvent]:
    doc = as_obj(document)
    if doc is None:
        return [unrecognised(document)]
    if doc.get("event") == NEW_RELATION:
        return [_new_relation(doc)]
    event, message_id = as_str(doc.get("event")), as_str(doc.get("message_id"))
    account_type = as_str(doc.get("account_type"))
    # Unipile also connects WhatsApp, Messenger and mail accounts; sendonce sends only LinkedIn
    # through it, and a row under `linkedin` must not be evidence for another network.
    if (
        event is None
        or message_id is None
        or not event.startswith("message_")
        or (account_type is not None and account_type.upper() != "LINKEDIN")
    ):
        return [unrecognised(doc)]

    account_user = as_str((as_obj(doc.get("account_info")) or {}).get("user_id"))
    sender = as_str((as_obj(doc.get("sender")) or {}).get("attendee_provider_id"))
    is_sender = doc.get("is_sender")
    if isinstance(is_sender, bool | int):
        ours = bool(is_sender)
    else:
        ours = account_user is not None and sender == account_user

    # message_read on our message: the contact read it.
    status = ("read" if event == "message_read" else "sent") if ours else RECEIVED

    if ours:
        others = [
            pid
            for pid in (
                as_str(a.get("attendee_provider_id")) for a in as_list(doc.get("attendees")) if as_obj(a)
            )
            if pid and pid not in (sender, account_user)
        ]
        # In a group chat there is no single recipient to match a queue row against.
        recipient = others[0] if len(others) == 1 else None
    else:
        recipient = account_user
    # The contact: whom our message went to, or who wrote (Unipile, "Message object":
    # `is_sender` tells whether the account's user sent it).
    contact = recipient if ours else sender

    payload = dict(doc)
    text = doc.get("message")
    # Reconciliation matches Unipile evidence on payload->>'text' (EVIDENCE_BY_TEXT); Unipile
    # calls the field `message`.
    if isinstance(text, str) and "text" not in payload:
        payload["text"] = text
    return [
        ProviderEvent(
            event_type=event,
            dedupe_key=f"{event}:{message_id}",
            payload=payload,
            status=status,
            provider_message_id=message_id,
            provider_thread_id=as_str(doc.get("chat_id")),
            recipient=recipient,
            occurred_at=iso_time(doc.get("timestamp")),
            contact=contact,
        )
    ]


def _new_relation(doc: dict[str, Any]) -> ProviderEvent:
    account, provider_id = as_str(doc.get("account_id")), as_str(doc.get("user_provider_id"))
    public = as_str(doc.get("user_public_identifier"))
    account_type = as_str(doc.get("account_type"))
    if account is None or provider_id is None:
        return unrecognised(doc)
    if account_type is not None and account_type.upper() != "LINKEDIN":
        return unrecognised(doc)
    return ProviderEvent(
        event_type=NEW_RELATION,
        # One relation per (account, person): a repeated delivery is stored once.
        dedupe_key=f"{NEW_RELATION}:{account}:{provider_id}",
        payload=doc,
        status=ACCEPTED,
        recipient=account,
        # The payload has no time; the event is stored when it arrives.
        occurred_at=iso_time(doc.get("timestamp")),
        contact=provider_id,
        aliases=(public,) if public else (),
    )
