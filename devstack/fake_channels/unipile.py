"""The fake Unipile (LinkedIn): ``POST /api/v1/chats`` (multipart) and the chat read-back."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from devstack.fake_channels.base import Answer, Dialect, Invalid, SendRequest, token

LINKEDIN = "linkedin"


def unipile_error(
    status: int, kind: str, title: str, detail: str, headers: dict[str, str] | None = None
) -> Answer:
    body = {
        "status": status,
        "type": f"errors/{kind}",
        "title": title,
        "detail": detail,
        "instance": "/api/v1/chats",
    }
    return status, body, headers or {}


class UnipileDialect(Dialect):
    channel = LINKEDIN

    def unauthorized(self) -> Answer:
        return unipile_error(
            401, "missing_credentials", "Missing credentials", "The API key is missing or invalid."
        )

    def invalid(self, why: str) -> Answer:
        return unipile_error(400, "invalid_parameters", "Invalid parameters", why)

    def accepted(self, entry: Mapping[str, Any]) -> Answer:
        if entry.get("kind") == "invitation":
            return 201, {"object": "UserInvitationSent", "invitation_id": entry["provider_message_id"]}, {}
        body = {
            "object": "ChatStarted",
            "chat_id": entry["thread_id"],
            "message_id": entry["provider_message_id"],
        }
        return 201, body, {}

    def rate_limited(self, retry_after_seconds: float | None) -> Answer:
        headers = {} if retry_after_seconds is None else {"Retry-After": f"{retry_after_seconds:g}"}
        return unipile_error(429, "too_many_requests", "Too many requests", "Please retry later.", headers)

    def server_error(self, status: int) -> Answer:
        if status == 503:
            return unipile_error(503, "service_unavailable", "Service unavailable", "Please try again later.")
        if status == 504:
            return unipile_error(
                504, "request_timeout", "Request timeout", "The provider did not answer in time."
            )
        return unipile_error(status, "unexpected_error", "Unexpected error", "An unexpected error occurred.")

    def permanent(self) -> Answer:
        return unipile_error(
            422,
            "no_connection_with_recipient",
            "No connection with recipient",
            "You are not connected with this user.",
        )

    def sender_blocked(self) -> Answer:
        return unipile_error(
            403, "account_restricted", "Account restricted", "The LinkedIn account is restricted."
        )

    def error_code(self, code: int | str, status: int) -> Answer:
        return unipile_error(status, str(code), "Injected error", f"Injected error type {code}.")

    def new_message_id(self) -> str:
        return token(16)


def parse_multipart(content_type: str, body: bytes) -> dict[str, list[str]]:
    """Form fields of a multipart/form-data body (files are read as text, too)."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/form-data") or found is None:
        raise Invalid("body must be multipart/form-data")
    delimiter = b"--" + found.group(1).encode()
    fields: dict[str, list[str]] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        part = part.removeprefix(b"\r\n").removesuffix(b"\r\n")
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            raise Invalid("malformed multipart part")
        name = re.search(rb'(?im)^content-disposition:.*?\bname="([^"]*)"', head)
        if name is None:
            raise Invalid("multipart part without a name")
        fields.setdefault(name.group(1).decode(), []).append(content.decode("utf-8"))
    return fields


def parse_request(content_type: str, body: bytes) -> SendRequest:
    fields = parse_multipart(content_type, body)
    account = fields.get("account_id", [""])[0]
    text = fields.get("text", [""])[0]
    attendees = fields.get("attendees_ids", [])
    if not account:
        raise Invalid("account_id is required")
    if not text:
        raise Invalid("text is required")
    if len(attendees) != 1 or not attendees[0]:
        raise Invalid("the fake supports exactly one attendees_ids")
    inmail = fields.get("linkedin[inmail]", ["false"])[0] == "true"
    return SendRequest(LINKEDIN, account, attendees[0], text, None, None, "inmail" if inmail else "text")


# Unipile, "Send an invitation" (shared/channels/unipile/content.py cites it).
INVITATION_NOTE_MAX = 300


def parse_invitation(body: bytes) -> SendRequest:
    """``POST /api/v1/users/invite``: JSON ``provider_id``, ``account_id``, optional ``message``."""
    try:
        data = json.loads(body or b"null")
    except ValueError as exc:
        raise Invalid("body must be JSON") from exc
    if not isinstance(data, Mapping):
        raise Invalid("body must be a JSON object")
    provider_id, account, note = data.get("provider_id"), data.get("account_id"), data.get("message")
    if not isinstance(provider_id, str) or not provider_id:
        raise Invalid("provider_id is required")
    if not isinstance(account, str) or not account:
        raise Invalid("account_id is required")
    if note is not None and (not isinstance(note, str) or len(note) > INVITATION_NOTE_MAX):
        raise Invalid(f"message must be a string of at most {INVITATION_NOTE_MAX} characters")
    return SendRequest(LINKEDIN, account, provider_id, note or "", None, None, "invitation")


def profile_id(identifier: str) -> str:
    """A stable provider id for a public identifier (LinkedIn's look like ``ACoAAA...``)."""
    if identifier.startswith("ACo"):
        return identifier
    return "ACoAA" + hashlib.sha256(identifier.encode()).hexdigest()[:24]


def profile(identifier: str) -> dict[str, Any]:
    """``GET /api/v1/users/{identifier}``: the fields sendonce reads of Unipile's UserProfile."""
    return {
        "object": "UserProfile",
        "provider": "LINKEDIN",
        "provider_id": profile_id(identifier),
        "public_identifier": identifier,
    }


def new_relation(account_id: str, provider_id: str, public_identifier: str | None) -> dict[str, Any]:
    """The users webhook's ``new_relation`` body for an accepted invitation."""
    return {
        "event": "new_relation",
        "account_id": account_id,
        "account_type": "LINKEDIN",
        "webhook_name": "sendonce",
        "user_full_name": "Fake Person",
        "user_provider_id": provider_id,
        "user_public_identifier": public_identifier,
        "user_profile_url": f"https://www.linkedin.com/in/{public_identifier or provider_id}/",
    }
