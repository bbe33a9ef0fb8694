"""Provider webhooks: authenticate, parse, store, and move the ledger's delivery status.

Order matters and is fixed here, not in the handler:

1. authenticate the exact raw bytes (Meta: ``X-Hub-Signature-256``, HMAC-SHA256 with the app
   secret; Unipile: the shared secret in ``Unipile-Auth``). A bad or missing signature is a
   401 and nothing is parsed or stored;
2. parse JSON. A body that is not JSON after a valid signature is a 400, nothing stored;
3. turn the document into ``provider_events`` rows, one per status/message. Shapes we do not
   understand are stored as ``unrecognised`` and answered 200: providers retry non-2xx
   answers for days, and a shape we cannot read today is still evidence for an operator
   (beyond ``UNRECOGNISED_PAYLOAD_MAX_BYTES`` as a summary with the hashes, see ``capped``);
4. insert with ``ON CONFLICT (channel, dedupe_key) DO NOTHING`` and, in the same
   transaction, apply delivered/read/failed to ``message_ledger``, monotonically;
5. in that transaction too, stop sequences (``shared.sequences``): a reply (an inbound
   message from the contact) stops the contact's sequences in every campaign, and any event
   a campaign lists in ``stop_on_events`` stops them in that campaign. Only newly stored
   events act, so a provider replaying an old reply never stops a later campaign.

Channels: ``Channel.LINKEDIN`` is the Unipile webhook, because LinkedIn is sent via Unipile.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from psycopg.rows import DictRow

from shared.config import Settings
from shared.observability import logger, metrics
from shared.providers.outcome import Channel
from shared.sequences import ContactStop, StopCause, stop_contacts_in
from shared.storage import sql
from shared.storage.db import Database, DatabaseUnavailableError
from shared.suppression import OptOutRules, find_opt_outs, record_opt_outs

META_SIGNATURE_HEADER = "x-hub-signature-256"
META_SIGNATURE_PREFIX = "sha256="
UNIPILE_AUTH_HEADER = "unipile-auth"
UNRECOGNISED = "unrecognised"
# An unrecognised item larger than this (canonical JSON, UTF-8) is stored as a summary with
# the first UNRECOGNISED_HEAD_CHARS characters. A signed body can be 6 MB (Lambda's request
# limit) of a shape nothing reads; kept whole, each delivery and retry of it is 6 MB of jsonb.
UNRECOGNISED_PAYLOAD_MAX_BYTES = 64 * 1024
UNRECOGNISED_HEAD_CHARS = 4096
# Statuses that move message_ledger.delivery_status; `sent` adds nothing to `accepted`.
LEDGER_STATUSES = frozenset({"delivered", "read", "failed"})

JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain"


# --- secrets -----------------------------------------------------------------------------------


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


def _required(secret: str, name: str) -> bytes:
    if not secret:
        raise WebhookSecretMissingError(f"the {name} is empty")
    return secret.encode("utf-8")


# --- authentication ------------------------------------------------------------------------------


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """HTTP header names are case-insensitive; Function URLs lower-case them, other callers
    (tests, a proxy) may not."""
    return {name.lower(): value for name, value in headers.items()}


def meta_signature(app_secret: str, raw_body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``raw_body``."""
    digest = hmac.new(_required(app_secret, "Meta app secret"), raw_body, hashlib.sha256).hexdigest()
    return META_SIGNATURE_PREFIX + digest


def _supplied_bytes(value: str | None) -> bytes | None:
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
    candidate = _supplied_bytes(META_SIGNATURE_PREFIX + supplied[len(META_SIGNATURE_PREFIX) :].lower())
    return candidate is not None and hmac.compare_digest(expected.encode("ascii"), candidate)


def verify_unipile_secret(shared_secret: str, headers: Mapping[str, str]) -> bool:
    expected = _required(shared_secret, "Unipile webhook secret")
    supplied = _supplied_bytes(lower_headers(headers).get(UNIPILE_AUTH_HEADER))
    return supplied is not None and hmac.compare_digest(expected, supplied)


