"""Helpers shared by the campaign-engine tests: campaigns created through the library, the
dispatcher run in-process, and webhook deliveries signed as the providers sign them."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

from shared.campaigns import create_campaign
from shared.dispatch import DispatchDeps, dispatch
from shared.events import CampaignSpec, DispatchRequest
from shared.providers.outcome import Channel
from shared.sequences import EngineConfig
from shared.storage.db import Database
from shared.webhooks import ProviderEventStore, WebhookDeps, WebhookResult, WebhookSecrets, handle_webhook

MANUAL = DispatchRequest(source="sendonce.manual")
META_SECRET = "test-meta-app-secret"
UNIPILE_SECRET = "test-unipile-webhook-secret"
CONFIG = EngineConfig()


class Plenty:
    def get_remaining_time_in_millis(self) -> int:
        return 10 * 60 * 1000


def new_campaign(
    db: Database,
    contacts: list[str],
    *,
    channel: str = "whatsapp",
    senders: tuple[str, ...] = ("sender-1",),
    steps: tuple[tuple[str, int], ...] = (("intro", 0), ("follow_up", 3600)),
    policy: str = "skip",
    stop_on_events: tuple[str, ...] = (),
    start: bool = True,
    config: EngineConfig = CONFIG,
) -> uuid.UUID:
    """A campaign created (and started) through the library; steps are (message_type, delay)."""
    campaign_id = uuid.uuid4()
    spec = CampaignSpec.model_validate(
        {
            "campaign_id": str(campaign_id),
            "name": f"engine test {campaign_id.hex[:6]}",
            "channel": channel,
            "senders": list(senders),
            "steps": [
                {"message_type": t, "body": f"{t} of {campaign_id.hex[:6]}", "delay_seconds": d}
                for t, d in steps
            ],
            "cross_campaign_policy": policy,
            "stop_on_events": list(stop_on_events),
            "contacts": [{"address": a} for a in contacts],
        }
    )
    create_campaign(db, spec, operator="test", config=config, start=start)
    return campaign_id


def run_dispatcher(deps: DispatchDeps) -> dict[str, int]:
    return dispatch(deps, MANUAL, Plenty()).counts


def rows(db: Database, campaign_id: uuid.UUID) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in db.fetch_all(
            "SELECT q.id, q.status::text AS status, q.message_type, q.sent_at, q.scheduled_for, q.attempts,"
            " q.sender_account_id, q.failure_reason, c.address"
            " FROM send_queue q JOIN contacts c ON c.id = q.contact_id"
            " WHERE q.campaign_id = %(c)s ORDER BY c.address, q.id",
            {"c": campaign_id},
        )
    ]


def by_step(db: Database, campaign_id: uuid.UUID) -> dict[tuple[str, str], str]:
    """(address, message_type) -> status."""
    return {(r["address"], r["message_type"]): r["status"] for r in rows(db, campaign_id)}


def sequence(db: Database, campaign_id: uuid.UUID, address: str) -> dict[str, Any]:
    row = db.fetch_one(
        "SELECT cc.sequence_state, cc.stop_cause, cc.stopped_reason, cc.sender_account_id"
        " FROM campaign_contacts cc JOIN contacts c ON c.id = cc.contact_id"
        " WHERE cc.campaign_id = %(c)s AND c.address = %(a)s",
        {"c": campaign_id, "a": address},
    )
    assert row is not None
    return dict(row)


def make_due(db: Database) -> None:
    """The clock jumping ahead: every pending row is due now."""
    with db.connection() as conn:
        conn.execute("UPDATE send_queue SET scheduled_for = now() WHERE status = 'pending'")


def webhook_deps(db: Database) -> WebhookDeps:
    return WebhookDeps(
        store=ProviderEventStore(db),
        secrets=WebhookSecrets(META_SECRET, UNIPILE_SECRET, "test-meta-verify-token"),
    )


def deliver(db: Database, channel: Channel, document: dict[str, Any]) -> WebhookResult:
    body = json.dumps(document).encode()
    if channel is Channel.LINKEDIN:
        headers = {"unipile-auth": UNIPILE_SECRET}
    else:
        headers = {
            "x-hub-signature-256": "sha256="
            + hmac.new(META_SECRET.encode(), body, hashlib.sha256).hexdigest()
        }
    result = handle_webhook(webhook_deps(db), channel, headers, body)
    assert result.status_code == 200, result.body
    return result


def reply(
    channel: Channel, contact: str, *, sender: str = "sender-1", message_id: str | None = None
) -> dict[str, Any]:
    """The contact writing back, in each provider's webhook shape."""
    mid = message_id or f"reply-{uuid.uuid4().hex[:10]}"
    if channel is Channel.WHATSAPP:
        # Meta, WhatsApp Business Platform, "Messages webhook reference" (text messages).
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550783881",
                                    "phone_number_id": sender,
                                },
                                "contacts": [{"profile": {"name": "Contact"}, "wa_id": contact}],
                                "messages": [
                                    {
                                        "from": contact,
                                        "id": f"wamid.{mid}",
                                        "timestamp": "1763924700",
                                        "type": "text",
                                        "text": {"body": "Thanks, not interested"},
                                    }
                                ],
                            },
                        }
                    ],
                }
            ],
        }
    if channel is Channel.MESSENGER:
        # Meta, Messenger Platform, "messages" webhook event.
        return {
            "object": "page",
            "entry": [
                {
                    "id": sender,
                    "time": 1763924701123,
                    "messaging": [
                        {
                            "sender": {"id": contact},
                            "recipient": {"id": sender},
                            "timestamp": 1763924701000,
                            "message": {"mid": f"m_{mid}", "text": "Thanks, not interested"},
                        }
                    ],
                }
            ],
        }
    # Unipile, "new messages" webhook: a message_received the account's user did not send.
    return {
        "event": "message_received",
        "account_id": sender,
        "account_type": "LINKEDIN",
        "account_info": {"type": "LINKEDIN", "user_id": "ACoOURSELVES"},
        "chat_id": "chat-reply",
        "timestamp": "2025-11-23T19:05:02.000Z",
        "message_id": mid,
        "message": "Thanks, not interested",
        "sender": {"attendee_provider_id": contact},
        "attendees": [{"attendee_provider_id": "ACoOURSELVES"}],
        "is_sender": False,
    }


def whatsapp_status(contact: str, status: str, *, wamid: str | None = None) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": "sender-1",
                            },
                            "statuses": [
                                {
                                    "id": wamid or f"wamid.{uuid.uuid4().hex[:12]}",
                                    "status": status,
                                    "timestamp": "1763924700",
                                    "recipient_id": contact,
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
