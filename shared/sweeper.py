"""The stuck-item sweeper: every owned row whose lease expired gets a truthful state.

The rule, in one line: a message returns to ``pending`` only when it provably did not reach
the provider.

* ``claimed`` + expired lease -> ``pending``. ``sending`` is committed before any provider
  call, so a row still ``claimed`` was never offered to one.
* ``sending`` + expired lease is settled from the DynamoDB idempotency record:
  - COMPLETED with a sent outcome -> ``sent`` with the stored provider message id;
  - COMPLETED with an ambiguous outcome, or INPROGRESS -> ``unknown`` (the call may have
    delivered it: never resent blindly);
  - INPROGRESS, but written by a writer Postgres proves delivered nothing (its attempt is
    recorded as not called or provably not sent) -> that record is released, conditionally
    on its writer, and the row goes to ``pending``;
  - no record -> ``pending``: the record is written before the call, and every removal is
    conditional on its writer (see ``shared.idempotency``): only a writer whose call
    delivered nothing, a release backed by that proof, or an explicit resend decision removes
    one. So its absence proves no delivery. Unless the row started sending longer ago than the
    dedupe window (the record could have expired), in which case absence proves nothing and
    the row becomes ``unknown``.

Why the lease is safe: a lease is ``dispatcher timeout + margin`` (see ``Settings``). Lambda
kills an invocation at its timeout, so once a lease has expired its claimant is dead and can
no longer write the row. Even if it were not (a paused process in a test), the conditional
DynamoDB write still admits only one provider call per idempotency key.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel

from shared.campaigns import settle_campaigns
from shared.channels.spec import ReadBack
from shared.channels.whatsapp.templates import TemplateSync, sync_due
from shared.config import Settings
from shared.idempotency import RecordLookup, RecordState, SendGuard
from shared.observability import Metric, emit_channel_gauges, emit_values, logger, metrics
from shared.providers.outcome import Channel, OutcomeKind
from shared.queue import ClaimedMessage, QueueRepository, QueueStatus
from shared.reconcile import ReconcileDeps, detect_duplicates, reconcile_unknown, record_decision
from shared.storage import sql
from shared.storage.migrate import schema_behind
from shared.webhooks import ProviderEventStore

SQS_BATCH = 10
SWEEPER_LEASE = "sweeper"
BACKFILL_LOOKBACK_SECONDS = 24 * 3600


@dataclass
class SweepDeps:
    settings: Settings
    queue: QueueRepository
    guard: SendGuard
    sqs: Any  # boto3 SQS client; None when no failed-messages queue is configured
    read_back: Mapping[Channel, ReadBack] = field(default_factory=dict)
    # None unless SENDONCE_WHATSAPP_BUSINESS_ACCOUNTS names a WABA to keep its templates synced.
    templates: TemplateSync | None = None


class ChannelHealth(BaseModel):
    """A channel's gauges at the end of a sweep: the dashboard's backlog, its age and paused
    senders; the alarms take the largest age and the provider-paused count across channels."""

    due_pending: int = 0
    oldest_due_seconds: float = 0.0
    paused_senders: int = 0
    provider_paused_senders: int = 0


class SweepReport(BaseModel):
    ran: bool
    skipped_because: str = ""
    released_claims: int = 0
    recovered_sent: int = 0
    returned_to_pending: int = 0
    marked_unknown: int = 0
    lookup_errors: int = 0
    dead_lettered: int = 0
    unknown_resolved_sent: int = 0
    unknown_held: int = 0
    unknown_resent: int = 0
    unknown_resent_on_absence: int = 0
    duplicates_suspected: int = 0
    delivery_statuses_backfilled: int = 0
    stale_owned_rows: int = 0
    unknown_rows: int = 0
    # The campaign engine's step: rows that raced a stop, and campaigns with nothing left.
    stragglers_cancelled: int = 0
    event_waits_expired: int = 0
    campaigns_completed: int = 0
    # WhatsApp template syncs this sweep made (WABA -> templates listed) and the ones that failed.
    templates_synced: dict[str, int] = {}
    template_sync_errors: dict[str, str] = {}
    channels: dict[str, ChannelHealth] = {}

    @property
    def oldest_due_seconds(self) -> float:
        return max((health.oldest_due_seconds for health in self.channels.values()), default=0.0)

    @property
    def provider_paused_senders(self) -> int:
        return sum(health.provider_paused_senders for health in self.channels.values())


def sweep(deps: SweepDeps) -> SweepReport:
    # Deploy order guard: code that needs a newer schema touches nothing (one line, no traceback).
    behind = schema_behind(deps.queue.db)
    if behind is not None:
        logger.error(behind)
        return SweepReport(ran=False, skipped_because=f"schema behind: {behind}")

    with _single_flight(deps) as acquired:
        if not acquired:
            logger.info("another sweeper holds the lock; skipping this run")
            return SweepReport(ran=False)
        report = SweepReport(ran=True)
        report.stale_owned_rows = _count(
            deps, sql.STALE_OWNED_ROWS, {"grace_seconds": _stale_grace(deps.settings)}
        )
        report.released_claims = _release_expired_claims(deps)
        _settle_expired_sending(deps, report)
        report.dead_lettered = publish_dead_letters(deps)
        reconciled = reconcile_unknown(ReconcileDeps(deps.settings, deps.queue, deps.guard, deps.read_back))
        report.unknown_resolved_sent = reconciled.resolved_sent
        report.unknown_held = reconciled.held
        report.unknown_resent = reconciled.resent
        report.unknown_resent_on_absence = reconciled.resent_on_absence
        # Webhooks that arrived before their ledger row existed (reconciled rows, fast statuses).
        report.delivery_statuses_backfilled = ProviderEventStore(deps.queue.db).backfill_delivery_status(
            BACKFILL_LOOKBACK_SECONDS
        )
        suspects = detect_duplicates(deps.queue.db)
        report.duplicates_suspected = len(suspects)
        if suspects:
            logger.error(
                "suspected duplicate deliveries", extra={"suspects": _without_recipients(suspects[:20])}
            )
        campaigns = settle_campaigns(deps.queue.db, limit=deps.settings.sweep_batch_size)
        report.stragglers_cancelled = campaigns.rows_cancelled
        report.event_waits_expired = campaigns.event_waits_expired
        report.campaigns_completed = len(campaigns.campaigns_completed)
        report.unknown_rows = _count(deps, sql.UNKNOWN_ROWS, {})
        report.channels = queue_health(deps)
        if deps.templates is not None:
            synced = sync_due(deps.queue.db, deps.templates)
            report.templates_synced, report.template_sync_errors = synced.synced, synced.failed
            if synced.failed:
                # A WABA id and Graph's status line: no token, no contact data.
                logger.error("WhatsApp template sync failed", extra={"failed": synced.failed})
    _emit(report)
    logger.info("sweep finished", extra={"report": report.model_dump()})
    return report


def _without_recipients(suspects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Suspects as logged: queue ids and keys to investigate with, not the person's address."""
    return [{key: value for key, value in suspect.items() if key != "recipient"} for suspect in suspects]


