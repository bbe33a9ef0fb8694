"""Messenger Send API (Meta Graph): ``POST /{version}/{page_id}/messages`` with a Page token.

``messaging_type`` is ``UPDATE`` (a business-initiated, non-promotional update). The
idempotency key travels as ``message.metadata``, which Meta echoes in the
``message_echoes`` webhook: the evidence that resolves an ``unknown`` row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from shared.providers.http import AMBIGUOUS, PERMANENT, GraphAdapter, Rule, blocked, retry
from shared.providers.outcome import Channel, OutboundMessage, SendOutcome

MESSENGER_ERROR_RULES: Mapping[int, Rule] = {
    613: retry(60),  # "Calls to this api have exceeded the rate limit"
    4: retry(300),  # application request limit
    # Beyond providers.md: Graph's other throttling codes, rejected before processing.
    17: retry(300),  # user request limit
    32: retry(300),  # page request limit
    2: AMBIGUOUS,  # "unexpected error", may follow processing
    1: AMBIGUOUS,  # "unknown error"
    10: PERMANENT,  # every subcode, e.g. 2018278: outside the allowed messaging window
    551: PERMANENT,  # this person isn't available right now
    190: blocked("credentials"),  # Page token invalid or expired
    # Beyond providers.md: the Page may not message at all.
    200: blocked("credentials"),  # permissions error
    230: blocked("credentials"),  # requires pages_messaging permission
    368: blocked("policy"),  # Page temporarily blocked for policy violations
}


class MessengerSendAdapter(GraphAdapter):
    channel: Channel = Channel.MESSENGER
    provider: ClassVar[str] = "messenger"
    error_rules: ClassVar[Mapping[int, Rule]] = MESSENGER_ERROR_RULES

    def _payload(self, message: OutboundMessage) -> dict[str, Any]:
        return {
            "recipient": {"id": message.recipient},
            "messaging_type": "UPDATE",
            "message": {"text": message.body, "metadata": message.idempotency_key},
        }

    def _success(self, data: object, http_status: int) -> SendOutcome | None:
        if not isinstance(data, Mapping):
            return None
        message_id = data.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            return None
        return SendOutcome.sent(message_id, http_status=http_status)
