"""Unipile error types: which ones prove a request was refused, the source of each, and how
an error body is read. A type missing here is ambiguous, never "provably not sent"."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from shared.providers.http import Rule, ambiguous, blocked, permanent, throttle, truncate

# The error types (per HTTP status) of POST /api/v1/chats, with their titles; the v2 error
# page explains the api/ and provider/ throwers.
START_CHAT = "https://developer.unipile.com/reference/chatscontroller_startnewchat"
ERROR_RESPONSES = "https://developer.unipile.com/v2.0/reference/error-responses"

# Only types Unipile documents as a refusal of the request free a message; a type missing
# here is ambiguous, never "provably not sent".
UNIPILE_ERROR_RULES: Mapping[str, Rule] = {
    "too_many_requests": throttle(START_CHAT, 120),  # 429 "The provider cannot accept any more requests"
    # 422 "Unprocessable Entity": LinkedIn refuses this message.
    "no_connection_with_recipient": permanent(START_CHAT),  # "Recipient cannot be reached"
    "not_allowed_inmail": permanent(START_CHAT),
    "blocked_recipient": permanent(START_CHAT),
    "user_unreachable": permanent(START_CHAT),
    "cannot_resend_yet": permanent(START_CHAT),
    "action_already_performed": permanent(START_CHAT),
    # 400 "The given parameters ... does not respect the required shape"
    "invalid_parameters": permanent(ERROR_RESPONSES),
    # 422, sender-level: LinkedIn's limits and InMail credits.
    "limit_exceeded": blocked("quota", START_CHAT),
    "insufficient_credits": blocked("quota", START_CHAT),
    # 401: the request is not authenticated.
    "missing_credentials": blocked("credentials", START_CHAT),  # the API key is missing or wrong
    "disconnected_account": blocked("credentials", START_CHAT),  # "Disconnected account"
    # 403: the account may not do this.
    "account_restricted": blocked("policy", START_CHAT),  # "restricted by the provider"
    "feature_not_subscribed": blocked("policy", START_CHAT),  # "Feature not subscribed"
    # 504 "Request timed out": documented, and proves nothing either way.
    "request_timeout": ambiguous(START_CHAT),
}

_TYPE_CHARS = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class UnipileError:
    type: str | None
    status: int | None
    title: str
    detail: str

    @property
    def text(self) -> str:
        return truncate(" | ".join(p for p in (self.title, self.detail) if p))


def error_type(raw: object) -> str | None:
    """``"errors/too_many_requests"`` and ``"too_many_requests"`` both give the latter."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    suffix = raw.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    cleaned = _TYPE_CHARS.sub("_", suffix).strip("_")[:64]
    return cleaned or None


def parse_unipile_error(data: object) -> UnipileError | None:
    if not isinstance(data, Mapping):
        return None
    status = data.get("status")
    return UnipileError(
        type=error_type(data.get("type")),
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        title=str(data.get("title") or ""),
        detail=str(data.get("detail") or data.get("message") or ""),
    )
