"""The send queue and its state machine.

    pending -> claimed -> sending -> sent
                          sending -> pending   (the provider provably did not get the message)
                          sending -> failed    (permanent rejection, or attempts exhausted)
                          sending -> unknown   (ambiguous: it may have been sent)
    pending | claimed  -> cancelled   (campaign cancelled, contact's sequence stopped)

Every method here is one compare-and-set statement on (id, expected status, claim token), so a
row owned by another invocation is never moved. Methods return whether the CAS took effect.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, LiteralString
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from pydantic import ConfigDict

from shared.pacing import (
    WEEK,
    Action,
    Allowance,
    BudgetState,
    CallGap,
    EffectivePacing,
    PacingPolicy,
    Usage,
    allowance,
    budget_state,
    local_day_start,
    plan_batch,
    spend,
    throttled,
)
from shared.providers.outcome import PROVABLY_NOT_SENT, OutboundMessage, SendOutcome
from shared.storage import sql
from shared.storage.db import Database


class QueueStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    # Terminal: never offered to a provider. A `sending` row is never cancelled: it is in
    # flight and settles from its outcome.
    CANCELLED = "cancelled"


# The only transitions any code may attempt. Tests hold the repository to this table.
ALLOWED_TRANSITIONS: frozenset[tuple[QueueStatus, QueueStatus]] = frozenset(
    {
        (QueueStatus.PENDING, QueueStatus.CLAIMED),
        (QueueStatus.CLAIMED, QueueStatus.SENDING),
        (QueueStatus.CLAIMED, QueueStatus.PENDING),
        (QueueStatus.SENDING, QueueStatus.SENT),
        (QueueStatus.SENDING, QueueStatus.PENDING),
        (QueueStatus.SENDING, QueueStatus.FAILED),
        (QueueStatus.SENDING, QueueStatus.UNKNOWN),
        # Reconciliation and operators, with evidence or an explicit decision.
        (QueueStatus.UNKNOWN, QueueStatus.SENT),
        (QueueStatus.UNKNOWN, QueueStatus.FAILED),
        (QueueStatus.UNKNOWN, QueueStatus.PENDING),
        (QueueStatus.FAILED, QueueStatus.PENDING),
        # The campaign engine: a cancel, a stopped sequence, or mark_sending's last look.
        (QueueStatus.PENDING, QueueStatus.CANCELLED),
        (QueueStatus.CLAIMED, QueueStatus.CANCELLED),
        # mark_sending's last look finds a webhook for an earlier attempt (one that arrived
        # after a requeue): the message was delivered, so it is not sent again.
        (QueueStatus.CLAIMED, QueueStatus.UNKNOWN),
    }
)


class SendingVerdict(StrEnum):
    """What ``mark_sending`` did with a claimed row."""

    SENDING = "sending"  # committed: offer it to the provider
    RETURNED = "pending"  # its campaign is paused: back in the queue, attempt refunded
    CANCELLED = "cancelled"  # its campaign ended or its contact's sequence stopped
    HEARD = "unknown"  # a webhook for an earlier attempt arrived: back to unknown, attempt refunded
    LOST = "lost"  # no longer this claim's (lease expired, or taken over)

    def __bool__(self) -> bool:
        # "Did the row enter sending?", as the boolean this method returned before.
        return self is SendingVerdict.SENDING


# The attempt outcome the dispatcher records when the idempotency record could not be written,
# so the provider was never called under that writer.
NOT_CALLED = "not_called"
# Attempt outcomes that prove a writer's call delivered nothing.
PROOF_OF_NO_DELIVERY: tuple[str, ...] = (NOT_CALLED, *sorted(kind.value for kind in PROVABLY_NOT_SENT))


class IllegalTransitionError(ValueError):
    pass


def check_transition(source: QueueStatus, target: QueueStatus) -> None:
    if (source, target) not in ALLOWED_TRANSITIONS:
        raise IllegalTransitionError(f"{source} -> {target} is not a queue transition")


class ClaimedMessage(OutboundMessage):
    """A row this invocation owns, with what the state machine needs to settle it."""

    model_config = ConfigDict(frozen=True)

    claim_token: UUID
    attempts: int
    max_attempts: int
    action: Action = Action.MESSAGE
    # The send-time gate's spacing for its sender, from the pacing the claim used.
    call_gap: CallGap = CallGap()


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with equal jitter and a cap."""

    base_seconds: float
    cap_seconds: float

    def delay_seconds(
        self, attempts: int, provider_hint_seconds: float | None = None, rng: random.Random | None = None
    ) -> float:
        exponential = min(self.cap_seconds, self.base_seconds * 2.0 ** max(0, attempts - 1))
        jittered = exponential / 2 + (rng or random).uniform(0, exponential / 2)
        # A provider's own Retry-After is a floor, even above our cap: sooner would just be
        # throttled again.
        return float(max(min(self.cap_seconds, jittered), provider_hint_seconds or 0.0))


