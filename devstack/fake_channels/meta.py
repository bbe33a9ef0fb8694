"""The Graph API error body WhatsApp Cloud API and the Messenger Send API share."""

from __future__ import annotations

from typing import Any

from devstack.fake_channels.base import Answer, Dialect, token


def graph_error(
    status: int, code: int, message: str, *, subcode: int | None = None, details: str | None = None
) -> Answer:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = token(12)
    return status, {"error": error}, {}


class GraphDialect(Dialect):
    def error_code(self, code: int | str, status: int) -> Answer:
        return graph_error(status, code, f"(#{code}) Injected error")  # type: ignore[arg-type]
