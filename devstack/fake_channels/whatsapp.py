"""The fake WhatsApp Cloud API: ``POST /{version}/{phone_number_id}/messages``."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any

from devstack.fake_channels.base import Answer, Invalid, SendRequest
from devstack.fake_channels.meta import GraphDialect, graph_error

WHATSAPP = "whatsapp"


class WhatsAppDialect(GraphDialect):
    channel = WHATSAPP

    def unauthorized(self) -> Answer:
        return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")

    def invalid(self, why: str) -> Answer:
        return graph_error(400, 100, "(#100) Invalid parameter", details=why)

    def accepted(self, entry: Mapping[str, Any]) -> Answer:
        body = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": entry["recipient"], "wa_id": entry["recipient"].lstrip("+")}],
            "messages": [{"id": entry["provider_message_id"], "message_status": "accepted"}],
        }
        return 200, body, {}

    def rate_limited(self, retry_after_seconds: float | None) -> Answer:
        # Throughput errors come back as HTTP 400, not 429.
        return graph_error(
            400,
            130429,
            "(#130429) Rate limit hit",
            details="Cloud API message throughput has been reached.",
        )

    def server_error(self, status: int) -> Answer:
        if status == 503:
            return graph_error(
                503, 131016, "(#131016) Service unavailable", details="A service is temporarily unavailable."
            )
        return graph_error(
            status,
            131000,
            "(#131000) Something went wrong",
            details="Message failed to send because of an unknown error.",
        )

    def permanent(self) -> Answer:
        return graph_error(
            400,
            131026,
            "(#131026) Message Undeliverable",
            details=(
                "Unable to deliver message. Reasons can include: the recipient phone number is not "
                "a WhatsApp phone number."
            ),
        )

    def sender_blocked(self) -> Answer:
        return graph_error(
            400,
            131048,
            "(#131048) Spam rate limit hit",
            details=(
                "Message failed to send because there are restrictions on how many messages can be "
                "sent from this phone number."
            ),
        )

    def new_message_id(self) -> str:
        return "wamid." + base64.b64encode(secrets.token_bytes(30)).decode()


def parse_request(sender_id: str, data: Mapping[str, Any]) -> SendRequest:
    if data.get("messaging_product") != "whatsapp":
        raise Invalid("messaging_product must be whatsapp")
    if data.get("recipient_type", "individual") != "individual":
        raise Invalid("recipient_type must be individual")
    if data.get("type", "text") != "text":
        raise Invalid("only text messages are supported by the fake")
    to = data.get("to")
    text = data.get("text")
    body = text.get("body") if isinstance(text, Mapping) else None
    callback = data.get("biz_opaque_callback_data")
    if not isinstance(to, str) or not to:
        raise Invalid("to is required")
    if not isinstance(body, str) or not body or len(body) > 4096:
        raise Invalid("text.body must be 1-4096 characters")
    if callback is not None and (not isinstance(callback, str) or len(callback) > 512):
        raise Invalid("biz_opaque_callback_data must be a string of at most 512 characters")
    return SendRequest(WHATSAPP, sender_id, to, body, callback)