class QueueRepository:
    def __init__(self, db: Database, pacing: PacingPolicy | None = None) -> None:
        self._db = db
        self._pacing = pacing or PacingPolicy()

    @property
    def db(self) -> Database:
        return self._db

    @property
    def pacing(self) -> PacingPolicy:
        return self._pacing

    def claim_batch(self, claim_token: UUID, limit: int, lease_seconds: int) -> list[ClaimedMessage]:
        """Claim up to ``limit`` due rows that their senders may send now (see
        ``shared.pacing``), shared fairly between senders and, per sender, between campaigns.

        One transaction: lock the senders to serve, read their cap usage, plan, claim, and
        write their budgets back. Rows are only claimed when they can be sent at once, so no
        claimed row waits on its sender's limits while its lease runs."""
        policy = self._pacing
        now = policy.clock()
        with self._db.connection() as conn, conn.transaction():
            senders = conn.execute(sql.LOCK_DUE_SENDERS, {"now": now, "limit": limit}).fetchall()
            if not senders:
                return []
            paced = {row["id"]: (policy.effective(row), budget_state(row)) for row in senders}
            usage = self._usage(conn, paced, now)
            allowances = [
                (
                    sender,
                    allowance(
                        pacing,
                        state,
                        usage.get(sender, {}),
                        now,
                        want=limit,
                        recovery_seconds=policy.recovery_seconds,
                    ),
                )
                for sender, (pacing, state) in paced.items()
            ]
            lanes = plan_batch(allowances, limit)
            rows = (
                conn.execute(
                    sql.CLAIM_PLANNED,
                    {
                        "sender_ids": [lane.sender_id for lane in lanes],
                        "actions": [lane.action.value for lane in lanes],
                        "quotas": [lane.quota for lane in lanes],
                        "totals": [lane.total for lane in lanes],
                        "now": now,
                        "claim_token": claim_token,
                        "lease_seconds": lease_seconds,
                    },
                ).fetchall()
                if lanes
                else []
            )
            claimed = Counter(row["sender_account_id"] for row in rows)
            budgets = {
                sender: _budget_after(policy, *paced[sender], allowed, claimed[sender], now)
                for sender, allowed in allowances
            }
            served_at = _served_at(list(paced), claimed, now)
            saved = {**_budget_params(budgets, now), "served_at": [served_at[s] for s in budgets]}
            conn.execute(sql.SAVE_BUDGETS, saved)
        gaps = {sender: CallGap.of(pacing) for sender, (pacing, _) in paced.items()}
        return [
            ClaimedMessage(claim_token=claim_token, call_gap=gaps[row["sender_account_id"]], **row)
            for row in interleave_by_sender(rows)
        ]

    def throttle_sender(self, sender_account_id: UUID, hold: timedelta) -> datetime:
        """A provider throttled the sender: lower its rate and hold it for ``hold``, under its
        row lock like a claim. Returns when it may be claimed again."""
        now = self._pacing.clock()
        with self._db.connection() as conn, conn.transaction():
            row = conn.execute(sql.LOCK_SENDER_BUDGET, {"sender_account_id": sender_account_id}).fetchone()
            if row is None:
                return now + hold
            state = throttled(budget_state(row), now, hold)
            conn.execute(sql.SAVE_THROTTLED_BUDGET, {**_budget_params({sender_account_id: state}, now)})
        return state.next_slot_at or now + hold

    def next_claim_at(self) -> datetime | None:
        """After an empty claim: when a sender with due rows may be served next (now, if
        another claim merely held its lock), or ``None`` when nothing due can be claimed."""
        row = self._db.fetch_one(sql.NEXT_CLAIMABLE, {"now": self._pacing.clock()})
        at: datetime | None = row["at"] if row else None
        return at

    def _usage(
        self,
        conn: psycopg.Connection[DictRow],
        paced: dict[UUID, tuple[EffectivePacing, BudgetState]],
        now: datetime,
    ) -> dict[UUID, dict[Action, Usage]]:
        capped = [sender for sender, (pacing, _) in paced.items() if pacing.has_caps]
        if not capped:
            return {}
        rows = conn.execute(
            sql.SENDER_USAGE,
            {
                "sender_ids": capped,
                "day_starts": [local_day_start(paced[sender][0], now) for sender in capped],
                "week_start": now - WEEK,
            },
        ).fetchall()
        usage: dict[UUID, dict[Action, Usage]] = {}
        for row in rows:
            usage.setdefault(row["sender_account_id"], {})[Action(row["action"])] = Usage(
                today=int(row["today"]), this_week=int(row["this_week"])
            )
        return usage

    def mark_sending(self, message: ClaimedMessage) -> SendingVerdict:
        """``claimed -> sending``, unless the row may no longer be sent: see ``SendingVerdict``."""
        row = self._db.fetch_one(
            sql.MARK_SENDING, {"queue_id": message.queue_id, "claim_token": message.claim_token}
        )
        if row is not None:
            return SendingVerdict(row["status"])
        # Rare: a cancel took the claimed row; say so rather than blame the lease.
        now = self._db.fetch_one(sql.QUEUE_ROW_STATUS, {"queue_id": message.queue_id})
        cancelled = now is not None and now["status"] == QueueStatus.CANCELLED
        return SendingVerdict.CANCELLED if cancelled else SendingVerdict.LOST

    def settle_sent(
        self,
        message: ClaimedMessage,
        outcome: SendOutcome,
        *,
        expected: QueueStatus = QueueStatus.SENDING,
        recovered_from: str = "dispatch",
        record_attempt: bool = True,
        writer: str | None = None,
    ) -> bool:
        check_transition(expected, QueueStatus.SENT)
        assert outcome.provider_message_id, "a sent outcome always carries the provider's id"
        return self._settled(
            sql.SETTLE_SENT,
            {
                "queue_id": message.queue_id,
                "claim_token": message.claim_token,
                "expected_status": expected.value,
                "provider_message_id": outcome.provider_message_id,
                "provider_thread_id": outcome.provider_thread_id,
                "recovered_from": recovered_from,
                "attempt": message.attempts,
                "reason": outcome.reason,
                "http_status": outcome.http_status,
                "record_attempt": record_attempt,
                "writer": writer,
            },
        )

    def settle_pending(
        self,
        message: ClaimedMessage,
        *,
        delay_seconds: float,
        outcome: SendOutcome | None,
        expected: QueueStatus = QueueStatus.SENDING,
        refund_attempt: bool = False,
        last_error: str | None = None,
        writer: str | None = None,
    ) -> bool:
        """Return the row to the queue. Callers must hold proof that no provider call
        delivered it: a provably-not-sent outcome, or no call at all. With a ``writer`` and no
        outcome, the attempt is recorded as not called under that writer: the proof that lets
        a record the writer may have left behind be released."""
        check_transition(expected, QueueStatus.PENDING)
        return self._settled(
            sql.SETTLE_PENDING,
            {
                **_attempt_params(message, outcome, writer),
                "expected_status": expected.value,
                "delay_seconds": delay_seconds,
                "refund_attempt": int(refund_attempt),
                "last_error": last_error if outcome is None else _describe(outcome),
            },
        )

    def settle_terminal(
        self,
        message: ClaimedMessage,
        target: QueueStatus,
        *,
        outcome: SendOutcome | None,
        failure_reason: str,
        expected: QueueStatus = QueueStatus.SENDING,
        writer: str | None = None,
    ) -> bool:
        check_transition(expected, target)
        return self._settled(
            sql.SETTLE_TERMINAL,
            {
                **_attempt_params(message, outcome, writer),
                "expected_status": expected.value,
                "new_status": target.value,
                "failure_reason": failure_reason,
                "last_error": _describe(outcome) if outcome else failure_reason,
            },
        )

    def pause_sender(self, sender_account_id: UUID, until: datetime, reason: str) -> None:
        """A provider refused the sender itself (``reason`` is its code): pause it, recorded."""
        with self._db.connection() as conn:
            conn.execute(
                sql.PAUSE_SENDER,
                {
                    "sender_account_id": sender_account_id,
                    "until": until,
                    "reason": reason,
                    "paused_by": "provider",
                },
            )

    def writer_proved_unsent(self, queue_id: int, writer: str) -> bool:
        """Whether Postgres holds proof that ``writer``'s call for this row delivered nothing."""
        row = self._db.fetch_one(
            sql.WRITER_PROVED_UNSENT,
            {"queue_id": queue_id, "writer": writer, "proof_outcomes": list(PROOF_OF_NO_DELIVERY)},
        )
        return bool(row and row["proved"])

    def status_counts(self, campaign_id: UUID | None = None) -> dict[str, int]:
        rows = self._db.fetch_all(sql.QUEUE_STATUS_COUNTS, {"campaign_id": campaign_id})
        return {row["status"]: int(row["n"]) for row in rows}

    def problem_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        """Rows that need a human or reconciliation: failed and unknown."""
        return [dict(r) for r in self._db.fetch_all(sql.UNSETTLED_ROWS, {"limit": limit})]

    def next_pending(self) -> tuple[int, float]:
        """How many rows are pending, and seconds until the earliest is due (<= 0: due now)."""
        row = self._db.fetch_one(sql.NEXT_PENDING)
        if row is None or not row["pending"]:
            return 0, 0.0
        return int(row["pending"]), float(row["seconds_until_due"] or 0.0)

    def _settled(self, query: LiteralString, params: dict[str, Any]) -> bool:
        row = self._db.fetch_one(query, params)
        return bool(row and row["settled"])