def is_authentic(
    secrets: WebhookSecretSource, channel: Channel, headers: Mapping[str, str], raw_body: bytes
) -> bool:
    if channel is Channel.LINKEDIN:
        return verify_unipile_secret(secrets.unipile_webhook_secret(), headers)
    return verify_meta_signature(secrets.meta_app_secret(), headers, raw_body)


# --- body ------------------------------------------------------------------------------------------


class MalformedBodyError(ValueError):
    """The body is not what it claims to be (bad base64, not JSON)."""


def decode_body(body: str | None, is_base64_encoded: bool) -> bytes:
    """The bytes the provider signed. Function URLs base64-encode bodies they do not consider
    text; otherwise the body is the UTF-8 text Lambda decoded, so encoding it back is exact."""
    if body is None:
        return b""
    if not is_base64_encoded:
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError as exc:
            # A lone surrogate: no provider signed that, since it has no UTF-8 bytes.
            raise MalformedBodyError("body is not valid Unicode text") from exc
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedBodyError("body is flagged base64 but does not decode") from exc


def _reject_constant(name: str) -> Any:
    raise MalformedBodyError(f"non-standard JSON constant {name}")


def _clean(value: Any) -> Any:
    """Postgres text and jsonb cannot hold NUL or lone surrogates, both legal in JSON. Storing
    would fail with a 500 that the provider retries for days, so they are replaced instead."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def load_json(raw_body: bytes) -> Any:
    try:
        # NaN/Infinity parse in Python but jsonb rejects them.
        return _clean(json.loads(raw_body, parse_constant=_reject_constant))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedBodyError(f"body is not JSON: {type(exc).__name__}") from exc


# --- parsing ---------------------------------------------------------------------------------------


# The status of an inbound message: the contact wrote to us.
RECEIVED = "received"
# Inbound event types that are a reply: a message the contact wrote. Reactions, postbacks and
# WhatsApp system notices (a number change) are not; a campaign can still stop on them by
# listing them in stop_on_events.
REPLY_EVENT_TYPES = frozenset({"message", "message_received"})


@dataclass(frozen=True)
class ProviderEvent:
    """One ``provider_events`` row. ``watermark`` is set for events that name no message but
    cover everything sent to ``recipient`` up to a time (Messenger reads and deliveries).
    ``contact`` is the person on the other side: who replied or reacted, or whose message the
    status is about."""

    event_type: str
    dedupe_key: str
    payload: Any
    status: str | None = None
    provider_message_id: str | None = None
    provider_thread_id: str | None = None
    recipient: str | None = None
    idempotency_key: str | None = None
    occurred_at: datetime | None = None
    watermark: datetime | None = None
    contact: str | None = None

    @property
    def is_reply(self) -> bool:
        return self.status == RECEIVED and self.event_type in REPLY_EVENT_TYPES and self.contact is not None

    @property
    def stop_names(self) -> tuple[str, ...]:
        """How a campaign's ``stop_on_events`` names this event: its type, and type:status."""
        return (self.event_type, f"{self.event_type}:{self.status}") if self.status else (self.event_type,)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def unrecognised(item: Any) -> ProviderEvent:
    """Kept verbatim. Its dedupe key is the hash of its content, so a retried delivery of the
    same unknown shape is still stored once."""
    digest = hashlib.sha256(canonical_json(item).encode("utf-8")).hexdigest()
    return ProviderEvent(event_type=UNRECOGNISED, dedupe_key=f"{UNRECOGNISED}:{digest}", payload=item)


