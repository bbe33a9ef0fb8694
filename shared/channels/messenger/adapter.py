"""Messenger Send API (Meta Graph): ``POST /{version}/{page_id}/messages`` with a Page token.

``messaging_type`` and tag come from the row's content (``content.py``); plain text is
``UPDATE`` (a business-initiated, non-promotional update), as before. The
idempotency key travels as ``message.metadata``, which Meta echoes in the
``message_echoes`` webhook: the evidence that resolves an ``unknown`` row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from shared.channels.messenger import content
from shared.channels.messenger.errors import MESSENGER_ERROR_RULES
from shared.providers.http import GraphAdapter, Rule
from shared.providers.outcome import Channel, OutboundMessage, SendOutcome


class MessengerSendAdapter(GraphAdapter):
    channel: Channel = Channel.MESSENGER
    provider: ClassVar[str] = "messenger"
    error_rules: ClassVar[Mapping[int, Rule]] = MESSENGER_ERROR_RULES

    def _payload(self, message: OutboundMessage) -> dict[str, Any]:
        typed = content.of(message)
        return {
            "recipient": {"id": message.recipient},
            **typed.envelope(),
            "message": content.message_object(typed, message.idempotency_key),
        }

    def _success(self, data: object, http_status: int) -> SendOutcome | None:
        if not isinstance(data, Mapping):
            return None
        message_id = data.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            return None
        return SendOutcome.sent(message_id, http_status=http_status)