def _stale_grace(settings: Settings) -> int:
    # Past its lease by more than two sweeper timeouts means a sweep should already have
    # settled it: something is wrong with the sweeper, which is what the alarm is for.
    return settings.sweeper_timeout_seconds * 2


@contextmanager
def _single_flight(deps: SweepDeps) -> Iterator[bool]:
    """One sweeper at a time, by a lease row rather than a session advisory lock: behind a
    transaction-mode pooler the lock and the unlock could run in different server sessions,
    leaking the lock (or, sharing a session, letting two sweepers both take it). A row is
    the same through any pooler and needs no connection held open for the sweep. Its expiry
    is the sweeper's Lambda timeout: the lease is taken after the invocation started, so it
    outlives a holder Lambda killed. (Overlap, if a CLI sweep outlived it, is only wasted
    work: every transition is a compare-and-set.)"""
    db = deps.queue.db
    lease = {"name": SWEEPER_LEASE, "holder": uuid.uuid4()}
    acquired = db.fetch_one(sql.ACQUIRE_LEASE, {**lease, "seconds": deps.settings.sweeper_timeout_seconds})
    try:
        yield acquired is not None
    finally:
        if acquired is not None:
            with db.connection() as conn:
                conn.execute(sql.RELEASE_LEASE, lease)


