"""WhatsApp Cloud API (Meta Graph)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx
import psycopg
from psycopg.rows import DictRow

from shared.channels.auth import WebhookSecretSource
from shared.channels.content import ContentModel, WindowRule
from shared.channels.events import ProviderEvent
from shared.channels.spec import ChannelDefaults
from shared.channels.whatsapp import content, templates, webhook
from shared.channels.whatsapp.adapter import WhatsAppCloudAdapter
from shared.channels.whatsapp.content import Media, Template, Text
from shared.config import Settings
from shared.providers.http import PausePolicy
from shared.providers.outcome import Channel, OutboundMessage, ProviderAdapter


class WhatsAppChannel(ChannelDefaults):
    channel = Channel.WHATSAPP
    # biz_opaque_callback_data is echoed in every status webhook.
    evidence_by_text = False

    def build_adapter(
        self, settings: Settings, client: httpx.Client, token: Callable[[], str], pauses: PausePolicy
    ) -> ProviderAdapter:
        return WhatsAppCloudAdapter(
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
        return webhook.parse_whatsapp(document)

    def parse_content(self, raw: Mapping[str, Any]) -> ContentModel:
        return content.parse(raw)

    def enqueue_problem(
        self, conn: psycopg.Connection[DictRow], sender_account_id: UUID, content: ContentModel
    ) -> str | None:
        return (
            templates.template_problem(conn, sender_account_id, content)
            if isinstance(content, Template)
            else None
        )

    def window_rule(self, parsed: ContentModel | None) -> WindowRule | None:
        if parsed is None:
            return content.CUSTOMER_SERVICE_WINDOW  # plain text is free-form
        assert isinstance(parsed, Text | Media | Template)
        return content.window_rule(parsed)

    def hold_reason(self, message: OutboundMessage, now: datetime) -> str | None:
        return content.hold_reason(message, now)


SPEC = WhatsAppChannel()
