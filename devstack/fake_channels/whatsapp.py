"""The fake WhatsApp Cloud API: ``POST /{version}/{phone_number_id}/messages``."""

from __future__ import annotations

import base64
import re
import secrets
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from devstack.fake_channels.base import Answer, Invalid, SendRequest
from devstack.fake_channels.meta import GraphDialect, graph_error

WHATSAPP = "whatsapp"


class WhatsAppDialect(GraphDialect):
    channel = WHATSAPP

    def unauthorized(self) -> Answer:
        return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")

    def invalid(self, why: str) -> Answer:
        return graph_error(400, 100, "(#100) Invalid parameter", details=why)

    def accepted(self, entry: Mapping[str, Any]) -> Answer:
        body = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": entry["recipient"], "wa_id": entry["recipient"].lstrip("+")}],
            "messages": [{"id": entry["provider_message_id"], "message_status": "accepted"}],
        }
        return 200, body, {}

    def rate_limited(self, retry_after_seconds: float | None) -> Answer:
        # Throughput errors come back as HTTP 400, not 429.
        return graph_error(
            400,
            130429,
            "(#130429) Rate limit hit",
            details="Cloud API message throughput has been reached.",
        )

    def server_error(self, status: int) -> Answer:
        if status == 503:
            return graph_error(
                503, 131016, "(#131016) Service unavailable", details="A service is temporarily unavailable."
            )
        return graph_error(
            status,
            131000,
            "(#131000) Something went wrong",
            details="Message failed to send because of an unknown error.",
        )

    def permanent(self) -> Answer:
        return graph_error(
            400,
            131026,
            "(#131026) Message Undeliverable",
            details=(
                "Unable to deliver message. Reasons can include: the recipient phone number is not "
                "a WhatsApp phone number."
            ),
        )

    def sender_blocked(self) -> Answer:
        return graph_error(
            400,
            131048,
            "(#131048) Spam rate limit hit",
            details=(
                "Message failed to send because there are restrictions on how many messages can be "
                "sent from this phone number."
            ),
        )

    def new_message_id(self) -> str:
        return "wamid." + base64.b64encode(secrets.token_bytes(30)).decode()

    def window_closed(self) -> Answer:
        return graph_error(
            400,
            131047,
            "(#131047) Re-engagement message",
            details="Message failed to send because more than 24 hours have passed since the customer last "
            "replied to this number.",
        )


