"""LinkedIn content through Unipile: a chat message, a connection invitation with an optional
note, and InMail.

Sources:
* invitation: ``POST /api/v1/users/invite`` with JSON ``provider_id``, ``account_id`` and an
  optional ``message`` of at most 300 characters ("Send an invitation",
  https://developer.unipile.com/reference/userscontroller_adduserbyidentifier: the request
  schema's ``message`` has ``maxLength: 300``, "An optional message to go with the invitation
  (max 300 chars)", and a longer one is answered 400 ``errors/too_many_characters``; and
  https://developer.unipile.com/docs/invite-users). The provider id comes from
  ``GET /api/v1/users/{identifier}?account_id=`` (same guide, "Convert Public ID to Provider ID");
* InMail: ``POST /api/v1/chats`` with ``linkedin[inmail]=true`` (Start a new chat,
  https://developer.unipile.com/reference/chatscontroller_startnewchat).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from shared.channels.content import ContentModel
from shared.providers.outcome import OutboundMessage

# Unipile's API reference (above): ``message`` maxLength 300. LinkedIn's lower figure for free
# accounts (200) has only secondary sources, see ``shared.content.TEXT_LIMITS``.
INVITATION_NOTE_MAX_CHARS = 300


class Text(ContentModel):
    kind: Literal["text"] = "text"
    text: str = Field(min_length=1)


class Invitation(ContentModel):
    kind: Literal["invitation"] = "invitation"
    note: str | None = Field(default=None, min_length=1, max_length=INVITATION_NOTE_MAX_CHARS)


class InMail(ContentModel):
    kind: Literal["inmail"] = "inmail"
    text: str = Field(min_length=1)
    subject: str | None = Field(default=None, min_length=1)


UnipileContent = Annotated[Text | Invitation | InMail, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Text | Invitation | InMail] = TypeAdapter(UnipileContent)


def parse(raw: Any) -> Text | Invitation | InMail:
    return _ADAPTER.validate_python(raw)


def of(message: OutboundMessage) -> Text | Invitation | InMail:
    return parse(message.content) if message.content is not None else Text(text=message.body)
