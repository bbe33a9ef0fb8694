"""Resolving ``unknown`` rows, operator decisions, redrive, statistics, audit and the
duplicate detector.

An ``unknown`` row may or may not have reached its recipient. It is resolved by evidence, or
by an explicit decision; never by a timer alone unless the channel's policy was set to
``resend`` by someone who accepted that risk:

* evidence from provider webhooks (WhatsApp ``biz_opaque_callback_data``, Messenger
  ``metadata``, Unipile's messaging webhook) or a Unipile read-back of the chat -> ``sent``.
  Evidence matched by text must postdate the attempt (less ``EVIDENCE_CLOCK_SKEW``) and must
  not be a provider message the ledger already credits to another row; a row whose only
  candidate belongs to another row is held, with the reason recorded;
* no evidence after the grace period -> the channel's policy: ``hold`` (default: stays
  ``unknown``, the UnknownRows alarm fires, an operator decides) or ``resend``.

Every decision is written to ``queue_decisions`` with who took it and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from shared import absence
from shared.channels.spec import ReadBack
from shared.config import Settings
from shared.idempotency import RecordState, SendGuard
from shared.observability import logger
from shared.providers.outcome import Channel, OutcomeKind, SendOutcome
from shared.providers.registry import channel_spec
from shared.queue import ClaimedMessage, QueueRepository, QueueStatus
from shared.storage import sql
from shared.storage.db import Database

# How far a provider's clock (or Postgres') may run behind the other: text-matched evidence
# must be no older than the attempt's start minus this. Shared with ``sql.EVIDENCE_BY_TEXT``.
EVIDENCE_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class _Evidence:
    outcome: SendOutcome | None = None
    source: str = ""
    # Provider message ids that matched but that the ledger credits to other rows.
    claimed_elsewhere: tuple[str, ...] = ()
    # Whether a chat was known for the recipient, and whether it was read back (found nothing).
    thread_known: bool = False
    read_back_ran: bool = False


@dataclass
class ReconcileDeps:
    settings: Settings
    queue: QueueRepository
    guard: SendGuard
    read_back: Mapping[Channel, ReadBack] = field(default_factory=dict)


class ReconcileReport(BaseModel):
    resolved_sent: int = 0
    held: int = 0
    resent: int = 0
    # Requeued by policy resend_if_silent on evidence of absence (shared.absence).
    resent_on_absence: int = 0
    waiting: int = 0
    errors: int = 0


def record_decision(
    db: Database,
    queue_id: int,
    source: QueueStatus,
    target: QueueStatus,
    decided_by: str,
    reason: str,
    evidence: dict[str, Any] | None = None,
) -> None:
    with db.connection() as conn:
        conn.execute(
            sql.RECORD_DECISION,
            {
                "queue_id": queue_id,
                "from_status": source.value,
                "to_status": target.value,
                "decided_by": decided_by,
                "reason": reason,
                "evidence": json.dumps(evidence, default=str) if evidence is not None else None,
            },
        )


def reconcile_unknown(deps: ReconcileDeps, now: datetime | None = None) -> ReconcileReport:
    report = ReconcileReport()
    now = now or datetime.now(UTC)
    grace = timedelta(seconds=deps.settings.unknown_grace_seconds)
    db = deps.queue.db
    for row in db.fetch_all(sql.UNKNOWN_BATCH, {"limit": deps.settings.sweep_batch_size}):
        unknown_since: datetime = row.pop("unknown_since")
        started: datetime | None = row.pop("sending_started_at")
        message = ClaimedMessage.model_validate(row)
        try:
            _reconcile_one(deps, message, unknown_since, started or unknown_since, now, grace, report)
        except Exception:
            # One bad row (a corrupt record, a provider id claimed by another row) must not
            # stop the rest of the sweep.
            report.errors += 1
            logger.exception("reconciliation of an unknown row failed", extra={"queue_id": message.queue_id})
        finally:
            with db.connection() as conn:
                conn.execute(sql.MARK_RECONCILED, {"queue_id": message.queue_id})
    return report


def _reconcile_one(
    deps: ReconcileDeps,
    message: ClaimedMessage,
    unknown_since: datetime,
    sending_started_at: datetime,
    now: datetime,
    grace: timedelta,
    report: ReconcileReport,
) -> None:
    db = deps.queue.db
    evidence = _find_evidence(deps, message, sending_started_at)
    if evidence.outcome is not None:
        if deps.queue.settle_sent(
            message,
            evidence.outcome,
            expected=QueueStatus.UNKNOWN,
            recovered_from=evidence.source,
            record_attempt=False,
        ):
            report.resolved_sent += 1
            record_decision(
                db,
                message.queue_id,
                QueueStatus.UNKNOWN,
                QueueStatus.SENT,
                "reconciler",
                f"evidence from {evidence.source}",
                {"provider_message_id": evidence.outcome.provider_message_id},
            )
        return
    if evidence.claimed_elsewhere:
        # The chat shows this text, but only as another row's message: no proof for this row,
        # and a resend could repeat what the recipient already has. An operator decides.
        _hold_for_collision(db, message, evidence.claimed_elsewhere)
        report.held += 1
        return
    policy = deps.settings.unknown_policies[message.channel.value]
    verdict = _judge_absence(deps, message, sending_started_at, now, evidence, policy)
    if policy == absence.POLICY:
        if verdict.absent and _requeue_on_absence(deps, message, sending_started_at, verdict, policy):
            report.resent_on_absence += 1
            return
        if verdict.absent or verdict.held_because == (absence.Hold.GRACE,):
            report.waiting += 1
        else:
            report.held += 1
        return
    if now - unknown_since < grace:
        report.waiting += 1
        return
    resend = policy == "resend"
    # Resends count as attempts: max_attempts bounds how many copies a policy may risk.
    if (
        resend
        and message.attempts < message.max_attempts
        and requeue(
            deps,
            message.queue_id,
            message.claim_token,
            message.idempotency_key,
            QueueStatus.UNKNOWN,
            "reconciler",
            "no evidence within the grace period; channel policy is resend",
        )
    ):
        report.resent += 1
        return
    report.held += 1


def _requeue_on_absence(
    deps: ReconcileDeps,
    message: ClaimedMessage,
    sending_started_at: datetime,
    verdict: absence.AbsenceVerdict,
    policy: str,
) -> bool:
    db = deps.queue.db
    try:
        requeued = requeue(
            deps,
            message.queue_id,
            message.claim_token,
            message.idempotency_key,
            QueueStatus.UNKNOWN,
            "reconciler",
            f"policy {policy}: {verdict.reason}",
            evidence=verdict.as_json(policy),
            recheck=lambda: absence.still_silent(db, message, sending_started_at, EVIDENCE_CLOCK_SKEW),
        )
    except DecisionError as exc:
        # The claimant's lease is not over, or the record changed: judged again next sweep.
        logger.info(
            "requeue on evidence of absence deferred", extra={"queue_id": message.queue_id, "why": str(exc)}
        )
        return False
    if requeued:
        logger.info(
            "unknown row requeued on evidence of absence",
            extra={"queue_id": message.queue_id, "evidence": verdict.evidence.as_json()},
        )
    return requeued


def _judge_absence(
    deps: ReconcileDeps,
    message: ClaimedMessage,
    sending_started_at: datetime,
    now: datetime,
    evidence: _Evidence,
    policy: str,
) -> absence.AbsenceVerdict:
    """Judged under every policy and kept on the row, so `sendonce unknown` can say why a row
    is held (and, under ``hold``, whether the evidence would have allowed a resend)."""
    rule = absence.AbsenceRule.of(deps.settings)
    read_back = absence.read_back_result(message.channel, evidence.read_back_ran, evidence.thread_known)
    gathered = absence.gather(
        deps.queue.db, rule, message, sending_started_at, now, read_back, EVIDENCE_CLOCK_SKEW
    )
    verdict = absence.judge(rule, gathered)
    with deps.queue.db.connection() as conn:
        conn.execute(
            sql.SAVE_ABSENCE_CHECK,
            {"queue_id": message.queue_id, "check": json.dumps(verdict.as_json(policy), default=str)},
        )
    return verdict


def _find_evidence(deps: ReconcileDeps, message: ClaimedMessage, sending_started_at: datetime) -> _Evidence:
    # The call outlived the row's lease and completed later: the record has the proof.
    record = deps.guard.lookup(message.idempotency_key)
    if record.state is RecordState.COMPLETED and record.outcome and record.outcome.kind is OutcomeKind.SENT:
        return _Evidence(record.outcome, "idempotency_record")
    db = deps.queue.db
    params = {
        "sending_started_at": sending_started_at,
        "clock_skew_seconds": EVIDENCE_CLOCK_SKEW.total_seconds(),
        "channel": message.channel.value,
        "idempotency_key": message.idempotency_key,
        "recipient": message.recipient,
        "body": message.body,
        "sender_account_id": message.sender_account_id,
    }
    event = db.fetch_one(sql.EVIDENCE_BY_KEY, params)
    if event is None and channel_spec(message.channel).evidence_by_text:
        event = db.fetch_one(sql.EVIDENCE_BY_TEXT, params)
    if event is not None:
        return _Evidence(
            SendOutcome.sent(event["provider_message_id"], thread_id=event["provider_thread_id"]), "webhook"
        )
    reader = deps.read_back.get(message.channel)
    # Unipile without a reader: whether a chat is known still decides the absence judgement.
    wants_thread = reader is not None or message.channel is Channel.LINKEDIN
    thread = db.fetch_one(sql.KNOWN_THREAD, params) if wants_thread else None
    if reader is None or thread is None:
        return _Evidence(thread_known=thread is not None)
    candidates = reader.find_sent(
        message, thread["provider_thread_id"], not_before=sending_started_at - EVIDENCE_CLOCK_SKEW
    )
    if not candidates:
        return _Evidence(thread_known=True, read_back_ran=True)
    claimed = {
        row["provider_message_id"]
        for row in db.fetch_all(
            sql.LEDGER_CLAIMS_OF_OTHER_ROWS,
            {
                "channel": message.channel.value,
                "queue_id": message.queue_id,
                "provider_message_ids": [c.provider_message_id for c in candidates],
            },
        )
    }
    for candidate in candidates:
        if candidate.provider_message_id not in claimed:
            return _Evidence(candidate, "read_back")
    return _Evidence(claimed_elsewhere=tuple(sorted(claimed)), thread_known=True, read_back_ran=True)


def _hold_for_collision(db: Database, message: ClaimedMessage, claimed: tuple[str, ...]) -> None:
    """Record why the row is held. Written once: a later sweep that finds the same collision
    changes nothing, so the decisions table does not grow with every sweep."""
    reason = (
        "held: read-back found this text only as provider messages the ledger credits to other "
        f"rows ({', '.join(claimed)})"
    )
    with db.connection() as conn:
        conn.execute(
            sql.HOLD_UNKNOWN,
            {
                "queue_id": message.queue_id,
                "reason": reason,
                "decided_by": "reconciler",
                "evidence": json.dumps({"claimed_provider_message_ids": list(claimed)}),
            },
        )


def requeue(
    deps: ReconcileDeps,
    queue_id: int,
    claim_token: UUID | None,
    idempotency_key: str,
    source: QueueStatus,
    decided_by: str,
    reason: str,
    *,
    evidence: dict[str, Any] | None = None,
    recheck: Callable[[], bool] | None = None,
) -> bool:
    """Back to ``pending``, inside one transaction that holds the row: nothing can claim or
    change it between the check, the forgetting of its record and the update.

    ``evidence`` is recorded with the decision. ``recheck`` runs once the row is held, before
    anything is forgotten; False leaves the row as it is (an event arrived since the
    judgement).

    For an ``unknown`` row this deliberately accepts the risk of a second delivery, so its
    idempotency record is forgotten, unless that record proves the message was sent.

    Never while the invocation that last claimed the row may still be running (its lease has
    not run out): it could still be about to call the provider, and forgetting its record
    then would let a second call through. The model check found that duplicate (issue 6).
    """
    queue, guard = deps.queue, deps.guard
    params = {
        "queue_id": queue_id,
        "claim_token": claim_token,
        "expected_status": source.value,
        "lease_seconds": deps.settings.lease_seconds,
    }
    with queue.db.connection() as conn, conn.transaction():
        locked = conn.execute(sql.LOCK_FOR_DECISION, params).fetchone()
        if locked is None:
            return False
        if not locked["lease_over"]:
            raise DecisionError(
                f"row {queue_id} was claimed at {locked['claimed_at']:%Y-%m-%d %H:%M:%S %Z}; the invocation "
                f"that claimed it may run until {locked['lease_ends_at']:%H:%M:%S %Z}: decide after that"
            )
        if recheck is not None and not recheck():
            return False
        if source is QueueStatus.UNKNOWN:
            record = guard.lookup(idempotency_key)
            if (
                record.state is RecordState.COMPLETED
                and record.outcome
                and record.outcome.kind is OutcomeKind.SENT
            ):
                raise DecisionError(
                    f"row {queue_id} has an idempotency record proving it was sent; not requeued"
                )
            # Conditional on the record as read: a record written since is never removed.
            if not guard.forget(idempotency_key, record):
                raise DecisionError(f"row {queue_id}'s idempotency record changed while deciding; look again")
        conn.execute(
            sql.REQUEUE,
            {
                **params,
                "reset_attempts": source is QueueStatus.FAILED,
                "last_error": f"requeued by {decided_by}: {reason}",
            },
        )
        # A campaign that completed meanwhile runs again, or its claim would never serve the row.
        conn.execute(sql.REOPEN_CAMPAIGN_OF_ROW, {"queue_id": queue_id, "decided_by": decided_by})
        conn.execute(
            sql.RECORD_DECISION,
            {
                "queue_id": queue_id,
                "from_status": source.value,
                "to_status": QueueStatus.PENDING.value,
                "decided_by": decided_by,
                "reason": reason,
                "evidence": json.dumps(evidence, default=str) if evidence is not None else None,
            },
        )
    return True


# --- operators --------------------------------------------------------------------------------


# Read with a row for decisions, not part of the message.
_CAMPAIGN_FIELDS = frozenset({"maybe_delivered", "campaign_status", "sequence_state", "stopped_reason"})


class OperatorAction(StrEnum):
    MARK_SENT = "mark-sent"
    RESEND = "resend"
    FAIL = "fail"


class DecisionError(ValueError):
    pass


def resolve(
    deps: ReconcileDeps,
    queue_id: int,
    action: OperatorAction,
    operator: str,
    reason: str,
    provider_message_id: str | None = None,
) -> str:
    """An operator's decision on an ``unknown`` row. Returns the new status."""
    row = deps.queue.db.fetch_one(sql.QUEUE_ROW_FOR_DECISION, {"queue_id": queue_id})
    if row is None:
        raise DecisionError(f"no queue row {queue_id}")
    if row["status"] != QueueStatus.UNKNOWN:
        raise DecisionError(f"row {queue_id} is {row['status']}; only unknown rows take operator decisions")
    message = ClaimedMessage.model_validate(
        {k: v for k, v in row.items() if k not in {"status", "has_ledger_row", *_CAMPAIGN_FIELDS}}
    )
    who = f"operator:{operator}"
    if action is OperatorAction.MARK_SENT:
        outcome = SendOutcome.sent(provider_message_id or f"operator-confirmed:{queue_id}")
        if not deps.queue.settle_sent(
            message, outcome, expected=QueueStatus.UNKNOWN, recovered_from="operator", record_attempt=False
        ):
            raise DecisionError(f"row {queue_id} changed while deciding; look again")
        record_decision(
            deps.queue.db,
            queue_id,
            QueueStatus.UNKNOWN,
            QueueStatus.SENT,
            who,
            reason,
            {"provider_message_id": outcome.provider_message_id},
        )
        return QueueStatus.SENT.value
    if action is OperatorAction.FAIL:
        if not deps.queue.settle_terminal(
            message,
            QueueStatus.FAILED,
            outcome=None,
            failure_reason=f"operator: {reason}",
            expected=QueueStatus.UNKNOWN,
        ):
            raise DecisionError(f"row {queue_id} changed while deciding; look again")
        record_decision(deps.queue.db, queue_id, QueueStatus.UNKNOWN, QueueStatus.FAILED, who, reason)
        return QueueStatus.FAILED.value
    if not requeue(
        deps,
        queue_id,
        message.claim_token,
        message.idempotency_key,
        QueueStatus.UNKNOWN,
        who,
        reason,
    ):
        raise DecisionError(f"row {queue_id} changed while deciding; look again")
    return QueueStatus.PENDING.value


