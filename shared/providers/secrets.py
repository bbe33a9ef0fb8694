"""Provider credentials: read through Powertools Parameters, cached for
``secret_cache_seconds`` so a rotated secret is picked up by warm containers.

Tokens are fetched at call time (never at import or construction), so a Secrets Manager
outage makes a send ``retry_later`` instead of failing the cold start. Nothing here ever
puts a token in a repr, a log line or an exception message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aws_lambda_powertools.utilities import parameters

from shared.config import Settings
from shared.providers.outcome import Channel


class TokenProvider(Protocol):
    """What ``build_adapters`` needs: the current credential for a channel."""

    def token_for(self, channel: Channel) -> str: ...


class TokenUnavailableError(RuntimeError):
    pass


def _clean(value: object, source: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="strict")
    if not isinstance(value, str) or not value.strip():
        raise TokenUnavailableError(f"{source} holds no token")
    return value.strip()


class TokenSource:
    """One secret per channel, named by ``Settings``: the WhatsApp system-user token, the
    Messenger Page token and the Unipile API key (used for LinkedIn)."""

    def __init__(self, settings: Settings) -> None:
        self._secret_ids: dict[Channel, str] = {
            Channel.WHATSAPP: settings.whatsapp_token_secret_id,
            Channel.MESSENGER: settings.messenger_token_secret_id,
            Channel.LINKEDIN: settings.unipile_api_key_secret_id,
        }
        self._max_age = settings.secret_cache_seconds

    def __repr__(self) -> str:
        ids = {channel.value: secret_id for channel, secret_id in self._secret_ids.items()}
        return f"TokenSource(secret_ids={ids!r}, max_age={self._max_age})"

    def token_for(self, channel: Channel) -> str:
        secret_id = self._secret_ids[Channel(channel)]
        try:
            value = parameters.get_secret(secret_id, max_age=self._max_age)
        except Exception as exc:
            # The SDK's message names the secret id and the error code, never the value.
            reason = type(exc).__name__
            raise TokenUnavailableError(f"secret {secret_id} could not be read: {reason}") from exc
        return _clean(value, f"secret {secret_id}")

    def whatsapp(self) -> str:
        return self.token_for(Channel.WHATSAPP)

    def messenger(self) -> str:
        return self.token_for(Channel.MESSENGER)

    def unipile(self) -> str:
        return self.token_for(Channel.LINKEDIN)


class StaticTokenSource:
    """Fixed tokens, for tests and the local stack. Keys are channels or their values
    (``"whatsapp"``, ``"messenger"``, ``"linkedin"``)."""

    def __init__(self, tokens: Mapping[Channel | str, str]) -> None:
        self._tokens: dict[Channel, str] = {Channel(key): value for key, value in tokens.items()}

    def __repr__(self) -> str:
        return f"StaticTokenSource(channels={sorted(c.value for c in self._tokens)!r})"

    def token_for(self, channel: Channel) -> str:
        channel = Channel(channel)
        if channel not in self._tokens:
            raise TokenUnavailableError(f"no token configured for {channel.value}")
        return _clean(self._tokens[channel], f"static token for {channel.value}")
