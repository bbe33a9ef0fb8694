"""Personalised content: a step's body is a small template over the contact's fields, rendered
once when the contact joins a campaign, and checked against its channel's limits.

Syntax (nothing else inside braces is accepted, so a typo is refused when the campaign is
defined, not sent):

    {first_name}            the contact's field; a contact without it is rejected at enqueue
    {first_name|there}      the field, or the fallback text when the contact has none
    {~Hi|Hello|Hey}         a variant, chosen per contact (seed 004's "different greetings")
    {{ and }}               literal braces

Why not Jinja or ``str.format``: both evaluate expressions (attribute access, filters) written
by whoever authors a campaign; this grammar has no expressions, so rendering cannot read
anything but the contact's own fields.

A variant is chosen from a hash of (campaign, channel, contact address, step, group), so the
same contact gets the same greeting on every render; and since the rendered text is stored
with the contact's membership and copied into the queue row, a retry or a re-enqueue sends the
text that was stored, never a new draw.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from uuid import UUID

from shared.pacing import Action
from shared.providers.outcome import Channel

__all__ = [
    "ContentProblem",
    "ContentRejected",
    "Limit",
    "TemplateError",
    "channel_limit",
    "contact_variables",
    "parse_template",
    "render_steps",
    "text_length",
]


class TemplateError(ValueError):
    """The body is not a valid template; raised when the campaign is defined."""


class ContentProblem(StrEnum):
    MISSING_VARIABLE = "missing_variable"
    EMPTY_BODY = "empty_body"
    TOO_LONG = "too_long"


@dataclass(frozen=True)
class ContentRejected(Exception):
    """This contact's text for a step cannot be sent; the contact is not queued."""

    problem: ContentProblem
    step: int
    detail: str


# --- parsing --------------------------------------------------------------------------------

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(
    r"(?P<open>\{\{)|(?P<close>\}\})"
    r"|\{~(?P<variants>[^{}]*)\}"
    r"|\{\s*(?P<name>" + _NAME + r")\s*(?:\|(?P<fallback>[^{}]*))?\}"
    r"|(?P<stray>[{}])"
)


@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class Variable:
    name: str  # lower case
    fallback: str | None


@dataclass(frozen=True)
class Variants:
    options: tuple[str, ...]


Part = Literal | Variable | Variants


@lru_cache(maxsize=256)
def parse_template(body: str) -> tuple[Part, ...]:
    parts: list[Part] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(body):
        literal.append(body[position : match.start()])
        position = match.end()
        if match["open"]:
            literal.append("{")
        elif match["close"]:
            literal.append("}")
        elif match["stray"]:
            near = body[max(0, match.start() - 10) : match.start() + 10]
            raise TemplateError(
                f"unbalanced or invalid '{match['stray']}' at position {match.start()} (near {near!r}): "
                "use {field}, {field|fallback}, {~a|b|c}, or {{ and }} for literal braces"
            )
        else:
            if literal:
                parts.append(Literal("".join(literal)))
                literal = []
            if match["variants"] is not None:
                options = tuple(match["variants"].split("|"))
                if len(options) < 2:
                    raise TemplateError(f"a variant group needs at least two options: {match[0]!r}")
                parts.append(Variants(options))
            else:
                parts.append(Variable(match["name"].lower(), match["fallback"]))
    literal.append(body[position:])
    if any(literal):
        parts.append(Literal("".join(literal)))
    return tuple(parts)


def validate_template(body: str) -> str:
    """For pydantic: a step body must parse."""
    parse_template(body)
    return body


# --- variables ------------------------------------------------------------------------------


def field_key(name: str) -> str:
    """How a field name is looked up: "First Name" and "first_name" are one field."""
    return re.sub(r"[^a-z0-9_]+", "_", name.strip().lower()).strip("_")


def contact_variables(display_name: str, fields: Mapping[str, str]) -> dict[str, str]:
    """The values a template can read. ``name`` is the display name; ``first_name`` and
    ``last_name`` come from the fields, else from the display name split at its first space.
    Blank values are absent, so a fallback applies to them."""
    values = {field_key(k): v.strip() for k, v in fields.items() if isinstance(v, str)}
    display = display_name.strip()
    if display:
        values.setdefault("name", display)
        first, _, last = display.partition(" ")
        values.setdefault("first_name", first)
        if last.strip():
            values.setdefault("last_name", last.strip())
    return {k: v for k, v in values.items() if v}