WINDOW = timedelta(hours=24)
_MEDIA_TYPES = ("image", "document", "audio", "video")
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _media(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or (("id" in value) == ("link" in value)):
        raise Invalid(f"{where} needs exactly one of id and link")
    ref = value.get("id") or value.get("link")
    if not isinstance(ref, str) or not ref:
        raise Invalid(f"{where}: id or link must be a non-empty string")
    return {k: str(v) for k, v in value.items()}


def _template(data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    template = data.get("template")
    if not isinstance(template, Mapping):
        raise Invalid("template is required")
    name, language = template.get("name"), template.get("language")
    code = language.get("code") if isinstance(language, Mapping) else None
    if not isinstance(name, str) or not name or not isinstance(code, str) or not code:
        raise Invalid("template.name and template.language.code are required")
    counts = {"header": 0, "body": 0}
    buttons: list[tuple[str, int]] = []
    for component in template.get("components") or []:
        kind = component.get("type") if isinstance(component, Mapping) else None
        parameters = component.get("parameters") if isinstance(component, Mapping) else None
        if kind not in ("header", "body", "button") or not isinstance(parameters, list):
            raise Invalid("a template component needs a type (header, body, button) and parameters")
        assert isinstance(component, Mapping)
        for parameter in parameters:
            ptype = parameter.get("type") if isinstance(parameter, Mapping) else None
            if ptype in _MEDIA_TYPES:
                _media(parameter.get(ptype), f"{kind} {ptype} parameter")
            elif ptype not in ("text", "payload", "currency", "date_time"):
                raise Invalid(f"unsupported {kind} parameter type {ptype!r}")
        if kind == "button":
            index = component.get("index")
            if component.get("sub_type") not in ("quick_reply", "url") or not str(index).isdigit():
                raise Invalid("a button component needs sub_type quick_reply or url and a numeric index")
            buttons.append((str(component.get("sub_type")), int(str(index))))
        else:
            counts[str(kind)] += len(parameters)
    return f"[template {name} {code}]", {
        "name": name,
        "language": code,
        "body_parameters": counts["body"],
        "header_parameters": counts["header"],
        "buttons": buttons,
    }


def parse_request(sender_id: str, data: Mapping[str, Any]) -> SendRequest:
    if data.get("messaging_product") != "whatsapp":
        raise Invalid("messaging_product must be whatsapp")
    if data.get("recipient_type", "individual") != "individual":
        raise Invalid("recipient_type must be individual")
    to = data.get("to")
    callback = data.get("biz_opaque_callback_data")
    if not isinstance(to, str) or not to:
        raise Invalid("to is required")
    if callback is not None and (not isinstance(callback, str) or len(callback) > 512):
        raise Invalid("biz_opaque_callback_data must be a string of at most 512 characters")
    kind = data.get("type", "text")
    if kind == "template":
        text, details = _template(data)
        # Templates may go any time: they are how a business starts a conversation.
        return SendRequest(WHATSAPP, sender_id, to, text, callback, None, "template", details)
    if kind in _MEDIA_TYPES:
        media = _media(data.get(kind), kind)
        if kind == "audio" and "caption" in media:
            raise Invalid("audio takes no caption")
        text = media.get("caption") or f"[{kind} {media.get('link') or media.get('id')}]"
        return SendRequest(WHATSAPP, sender_id, to, text, callback, WINDOW, kind)
    if kind != "text":
        raise Invalid(f"message type {kind!r} is not supported by the fake")
    body_object = data.get("text")
    body = body_object.get("body") if isinstance(body_object, Mapping) else None
    if not isinstance(body, str) or not body or len(body) > 4096:
        raise Invalid("text.body must be 1-4096 characters")
    return SendRequest(WHATSAPP, sender_id, to, body, callback, WINDOW, "text")


class Templates:
    """The templates of each business account, with Meta's approval states, and which phone
    numbers belong to which account. Template sends are checked as Meta checks them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_account: dict[str, list[dict[str, Any]]] = {}
        self._account_of: dict[str, str] = {}

    def put(
        self, business_account_id: str, phone_number_ids: list[str], templates: list[dict[str, Any]]
    ) -> None:
        with self._lock:
            self._by_account[business_account_id] = [dict(t) for t in templates]
            for number in phone_number_ids:
                self._account_of[number] = business_account_id

    def listing(self, business_account_id: str) -> list[dict[str, Any]] | None:
        with self._lock:
            found = self._by_account.get(business_account_id)
            return None if found is None else [dict(t) for t in found]

    def refusal(self, request: SendRequest) -> Answer | None:
        """Meta's answer to a template it would not send, or None."""
        if request.kind != "template":
            return None
        details = request.details
        with self._lock:
            account = self._account_of.get(request.sender_id)
            templates = self._by_account.get(account or "", [])
            found = next(
                (
                    t
                    for t in templates
                    if t.get("name") == details["name"] and t.get("language") == details["language"]
                ),
                None,
            )
        if found is None:
            return graph_error(
                404,
                132001,
                "(#132001) Template name does not exist in the translation",
                details=f"template name ({details['name']}) does not exist in {details['language']}",
            )
        status = str(found.get("status", "")).upper()
        if status == "PAUSED":
            return graph_error(400, 132015, "(#132015) Template is Paused", details="Template is paused.")
        if status == "DISABLED":
            return graph_error(400, 132016, "(#132016) Template is Disabled", details="Template is disabled.")
        if status != "APPROVED":
            return graph_error(
                404,
                132001,
                "(#132001) Template name does not exist in the translation",
                details=f"template {details['name']} is {status}, not approved",
            )
        expected = 0
        for component in found.get("components") or []:
            if isinstance(component, Mapping) and str(component.get("type", "")).upper() == "BODY":
                expected = len(set(_PLACEHOLDER.findall(str(component.get("text", "")))))
        if expected != details["body_parameters"]:
            return graph_error(
                400,
                132000,
                "(#132000) Number of parameters does not match the expected number of params",
                details=f"body: number of localizable_params ({details['body_parameters']}) does not match "
                f"the expected number of params ({expected})",
            )
        return None
