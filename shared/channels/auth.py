"""Webhook secrets and the constant-time comparisons every channel's signature check uses.

Meta (WhatsApp, Messenger) signs with ``X-Hub-Signature-256``; its check lives here because two
channel packages share it. Channel-specific checks live in the channel's ``webhook`` module.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aws_lambda_powertools.utilities.parameters import SecretsProvider

from shared.config import Settings

META_SIGNATURE_HEADER = "x-hub-signature-256"
META_SIGNATURE_PREFIX = "sha256="


class WebhookSecretMissingError(RuntimeError):
    """A webhook secret is empty. Failing loudly (and letting the provider retry) beats
    verifying against an empty key, which anyone could forge."""


class WebhookSecretSource(Protocol):
    def meta_app_secret(self) -> str: ...

    def meta_verify_token(self) -> str: ...

    def unipile_webhook_secret(self) -> str: ...


@dataclass(frozen=True)
class WebhookSecrets:
    """Plain secret values, for tests and local runs."""

    meta_app_secret_value: str = field(repr=False)
    unipile_webhook_secret_value: str = field(repr=False)
    meta_verify_token_value: str = field(repr=False)

    def meta_app_secret(self) -> str:
        return self.meta_app_secret_value

    def meta_verify_token(self) -> str:
        return self.meta_verify_token_value

    def unipile_webhook_secret(self) -> str:
        return self.unipile_webhook_secret_value


class SecretsManagerWebhookSecrets:
    """Secrets Manager through Powertools Parameters. Each call goes through the provider's
    cache (``secret_cache_seconds``), so a rotated secret is picked up without a redeploy."""

    def __init__(self, settings: Settings, provider: SecretsProvider) -> None:
        self._settings = settings
        self._provider = provider

    def _get(self, secret_id: str) -> str:
        value = self._provider.get(secret_id, max_age=self._settings.secret_cache_seconds)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if not isinstance(value, str) or not value.strip():
            raise WebhookSecretMissingError(f"secret {secret_id} holds no value")
        return value.strip()

    def meta_app_secret(self) -> str:
        return self._get(self._settings.meta_app_secret_id)

    def meta_verify_token(self) -> str:
        return self._get(self._settings.meta_verify_token_secret_id)

    def unipile_webhook_secret(self) -> str:
        return self._get(self._settings.unipile_webhook_secret_id)


def required(secret: str, name: str) -> bytes:
    if not secret:
        raise WebhookSecretMissingError(f"the {name} is empty")
    return secret.encode("utf-8")


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """HTTP header names are case-insensitive; Function URLs lower-case them, other callers
    (tests, a proxy) may not."""
    return {name.lower(): value for name, value in headers.items()}


def meta_signature(app_secret: str, raw_body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``raw_body``."""
    digest = hmac.new(required(app_secret, "Meta app secret"), raw_body, hashlib.sha256).hexdigest()
    return META_SIGNATURE_PREFIX + digest


def supplied_bytes(value: str | None) -> bytes | None:
    """A header or query value as the bytes to compare, or None when it has none: a value
    holding a lone surrogate (JSON can carry one in the Lambda event) is not UTF-8 text, so
    it cannot equal a secret. Encoding it anyway raised, which answered 500, not 401."""
    if value is None:
        return None
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


def verify_meta_signature(app_secret: str, headers: Mapping[str, str], raw_body: bytes) -> bool:
    expected = meta_signature(app_secret, raw_body)
    supplied = lower_headers(headers).get(META_SIGNATURE_HEADER)
    if supplied is None:
        return False
    supplied = supplied.strip()
    if not supplied.startswith(META_SIGNATURE_PREFIX):
        return False
    # Hex is case-insensitive; the prefix is not (Meta sends it lower case).
    candidate = supplied_bytes(META_SIGNATURE_PREFIX + supplied[len(META_SIGNATURE_PREFIX) :].lower())
    return candidate is not None and hmac.compare_digest(expected.encode("ascii"), candidate)