def queue_health(deps: SweepDeps) -> dict[str, ChannelHealth]:
    rows = deps.queue.db.fetch_all(sql.QUEUE_HEALTH_BY_CHANNEL, {})
    return {
        row["channel"]: ChannelHealth(
            due_pending=int(row["due_pending"]),
            oldest_due_seconds=round(float(row["oldest_due_seconds"]), 1),
            paused_senders=int(row["paused_senders"]),
            provider_paused_senders=int(row["provider_paused_senders"]),
        )
        for row in rows
    }


def _count(deps: SweepDeps, query: LiteralString, params: dict[str, Any]) -> int:
    row = deps.queue.db.fetch_one(query, params)
    return int(row["n"]) if row else 0


def _release_expired_claims(deps: SweepDeps) -> int:
    row = deps.queue.db.fetch_one(sql.RELEASE_EXPIRED_CLAIMS, {"limit": deps.settings.sweep_batch_size})
    return int(row["released"]) if row else 0


def _settle_expired_sending(deps: SweepDeps, report: SweepReport) -> None:
    rows = deps.queue.db.fetch_all(sql.EXPIRED_SENDING, {"limit": deps.settings.sweep_batch_size})
    window = timedelta(seconds=deps.settings.dedupe_window_seconds - deps.settings.lease_seconds)
    for row in rows:
        started: datetime | None = row.pop("sending_started_at")
        message = ClaimedMessage.model_validate(row)
        try:
            _settle_expired_send(deps, message, started, window, report)
        except Exception:
            # No reading, no conclusion; and one bad row must not stop the sweep. The row
            # waits for the next run.
            report.lookup_errors += 1
            logger.exception("expired send not settled; row left as is", extra={"queue_id": message.queue_id})


def _settle_expired_send(
    deps: SweepDeps, message: ClaimedMessage, started: datetime | None, window: timedelta, report: SweepReport
) -> None:
    db = deps.queue.db
    record = deps.guard.lookup(message.idempotency_key)
    outcome = record.outcome
    if record.state is RecordState.COMPLETED and outcome and outcome.kind is OutcomeKind.SENT:
        if deps.queue.settle_sent(
            message, outcome, recovered_from="idempotency_record", record_attempt=True, writer=record.writer
        ):
            report.recovered_sent += 1
            record_decision(
                db,
                message.queue_id,
                QueueStatus.SENDING,
                QueueStatus.SENT,
                "sweeper",
                "idempotency record COMPLETED with a provider id",
                {"provider_message_id": outcome.provider_message_id},
            )
        return
    window_passed = started is not None and datetime.now(UTC) - started > window
    if _releasable(deps, message, record):
        reason = f"idempotency record left by writer {record.writer}, whose call provably delivered nothing"
        if deps.queue.settle_pending(
            message,
            delay_seconds=0,
            outcome=None,
            refund_attempt=True,
            last_error=f"sending lease expired; {reason}",
        ):
            report.returned_to_pending += 1
            record_decision(db, message.queue_id, QueueStatus.SENDING, QueueStatus.PENDING, "sweeper", reason)
        return
    if record.state is RecordState.ABSENT and not window_passed:
        reason = "no idempotency record: provider never called"
        if deps.queue.settle_pending(
            message,
            delay_seconds=0,
            outcome=None,
            refund_attempt=True,
            last_error=f"sending lease expired; {reason}",
        ):
            report.returned_to_pending += 1
            record_decision(db, message.queue_id, QueueStatus.SENDING, QueueStatus.PENDING, "sweeper", reason)
        return
    reason = {
        RecordState.INPROGRESS: "provider call started, never finished (record INPROGRESS)",
        RecordState.COMPLETED: f"provider outcome was {outcome.kind if outcome else 'unrecorded'}",
        RecordState.EXPIRED: "idempotency record expired: no proof either way",
        RecordState.ABSENT: "record absent but older than the dedupe window: no proof either way",
    }[record.state]
    if deps.queue.settle_terminal(message, QueueStatus.UNKNOWN, outcome=None, failure_reason=reason):
        report.marked_unknown += 1
        record_decision(
            db,
            message.queue_id,
            QueueStatus.SENDING,
            QueueStatus.UNKNOWN,
            "sweeper",
            reason,
            {"record_state": record.state.value},
        )