class RedriveReport(BaseModel):
    requeued: list[int] = []
    skipped: dict[int, str] = {}


def redrive(
    deps: ReconcileDeps,
    *,
    campaign_id: UUID | None = None,
    reason_like: str | None = None,
    limit: int = 1000,
    operator: str = "redrive",
) -> RedriveReport:
    """Re-queue failed messages once their cause is fixed. Idempotent: a requeued row is no
    longer ``failed``. Never requeues a row with a ledger entry or an idempotency record."""
    report = RedriveReport()
    db = deps.queue.db
    candidates = db.fetch_all(
        sql.FAILED_FOR_REDRIVE, {"campaign_id": campaign_id, "reason_like": reason_like, "limit": limit}
    )
    for candidate in candidates:
        row = db.fetch_one(sql.QUEUE_ROW_FOR_DECISION, {"queue_id": candidate["queue_id"]})
        if row is None or row["status"] != QueueStatus.FAILED:
            continue
        queue_id = int(row["queue_id"])
        if row["has_ledger_row"]:
            report.skipped[queue_id] = "the ledger shows it was sent"
            continue
        if row["maybe_delivered"]:
            report.skipped[queue_id] = "it may have been delivered (an ambiguous attempt or a past unknown)"
            continue
        if row["campaign_status"] == "cancelled":
            report.skipped[queue_id] = "its campaign was cancelled"
            continue
        if row["sequence_state"] == "stopped":
            report.skipped[queue_id] = f"the contact's sequence was stopped ({row['stopped_reason']})"
            continue
        record = deps.guard.lookup(row["idempotency_key"])
        if record.state is not RecordState.ABSENT:
            report.skipped[queue_id] = f"idempotency record is {record.state.value}"
            continue
        try:
            requeued = requeue(
                deps,
                queue_id,
                row["claim_token"],
                row["idempotency_key"],
                QueueStatus.FAILED,
                f"operator:{operator}",
                "redrive after the cause was fixed",
            )
        except DecisionError as exc:
            report.skipped[queue_id] = str(exc)
            continue
        if requeued:
            report.requeued.append(queue_id)
    return report


