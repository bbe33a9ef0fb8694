"""Messenger Send API (Meta Graph)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import httpx

from shared.channels.auth import WebhookSecretSource
from shared.channels.content import ContentModel, WindowRule
from shared.channels.events import ProviderEvent
from shared.channels.messenger import content, webhook
from shared.channels.messenger.adapter import MessengerSendAdapter
from shared.channels.messenger.content import Media, Text
from shared.channels.spec import ChannelDefaults
from shared.config import Settings
from shared.providers.http import PausePolicy
from shared.providers.outcome import Channel, OutboundMessage, ProviderAdapter


class MessengerChannel(ChannelDefaults):
    channel = Channel.MESSENGER
    # message.metadata is echoed in the message_echoes webhook.
    evidence_by_text = False

    def build_adapter(
        self, settings: Settings, client: httpx.Client, token: Callable[[], str], pauses: PausePolicy
    ) -> ProviderAdapter:
        return MessengerSendAdapter(
            client,
            settings.graph_api_base_url,
            token,
            settings.graph_api_version,
            pauses=pauses,
            call_budget_seconds=settings.provider_call_budget_seconds,
        )

    def authenticate(self, secrets: WebhookSecretSource, headers: Mapping[str, str], raw_body: bytes) -> bool:
        return webhook.authenticate(secrets, headers, raw_body)

    def parse_events(self, document: Any) -> list[ProviderEvent]:
        return webhook.parse_messenger(document)

    def parse_content(self, raw: Mapping[str, Any]) -> ContentModel:
        return content.parse(raw)

    def window_rule(self, parsed: ContentModel | None) -> WindowRule | None:
        if parsed is None:
            return content.STANDARD_WINDOW  # plain text goes as messaging_type UPDATE
        assert isinstance(parsed, Text | Media)
        return content.window_rule(parsed)

    def hold_reason(self, message: OutboundMessage, now: datetime) -> str | None:
        return content.hold_reason(message, now)


SPEC = MessengerChannel()
