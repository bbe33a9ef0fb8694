"""LinkedIn through Unipile. The channel is ``Channel.LINKEDIN``; the provider is Unipile."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from shared.channels.auth import WebhookSecretSource
from shared.channels.content import ContentModel
from shared.channels.events import ProviderEvent
from shared.channels.spec import ChannelDefaults, ReadBack, RecipientResolver
from shared.channels.unipile import content, webhook
from shared.channels.unipile.adapter import UnipileLinkedInAdapter
from shared.channels.unipile.profiles import UnipileProfiles
from shared.channels.unipile.read_back import UnipileReadBack
from shared.config import Settings
from shared.providers.http import PausePolicy
from shared.providers.outcome import Channel, ProviderAdapter
from shared.storage.db import Database


class UnipileChannel(ChannelDefaults):
    channel = Channel.LINKEDIN
    # Unipile carries no correlation field: evidence is matched by recipient and text.
    evidence_by_text = True

    def build_adapter(
        self, settings: Settings, client: httpx.Client, token: Callable[[], str], pauses: PausePolicy
    ) -> ProviderAdapter:
        return UnipileLinkedInAdapter(
            client,
            settings.unipile_base_url,
            token,
            pauses=pauses,
            call_budget_seconds=settings.provider_call_budget_seconds,
        )

    def build_read_back(
        self, settings: Settings, client: httpx.Client, token: Callable[[], str]
    ) -> ReadBack | None:
        return UnipileReadBack(client, settings.unipile_base_url, token)

    def build_resolver(
        self, settings: Settings, client: httpx.Client, token: Callable[[], str], db: Database
    ) -> RecipientResolver | None:
        return UnipileProfiles(client, settings.unipile_base_url, token, db)

    def authenticate(self, secrets: WebhookSecretSource, headers: Mapping[str, str], raw_body: bytes) -> bool:
        return webhook.authenticate(secrets, headers, raw_body)

    def parse_events(self, document: Any) -> list[ProviderEvent]:
        return webhook.parse_unipile(document)

    def parse_content(self, raw: Mapping[str, Any]) -> ContentModel:
        return content.parse(raw)


SPEC = UnipileChannel()