def capped(event: ProviderEvent, raw_body: bytes) -> ProviderEvent:
    """``event`` itself, or for an ``unrecognised`` payload over the limit a summary that
    still identifies it: sizes and sha256 of the item and of the whole signed body, its
    top-level keys and its first characters. The dedupe key stays the full item's hash."""
    if event.event_type != UNRECOGNISED:
        return event
    text = canonical_json(event.payload)
    size = len(text.encode("utf-8"))
    if size <= UNRECOGNISED_PAYLOAD_MAX_BYTES:
        return event
    keys = sorted(event.payload)[:50] if isinstance(event.payload, dict) else None
    summary = {
        "sendonce_truncated": True,
        "bytes": size,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "body_bytes": len(raw_body),
        "body_sha256": hashlib.sha256(raw_body).hexdigest(),
        "top_level_keys": [k[:64] for k in keys] if keys is not None else None,
        "head": text[:UNRECOGNISED_HEAD_CHARS],
    }
    return replace(event, payload=summary)


def _obj(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    """Ids are strings, but Graph occasionally sends numbers; booleans are never ids."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value)
    return None


def _epoch(value: Any, divisor: int) -> datetime | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
        if number is None:
            return None
        return datetime.fromtimestamp(number / divisor, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# WhatsApp value keys that accompany statuses and inbound messages; anything else (errors) is
# kept whole.
_WHATSAPP_KNOWN_KEYS = frozenset({"statuses", "messages", "contacts", "metadata", "messaging_product"})


def parse_whatsapp(document: Any) -> list[ProviderEvent]:
    events: list[ProviderEvent] = []
    doc = _obj(document)
    for entry in _list(doc.get("entry")) if doc else []:
        changes = _list(entry.get("changes")) if isinstance(entry, dict) else []
        if not changes:
            events.append(unrecognised(entry))
            continue
        for change in changes:
            value = _obj(change.get("value")) if isinstance(change, dict) else None
            if value is None:
                events.append(unrecognised(change))
                continue
            statuses = _list(value.get("statuses"))
            for item in statuses:
                events.append(_whatsapp_status(item) or unrecognised(item))
            messages = _list(value.get("messages"))
            business = _str((_obj(value.get("metadata")) or {}).get("phone_number_id"))
            for item in messages:
                events.append(_whatsapp_inbound(item, business) or unrecognised(item))
            if not (statuses or messages) or set(value) - _WHATSAPP_KNOWN_KEYS:
                events.append(unrecognised(change))
    return events


# Inbound message types that are not something the person wrote (Meta, WhatsApp Business
# Platform, "Messages webhook reference": reaction, system). Their event type is the message
# type itself; everything else the person sent (text, media, button, interactive, ...) is a
# "message", i.e. a reply.
_WHATSAPP_NON_REPLY_TYPES = frozenset({"reaction", "system", "unsupported"})


def _whatsapp_inbound(item: Any, business: str | None) -> ProviderEvent | None:
    """``value.messages[]``: a message from a WhatsApp user (``from``: their number as digits,
    which is how contacts store it; ``id``: its wamid). Source: Meta, WhatsApp Business
    Platform, "Messages webhook reference" (text, reaction and system messages)."""
    message = _obj(item)
    if message is None:
        return None
    wamid, sender, kind = _str(message.get("id")), _str(message.get("from")), _str(message.get("type"))
    if wamid is None or sender is None:
        return None
    event_type = kind if kind in _WHATSAPP_NON_REPLY_TYPES else "message"
    return ProviderEvent(
        event_type=event_type,
        dedupe_key=f"inbound:{wamid}",
        payload=message,
        status=RECEIVED,
        provider_message_id=wamid,
        recipient=business,
        occurred_at=_epoch(message.get("timestamp"), 1),
        contact=sender,
    )


def _whatsapp_status(item: Any) -> ProviderEvent | None:
    status = _obj(item)
    if status is None:
        return None
    wamid, state = _str(status.get("id")), _str(status.get("status"))
    if wamid is None or state is None:
        return None
    return ProviderEvent(
        event_type="status",
        dedupe_key=f"{wamid}:{state}",
        # Verbatim, so errors[], conversation and pricing stay with the row.
        payload=status,
        status=state,
        provider_message_id=wamid,
        recipient=_str(status.get("recipient_id")),
        idempotency_key=_str(status.get("biz_opaque_callback_data")),
        occurred_at=_epoch(status.get("timestamp"), 1),
        contact=_str(status.get("recipient_id")),
    )


def parse_messenger(document: Any) -> list[ProviderEvent]:
    events: list[ProviderEvent] = []
    doc = _obj(document)
    for entry in _list(doc.get("entry")) if doc else []:
        messaging = _list(entry.get("messaging")) if isinstance(entry, dict) else []
        if not messaging:
            events.append(unrecognised(entry))
            continue
        for item in messaging:
            events.extend(_messenger_item(item) or [unrecognised(item)])
    return events


def _watermark_event(
    event_type: str,
    status: str,
    item: dict[str, Any],
    sender: str | None,
    occurred_at: datetime | None,
    raw_watermark: Any,
) -> list[ProviderEvent]:
    """A Messenger delivery or read that names no message: everything the person (``sender``)
    received up to the watermark. The raw watermark keeps the dedupe key exact."""
    watermark = _epoch(raw_watermark, 1000)
    if sender is None or watermark is None:
        return []
    return [
        ProviderEvent(
            event_type=event_type,
            dedupe_key=f"{event_type}:{sender}:{raw_watermark}",
            payload=item,
            status=status,
            recipient=sender,
            occurred_at=occurred_at,
            watermark=watermark,
            contact=sender,
        )
    ]


def _messenger_item(value: Any) -> list[ProviderEvent]:
    item = _obj(value)
    if item is None:
        return []
    sender = _str((_obj(item.get("sender")) or {}).get("id"))
    recipient = _str((_obj(item.get("recipient")) or {}).get("id"))
    occurred_at = _epoch(item.get("timestamp"), 1000)

    message = _obj(item.get("message"))
    if message is not None and message.get("is_echo") is True:
        mid = _str(message.get("mid"))
        if mid is None:
            return []
        # An echo is sent by the Page: `recipient` is the person.
        return [
            ProviderEvent(
                event_type="message_echo",
                dedupe_key=f"echo:{mid}",
                payload=item,
                status="sent",
                provider_message_id=mid,
                recipient=recipient,
                idempotency_key=_str(message.get("metadata")),
                occurred_at=occurred_at,
                contact=recipient,
            )
        ]

    # A message from the person (Meta, Messenger Platform, "messages" webhook event: `sender`
    # is their PSID, `recipient` the Page, `message.mid` its id).
    if message is not None:
        mid = _str(message.get("mid"))
        if mid is None or sender is None:
            return []
        return [
            ProviderEvent(
                event_type="message",
                dedupe_key=f"message:{mid}",
                payload=item,
                status=RECEIVED,
                provider_message_id=mid,
                recipient=recipient,
                occurred_at=occurred_at,
                contact=sender,
            )
        ]

    # A reaction to a message (Meta, Messenger Platform, "message_reactions Webhook Event
    # Reference": `reaction.mid` names the message reacted to, `action` react or unreact).
    reaction = _obj(item.get("reaction"))
    if reaction is not None:
        mid, action = _str(reaction.get("mid")), _str(reaction.get("action"))
        if mid is None or sender is None or action is None:
            return []
        return [
            ProviderEvent(
                event_type="reaction",
                dedupe_key=f"reaction:{sender}:{mid}:{action}:{_str(item.get('timestamp'))}",
                payload=item,
                status=RECEIVED,
                provider_message_id=None,
                recipient=recipient,
                occurred_at=occurred_at,
                contact=sender,
            )
        ]

    # Deliveries and reads are sent by the person: `sender` is who received our message.
    delivery = _obj(item.get("delivery"))
    if delivery is not None:
        mids = [mid for mid in (_str(m) for m in _list(delivery.get("mids"))) if mid]
        if mids:
            watermark = _epoch(delivery.get("watermark"), 1000)
            return [
                ProviderEvent(
                    event_type="delivery",
                    dedupe_key=f"delivery:{mid}",
                    payload=item,
                    status="delivered",
                    provider_message_id=mid,
                    recipient=sender,
                    occurred_at=occurred_at,
                    watermark=watermark,
                    contact=sender,
                )
                for mid in mids
            ]
        return _watermark_event("delivery", "delivered", item, sender, occurred_at, delivery.get("watermark"))

    read = _obj(item.get("read"))
    if read is not None:
        return _watermark_event("read", "read", item, sender, occurred_at, read.get("watermark"))
    return []


def parse_unipile(document: Any) -> list[ProviderEvent]:
    doc = _obj(document)
    if doc is None:
        return [unrecognised(document)]
    event, message_id = _str(doc.get("event")), _str(doc.get("message_id"))
    account_type = _str(doc.get("account_type"))
    # Unipile also connects WhatsApp, Messenger and mail accounts; sendonce sends only LinkedIn
    # through it, and a row under `linkedin` must not be evidence for another network.
    if (
        event is None
        or message_id is None
        or not event.startswith("message_")
        or (account_type is not None and account_type.upper() != "LINKEDIN")
    ):
        return [unrecognised(doc)]

    account_user = _str((_obj(doc.get("account_info")) or {}).get("user_id"))
    sender = _str((_obj(doc.get("sender")) or {}).get("attendee_provider_id"))
    is_sender = doc.get("is_sender")
    if isinstance(is_sender, bool | int):
        ours = bool(is_sender)
    else:
        ours = account_user is not None and sender == account_user

    # message_read on our message: the contact read it.
    status = ("read" if event == "message_read" else "sent") if ours else RECEIVED

    if ours:
        others = [
            pid
            for pid in (_str(a.get("attendee_provider_id")) for a in _list(doc.get("attendees")) if _obj(a))
            if pid and pid not in (sender, account_user)
        ]
        # In a group chat there is no single recipient to match a queue row against.
        recipient = others[0] if len(others) == 1 else None
    else:
        recipient = account_user
    # The contact: whom our message went to, or who wrote (Unipile, "Message object":
    # `is_sender` tells whether the account's user sent it).
    contact = recipient if ours else sender

    payload = dict(doc)
    text = doc.get("message")
    # Reconciliation matches Unipile evidence on payload->>'text' (EVIDENCE_BY_TEXT); Unipile
    # calls the field `message`.
    if isinstance(text, str) and "text" not in payload:
        payload["text"] = text
    return [
        ProviderEvent(
            event_type=event,
            dedupe_key=f"{event}:{message_id}",
            payload=payload,
            status=status,
            provider_message_id=message_id,
            provider_thread_id=_str(doc.get("chat_id")),
            recipient=recipient,
            occurred_at=_iso(doc.get("timestamp")),
            contact=contact,
        )
    ]


def parse_events(channel: Channel, document: Any) -> list[ProviderEvent]:
    """Never raises and never returns nothing: a delivery we cannot read is stored whole."""
    if channel is Channel.WHATSAPP:
        events = parse_whatsapp(document)
    elif channel is Channel.MESSENGER:
        events = parse_messenger(document)
    else:
        events = parse_unipile(document)
    return events or [unrecognised(document)]


# --- storage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreReport:
    stored: int
    duplicates: int
    ledger_updates: int
    sequences_stopped: int = 0


def _stop_sequences(
    conn: psycopg.Connection[DictRow], channel: Channel, events: Sequence[ProviderEvent]
) -> int:
    """Replies stop the contact's sequences everywhere; any event stops them in the campaigns
    that list it. Runs in the caller's transaction: the event and its effect commit together."""
    replies = [
        ContactStop(
            e.contact, f"replied: {channel.value} {e.event_type} {e.provider_message_id or e.dedupe_key}"
        )
        for e in events
        if e.is_reply and e.contact is not None
    ]
    listed = [
        ContactStop(
            e.contact,
            f"{channel.value} event {e.stop_names[-1]} ({e.provider_message_id or e.dedupe_key})",
            e.stop_names,
        )
        for e in events
        if e.contact is not None and not e.is_reply and e.event_type != UNRECOGNISED
    ]
    stopped = 0
    if replies:
        stopped += stop_contacts_in(
            conn, channel, replies, StopCause.REPLY, decided_by="webhook"
        ).sequences_stopped
    if listed:
        stopped += stop_contacts_in(
            conn, channel, listed, StopCause.EVENT, decided_by="webhook"
        ).sequences_stopped
    return stopped


class EventSink(Protocol):
    def save(self, channel: Channel, events: Sequence[ProviderEvent]) -> StoreReport: ...


class ProviderEventStore:
    def __init__(self, db: Database, opt_out: OptOutRules | None = None) -> None:
        self._db = db
        self._opt_out = opt_out or OptOutRules()

    def save(self, channel: Channel, events: Sequence[ProviderEvent]) -> StoreReport:
        """Rows and ledger updates commit together or not at all, so a failure (answered
        5xx, retried by the provider) leaves nothing half-applied.

        The ledger update runs for duplicates too: a status that arrived before its ledger row
        existed gets another chance whenever the provider repeats it."""
        if not events:
            return StoreReport(0, 0, 0)
        by_message = [e for e in events if e.provider_message_id and e.status in LEDGER_STATUSES]
        by_watermark = [
            e for e in events if e.provider_message_id is None and e.watermark and e.recipient and e.status
        ]
        with self._db.connection() as conn, conn.transaction():
            inserted = conn.execute(
                sql.INSERT_PROVIDER_EVENTS,
                {
                    "channel": channel.value,
                    "event_types": [e.event_type for e in events],
                    "dedupe_keys": [e.dedupe_key for e in events],
                    "idempotency_keys": [e.idempotency_key for e in events],
                    "provider_message_ids": [e.provider_message_id for e in events],
                    "provider_thread_ids": [e.provider_thread_id for e in events],
                    "recipients": [e.recipient for e in events],
                    "contacts": [e.contact for e in events],
                    "statuses": [e.status for e in events],
                    "occurred_ats": [e.occurred_at for e in events],
                    "payloads": [canonical_json(e.payload) for e in events],
                },
            ).fetchall()
            updated = 0
            if by_message:
                updated += len(
                    conn.execute(
                        sql.APPLY_DELIVERY_STATUS,
                        {
                            "channel": channel.value,
                            "provider_message_ids": [e.provider_message_id for e in by_message],
                            "statuses": [e.status for e in by_message],
                            "occurred_ats": [e.occurred_at for e in by_message],
                        },
                    ).fetchall()
                )
            for event in by_watermark:
                updated += len(
                    conn.execute(
                        sql.APPLY_WATERMARK_STATUS,
                        {
                            "channel": channel.value,
                            "recipient": event.recipient,
                            "status": event.status,
                            "watermark": event.watermark,
                            "occurred_at": event.occurred_at,
                        },
                    ).fetchall()
                )
            stored = {row["dedupe_key"] for row in inserted}
            new = [e for e in events if e.dedupe_key in stored]
            # Before the reply stop, so an opt-out's sequences stop as opt-outs (issue 8).
            stopped = record_opt_outs(conn, channel, find_opt_outs(channel, new, self._opt_out))
            stopped += _stop_sequences(conn, channel, new)
        return StoreReport(
            stored=len(inserted),
            duplicates=len(events) - len(inserted),
            ledger_updates=updated,
            sequences_stopped=stopped,
        )

    def backfill_delivery_status(self, lookback_seconds: int) -> int:
        """Apply stored statuses to recent ledger rows created after their webhooks arrived
        (a fast `delivered`, or an `unknown` row settled by reconciliation). Meant for the
        sweeper's schedule; returns how many ledger rows moved."""
        return len(self._db.fetch_all(sql.BACKFILL_DELIVERY_STATUS, {"lookback_seconds": lookback_seconds}))


# --- entry points ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookDeps:
    store: EventSink
    secrets: WebhookSecretSource


@dataclass(frozen=True)
class WebhookResult:
    status_code: int
    body: str
    content_type: str = JSON_CONTENT_TYPE

    @classmethod
    def of_json(cls, status_code: int, body: Mapping[str, Any]) -> WebhookResult:
        return cls(status_code, json.dumps(body, separators=(",", ":")))

    def json(self) -> Any:
        return json.loads(self.body)


def _rejected(channel: Channel, status_code: int, reason: str) -> WebhookResult:
    metrics.add_metric(name="WebhookRejected", unit=MetricUnit.Count, value=1)
    # The reason only: never the body or a header value, which may carry a secret.
    logger.warning(
        "webhook rejected", extra={"channel": channel.value, "status_code": status_code, "reason": reason}
    )
    return WebhookResult.of_json(status_code, {"error": reason})


def handle_webhook(
    deps: WebhookDeps, channel: Channel, headers: Mapping[str, str], raw_body: bytes
) -> WebhookResult:
    if not is_authentic(deps.secrets, channel, headers, raw_body):
        return _rejected(channel, 401, "invalid signature")
    try:
        document = load_json(raw_body)
    except MalformedBodyError:
        return _rejected(channel, 400, "body is not JSON")
    events = [capped(e, raw_body) for e in parse_events(channel, document)]
    try:
        report = deps.store.save(channel, events)
    except DatabaseUnavailableError as exc:
        # Nothing was stored; a 5xx makes the provider deliver it again later.
        logger.error(
            "webhook not stored: database unavailable", extra={"channel": channel.value, "error": str(exc)}
        )
        return WebhookResult.of_json(503, {"error": "temporarily unavailable"})
    metrics.add_metric(name="WebhookStored", unit=MetricUnit.Count, value=report.stored)
    metrics.add_metric(name="WebhookDuplicate", unit=MetricUnit.Count, value=report.duplicates)
    logger.info(
        "webhook stored",
        extra={
            "channel": channel.value,
            "stored": report.stored,
            "duplicates": report.duplicates,
            "ledger_updates": report.ledger_updates,
            "sequences_stopped": report.sequences_stopped,
            "event_types": sorted({e.event_type for e in events}),
        },
    )
    return WebhookResult.of_json(200, {"stored": report.stored, "duplicates": report.duplicates})


def handle_request(
    deps: WebhookDeps,
    channel: Channel,
    headers: Mapping[str, str],
    body: str | None,
    is_base64_encoded: bool,
) -> WebhookResult:
    """A Function URL request's body as Lambda delivers it."""
    try:
        raw_body = decode_body(body, is_base64_encoded)
    except MalformedBodyError:
        return _rejected(channel, 400, "body is not valid base64")
    return handle_webhook(deps, channel, headers, raw_body)


def verify_subscription(secrets: WebhookSecretSource, query: Mapping[str, str]) -> WebhookResult:
    """Meta's endpoint check: echo ``hub.challenge`` when ``hub.verify_token`` is ours.

    The verify token is its own secret, never the app secret: it travels in a GET query
    string (which proxies and access logs keep) and is typed into Meta's dashboard, and the
    app secret signs the webhooks whose evidence settles ``unknown`` rows as sent. Compared
    in constant time."""
    expected = _required(secrets.meta_verify_token(), "Meta verify token")
    token = _supplied_bytes(query.get("hub.verify_token"))
    challenge = query.get("hub.challenge")
    if (
        query.get("hub.mode") != "subscribe"
        or token is None
        or not challenge
        or _supplied_bytes(challenge) is None
        or not hmac.compare_digest(expected, token)
    ):
        metrics.add_metric(name="WebhookRejected", unit=MetricUnit.Count, value=1)
        logger.warning("webhook subscription check refused")
        return WebhookResult(403, "forbidden", TEXT_CONTENT_TYPE)
    logger.info("webhook subscription verified")
    return WebhookResult(200, challenge, TEXT_CONTENT_TYPE)
