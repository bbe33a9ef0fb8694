"""WhatsApp Cloud API (Meta Graph): ``POST /{version}/{phone_number_id}/messages``.

The message's idempotency key travels as ``biz_opaque_callback_data``: Cloud API does not
process it, but echoes it in every status webhook, which is how an ``unknown`` row is later
proven sent. Error codes follow ``providers.md``; see ``GraphAdapter`` for the order in which
HTTP status and code are weighed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from shared.providers.http import AMBIGUOUS, PERMANENT, RETRY, GraphAdapter, GraphError, Rule, blocked, retry
from shared.providers.outcome import Channel, OutboundMessage, SendOutcome

# 132000-132999: template errors (missing, paused, parameter mismatch, ...). Permanent for
# this message: resending the same body cannot succeed.
_TEMPLATE_ERRORS = range(132000, 133000)

WHATSAPP_ERROR_RULES: Mapping[int, Rule] = {
    # Retry later: throttled, nothing processed.
    130429: RETRY,  # throughput; arrives as HTTP 400. The dispatcher's backoff suffices.
    131056: retry(10),  # pair rate limit: about one message per 6 s per recipient
    80007: retry(60),  # WABA rate limit
    4: retry(60),  # application request limit
    17: retry(60),  # user request limit
    131057: retry(300),  # number in maintenance (upgrading); "a few minutes"
    # Stop the sender and alert.
    131048: blocked("throttle"),  # spam rate limit
    368: blocked("policy"),  # temporarily blocked for policy violations
    131031: blocked("policy"),  # business account locked
    190: blocked("credentials"),  # access token expired or invalid
    # Beyond providers.md, documented by Meta as sender-level: without them every message of
    # a misconfigured sender would fail permanently instead of pausing it.
    131042: blocked("policy"),  # business eligibility / payment issue
    131045: blocked("credentials"),  # phone number not registered (certificate)
    133010: blocked("credentials"),  # phone number not registered on Cloud API
    10: blocked("credentials"),  # permission denied
    200: blocked("credentials"),  # permission error
    # Permanent for this message.
    131026: PERMANENT,  # undeliverable
    131047: PERMANENT,  # 24-hour window closed: needs a template
    131051: PERMANENT,  # unsupported message type
    100: PERMANENT,  # invalid parameter
    # Ambiguous even with a 4xx: Meta's "something went wrong" may follow processing.
    131000: AMBIGUOUS,
    131016: AMBIGUOUS,
}


class WhatsAppCloudAdapter(GraphAdapter):
    channel: Channel = Channel.WHATSAPP
    provider: ClassVar[str] = "whatsapp"
    error_rules: ClassVar[Mapping[int, Rule]] = WHATSAPP_ERROR_RULES

    def _rule_for(self, error: GraphError) -> Rule | None:
        if error.code in _TEMPLATE_ERRORS:
            return PERMANENT
        return super()._rule_for(error)

    def _payload(self, message: OutboundMessage) -> dict[str, Any]:
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.recipient,
            "type": "text",
            "text": {"body": message.body},
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
