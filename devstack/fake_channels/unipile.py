"""The fake Unipile (LinkedIn): ``POST /api/v1/chats`` (multipart) and the chat read-back."""

from __future__ import annotations

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
    return SendRequest(LINKEDIN, account, attendees[0], text, None)