# --- statistics, audit, duplicates ---------------------------------------------------------------


def campaign_stats(db: Database, campaign_id: UUID | None = None) -> list[dict[str, Any]]:
    return [dict(r) for r in db.fetch_all(sql.CAMPAIGN_STATS, {"campaign_id": campaign_id})]


def audit(
    db: Database, *, campaign_id: UUID | None = None, address: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Everything known about a contact or a campaign, in one call: the seed 000 investigation."""
    if campaign_id is None and address is None:
        raise ValueError("audit needs a campaign id or a contact address")
    rows = [dict(r) for r in db.fetch_all(sql.AUDIT_QUEUE, {"campaign_id": campaign_id, "address": address})]
    ids = [r["queue_id"] for r in rows]
    keys = [r["idempotency_key"] for r in rows]
    ledger = [dict(r) for r in db.fetch_all(sql.AUDIT_LEDGER, {"queue_ids": ids})]
    message_ids = [r["provider_message_id"] for r in ledger]
    return {
        "queue": rows,
        "ledger": ledger,
        "attempts": [dict(r) for r in db.fetch_all(sql.AUDIT_ATTEMPTS, {"queue_ids": ids})],
        "decisions": [dict(r) for r in db.fetch_all(sql.AUDIT_DECISIONS, {"queue_ids": ids})],
        "provider_events": [
            dict(r)
            for r in db.fetch_all(
                sql.AUDIT_EVENTS, {"keys": keys, "message_ids": message_ids, "address": address}
            )
        ],
        "suppressions": [
            dict(r)
            for r in db.fetch_all(sql.AUDIT_SUPPRESSIONS, {"campaign_id": campaign_id, "address": address})
        ],
    }


def detect_duplicates(db: Database, lookback_seconds: int = 24 * 3600) -> list[dict[str, Any]]:
    """Recipients who appear to have received a message twice: one idempotency key with two
    provider ids in webhooks, the same text to the same recipient within an hour, or a webhook
    for a key whose row is not `sent` by that provider id (pending, claimed, failed, cancelled,
    or sent under another id)."""
    by_key = [
        {"kind": "same_key", **dict(r)}
        for r in db.fetch_all(sql.DUPLICATES_BY_KEY, {"lookback_seconds": lookback_seconds})
    ]
    by_text = [
        {"kind": "same_text_within_1h", **dict(r)}
        for r in db.fetch_all(sql.DUPLICATES_BY_TEXT, {"lookback_seconds": lookback_seconds})
    ]
    # Already among by_key when the row's two copies both had webhooks; kept apart because the
    # row's state says more (a resend decided while the first copy was accepted).
    on_unsent = [
        {"kind": "key_on_row_not_sent_by_it", **dict(r)}
        for r in db.fetch_all(sql.DUPLICATES_KEY_ON_UNSENT_ROW, {"lookback_seconds": lookback_seconds})
    ]
    return by_key + by_text + on_unsent