EMPTY_CLAIM_BACKOFF = timedelta(seconds=30)


def _budget_after(
    policy: PacingPolicy,
    pacing: EffectivePacing,
    state: BudgetState,
    allowed: Allowance,
    claimed: int,
    now: datetime,
) -> BudgetState:
    if claimed:
        return spend(pacing, state, claimed, now, recovery_seconds=policy.recovery_seconds, rng=policy.rng)
    # Nothing claimed: park the sender until it may send (its window opens, its caps reset, a
    # token arrives), so the next claims do not lock and re-plan it for nothing. If its limits
    # allowed rows but none was claimable (only rows of an action whose cap is spent were due),
    # it is looked at again after a short back-off.
    park_until = allowed.retry_at or now + EMPTY_CLAIM_BACKOFF
    return replace(state, next_slot_at=max(park_until, state.next_slot_at or park_until))


def interleave_by_sender[Row: Mapping[str, Any]](rows: Sequence[Row]) -> list[Row]:
    """The claimed rows in turns, one per sender per turn (each sender's own in the order the
    claim returned them). The dispatcher hands rows to its send threads in this order; with one
    sender's rows first, they would take every thread while they wait for that sender's call
    slots, and another sender's rows would queue behind them."""
    by_sender: dict[object, list[Row]] = {}
    for row in rows:
        by_sender.setdefault(row["sender_account_id"], []).append(row)
    turns = itertools.zip_longest(*by_sender.values())
    return [row for turn in turns for row in turn if row is not None]


