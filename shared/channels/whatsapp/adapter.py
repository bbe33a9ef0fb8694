"""WhatsApp Cloud API (Meta Graph): ``POST /{version}/{phone_number_id}/messages``.

The message's idempotency key travels as ``biz_opaque_callback_data``: Cloud API does not
process it, but echoes it in every status webhook, which is how an ``unknown`` row is later
proven sent. Error codes follow Meta's documentation, cited in the table; see ``GraphAdapter``
for the order in which HTTP status and code are weighed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from shared.channels.whatsapp import content
from shared.channels.whatsapp.errors import WHATSAPP_ERROR_RULES
from shared.providers.http import GraphAdapter, Rule
from shared.providers.outcome import Channel, OutboundMessage, SendOutcome


class WhatsAppCloudAdapter(GraphAdapter):
    channel: Channel = Channel.WHATSAPP
    provider: ClassVar[str] = "whatsapp"
    error_rules: ClassVar[Mapping[int, Rule]] = WHATSAPP_ERROR_RULES

    def _payload(self, message: OutboundMessage) -> dict[str, Any]:
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.recipient,
            **content.message_fields(content.of(message)),
            "biz_opaque_callback_data": message.idempotency_key,
        }

    def _success(self, data: object, http_status: int) -> SendOutcome | None:
        if not isinstance(data, Mapping):
            return None
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[0], Mapping):
            return None
        message_id = messages[0].get("id")
        if not isinstance(message_id, str) or not message_id:
            return None
        # "held_for_quality_assessment" and "paused" still carry a wamid: Meta owns the
        # message now, and its fate arrives by webhook.
        return SendOutcome.sent(message_id, http_status=http_status)
