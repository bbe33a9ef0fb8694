"""The channel registry, and the one HTTP client and adapter per channel a container reuses.

``CHANNELS`` is the only place the library names channel packages: adding a channel is its
package (``shared/channels/<name>/``, implementing ``ChannelSpec``) plus one line here.

One ``httpx.Client`` is shared by every adapter and every send thread: it is thread-safe, and
its pool is sized so a dispatcher's ``send_concurrency`` threads never wait for a connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from functools import partial

import httpx

from shared.channels import messenger, unipile, whatsapp
from shared.channels.spec import ChannelSpec, ReadBack, RecipientResolver
from shared.config import Settings
from shared.providers.deadline import DeadlineTransport
from shared.providers.http import USER_AGENT, PausePolicy, build_timeout
from shared.providers.outcome import Channel, ProviderAdapter
from shared.providers.secrets import TokenProvider
from shared.storage.db import Database

CHANNELS: Mapping[Channel, ChannelSpec] = {
    Channel.WHATSAPP: whatsapp.SPEC,
    Channel.MESSENGER: messenger.SPEC,
    Channel.LINKEDIN: unipile.SPEC,
}


def channel_spec(channel: Channel) -> ChannelSpec:
    return CHANNELS[Channel(channel)]


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
    return {
        channel: spec.build_adapter(settings, client, partial(tokens.token_for, channel), pauses)
        for channel, spec in CHANNELS.items()
    }


def build_read_backs(
    settings: Settings, client: httpx.Client, tokens: TokenProvider
) -> dict[Channel, ReadBack]:
    """Readers for ``SweepDeps.read_back``: the channels whose provider can be asked what was
    sent (today only Unipile)."""
    readers: dict[Channel, ReadBack] = {}
    for channel, spec in CHANNELS.items():
        reader = spec.build_read_back(settings, client, partial(tokens.token_for, channel))
        if reader is not None:
            readers[channel] = reader
    return readers


def build_resolvers(
    settings: Settings, client: httpx.Client, tokens: TokenProvider, db: Database
) -> dict[Channel, RecipientResolver]:
    """For ``DispatchDeps.resolvers``: channels whose addresses need a lookup before a send
    (LinkedIn profile URLs and public identifiers)."""
    resolvers: dict[Channel, RecipientResolver] = {}
    for channel, spec in CHANNELS.items():
        resolver = spec.build_resolver(settings, client, partial(tokens.token_for, channel), db)
        if resolver is not None:
            resolvers[channel] = resolver
    return resolvers
