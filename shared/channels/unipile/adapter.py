"""Unipile (LinkedIn): ``POST /api/v1/chats`` as multipart/form-data with ``X-API-KEY``.

Unipile carries no correlation field, so the chat id it returns is kept as the thread id:
``UnipileReadBack`` reads that chat back (``GET /api/v1/chats/{chat_id}/messages``,
``is_sender``) to resolve an ``unknown`` row.

Errors come in the v1 shape ``{"title","detail","instance","type","status"}`` or as RFC 7807
with ``type`` like ``errors/too_many_requests``; the type is matched by its last path segment
so both spellings work. Classification order:

1. 2xx with a ``message_id``: sent (``chat_id`` is the thread). A 2xx without one is
   ambiguous but keeps the ``chat_id``, so read-back can still settle it.
2. 408, 1xx/3xx/5xx: ambiguous. Unipile relays to LinkedIn; a 500/503 does not prove
   LinkedIn never saw the message.
3. A 4xx whose type is in the table: the table's rule. Only types Unipile documents as a
   refusal (throttled, credentials, not connected, invalid parameters) free the message.
4. Anything else is ambiguous: an unlisted type, whatever its status (429, 401 and 403
   included), and a 4xx without a readable error type. The reason ``unipile:<type>`` or
   ``unipile:http_<status>`` is recorded for the operator who decides the row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import httpx

from shared.channels.unipile import content
from shared.channels.unipile.errors import UNIPILE_ERROR_RULES, parse_unipile_error
from shared.providers.http import HttpAdapter, Rule, Verdict, ambiguous, json_body, retry_after, truncate
from shared.providers.outcome import Channel, OutboundMessage, OutcomeKind, SendOutcome


class UnipileLinkedInAdapter(HttpAdapter):
    channel: Channel = Channel.LINKEDIN
    provider: ClassVar[str] = "unipile"
    error_rules: ClassVar[Mapping[str, Rule]] = UNIPILE_ERROR_RULES

    def _build_request(self, message: OutboundMessage, token: str) -> httpx.Request:
        headers = {"X-API-KEY": token, "Accept": "application/json"}
        typed = content.of(message)
        recipient = message.provider_profile_id or message.recipient
        if isinstance(typed, content.Invitation):
            # JSON, unlike the chat routes (content.py cites the invite reference).
            body: dict[str, str] = {"provider_id": recipient, "account_id": message.sender_provider_id}
            if typed.note is not None:
                body["message"] = typed.note
            return self._client.build_request(
                "POST", f"{self._base_url}/api/v1/users/invite", json=body, headers=headers
            )
        # Unipile requires multipart/form-data; ``files`` with no file name forces it even
        # though every part is a plain field.
        fields = [
            ("account_id", (None, message.sender_provider_id)),
            ("text", (None, typed.text)),
            ("attendees_ids", (None, recipient)),
        ]
        if isinstance(typed, content.InMail):
            fields.append(("linkedin[inmail]", (None, "true")))
            if typed.subject is not None:
                fields.append(("subject", (None, typed.subject)))
        return self._client.build_request(
            "POST", f"{self._base_url}/api/v1/chats", files=fields, headers=headers
        )

    def _classify(self, response: httpx.Response) -> SendOutcome:
        status = response.status_code
        data = json_body(response)
        if 200 <= status < 300:
            return _started(data, status, response)
        error = parse_unipile_error(data)
        kind = error.type if error is not None else None
        detail = error.text if error is not None and error.text else truncate(response.text)
        reason = f"unipile:{kind or f'http_{status}'}"
        rule = self.error_rules.get(kind) if kind and 400 <= status < 500 and status != 408 else None
        return self._outcome(
            Verdict(rule or ambiguous(), reason, detail, status, retry_after(response, self._clock()))
        )


def _started(data: object, status: int, response: httpx.Response) -> SendOutcome:
    invitation = data.get("invitation_id") if isinstance(data, Mapping) else None
    if isinstance(invitation, str) and invitation:
        # "UserInvitationSent": the invitation id stands for the message id.
        return SendOutcome.sent(invitation, http_status=status)
    chat_id = data.get("chat_id") if isinstance(data, Mapping) else None
    message_id = data.get("message_id") if isinstance(data, Mapping) else None
    thread = chat_id if isinstance(chat_id, str) and chat_id else None
    if isinstance(message_id, str) and message_id:
        return SendOutcome.sent(message_id, thread_id=thread, http_status=status)
    return SendOutcome(
        kind=OutcomeKind.AMBIGUOUS,
        provider_thread_id=thread,
        reason="unipile:accepted_without_message_id",
        detail=truncate(response.text),
        http_status=status,
    )
