"""The send-time gate: right before its provider call, each send of a paced sender takes a call
slot in Postgres and waits for it.

The claim (``shared.pacing``) bounds how many rows a sender may *claim* in any interval. What the
provider sees is each send's call, which comes after a Postgres statement and a DynamoDB write
whose latency varies with load: two sends claimed a second apart can reach the provider in the
same instant, and a token bucket at the provider answers the bunch with throttles. The gate
spaces the calls themselves, on the database's clock every dispatcher shares:

* a rate-paced sender's calls start at least 1/rate apart (a reserved slot: callers queue in
  the order they asked, each waiting for its own slot, so a sender keeps its full rate);
* a spaced sender's calls are granted only when the last granted one is at least the spacing
  ago (a compare-and-set on its time), so no two granted calls are closer than the spacing
  however late a caller wakes up.

The wait happens as close to the call as it can be: inside the idempotency guard, once the
adapter has read its token and built the request (``BeforeCall``), so only the request itself
follows the grant. It is bounded: a caller whose slot lies beyond ``max_wait_seconds`` takes
none, and its row goes back to the queue unsent (its record released, its attempt refunded). A
process killed during the wait leaves its row as one killed just before its call always did:
``sending`` with an INPROGRESS record, which the sweeper treats as ambiguous (README, "Not
guaranteed").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared.pacing import CallGap
from shared.queue import ClaimedMessage
from shared.storage import sql
from shared.storage.db import Database

# A spaced caller refused its slot asks again at most this many times within its wait limit
# (another caller of the same sender took the slot it was waiting for).
SPACED_RETRIES = 4


@dataclass(frozen=True)
class CallSlot:
    """The gate's answer: the call may start now (its wait is over), or it must not be made in
    this invocation and is worth trying again after ``retry_after_seconds``."""

    granted: bool
    granted_at: datetime | None = None
    retry_after_seconds: float = 0.0


class CallGate:
    def __init__(self, db: Database, sleep: Callable[[float], None]) -> None:
        self._db = db
        self._sleep = sleep

    def wait_for_slot(self, message: ClaimedMessage, max_wait_seconds: float) -> CallSlot:
        """Take the sender's next call slot if it starts within ``max_wait_seconds``, and wait
        for it. Unpaced senders pass at once without a statement."""
        gap = message.call_gap
        if gap.seconds <= 0:
            return CallSlot(granted=True)
        params = {
            "sender_account_id": message.sender_account_id,
            "queue_id": message.queue_id,
            "claim_token": message.claim_token,
            "gap_seconds": gap.seconds,
            "max_wait_seconds": max(0.0, max_wait_seconds),
        }
        if not gap.spaced:
            row = self._db.fetch_one(sql.TAKE_RATE_CALL_SLOT, params)
            if row is None:
                return CallSlot(granted=False, retry_after_seconds=self._wait_needed(gap, params))
            wait = float(row["wait_seconds"])
            if wait > 0:
                self._sleep(wait)
            return CallSlot(granted=True, granted_at=row["granted_at"])
        waited = 0.0
        for _ in range(SPACED_RETRIES):
            row = self._db.fetch_one(sql.TAKE_SPACED_CALL_SLOT, params)
            if row is not None:
                return CallSlot(granted=True, granted_at=row["granted_at"])
            needed = self._wait_needed(gap, params)
            if waited + needed > max_wait_seconds:
                return CallSlot(granted=False, retry_after_seconds=needed)
            self._sleep(needed)
            waited += needed
        return CallSlot(granted=False, retry_after_seconds=gap.seconds)

    def _wait_needed(self, gap: CallGap, params: dict[str, object]) -> float:
        row = self._db.fetch_one(sql.CALL_SLOT_WAIT, {**params, "spaced": gap.spaced})
        return float(row["wait_seconds"]) if row is not None else gap.seconds
