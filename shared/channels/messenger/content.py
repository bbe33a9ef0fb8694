"""Messenger content: text and attachments, each with its ``messaging_type`` and, for
``MESSAGE_TAG``, a tag; and the standard 24-hour messaging window.

Sources:
* messaging types and the window: Send API reference ("the message recipient must have sent
  your Page a message within the last 24 hours"), https://developers.facebook.com/docs/messenger-platform/reference/send-api/
  and https://developers.facebook.com/docs/messenger-platform/send-messages#messaging_types;
  the policy overview: "Standard messaging — Businesses have the duration of the standard
  messaging window to respond to a user [...] For most user actions, it lasts 24 hours",
  https://developers.facebook.com/documentation/business-messaging/messenger-platform/policy/.
  The same page lets a window opened from a Click-to-Messenger ad last up to 7 days; the
  webhook does not tell that entry point apart, so 24 hours is assumed (a step is held or
  refused that Meta might have taken, never sent to fail);
* tags: "Message Tags", https://developers.facebook.com/docs/messenger-platform/send-messages/message-tags/
  lists CONFIRMED_EVENT_UPDATE, POST_PURCHASE_UPDATE, ACCOUNT_UPDATE and HUMAN_AGENT (a human
  agent's reply within 7 days of the person's message). The 2019 redesign retired every other
  tag from March 4th, 2020; they are refused here rather than sent to fail;
* text: at most 2000 characters (Send API reference, ``message.text``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, model_validator

from shared.channels.content import WINDOW, ContentModel, WindowRule
from shared.providers.outcome import OutboundMessage

TEXT_MAX_CHARS = 2000
MessagingType = Literal["RESPONSE", "UPDATE", "MESSAGE_TAG"]
Tag = Literal["CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "ACCOUNT_UPDATE", "HUMAN_AGENT"]
# HUMAN_AGENT may answer up to 7 days after the person's message; the other tags have no window.
HUMAN_AGENT_WINDOW = timedelta(days=7)


class _Typed(ContentModel):
    messaging_type: MessagingType = "UPDATE"
    tag: Tag | None = None

    @model_validator(mode="after")
    def _tag_iff_message_tag(self) -> _Typed:
        if (self.messaging_type == "MESSAGE_TAG") != (self.tag is not None):
            raise ValueError("a tag goes with messaging_type MESSAGE_TAG, and only with it")
        return self

    def envelope(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"messaging_type": self.messaging_type}
        if self.tag is not None:
            fields["tag"] = self.tag
        return fields


class Text(_Typed):
    kind: Literal["text"] = "text"
    text: str = Field(min_length=1, max_length=TEXT_MAX_CHARS)


class Media(_Typed):
    """An attachment by public URL or by an ``attachment_id`` from the Attachment Upload API."""

    kind: Literal["media"] = "media"
    media_type: Literal["image", "audio", "video", "file"]
    url: str | None = Field(default=None, pattern=r"^https?://")
    attachment_id: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Media:
        if (self.url is None) == (self.attachment_id is None):
            raise ValueError("give exactly one of url and attachment_id")
        return self


MessengerContent = Annotated[Text | Media, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Text | Media] = TypeAdapter(MessengerContent)


def parse(raw: Any) -> Text | Media:
    return _ADAPTER.validate_python(raw)


def message_object(content: Text | Media, metadata: str) -> dict[str, Any]:
    if isinstance(content, Text):
        return {"text": content.text, "metadata": metadata}
    payload: dict[str, Any] = (
        {"url": content.url, "is_reusable": True}
        if content.url is not None
        else {"attachment_id": content.attachment_id}
    )
    return {"attachment": {"type": content.media_type, "payload": payload}, "metadata": metadata}


def of(message: OutboundMessage) -> Text | Media:
    return parse(message.content) if message.content is not None else Text(text=message.body)


STANDARD_WINDOW = WindowRule(
    WINDOW,
    "Messenger's 24-hour standard messaging window (messaging_type RESPONSE or UPDATE)",
    "use messaging_type MESSAGE_TAG with a tag Meta allows for this message",
)
HUMAN_AGENT = WindowRule(
    HUMAN_AGENT_WINDOW,
    "Messenger's 7-day human agent window (tag HUMAN_AGENT)",
    "only a person's reply within 7 days of the contact's message may use HUMAN_AGENT",
)


def window_rule(content: Text | Media) -> WindowRule | None:
    """How long after the person's last message this may be sent; ``None``: any time."""
    if content.messaging_type != "MESSAGE_TAG":
        return STANDARD_WINDOW
    return HUMAN_AGENT if content.tag == "HUMAN_AGENT" else None


def hold_reason(message: OutboundMessage, now: datetime) -> str | None:
    typed = of(message)
    rule = window_rule(typed)
    if rule is not None and not rule.allows(message.last_inbound_at, now):
        return (
            f"held: outside Messenger's {rule.hours}-hour window for messaging_type {typed.messaging_type}"
            + (f" tag {typed.tag}" if typed.tag else "")
            + " (the person has not written since); Meta refuses it there (code 10, subcode 2018278)"
        )
    return None
