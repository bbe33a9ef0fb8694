"""What every fake channel implements: the provider's answers (its real success and error
bodies) and the request it accepted."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

Answer = tuple[int, dict[str, Any], dict[str, str]]


def token(nbytes: int) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).decode().rstrip("=")


class Invalid(Exception):
    """The request does not have the provider's shape: answered with its validation error."""


@dataclass(frozen=True)
class SendRequest:
    channel: str
    sender_id: str
    recipient: str
    text: str
    correlation: str | None
    # How long after the recipient's last inbound message this may be sent (the 24-hour
    # windows); None: any time. Enforced only when the fake's windows are on.
    window: timedelta | None = None
    kind: str = "text"
    details: Mapping[str, Any] = field(default_factory=dict)


class Dialect:
    channel: str

    def unauthorized(self) -> Answer:
        raise NotImplementedError

    def invalid(self, why: str) -> Answer:
        raise NotImplementedError

    def accepted(self, entry: Mapping[str, Any]) -> Answer:
        raise NotImplementedError

    def rate_limited(self, retry_after_seconds: float | None) -> Answer:
        raise NotImplementedError

    def server_error(self, status: int) -> Answer:
        raise NotImplementedError

    def permanent(self) -> Answer:
        raise NotImplementedError

    def sender_blocked(self) -> Answer:
        raise NotImplementedError

    def error_code(self, code: int | str, status: int) -> Answer:
        raise NotImplementedError

    def new_message_id(self) -> str:
        raise NotImplementedError

    def window_closed(self) -> Answer:
        raise NotImplementedError
