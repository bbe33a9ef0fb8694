"""WhatsApp Cloud API (Meta Graph): ``POST /{version}/{phone_number_id}/messages``.

The message's idempotency key travels as ``biz_opaque_callback_data``: Cloud API does not
process it, but echoes it in every status webhook, which is how an ``unknown`` row is later
proven sent. Error codes follow Meta's documentation, cited in the table; see ``GraphAdapter``
for the order in which HTTP status and code are weighed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from shared.providers.http import GraphAdapter, Rule, ambiguous, blocked, permanent, retry, throttle
from shared.providers.outcome import Channel, OutboundMessage, SendOutcome

# Meta's WhatsApp Cloud API error codes (title and meaning of every code below, HTTP status
# included), and the Graph API error page those codes build on.
WA_ERRORS = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes"
GRAPH_ERRORS = "https://developers.facebook.com/docs/graph-api/guides/error-handling"

# Only codes Meta documents as a refusal of the request free a message; a code missing here
# is ambiguous (GraphAdapter), never "provably not sent".
WHATSAPP_ERROR_RULES: Mapping[int, Rule] = {
    # Throttled: the request is refused and nothing is processed.
    130429: throttle(WA_ERRORS),  # "Rate limit hit": throughput reached; arrives as HTTP 400
    131056: throttle(
        WA_ERRORS, 10, scope="recipient"
    ),  # "pair rate limit hit": about one message per 6 s per recipient
    80007: throttle(WA_ERRORS, 60),  # "Rate limit issues": the WABA reached its rate limit
    4: throttle(WA_ERRORS, 60),  # "API Too Many Calls": the app reached its call rate limit
    17: throttle(GRAPH_ERRORS, 60),  # "API User Too Many Calls": throttling
    131057: retry(WA_ERRORS, 300),  # "Account in maintenance mode" (e.g. a throughput upgrade)
    # The sender cannot send at all: pause it and alert.
    131048: blocked("throttle", WA_ERRORS),  # "Spam rate limit hit": message failed to send
    368: blocked("policy", WA_ERRORS),  # "Temporarily blocked for policies violations"
    131031: blocked("policy", WA_ERRORS),  # "Account has been locked"
    131042: blocked("policy", WA_ERRORS),  # "Business eligibility payment issue"
    0: blocked("credentials", WA_ERRORS),  # "AuthException": unable to authenticate the app user
    190: blocked("credentials", WA_ERRORS),  # "Access token has expired"
    10: blocked("credentials", WA_ERRORS),  # "Permission Denied"
    200: blocked("credentials", WA_ERRORS),  # "API Permission" (200-299)
    131045: blocked("credentials", WA_ERRORS),  # "Incorrect certificate": registration error
    133010: blocked("credentials", WA_ERRORS),  # "Phone number Not Registered"
    # Refused for this message: resending the same request cannot succeed.
    131026: permanent(WA_ERRORS),  # "Message Undeliverable"
    131047: permanent(WA_ERRORS),  # "Re-engagement message": 24-hour window closed
    131051: permanent(WA_ERRORS),  # "Unsupported message type"
    100: permanent(WA_ERRORS),  # "Invalid parameter"
    131008: permanent(WA_ERRORS),  # "Required parameter is missing"
    131009: permanent(WA_ERRORS),  # "Parameter value is not valid"
    131021: permanent(WA_ERRORS),  # "Recipient cannot be sender"
    135000: permanent(WA_ERRORS),  # "Generic user error": failed to send, request parameters
    # Template errors: only the documented 132xxx codes, not the whole range.
    132000: permanent(WA_ERRORS),  # "Template Param Count Mismatch"
    132001: permanent(WA_ERRORS),  # "Template does not exist"
    132005: permanent(WA_ERRORS),  # "Template Hydrated Text Too Long"
    132007: permanent(WA_ERRORS),  # "Template Format Character Policy Violated"
    132012: permanent(WA_ERRORS),  # "Template Parameter Format Mismatch"
    132015: permanent(WA_ERRORS),  # "Template is Paused"
    132016: permanent(WA_ERRORS),  # "Template is Disabled"
    # Documented, and ambiguous even with a 4xx: Meta may have acted.
    1: ambiguous(WA_ERRORS),  # "API Unknown": invalid request or possible server error
    2: ambiguous(WA_ERRORS),  # "API Service": downtime or overload
    131000: ambiguous(WA_ERRORS),  # "Something went wrong": unknown error
    131016: ambiguous(WA_ERRORS),  # "Service unavailable"
    133004: ambiguous(WA_ERRORS),  # "Server Temporarily Unavailable"
}


class WhatsAppCloudAdapter(GraphAdapter):
    channel: Channel = Channel.WHATSAPP
    provider: ClassVar[str] = "whatsapp"
    error_rules: ClassVar[Mapping[int, Rule]] = WHATSAPP_ERROR_RULES

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