def _served_at(lock_order: list[UUID], claimed: Counter[UUID], now: datetime) -> dict[UUID, datetime]:
    """When each locked sender counts as served, for the next claim's least-recently-served
    order: ``now`` plus a microsecond per place in the order its last row was handed out.
    Every sender of one claim sharing ``now`` would leave ties to the id, and the senders with
    the lowest ids would take every leftover row (20 senders, claims of 25: 400 rows for five of
    them and 200 for the rest over 200 claims). With this, leftovers rotate."""
    position = {sender: index for index, sender in enumerate(lock_order)}
    last_served = sorted(lock_order, key=lambda sender: (claimed[sender], position[sender]))
    rank = {sender: index for index, sender in enumerate(last_served)}
    return {sender: now + timedelta(microseconds=rank[sender]) for sender in lock_order}


def _budget_params(budgets: dict[UUID, BudgetState], now: datetime) -> dict[str, Any]:
    ids = list(budgets)
    return {
        "ids": ids,
        "tokens": [budgets[i].tokens for i in ids],
        "tokens_at": [budgets[i].tokens_at for i in ids],
        "next_slot_at": [budgets[i].next_slot_at for i in ids],
        "throttle_factor": [budgets[i].throttle_factor for i in ids],
        "throttled_at": [budgets[i].throttled_at for i in ids],
        "now": now,
    }


def _describe(outcome: SendOutcome) -> str:
    text = f"{outcome.kind}: {outcome.reason}"
    return f"{text} ({outcome.detail})" if outcome.detail else text


def _attempt_params(
    message: ClaimedMessage, outcome: SendOutcome | None, writer: str | None
) -> dict[str, Any]:
    """An attempt is recorded for every provider call, and for a writer that never called."""
    return {
        "queue_id": message.queue_id,
        "claim_token": message.claim_token,
        "attempt": message.attempts,
        "record_attempt": outcome is not None or writer is not None,
        "writer": writer,
        "outcome": outcome.kind.value if outcome else NOT_CALLED,
        "reason": outcome.reason if outcome else "",
        "detail": outcome.detail if outcome else "",
        "http_status": outcome.http_status if outcome else None,
    }
