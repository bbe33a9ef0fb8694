"""The fake Messenger Send API: ``POST /{version}/{page_id}/messages``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
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

    def window_closed(self) -> Answer:
        return graph_error(
            400,
            10,
            "(#10) This message is sent outside of allowed window.",
            subcode=2018278,
        )


# Meta, "Message Tags" (shared/channels/messenger/content.py cites it): the tags accepted
# since March 4th, 2020; HUMAN_AGENT within 7 days of the person's message, the others any time.
TAGS = frozenset({"CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "ACCOUNT_UPDATE", "HUMAN_AGENT"})
_ATTACHMENT_TYPES = ("image", "audio", "video", "file")


def parse_request(sender_id: str, data: Mapping[str, Any]) -> SendRequest:
    recipient = data.get("recipient")
    psid = recipient.get("id") if isinstance(recipient, Mapping) else None
    message = data.get("message")
    if not isinstance(message, Mapping):
        raise Invalid("message is required")
    text = message.get("text")
    attachment = message.get("attachment")
    metadata = message.get("metadata")
    messaging_type = data.get("messaging_type")
    tag = data.get("tag")
    if messaging_type not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
        raise Invalid("messaging_type must be RESPONSE, UPDATE or MESSAGE_TAG")
    if (messaging_type == "MESSAGE_TAG") != (tag is not None):
        raise Invalid("tag is required with messaging_type MESSAGE_TAG, and only with it")
    if tag is not None and tag not in TAGS:
        raise Invalid(f"tag {tag!r} is not a supported message tag")
    if not isinstance(psid, str) or not psid:
        raise Invalid("recipient.id is required")
    if metadata is not None and (not isinstance(metadata, str) or len(metadata) > 1000):
        raise Invalid("message.metadata must be a string of at most 1000 characters")
    if (text is None) == (attachment is None):
        raise Invalid("message needs exactly one of text and attachment")
    if attachment is not None:
        payload = attachment.get("payload") if isinstance(attachment, Mapping) else None
        kind = attachment.get("type") if isinstance(attachment, Mapping) else None
        if kind not in _ATTACHMENT_TYPES or not isinstance(payload, Mapping):
            raise Invalid("attachment needs a type (image, audio, video, file) and a payload")
        if ("url" in payload) == ("attachment_id" in payload):
            raise Invalid("attachment.payload needs exactly one of url and attachment_id")
        text = f"[{kind} {payload.get('url') or payload.get('attachment_id')}]"
    if not isinstance(text, str) or not text or len(text) > 2000:
        raise Invalid("message.text must be 1-2000 characters")
    if messaging_type != "MESSAGE_TAG":
        window: timedelta | None = timedelta(hours=24)
    else:
        window = timedelta(days=7) if tag == "HUMAN_AGENT" else None
    kind = "text" if attachment is None else "media"
    return SendRequest(
        MESSENGER, sender_id, psid, text, metadata, window, kind, {"messaging_type": messaging_type}
    )
