"""The send queue and its state machine.

    pending -> claimed -> sending -> sent
                          sending -> pending   (the provider provably did not get the message)
                          sending -> failed    (permanent rejection, or attempts exhausted)
                          sending -> unknown   (ambiguous: it may have been sent)

Every method here is one compare-and-set statement on (id, expected status, claim token), so a
row owned by another invocation is never moved. Methods return whether the CAS took effect.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, LiteralString
from uuid import UUID

from pydantic import ConfigDict

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
    }
)


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
    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        return self._db

    def claim_batch(self, claim_token: UUID, limit: int, lease_seconds: int) -> list[ClaimedMessage]:
        rows = self._db.fetch_all(
            sql.CLAIM_BATCH, {"claim_token": claim_token, "limit": limit, "lease_seconds": lease_seconds}
        )
        return [ClaimedMessage(claim_token=claim_token, **row) for row in rows]

    def mark_sending(self, message: ClaimedMessage) -> bool:
        row = self._db.fetch_one(
            sql.MARK_SENDING, {"queue_id": message.queue_id, "claim_token": message.claim_token}
        )
        return row is not None

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
        with self._db.connection() as conn:
            conn.execute(
                sql.PAUSE_SENDER, {"sender_account_id": sender_account_id, "until": until, "reason": reason}
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
