"""Provider webhooks: authenticate, parse, store, and move the ledger's delivery status.

Order matters and is fixed here, not in the handler:

1. authenticate the exact raw bytes with the channel's own check (``ChannelSpec.authenticate``:
   Meta's ``X-Hub-Signature-256``, Unipile's shared secret in ``Unipile-Auth``). A bad or
   missing signature is a 401 and nothing is parsed or stored;
2. parse JSON. A body that is not JSON after a valid signature is a 400, nothing stored;
3. turn the document into ``provider_events`` rows with the channel's parser
   (``ChannelSpec.parse_events``), one per status/message. Shapes we do not
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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from aws_lambda_powertools.metrics import MetricUnit
from psycopg.rows import DictRow

from shared.channels.auth import (
    SecretsManagerWebhookSecrets,
    WebhookSecretMissingError,
    WebhookSecrets,
    WebhookSecretSource,
    required,
    supplied_bytes,
)
from shared.channels.events import (
    UNRECOGNISED,
    WAITABLE_EVENTS,
    ProviderEvent,
    canonical_json,
    unrecognised,
)
from shared.observability import logger, metrics
from shared.providers.outcome import Channel
from shared.providers.registry import channel_spec
from shared.sequences import ContactStop, StopCause, stop_contacts_in
from shared.storage import sql
from shared.storage.db import Database, DatabaseUnavailableError
from shared.suppression import OptOutRules, find_opt_outs, record_opt_outs

# Re-exported: the webhook handler's dependencies are built from these.
__all__ = [
    "EventSink",
    "MalformedBodyError",
    "ProviderEvent",
    "ProviderEventStore",
    "SecretsManagerWebhookSecrets",
    "StoreReport",
    "WebhookDeps",
    "WebhookResult",
    "WebhookSecretMissingError",
    "WebhookSecretSource",
    "WebhookSecrets",
    "capped",
    "decode_body",
    "handle_request",
    "handle_webhook",
    "load_json",
    "verify_subscription",
]

# An unrecognised item larger than this (canonical JSON, UTF-8) is stored as a summary with
# the first UNRECOGNISED_HEAD_CHARS characters. A signed body can be 6 MB (Lambda's request
# limit) of a shape nothing reads; kept whole, each delivery and retry of it is 6 MB of jsonb.
UNRECOGNISED_PAYLOAD_MAX_BYTES = 64 * 1024
UNRECOGNISED_HEAD_CHARS = 4096
# Statuses that move message_ledger.delivery_status; `sent` adds nothing to `accepted`.
LEDGER_STATUSES = frozenset({"delivered", "read", "failed"})

JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain"


def is_authentic(
    secrets: WebhookSecretSource, channel: Channel, headers: Mapping[str, str], raw_body: bytes
) -> bool:
    return channel_spec(channel).authenticate(secrets, headers, raw_body)


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


def parse_events(channel: Channel, document: Any) -> list[ProviderEvent]:
    """Never raises and never returns nothing: a delivery we cannot read is stored whole."""
    return channel_spec(channel).parse_events(document) or [unrecognised(document)]


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
            inbound = [e for e in events if e.is_reply and e.occurred_at is not None]
            if inbound:
                # The 24-hour windows open at each message the contact sends (replays included:
                # GREATEST keeps the latest, so a replay never moves it back).
                conn.execute(
                    sql.RECORD_INBOUND,
                    {
                        "channel": channel.value,
                        "addresses": [e.contact for e in inbound],
                        "ats": [e.occurred_at for e in inbound],
                    },
                )
            stored = {row["dedupe_key"] for row in inserted}
            fresh = [e for e in events if e.dedupe_key in stored]
            # Before the reply stop, so an opt-out's sequences stop as opt-outs (issue 8).
            stopped = record_opt_outs(conn, channel, find_opt_outs(channel, fresh, self._opt_out))
            stopped += _stop_sequences(conn, channel, fresh)
            for event in fresh:
                if event.event_type in WAITABLE_EVENTS and event.contact is not None:
                    conn.execute(
                        sql.QUEUE_AFTER_EVENT,
                        {
                            "channel": channel.value,
                            "contacts": [event.contact, *event.aliases],
                            "sender_provider_id": event.recipient,
                            "event_name": event.event_type,
                            "occurred_at": event.occurred_at or datetime.now(UTC),
                        },
                    )
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
    expected = required(secrets.meta_verify_token(), "Meta verify token")
    token = supplied_bytes(query.get("hub.verify_token"))
    challenge = query.get("hub.challenge")
    if (
        query.get("hub.mode") != "subscribe"
        or token is None
        or not challenge
        or supplied_bytes(challenge) is None
        or not hmac.compare_digest(expected, token)
    ):
        metrics.add_metric(name="WebhookRejected", unit=MetricUnit.Count, value=1)
        logger.warning("webhook subscription check refused")
        return WebhookResult(403, "forbidden", TEXT_CONTENT_TYPE)
    logger.info("webhook subscription verified")
    return WebhookResult(200, challenge, TEXT_CONTENT_TYPE)
