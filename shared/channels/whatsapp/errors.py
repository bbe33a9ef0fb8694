"""WhatsApp Cloud API error codes: which ones prove a request was refused, and the source of
each. A code missing here is ambiguous (``GraphAdapter``), never "provably not sent"."""

from __future__ import annotations

from collections.abc import Mapping

from shared.providers.http import Rule, ambiguous, blocked, permanent, retry, throttle

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