def variant_index(seed: str, count: int) -> int:
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def render(parts: Sequence[Part], values: Mapping[str, str], seed: str, step: int) -> str:
    out: list[str] = []
    group = 0
    for part in parts:
        if isinstance(part, Literal):
            out.append(part.text)
        elif isinstance(part, Variants):
            out.append(part.options[variant_index(f"{seed}:{step}:{group}", len(part.options))])
            group += 1
        else:
            value = values.get(part.name)
            if value is None:
                if part.fallback is None:
                    raise ContentRejected(
                        ContentProblem.MISSING_VARIABLE,
                        step,
                        f"step {step} needs {{{part.name}}} and the contact has no {part.name!r} "
                        f"(add the field, or write {{{part.name}|fallback}})",
                    )
                value = part.fallback
            out.append(value)
    return "".join(out)


# --- channel limits -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    max_chars: int
    source: str


# Lengths are counted in UTF-16 code units, which is at least the number of code points: an
# emoji outside the BMP counts 2. If a provider counts code points, this refuses a borderline
# text it would have taken, never sends one it refuses.
TEXT_LIMITS: dict[tuple[Channel, Action], Limit] = {
    (Channel.WHATSAPP, Action.MESSAGE): Limit(
        4096,
        "Meta WhatsApp Cloud API OpenAPI v23.0 (../shared/reference), TextMessage_1.body maxLength 4096",
    ),
    (Channel.MESSENGER, Action.MESSAGE): Limit(
        2000,
        "Meta Messenger Platform, Send API reference, message.text: 'Must be UTF-8 and has a 2000 "
        "character limit' (developers.facebook.com/docs/messenger-platform/reference/send-api/)",
    ),
    # Still secondary, no primary source found: Unipile's API reference gives the message
    # ``text`` of "Start a new chat" (ChatsController_startNewChat) and "Send a message in a
    # chat" (ChatsController_sendMessageInChat) no maxLength, only a 400
    # ``errors/too_many_characters`` ("The provided content exceeds the character limit");
    # LinkedIn's Help Center pages found state no figure. Third-party LinkedIn guides give
    # 3,000 characters for a message to a connection (8,000 in older ones): the smaller one.
    (Channel.LINKEDIN, Action.MESSAGE): Limit(
        3000,
        "secondary: LinkedIn message limit as quoted by third-party guides; Unipile's API reference "
        "names no length for a chat message",
    ),
    # Primary: Unipile's API reference, "Send an invitation" (POST /api/v1/users/invite,
    # UsersController_addUserByIdentifier), request body ``message``: maxLength 300, "An optional
    # message to go with the invitation (max 300 chars)",
    # https://developer.unipile.com/reference/userscontroller_adduserbyidentifier. LinkedIn
    # itself is said to allow only 200 on free accounts (secondary: third-party guides; Unipile's
    # "Manage invitations" guide says only that a free account may send 5 notes a month).
    (Channel.LINKEDIN, Action.INVITATION): Limit(
        300,
        "Unipile API reference, Send an invitation (POST /api/v1/users/invite): message maxLength 300 "
        "(developer.unipile.com/reference/userscontroller_adduserbyidentifier)",
    ),
}

CAPTION_LIMITS: dict[Channel, Limit] = {
    Channel.WHATSAPP: Limit(
        1024,
        "Meta WhatsApp Cloud API OpenAPI v23.0 (../shared/reference), MediaObject_1.caption maxLength 1024",
    ),
    # Messenger's attachment object has no caption field (Send API reference, message.attachment):
    # a caption would have to go as a second text message.
    Channel.MESSENGER: Limit(0, "Meta Messenger Send API: attachments carry no caption"),
}


def text_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def channel_limit(channel: Channel, action: Action) -> Limit | None:
    return TEXT_LIMITS.get((channel, action))


def check_limits(channel: Channel, action: Action, text: str, step: int, *, caption: bool = False) -> None:
    if not text.strip():
        raise ContentRejected(ContentProblem.EMPTY_BODY, step, f"step {step} renders to an empty text")
    limit = CAPTION_LIMITS.get(channel) if caption else channel_limit(channel, action)
    if limit is not None and text_length(text) > limit.max_chars:
        kind = "caption" if caption else f"{channel.value} {action.value} text"
        raise ContentRejected(
            ContentProblem.TOO_LONG,
            step,
            f"step {step} renders to {text_length(text)} characters; a {kind} takes at most "
            f"{limit.max_chars} ({limit.source})",
        )


@dataclass(frozen=True)
class StepTemplate:
    body: str
    action: Action


def render_steps(
    campaign_id: UUID,
    channel: Channel,
    address: str,
    display_name: str,
    fields: Mapping[str, str],
    steps: Sequence[StepTemplate],
) -> list[str]:
    """Every step's text for one contact, or ``ContentRejected`` for the first step that cannot
    be sent to it."""
    values = contact_variables(display_name, fields)
    seed = f"{campaign_id}:{channel.value}:{address}"
    bodies = []
    for position, step in enumerate(steps, start=1):
        text = render(parse_template(step.body), values, seed, position)
        check_limits(channel, step.action, text, position)
        bodies.append(text)
    return bodies
