"""The fake Messenger Send API: ``POST /{version}/{page_id}/messages``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devstack.fake_channels.base import Answer, Invalid, SendRequest, token
from devstack.fake_channels.meta import GraphDialect, graph_error

MESSENGER = "messenger"


class MessengerDialect(GraphDialect):
    channel = MESSENGER

    def unauthorized(self) -> Answer:
        return graph_error(400, 190, "Invalid OAuth access token - Cannot parse access token")

    def invalid(self, why: str) -> Answer:
        return graph_error(400, 100, f"(#100) {why}")

    def accepted(self, entry: Mapping[str, Any]) -> Answer:
        return 200, {"recipient_id": entry["recipient"], "message_id": entry["provider_message_id"]}, {}

    def rate_limited(self, retry_after_seconds: float | None) -> Answer:
        return graph_error(400, 613, "(#613) Calls to this api have exceeded the rate limit.")

    def server_error(self, status: int) -> Answer:
        status_, body, headers = graph_error(
            status, 2, "An unexpected error has occurred. Please retry your request later."
        )
        body["error"]["is_transient"] = True
        return status_, body, headers

    def permanent(self) -> Answer:
        return graph_error(400, 551, "(#551) This person isn't available right now.", subcode=1545041)

    def sender_blocked(self) -> Answer:
        return graph_error(
            400,
            190,
            "Error validating access token: The session has been invalidated because the user "
            "changed their password.",
            subcode=460,
        )

    def new_message_id(self) -> str:
        return "m_" + token(48)


def parse_request(sender_id: str, data: Mapping[str, Any]) -> SendRequest:
    recipient = data.get("recipient")
    psid = recipient.get("id") if isinstance(recipient, Mapping) else None
    message = data.get("message")
    text = message.get("text") if isinstance(message, Mapping) else None
    metadata = message.get("metadata") if isinstance(message, Mapping) else None
    if data.get("messaging_type") not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
        raise Invalid("messaging_type must be RESPONSE, UPDATE or MESSAGE_TAG")
    if not isinstance(psid, str) or not psid:
        raise Invalid("recipient.id is required")
    if not isinstance(text, str) or not text or len(text) > 2000:
        raise Invalid("message.text must be 1-2000 characters")
    if metadata is not None and (not isinstance(metadata, str) or len(metadata) > 1000):
        raise Invalid("message.metadata must be a string of at most 1000 characters")
    return SendRequest(MESSENGER, sender_id, psid, text, metadata)
