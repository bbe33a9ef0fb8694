"""Messenger Send API error codes: which ones prove a request was refused, and the source of
each. A code missing here is ambiguous (``GraphAdapter``), never "provably not sent"."""

from __future__ import annotations

from collections.abc import Mapping

from shared.providers.http import Rule, ambiguous, blocked, permanent, throttle

MESSENGER_ERRORS = "https://developers.facebook.com/docs/messenger-platform/error-codes"
GRAPH_ERRORS = "https://developers.facebook.com/docs/graph-api/guides/error-handling"
GRAPH_RATE_LIMITS = "https://developers.facebook.com/docs/graph-api/overview/rate-limiting"

# Only codes Meta documents as a refusal of the request free a message; a code missing here
# is ambiguous (GraphAdapter), never "provably not sent".
MESSENGER_ERROR_RULES: Mapping[int, Rule] = {
    # Throttled: "any subsequent requests made by your app will fail" until the window passes.
    613: throttle(GRAPH_RATE_LIMITS, 60),  # "Calls to this api have exceeded the rate limit"
    4: throttle(GRAPH_ERRORS, 300),  # "API Too Many Calls": application request limit
    17: throttle(GRAPH_ERRORS, 300),  # "API User Too Many Calls"
    32: throttle(GRAPH_RATE_LIMITS, 300),  # Page-level throttling
    # Refused for this message.
    10: permanent(MESSENGER_ERRORS),  # every subcode, e.g. 2018278: outside the messaging window
    551: permanent(MESSENGER_ERRORS),  # "This person isn't available right now"
    # The Page may not message at all: pause it and alert.
    190: blocked("credentials", GRAPH_ERRORS),  # "Access token has expired"
    200: blocked("credentials", GRAPH_ERRORS),  # "API Permission" (200-299)
    230: blocked("credentials", GRAPH_ERRORS),  # requires pages_messaging (200-299 range)
    368: blocked("policy", GRAPH_ERRORS),  # "Temporarily blocked for policies violations"
    # Documented, and ambiguous even with a 4xx: Meta may have acted.
    2: ambiguous(MESSENGER_ERRORS),  # "An unexpected error has occurred"
    1: ambiguous(GRAPH_ERRORS),  # "API Unknown": possibly a temporary issue due to downtime
}
