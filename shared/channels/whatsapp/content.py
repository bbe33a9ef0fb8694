"""WhatsApp content: text, media (image, document, audio, video by link or media id) and
approved templates, and the 24-hour customer service window.

Sources:
* request shapes: Meta's WhatsApp Cloud API OpenAPI, ``/{Version}/{Phone-Number-ID}/messages``
  (``TextMessage``, ``ImageMessage``, ``TemplateObject``, ``TemplateComponent``, ...), the copy
  in ``shared/reference/whatsapp-cloud-api-openapi-v23.0.yaml``; ``tests/unit/test_channel_content.py``
  validates every body built here against it;
* the window: free-form messages only within 24 hours of the user's last message; outside it
  only templates (error 131047 "Re-engagement message"),
  https://developers.facebook.com/docs/whatsapp/conversation-types#customer-service-window
  and https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes. Meta's
  "Service messages" page: "When a WhatsApp user messages you or calls you, a 24-hour timer
  called a customer service window starts [...] When the window closes, you can only send
  pre-approved template messages",
  https://developers.facebook.com/documentation/business-messaging/whatsapp/messages/send-messages.
  Calls are not tracked here (no call webhook is subscribed), so a window a call opened is
  seen as closed: a free-form step is held or refused, never sent to fail;
* text body: at most 4096 characters (Cloud API messages reference, text object).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, model_validator

from shared.channels.content import WINDOW, ContentModel, WindowRule
from shared.providers.outcome import OutboundMessage

TEXT_MAX_CHARS = 4096


class MediaRef(ContentModel):
    """An uploaded media id or a public https link: exactly one (``MediaObject``: oneOf)."""

    link: str | None = Field(default=None, pattern=r"^https?://")
    id: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> MediaRef:
        if (self.link is None) == (self.id is None):
            raise ValueError("give exactly one of link and id")
        return self

    def wire(self) -> dict[str, str]:
        return {"link": self.link} if self.link is not None else {"id": str(self.id)}


class Text(ContentModel):
    kind: Literal["text"] = "text"
    text: str = Field(min_length=1, max_length=TEXT_MAX_CHARS)
    preview_url: bool = False


class Media(ContentModel):
    kind: Literal["media"] = "media"
    media_type: Literal["image", "document", "audio", "video"]
    media: MediaRef
    caption: str | None = Field(default=None, min_length=1)
    filename: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _fits_type(self) -> Media:
        if self.caption is not None and self.media_type == "audio":
            raise ValueError("audio messages take no caption")
        if self.filename is not None and self.media_type != "document":
            raise ValueError("only documents take a filename")
        return self


class TemplateHeader(ContentModel):
    """A header parameter: text (``{{1}}`` in a text header) or the media of a media header."""

    format: Literal["text", "image", "document", "video"]
    text: str | None = Field(default=None, min_length=1)
    media: MediaRef | None = None

    @model_validator(mode="after")
    def _fits_format(self) -> TemplateHeader:
        if (self.format == "text") != (self.text is not None) or (self.format != "text") != (
            self.media is not None
        ):
            raise ValueError("a text header takes text, a media header takes media")
        return self


class QuickReplyButton(ContentModel):
    type: Literal["quick_reply"] = "quick_reply"
    index: int = Field(ge=0, le=9)
    payload: str = Field(min_length=1)


class UrlButton(ContentModel):
    """The dynamic suffix appended to the template's URL button."""

    type: Literal["url"] = "url"
    index: int = Field(ge=0, le=9)
    text: str = Field(min_length=1)


Button = Annotated[QuickReplyButton | UrlButton, Field(discriminator="type")]


class Template(ContentModel):
    kind: Literal["template"] = "template"
    name: str = Field(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$")
    language: str = Field(min_length=2, max_length=15)
    header: TemplateHeader | None = None
    body_parameters: list[str] = Field(default_factory=list)
    buttons: list[Button] = Field(default_factory=list)

    def describe(self) -> str:
        """The readable ``body`` stored next to the content (audit, read-back)."""
        params = ", ".join(self.body_parameters)
        return f"[template {self.name} {self.language}]" + (f" {params}" if params else "")


WhatsAppContent = Annotated[Text | Media | Template, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Text | Media | Template] = TypeAdapter(WhatsAppContent)

# Free-form kinds: allowed only inside the customer service window.
FREE_FORM_KINDS = frozenset({"text", "media"})


def parse(raw: Any) -> Text | Media | Template:
    return _ADAPTER.validate_python(raw)


def of(message: OutboundMessage) -> Text | Media | Template:
    """A row's content; a row without one is plain text, as every row was before."""
    return parse(message.content) if message.content is not None else Text(text=message.body)


CUSTOMER_SERVICE_WINDOW = WindowRule(
    WINDOW,
    "WhatsApp's 24-hour customer service window (free-form text and media)",
    "use an approved template (content kind template)",
)


def window_rule(content: Text | Media | Template) -> WindowRule | None:
    return CUSTOMER_SERVICE_WINDOW if content.kind in FREE_FORM_KINDS else None


def hold_reason(message: OutboundMessage, now: datetime) -> str | None:
    """Why a free-form message must not be offered now: outside the window Meta refuses it
    with 131047, so it waits (a reply reopens the window) instead of failing."""
    rule = window_rule(of(message))
    if rule is not None and not rule.allows(message.last_inbound_at, now):
        return (
            "held: outside the 24-hour customer service window (the contact has not written in the "
            "last 24 hours); a free-form WhatsApp message is refused there, only a template may be sent"
        )
    return None


def message_fields(content: Text | Media | Template) -> dict[str, Any]:
    """The ``type`` and type object of a Cloud API message body."""
    if isinstance(content, Text):
        text: dict[str, Any] = {"body": content.text}
        if content.preview_url:
            text["preview_url"] = True
        return {"type": "text", "text": text}
    if isinstance(content, Media):
        media: dict[str, Any] = content.media.wire()
        if content.caption is not None:
            media["caption"] = content.caption
        if content.filename is not None:
            media["filename"] = content.filename
        return {"type": content.media_type, content.media_type: media}
    components: list[dict[str, Any]] = []
    if content.header is not None:
        header = content.header
        parameter: dict[str, Any] = (
            {"type": "text", "text": header.text}
            if header.format == "text"
            else {"type": header.format, header.format: header.media.wire() if header.media else {}}
        )
        components.append({"type": "header", "parameters": [parameter]})
    if content.body_parameters:
        components.append(
            {"type": "body", "parameters": [{"type": "text", "text": p} for p in content.body_parameters]}
        )
    for button in content.buttons:
        components.append(
            {
                "type": "button",
                "sub_type": button.type,
                "index": str(button.index),
                "parameters": [
                    {"type": "payload", "payload": button.payload}
                    if isinstance(button, QuickReplyButton)
                    else {"type": "text", "text": button.text}
                ],
            }
        )
    template: dict[str, Any] = {
        "name": content.name,
        "language": {"policy": "deterministic", "code": content.language},
    }
    if components:
        template["components"] = components
    return {"type": "template", "template": template}
