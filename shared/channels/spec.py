"""The protocol every channel package implements, and nothing else: the rest of the library
reaches a channel only through ``shared.providers.registry.CHANNELS`` and this protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

import httpx
import psycopg
from psycopg.rows import DictRow

from shared.channels.auth import WebhookSecretSource
from shared.channels.content import ContentModel, WindowRule
from shared.channels.events import ProviderEvent
from shared.config import Settings
from shared.providers.http import PausePolicy
from shared.providers.outcome import Channel, OutboundMessage, ProviderAdapter, SendOutcome
from shared.storage.db import Database


class ReadBack(Protocol):
    """Looks a message up at the provider (Unipile: the chat's messages, ``is_sender``)."""

    def find_sent(
        self, message: OutboundMessage, thread_id: str, *, not_before: datetime
    ) -> Sequence[SendOutcome]:
        """Every message our account sent in the thread with this text, timestamped at or after
        ``not_before``, newest first."""
        ...


M = TypeVar("M", bound=OutboundMessage)


class RecipientResolver(Protocol):
    """Turns a row's address into what the provider's send route needs, before the send (and
    caches it). Raises ``OSError`` when it cannot: the row goes back unsent."""

    def resolve(self, message: M) -> M: ...


class ChannelSpec(Protocol):
    """One channel: how to send on it, how to read its webhooks, how to look a send up."""

    channel: Channel
    # True when the provider echoes no correlation id, so reconciliation may match webhook
    # evidence by recipient and text (``sql.EVIDENCE_BY_TEXT``).
    evidence_by_text: bool

    def build_adapter(
        self,
        settings: Settings,
        client: httpx.Client,
        token: Callable[[], str],
        pauses: PausePolicy,
    ) -> ProviderAdapter: ...

    def build_read_back(
        self, settings: Settings, client: httpx.Client, token: Callable[[], str]
    ) -> ReadBack | None:
        """``None`` when the provider cannot be asked what was sent."""
        ...

    def build_resolver(
        self, settings: Settings, client: httpx.Client, token: Callable[[], str], db: Database
    ) -> RecipientResolver | None:
        """``None`` when addresses are sent as stored."""
        ...

    def authenticate(self, secrets: WebhookSecretSource, headers: Mapping[str, str], raw_body: bytes) -> bool:
        """Whether a webhook delivery is the provider's own (checked on the exact bytes)."""
        ...

    def parse_events(self, document: Any) -> list[ProviderEvent]:
        """Never raises; shapes it cannot read become ``unrecognised`` events."""
        ...

    def parse_content(self, raw: Mapping[str, Any]) -> ContentModel:
        """A step's ``content`` as this channel's model; raises ``ValueError`` (pydantic's
        ``ValidationError``) with the reason when the channel cannot send it."""
        ...

    def enqueue_problem(
        self, conn: psycopg.Connection[DictRow], sender_account_id: UUID, content: ContentModel
    ) -> str | None:
        """Why a step with this content cannot be sent from this sender (checked at enqueue,
        inside its transaction), or ``None``."""
        ...

    def window_rule(self, parsed: ContentModel | None) -> WindowRule | None:
        """The window after the contact's last message outside which the provider refuses this
        content (``None``: plain text, a step or row without content), or ``None`` when it may
        be sent at any time. The one statement of the rule: ``hold_reason`` applies it before
        each send, ``shared.windows`` at enqueue."""
        ...

    def hold_reason(self, message: OutboundMessage, now: datetime) -> str | None:
        """Why this message must wait instead of being sent now (a closed 24-hour window), or
        ``None``. A held row goes back to ``pending`` unsent, with the reason."""
        ...


class ChannelDefaults:
    """What a channel without the capability answers: nothing to read back, addresses sent as
    stored, every step sendable at enqueue, no window, nothing held before the send. A channel package
    subclasses it and overrides what its provider supports."""

    def build_read_back(
        self, settings: Settings, client: httpx.Client, token: Callable[[], str]
    ) -> ReadBack | None:
        return None

    def build_resolver(
        self, settings: Settings, client: httpx.Client, token: Callable[[], str], db: Database
    ) -> RecipientResolver | None:
        return None

    def enqueue_problem(
        self, conn: psycopg.Connection[DictRow], sender_account_id: UUID, content: ContentModel
    ) -> str | None:
        return None

    def window_rule(self, parsed: ContentModel | None) -> WindowRule | None:
        return None

    def hold_reason(self, message: OutboundMessage, now: datetime) -> str | None:
        return None
