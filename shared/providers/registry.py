"""Builds the one HTTP client and the adapter per channel that a container reuses.

One ``httpx.Client`` is shared by every adapter and every send thread: it is thread-safe, and
its pool is sized so a dispatcher's ``send_concurrency`` threads never wait for a connection.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import httpx

from shared.config import Settings
from shared.providers.deadline import DeadlineTransport
from shared.providers.http import USER_AGENT, PausePolicy, build_timeout
from shared.providers.messenger import MessengerSendAdapter
from shared.providers.outcome import Channel, ProviderAdapter
from shared.providers.secrets import TokenProvider
from shared.providers.unipile import UnipileLinkedInAdapter, UnipileReadBack
from shared.providers.whatsapp import WhatsAppCloudAdapter

# Below every provider's and load balancer's idle timeout, so a pooled connection is never
# reused just as the server closes it (that race surfaces as an ambiguous disconnect). A
# Lambda container thawed after minutes finds its connections expired and dials anew.
KEEPALIVE_EXPIRY_SECONDS = 5.0


def provider_timeout(settings: Settings) -> httpx.Timeout:
    """connect and pool bounded by the connect timeout, write and read by the read timeout:
    together exactly ``Settings.provider_call_budget_seconds``."""
    return build_timeout(settings.provider_connect_timeout_seconds, settings.provider_read_timeout_seconds)


def make_http_client(settings: Settings, *, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """On ``DeadlineTransport`` unless a test hands in another transport: the adapters' call
    budget (``call_deadline``) is enforced at the socket by it."""
    # Headroom over send_concurrency: a pool wait would spend the call budget for nothing.
    connections = settings.send_concurrency * 2
    limits = httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
    )
    return httpx.Client(
        timeout=provider_timeout(settings),
        limits=limits,
        # A redirected POST would be resent elsewhere: never follow one.
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
        transport=transport or DeadlineTransport(limits),
    )


def pause_policy(settings: Settings) -> PausePolicy:
    seconds = settings.sender_pause_seconds
    return PausePolicy(
        credentials=timedelta(seconds=seconds.credentials),
        throttle=timedelta(seconds=seconds.throttle),
        policy=timedelta(seconds=seconds.policy),
        quota=timedelta(seconds=seconds.quota),
    )


def build_adapters(
    settings: Settings,
    client: httpx.Client,
    tokens: TokenProvider,
    *,
    pauses: PausePolicy | None = None,
) -> dict[Channel, ProviderAdapter]:
    """One adapter per channel. ``tokens`` is a ``TokenSource`` (Secrets Manager) or a
    ``StaticTokenSource``; it is asked on every send, so rotation needs no restart. Pause
    lengths come from ``settings.sender_pause_seconds`` unless ``pauses`` is given."""
    pauses = pauses or pause_policy(settings)
    graph_adapters = {Channel.WHATSAPP: WhatsAppCloudAdapter, Channel.MESSENGER: MessengerSendAdapter}
    adapters: dict[Channel, ProviderAdapter] = {
        channel: adapter(
            client,
            settings.graph_api_base_url,
            partial(tokens.token_for, channel),
            settings.graph_api_version,
            pauses=pauses,
            call_budget_seconds=settings.provider_call_budget_seconds,
        )
        for channel, adapter in graph_adapters.items()
    }
    adapters[Channel.LINKEDIN] = UnipileLinkedInAdapter(
        client,
        settings.unipile_base_url,
        partial(tokens.token_for, Channel.LINKEDIN),
        pauses=pauses,
        call_budget_seconds=settings.provider_call_budget_seconds,
    )
    return adapters


def build_read_backs(
    settings: Settings, client: httpx.Client, tokens: TokenProvider
) -> dict[Channel, UnipileReadBack]:
    """Readers for ``SweepDeps.read_back``: only Unipile can be asked what was sent."""
    return {
        Channel.LINKEDIN: UnipileReadBack(
            client, settings.unipile_base_url, partial(tokens.token_for, Channel.LINKEDIN)
        )
    }
