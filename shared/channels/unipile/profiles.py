"""LinkedIn profile lookup: a profile URL or public identifier becomes the provider id that
Unipile's send routes need, once per contact (cached in ``contacts.provider_profile_id``).

``GET /api/v1/users/{identifier}?account_id=...`` answers the profile with ``provider_id``
("Invite users", step 1 "Convert Public ID to Provider ID",
https://developer.unipile.com/docs/invite-users). Provider ids start ``ACo``/``ADo`` (classic),
``ACw`` (Sales Navigator) or ``AE`` (Recruiter) ("Users overview",
https://developer.unipile.com/docs/users-overview); a public identifier is the last part of
``linkedin.com/in/<identifier>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from urllib.parse import quote, unquote, urlsplit

import httpx

from shared.channels.spec import M
from shared.providers.http import json_body
from shared.providers.outcome import Channel
from shared.storage import sql
from shared.storage.db import Database

_PROVIDER_ID = re.compile(r"^(ACo|ADo|ACw|AE)[A-Za-z0-9_-]{4,}$")


class ProfileLookupError(OSError):
    """The profile could not be looked up: the row waits and is tried again, unsent."""


def public_identifier(address: str) -> str | None:
    """The public identifier an address names, or None when it already is a provider id."""
    address = address.strip()
    if _PROVIDER_ID.match(address):
        return None
    if "linkedin.com" in address.lower():
        parts = [
            p for p in urlsplit(address if "://" in address else f"https://{address}").path.split("/") if p
        ]
        if len(parts) >= 2 and parts[0] == "in":
            return unquote(parts[1])
        raise ProfileLookupError("not a linkedin.com/in/<identifier> profile URL")
    return address


class UnipileProfiles:
    """``resolve`` for the dispatcher: the message with ``provider_profile_id`` set."""

    def __init__(self, client: httpx.Client, base_url: str, token: Callable[[], str], db: Database) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._db = db

    def __repr__(self) -> str:
        return f"UnipileProfiles(base_url={self._base_url!r})"

    def resolve(self, message: M) -> M:
        if message.provider_profile_id is not None:
            return message
        identifier = public_identifier(message.recipient)
        if identifier is None:
            return message
        provider_id = self.lookup(message.sender_provider_id, identifier)
        with self._db.connection() as conn:
            conn.execute(
                sql.SET_CONTACT_PROFILE,
                {
                    "channel": Channel.LINKEDIN.value,
                    "address": message.recipient,
                    "provider_profile_id": provider_id,
                },
            )
        return message.model_copy(update={"provider_profile_id": provider_id})

    def lookup(self, account_id: str, identifier: str) -> str:
        try:
            response = self._client.get(
                f"{self._base_url}/api/v1/users/{quote(identifier, safe='')}",
                params={"account_id": account_id},
                headers={"X-API-KEY": self._token(), "Accept": "application/json"},
            )
        except Exception as exc:
            raise ProfileLookupError(f"profile lookup failed: {type(exc).__name__}") from exc
        data = json_body(response)
        provider_id = data.get("provider_id") if isinstance(data, Mapping) else None
        if response.status_code != 200 or not isinstance(provider_id, str) or not provider_id:
            raise ProfileLookupError(f"profile lookup answered HTTP {response.status_code}")
        return provider_id
