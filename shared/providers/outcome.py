"""What a provider adapter receives and the five outcomes it may report.

Every provider response, error code, timeout and dropped connection maps to exactly one
``SendOutcome``. The split that matters for exactly-once delivery is ``provably_not_sent``:
only those outcomes may ever lead to another provider call for the same message.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, Protocol
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class Channel(StrEnum):
    WHATSAPP = "whatsapp"
    LINKEDIN = "linkedin"
    MESSENGER = "messenger"


class OutboundMessage(BaseModel):
    """One queue row, as much of it as a provider adapter needs."""

    model_config = ConfigDict(frozen=True)

    queue_id: int
    idempotency_key: str = Field(min_length=16, max_length=128)
    channel: Channel
    sender_account_id: UUID
    sender_provider_id: str = Field(
        min_length=1,
        description="WhatsApp phone_number_id, Messenger page id, or Unipile account_id.",
    )
    recipient: str = Field(min_length=1, description="E.164 digits, PSID, or Unipile attendee id.")
    body: str = Field(min_length=1)
    message_type: str
    # ``send_queue.content``: None is plain text (``body``); otherwise the channel package's
    # content model (``shared/channels/<channel>/content.py``) reads it.
    content: dict[str, Any] | None = None
    # The contact's last inbound message (the 24-hour windows) and, on LinkedIn, the provider
    # id its profile URL or public identifier was resolved to.
    last_inbound_at: datetime | None = None
    provider_profile_id: str | None = None


class OutcomeKind(StrEnum):
    SENT = "sent"
    RETRY_LATER = "retry_later"
    SENDER_BLOCKED = "sender_blocked"
    PERMANENT = "permanent"
    AMBIGUOUS = "ambiguous"


PROVABLY_NOT_SENT = frozenset({OutcomeKind.RETRY_LATER, OutcomeKind.SENDER_BLOCKED, OutcomeKind.PERMANENT})


# Who a throttle answer is about: the sender account (its rate is lowered and its rows wait),
# or one recipient (WhatsApp's pair rate limit: only that row waits).
ThrottleScope = Literal["sender", "recipient"]


class SendOutcome(BaseModel):
    """The classified result of one provider call."""

    model_config = ConfigDict(frozen=True)

    kind: OutcomeKind
    provider_message_id: str | None = None
    provider_thread_id: str | None = Field(default=None, description="Unipile chat_id, for read-back.")
    retry_after_seconds: float | None = None
    blocked_until: datetime | None = None
    reason: str = Field(default="", description="Stable machine code, e.g. 'whatsapp:131026'.")
    detail: str = Field(default="", max_length=2000, description="Provider text; never carries a token.")
    http_status: int | None = None
    # Set on retry_later outcomes that are rate limiting: they never spend an attempt.
    throttle: ThrottleScope | None = None

    @property
    def provably_not_sent(self) -> bool:
        return self.kind in PROVABLY_NOT_SENT

    @classmethod
    def sent(
        cls, provider_message_id: str, *, thread_id: str | None = None, http_status: int = 200
    ) -> SendOutcome:
        return cls(
            kind=OutcomeKind.SENT,
            provider_message_id=provider_message_id,
            provider_thread_id=thread_id,
            http_status=http_status,
        )

    @classmethod
    def retry_later(
        cls,
        after: timedelta | None,
        reason: str,
        detail: str = "",
        http_status: int | None = None,
        *,
        throttle: ThrottleScope | None = None,
    ) -> SendOutcome:
        return cls(
            kind=OutcomeKind.RETRY_LATER,
            retry_after_seconds=after.total_seconds() if after is not None else None,
            reason=reason,
            detail=detail[:2000],
            http_status=http_status,
            throttle=throttle,
        )

    @classmethod
    def sender_blocked(
        cls, until: datetime, reason: str, detail: str = "", http_status: int | None = None
    ) -> SendOutcome:
        return cls(
            kind=OutcomeKind.SENDER_BLOCKED,
            blocked_until=until,
            reason=reason,
            detail=detail[:2000],
            http_status=http_status,
        )

    @classmethod
    def permanent(cls, reason: str, detail: str = "", http_status: int | None = None) -> SendOutcome:
        return cls(kind=OutcomeKind.PERMANENT, reason=reason, detail=detail[:2000], http_status=http_status)

    @classmethod
    def ambiguous(cls, reason: str, detail: str = "", http_status: int | None = None) -> SendOutcome:
        return cls(kind=OutcomeKind.AMBIGUOUS, reason=reason, detail=detail[:2000], http_status=http_status)


# Called by an adapter with everything ready (token read, request built), right before the
# request goes out: ``None`` lets it go, an outcome is returned instead of making the call.
# The dispatcher's send-time gate waits here for the sender's call slot (shared/call_slots.py).
BeforeCall = Callable[[], "SendOutcome | None"]


class ProviderAdapter(Protocol):
    """Sends one message and classifies what happened. Must never raise for a provider or
    network outcome: every one of them is a ``SendOutcome``."""

    channel: Channel

    def send(self, message: OutboundMessage, before_call: BeforeCall | None = None) -> SendOutcome: ...