def _releasable(deps: SweepDeps, message: ClaimedMessage, record: RecordLookup) -> bool:
    """An INPROGRESS record whose writer Postgres proves delivered nothing is released, so the
    message is sent rather than held ``unknown``. The release is conditional on that writer:
    if the record changed meanwhile, nothing is released and the row is judged as read."""
    return bool(
        record.state is RecordState.INPROGRESS
        and record.writer is not None
        and deps.queue.writer_proved_unsent(message.queue_id, record.writer)
        and deps.guard.release(message.idempotency_key, record.writer)
    )


def publish_dead_letters(deps: SweepDeps) -> int:
    """One JSON record per permanently failed row on the failed-messages queue. The row is
    marked in the same transaction that selected it, after SQS accepted the batch; a crash in
    between can publish a record twice (harmless: it is a report, not a send), never zero."""
    if deps.sqs is None or not deps.settings.failed_messages_queue_url:
        return 0
    published = 0
    while True:
        with deps.queue.db.connection() as conn, conn.transaction():
            rows = conn.execute(sql.DEAD_LETTER_BATCH, {"limit": SQS_BATCH}).fetchall()
            if not rows:
                return published
            entries = [
                {"Id": str(r["queue_id"]), "MessageBody": json.dumps(dead_letter_record(r), default=str)}
                for r in rows
            ]
            response = deps.sqs.send_message_batch(
                QueueUrl=deps.settings.failed_messages_queue_url, Entries=entries
            )
            accepted = [int(e["Id"]) for e in response.get("Successful", [])]
            conn.execute(sql.MARK_DEAD_LETTERED, {"queue_ids": accepted})
            published += len(accepted)
            if len(accepted) < len(rows):
                logger.error(
                    "SQS refused part of a dead-letter batch", extra={"failed": response.get("Failed")}
                )
                return published


def dead_letter_record(row: dict[str, Any]) -> dict[str, Any]:
    """What the failed-messages queue keeps for 14 days: ids to look the message up with
    (``sendonce audit``), never the recipient's address or the message text."""
    return {
        "type": "sendonce.message_failed",
        "queue_id": row["queue_id"],
        "idempotency_key": row["idempotency_key"],
        "campaign_id": str(row["campaign_id"]),
        "channel": row["channel"],
        "contact_id": str(row["contact_id"]),
        "message_type": row["message_type"],
        "attempts": row["attempts"],
        "reason": row["failure_reason"],
        "last_error": row["last_error"],
        "failed_at": row["failed_at"].isoformat() if row["failed_at"] else None,
    }


def _emit(report: SweepReport) -> None:
    emit_values(
        {
            Metric.UNKNOWN_ROWS: report.unknown_rows,
            Metric.STALE_OWNED_ROWS: report.stale_owned_rows,
            Metric.RELEASED_CLAIMS: report.released_claims,
            Metric.RECOVERED_SENT: report.recovered_sent,
            Metric.SWEPT_TO_PENDING: report.returned_to_pending,
            Metric.SWEPT_TO_UNKNOWN: report.marked_unknown,
            Metric.DEAD_LETTERED: report.dead_lettered,
            Metric.DUPLICATE_SUSPECTED: report.duplicates_suspected,
            Metric.RESENT_ON_ABSENCE: report.unknown_resent_on_absence,
            Metric.CAMPAIGNS_COMPLETED: report.campaigns_completed,
            Metric.PROVIDER_PAUSED_SENDERS: report.provider_paused_senders,
            Metric.TEMPLATE_SYNC_ERRORS: len(report.template_sync_errors),
        }
    )
    metrics.add_metric(
        name=Metric.OLDEST_DUE_PENDING_AGE.value, unit=MetricUnit.Seconds, value=report.oldest_due_seconds
    )
    for channel, health in report.channels.items():
        emit_channel_gauges(
            channel,
            {
                Metric.DUE_PENDING_ROWS: health.due_pending,
                Metric.OLDEST_DUE_PENDING_AGE: health.oldest_due_seconds,
                Metric.PAUSED_SENDERS: health.paused_senders,
                Metric.PROVIDER_PAUSED_SENDERS: health.provider_paused_senders,
            },
        )
