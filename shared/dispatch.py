"""The dispatcher: claim due rows, pass each through the idempotency gate to its provider, and
settle the row from the classified outcome.

Per message, in this order:
1. ``claimed -> sending`` is committed (CAS on the claim token). This is the recovery point.
2. The DynamoDB INPROGRESS record is written with a conditional put, under a fresh writer id.
   Only its writer calls the provider; a COMPLETED record is replayed, an INPROGRESS one is
   left to the sweeper (unless Postgres proves its writer delivered nothing: then it is
   released and the put retried), and a store failure means no call at all (fail closed).
3. The provider outcome settles the row with a CAS, recording the attempt under the writer id.
   A lost CAS after a send is logged and counted, never retried: the DynamoDB record already
   holds the truth for the sweeper.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from uuid import UUID

from pydantic import BaseModel

from shared.call_slots import CallGate, CallSlot
from shared.channels.spec import RecipientResolver
from shared.config import Settings
from shared.events import DispatchRequest
from shared.idempotency import GuardResult, GuardVerdict, SendGuard
from shared.observability import Metric, Stage, Tally, logger
from shared.providers.outcome import Channel, OutcomeKind, ProviderAdapter, SendOutcome
from shared.providers.registry import channel_spec
from shared.queue import ClaimedMessage, QueueRepository, QueueStatus, RetryPolicy, SendingVerdict
from shared.storage.migrate import schema_behind


class RemainingTime(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


@dataclass
class DispatchDeps:
    """Everything the dispatcher touches, passed in so tests can hand in real Postgres, moto
    and a fake provider without patching anything."""

    settings: Settings
    queue: QueueRepository
    guard: SendGuard
    adapters: Mapping[Channel, ProviderAdapter]
    # Address lookups before a send (LinkedIn profile URL -> provider id), cached per contact.
    resolvers: Mapping[Channel, RecipientResolver] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep


class DispatchReport(BaseModel):
    claim_token: str
    batches: int
    stopped_because: str
    counts: dict[str, int]
    stage_seconds: dict[str, float]


class _StoreUnavailable(Exception):
    pass


class _PausedSenders:
    """Senders a provider refused during this invocation: their remaining claimed rows are
    released unsent instead of being offered to a provider that will refuse them too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[UUID, datetime] = {}

    def pause(self, sender: UUID, until: datetime) -> None:
        with self._lock:
            self._until[sender] = max(until, self._until.get(sender, until))

    def until(self, sender: UUID, now: datetime) -> datetime | None:
        """When the sender may be offered again, while that is still ahead of ``now``; a hold
        that has ended is forgotten, so the rest of the invocation serves the sender again
        instead of claiming and releasing its rows until it stops."""
        with self._lock:
            until = self._until.get(sender)
            if until is not None and until <= now:
                del self._until[sender]
                return None
            return until


def dispatch(deps: DispatchDeps, request: DispatchRequest, remaining: RemainingTime) -> DispatchReport:
    # Deploy order guard: code that needs a newer schema claims nothing (one line, no traceback).
    behind = schema_behind(deps.queue.db)
    if behind is not None:
        logger.error(behind)
        return DispatchReport(
            claim_token="", batches=0, stopped_because=f"schema behind: {behind}", counts={}, stage_seconds={}
        )

    settings = deps.settings
    claim_token = uuid.uuid4()
    tally = Tally()
    batch_size = request.batch_size or settings.batch_size
    log = logger
    log.append_keys(claim_token=str(claim_token))
    batches = 0
    stopped_because = "queue drained"
    paused = _PausedSenders()
    gate = CallGate(deps.queue.db, deps.sleep)
    with tally.timed(Stage.POSTGRES):
        deps.queue.db.ping()

    # A continuous pipeline, not claim-a-batch-then-wait: the next rows are claimed while the
    # current ones are in flight, so no send thread idles behind the slowest row of a batch.
    # At most `held_cap` claimed rows are held at once (running or queued for a thread), which
    # bounds how long a claimed row waits under its lease; a claim is made once at least
    # `refill_at` slots are free, so claims stay batched (a few rows each) instead of one
    # Postgres transaction per finished send.
    concurrency = settings.send_concurrency
    held_cap = 2 * concurrency
    refill_at = max(1, concurrency // 2)
    in_flight: set[Future[object]] = set()
    # After an empty claim while sends are in flight: no new claim before this (monotonic) time,
    # so finished sends do not each trigger a claim that finds nothing.
    claim_after = 0.0
    store_down = False

    def reap(done: set[Future[object]]) -> None:
        nonlocal store_down
        for future in done:
            in_flight.discard(future)
            if isinstance(future.result(), _StoreUnavailable):
                store_down = True

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send") as pool:
        while True:
            reap({f for f in in_flight if f.done()})
            if store_down:
                stopped_because = "idempotency store unavailable"
                break
            free = held_cap - len(in_flight)
            if not in_flight or (free >= refill_at and time.monotonic() >= claim_after):
                if request.max_batches is not None and batches >= request.max_batches:
                    stopped_because = "max_batches reached"
                    break
                if remaining.get_remaining_time_in_millis() < settings.stop_claiming_margin_ms:
                    stopped_because = "time budget spent"
                    break
                with tally.timed(Stage.POSTGRES):
                    claimed = deps.queue.claim_batch(
                        claim_token, min(batch_size, free), settings.lease_seconds
                    )
                if claimed:
                    batches += 1
                    tally.add(Metric.CLAIMED, len(claimed))
                    log.debug("claimed batch", extra={"batch": batches, "rows": len(claimed)})
                    for message in claimed:
                        in_flight.add(
                            pool.submit(_deliver_safely, deps, gate, message, remaining, tally, paused)
                        )
                    continue
                if not in_flight:
                    if _wait_for_claimable(deps, remaining, tally):
                        continue
                    break
                claim_after = time.monotonic() + _claim_retry_after(deps, tally)
            timeout = None if free < refill_at else max(0.0, claim_after - time.monotonic())
            done, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
            reap(done)
        # Rows already handed to the pool finish (each re-checks the time budget and the store
        # on its own); the executor's exit waits for them, as the batch barrier did.
        reap(set(wait(in_flight).done))
        if store_down:
            stopped_because = "idempotency store unavailable"

    tally.emit()
    report = DispatchReport(
        claim_token=str(claim_token),
        batches=batches,
        stopped_because=stopped_because,
        counts=tally.counts(),
        stage_seconds=tally.seconds(),
    )
    log.info("dispatch finished", extra={"report": report.model_dump()})
    log.remove_keys(["claim_token"])
    return report


# How long an idle dispatcher sleeps at most before asking again: short enough to notice new
# work and a lock another claim released, long enough not to hammer Postgres.
IDLE_POLL_SECONDS = 1.0
# A claim that found every due sender locked by another claim tries again this soon.
LOCKED_RETRY_SECONDS = 0.05


def _wait_for_claimable(deps: DispatchDeps, remaining: RemainingTime, tally: Tally) -> bool:
    """An empty claim ends the invocation only when nothing due can be claimed before it
    would have to stop anyway. A paced sender whose next slot comes within the invocation's
    time is waited for, so one invocation keeps a sender at its rate instead of exiting."""
    with tally.timed(Stage.POSTGRES):
        at = deps.queue.next_claim_at()
    if at is None:
        return False
    wait = max(LOCKED_RETRY_SECONDS, (at - deps.queue.pacing.clock()).total_seconds())
    budget_ms = remaining.get_remaining_time_in_millis() - deps.settings.stop_claiming_margin_ms
    if wait * 1000 >= budget_ms:
        return False
    deps.sleep(min(wait, IDLE_POLL_SECONDS))
    return True


def _claim_retry_after(deps: DispatchDeps, tally: Tally) -> float:
    """Seconds until a claim may find something, after an empty one while sends are in flight
    (a paced sender's next slot, or another claim's lock); at most the idle poll."""
    with tally.timed(Stage.POSTGRES):
        at = deps.queue.next_claim_at()
    if at is None:
        return IDLE_POLL_SECONDS
    wait_s = (at - deps.queue.pacing.clock()).total_seconds()
    return min(IDLE_POLL_SECONDS, max(LOCKED_RETRY_SECONDS, wait_s))


def _deliver_safely(
    deps: DispatchDeps,
    gate: CallGate,
    message: ClaimedMessage,
    remaining: RemainingTime,
    tally: Tally,
    paused: _PausedSenders,
) -> object:
    try:
        return _deliver(deps, gate, message, remaining, tally, paused)
    except _StoreUnavailable as exc:
        return exc
    except Exception:
        # Postgres down, a provider id already in the ledger, a corrupt idempotency record:
        # the row keeps its state and the sweeper settles it from its lease and record. One
        # bad row never takes the rest of the batch down with it.
        tally.add(Metric.SETTLE_ERRORS)
        logger.exception("delivery not settled; left to the sweeper", extra=_keys(message))
        return None


def _deliver(
    deps: DispatchDeps,
    gate: CallGate,
    message: ClaimedMessage,
    remaining: RemainingTime,
    tally: Tally,
    paused: _PausedSenders,
) -> object:
    settings = deps.settings
    queue = deps.queue
    now = datetime.now(UTC)
    paused_until = paused.until(message.sender_account_id, now)
    if paused_until is not None:
        delay = (paused_until - now).total_seconds()
        _release_unsent(queue, message, tally, delay, "sender paused earlier in this invocation")
        return None
    if remaining.get_remaining_time_in_millis() < settings.stop_claiming_margin_ms:
        _release_unsent(queue, message, tally, 0.0, "invocation out of time")
        return None
    resolver = deps.resolvers.get(message.channel)
    if resolver is not None:
        try:
            message = resolver.resolve(message)
        except OSError as exc:
            # A lookup is a read: nothing was sent, and the row is tried again later.
            _release_unsent(queue, message, tally, settings.retry_base_seconds, f"recipient lookup: {exc}")
            return None
    held = (
        channel_spec(message.channel).hold_reason(message, datetime.now(UTC))
        if settings.channel_windows
        else None
    )
    if held is not None:
        # Checked again before every send, not only at enqueue: the window may have closed
        # while the row waited. No provider call, no attempt spent; it waits for a reply.
        with tally.timed(Stage.POSTGRES):
            queue.settle_pending(
                message,
                delay_seconds=settings.window_recheck_seconds,
                outcome=None,
                expected=QueueStatus.CLAIMED,
                refund_attempt=True,
                last_error=held,
            )
        tally.add(Metric.RELEASED_UNSENT)
        logger.info("not sent: held", extra={**_keys(message), "reason": held})
        return None

    with tally.timed(Stage.POSTGRES):
        verdict = queue.mark_sending(message)
    if verdict is SendingVerdict.CANCELLED:
        # Its campaign ended or its contact's sequence stopped (a reply) since the claim.
        tally.add(Metric.CANCELLED)
        logger.info("not sent: cancelled since it was claimed", extra=_keys(message))
        return None
    if verdict is SendingVerdict.HEARD:
        # Requeued (evidence of absence, or an operator) before the earlier attempt's webhook
        # arrived. The reconciler settles it `sent` from that webhook on its next pass.
        tally.add(Metric.HEARD_BEFORE_RESEND)
        logger.warning(
            "not sent again: the provider reported an earlier attempt after the requeue", extra=_keys(message)
        )
        return None
    if verdict is SendingVerdict.RETURNED:
        tally.add(Metric.RELEASED_UNSENT)
        logger.info("not sent: its campaign was paused since it was claimed", extra=_keys(message))
        return None
    if verdict is SendingVerdict.LOST:
        tally.add(Metric.LEASE_LOST_BEFORE_SEND)
        logger.warning("lease lost before send; row left to its new owner", extra=_keys(message))
        return None

    adapter = deps.adapters[message.channel]

    provider_seconds: float | None = None
    gate_seconds = 0.0
    declined: CallSlot | None = None

    def take_call_slot() -> SendOutcome | None:
        nonlocal gate_seconds, declined
        gate_started = time.perf_counter()
        slot = _take_call_slot(gate, message, settings, remaining)
        gate_seconds = time.perf_counter() - gate_started
        if slot.granted:
            return None
        declined = slot
        # No call was made: provably not sent, so the guard removes this writer's record.
        return SendOutcome.retry_later(timedelta(seconds=slot.retry_after_seconds), CALL_SLOT_DECLINED)

    def call_provider() -> SendOutcome:
        nonlocal provider_seconds
        started = time.perf_counter()
        try:
            return adapter.send(message, before_call=take_call_slot)
        finally:
            if declined is None:
                provider_seconds = time.perf_counter() - started - gate_seconds

    def proves_unsent(writer: str) -> bool:
        spare = remaining.get_remaining_time_in_millis() - settings.stop_claiming_margin_ms
        if spare < settings.stale_release_budget_ms:
            return False  # no time for the detour: the sweeper releases it instead
        return queue.writer_proved_unsent(message.queue_id, writer)

    gate_started = time.perf_counter()
    result = deps.guard.deliver_once(message.idempotency_key, call_provider, proves_unsent)
    # The guard wraps the call slot and the provider call; split its wall time between stages.
    called_for = provider_seconds or 0.0
    tally.add_seconds(Stage.PROVIDER, called_for)
    tally.add_seconds(Stage.CALL_SLOT, gate_seconds)
    tally.add_seconds(Stage.DYNAMODB, time.perf_counter() - gate_started - called_for - gate_seconds)
    if provider_seconds is not None:
        tally.add_provider_latency(message.channel.value, provider_seconds)

    if declined is not None:
        _release_unsent(
            queue,
            message,
            tally,
            declined.retry_after_seconds,
            "no call slot for its sender within the wait limit",
            writer=result.writer,
        )
        tally.add(Metric.CALL_SLOT_DECLINED)
        logger.info(
            "not sent: no call slot within the wait limit",
            extra={**_keys(message), "retry_after_seconds": round(declined.retry_after_seconds, 3)},
        )
        return None

    if result.verdict is GuardVerdict.STORE_UNAVAILABLE:
        tally.add(Metric.IDEMPOTENCY_STORE_UNAVAILABLE)
        logger.error(
            "idempotency store unavailable: not sending",
            extra={
                **_keys(message),
                "error": result.error,
                "own_record_released": result.own_record_released,
            },
        )
        with tally.timed(Stage.POSTGRES):
            # Recorded as not called under this writer: if the failed write left a record
            # behind, the next attempt's put finds this proof and releases it.
            queue.settle_pending(
                message,
                delay_seconds=0,
                outcome=None,
                refund_attempt=True,
                last_error="idempotency store unavailable; provider not called",
                writer=result.writer,
            )
        raise _StoreUnavailable(result.error)

    if result.verdict is GuardVerdict.IN_PROGRESS:
        tally.add(Metric.DUPLICATE_PREVENTED)
        logger.warning(
            "another send holds the idempotency record; left for the sweeper",
            extra={**_keys(message), "holder": result.holder},
        )
        return None

    if result.released_writer is not None:
        tally.add(Metric.STALE_RECORD_RELEASED)
        logger.info(
            "released a record whose writer provably delivered nothing",
            extra={**_keys(message), "released_writer": result.released_writer},
        )

    if result.record_unsettled:
        tally.add(Metric.IDEMPOTENCY_RECORD_UNSETTLED)
        logger.error(
            "idempotency record not completed after the call", extra={**_keys(message), "error": result.error}
        )

    assert result.outcome is not None
    if result.verdict is GuardVerdict.REPLAYED:
        tally.add(Metric.DUPLICATE_PREVENTED)
        logger.warning("completed idempotency record found: provider not called again", extra=_keys(message))
    with tally.timed(Stage.POSTGRES):
        held_until = _settle(deps, message, result, tally)
    if held_until is not None:
        paused.pause(message.sender_account_id, held_until)
    return None


# The reason a send the call-slot gate turned away is recorded under (never a provider's code).
CALL_SLOT_DECLINED = "sendonce:no_call_slot"


def _take_call_slot(
    gate: CallGate, message: ClaimedMessage, settings: Settings, remaining: RemainingTime
) -> CallSlot:
    """The sender's call slot, waited for within the invocation's time beyond the stop-claiming
    margin (which covers the call and the settle that follow), and at most the configured wait.
    Runs inside the idempotency guard, which reads any exception as an ambiguous call: a
    database error here is turned into a refusal, which is what it is (no call was made)."""
    spare_s = (remaining.get_remaining_time_in_millis() - settings.stop_claiming_margin_ms) / 1000
    limit = min(settings.send_gate_max_wait_seconds, max(0.0, spare_s))
    try:
        return gate.wait_for_slot(message, limit)
    except Exception:
        logger.exception("call slot not taken; the row goes back unsent", extra=_keys(message))
        return CallSlot(granted=False, retry_after_seconds=settings.retry_base_seconds)


def _release_unsent(
    queue: QueueRepository,
    message: ClaimedMessage,
    tally: Tally,
    delay: float,
    why: str,
    *,
    writer: str | None = None,
) -> None:
    """A row this invocation will not offer to a provider goes straight back: a claimed one,
    or, with the ``writer`` whose record the guard removed, one in ``sending`` (recorded as not
    called under that writer, so a record the removal left behind is released on its proof)."""
    with tally.timed(Stage.POSTGRES):
        queue.settle_pending(
            message,
            delay_seconds=delay,
            outcome=None,
            expected=QueueStatus.CLAIMED if writer is None else QueueStatus.SENDING,
            refund_attempt=True,
            last_error=f"released unsent: {why}",
            writer=writer,
        )
    tally.add(Metric.RELEASED_UNSENT)


def _settle(
    deps: DispatchDeps, message: ClaimedMessage, result: GuardResult, tally: Tally
) -> datetime | None:
    """Settle the row from its outcome; returns when its sender may send again if the provider
    refused or throttled the sender itself (the invocation's other rows of it then wait too)."""
    outcome = result.outcome
    assert outcome is not None
    queue = deps.queue
    keys = {**_keys(message), "outcome": outcome.kind.value, "reason": outcome.reason}
    replayed = result.verdict is GuardVerdict.REPLAYED
    # The attempt names the writer whose call it was; a replay made no call of its own.
    writer = None if replayed else result.writer

    if outcome.kind is OutcomeKind.SENT:
        settled = queue.settle_sent(
            message,
            outcome,
            recovered_from="idempotency_record" if replayed else "dispatch",
            record_attempt=not replayed,
            writer=writer,
        )
        if settled:
            tally.add(Metric.RECOVERED_SENT if replayed else Metric.SENT, channel=message.channel.value)
            logger.info("sent", extra={**keys, "provider_message_id": outcome.provider_message_id})
        else:
            tally.add(Metric.LEASE_LOST_AFTER_SEND)
            logger.error(
                "lease lost after the provider accepted; not resending, the sweeper settles it from "
                "the idempotency record",
                extra={**keys, "provider_message_id": outcome.provider_message_id},
            )
        return None

    if outcome.kind is OutcomeKind.AMBIGUOUS:
        tally.add(Metric.AMBIGUOUS, channel=message.channel.value)
        queue.settle_terminal(
            message,
            QueueStatus.UNKNOWN,
            outcome=None if replayed else outcome,
            failure_reason=outcome.reason,
            writer=writer,
        )
        logger.warning("ambiguous outcome: row is unknown, never resent blindly", extra=keys)
        return None

    if outcome.kind is OutcomeKind.PERMANENT:
        tally.add(Metric.FAILED, channel=message.channel.value)
        queue.settle_terminal(
            message, QueueStatus.FAILED, outcome=outcome, failure_reason=outcome.reason, writer=writer
        )
        logger.warning("permanent failure", extra=keys)
        return None

    if outcome.kind is OutcomeKind.SENDER_BLOCKED:
        until = _pause_end(outcome)
        queue.pause_sender(message.sender_account_id, until, outcome.reason)
        tally.add(Metric.SENDER_PAUSED)
        delay = max(0.0, (until - datetime.now(UTC)).total_seconds())
        # The sender, not the message, was refused: the attempt is not held against the row.
        queue.settle_pending(
            message, delay_seconds=delay, outcome=outcome, refund_attempt=True, writer=writer
        )
        logger.warning("sender paused", extra={**keys, "paused_until": until.isoformat()})
        return until

    if outcome.throttle is not None:
        return _throttled(deps, message, outcome, writer, tally)

    # RETRY_LATER: provably not sent.
    if message.attempts >= message.max_attempts:
        tally.add(Metric.FAILED, channel=message.channel.value)
        queue.settle_terminal(
            message,
            QueueStatus.FAILED,
            outcome=outcome,
            failure_reason=f"max attempts ({message.max_attempts}) reached; last: {outcome.reason}",
            writer=writer,
        )
        logger.warning("attempts exhausted", extra=keys)
        return None
    policy = RetryPolicy(deps.settings.retry_base_seconds, deps.settings.retry_cap_seconds)
    delay = policy.delay_seconds(message.attempts, outcome.retry_after_seconds, deps.rng)
    tally.add(Metric.RETRIED)
    queue.settle_pending(message, delay_seconds=delay, outcome=outcome, writer=writer)
    logger.info("retry later", extra={**keys, "delay_seconds": round(delay, 1)})
    return None


# A throttle without a Retry-After hint: how long the sender (or the recipient) is held. Short:
# the halved rate and the emptied bucket already slow a paced sender down.
DEFAULT_THROTTLE_HOLD = timedelta(seconds=1)


def _throttled(
    deps: DispatchDeps, message: ClaimedMessage, outcome: SendOutcome, writer: str | None, tally: Tally
) -> datetime | None:
    """Rate limiting is the sender's (or the pair's) problem, not the message's: the attempt is
    refunded, so a throttle can never exhaust a message's attempts and end it ``failed``. A
    sender-wide throttle halves the sender's rate and holds it until the Retry-After; only
    that sender's rows wait (its other rows claimed by this invocation are released)."""
    tally.add(Metric.THROTTLED)
    hint = timedelta(seconds=outcome.retry_after_seconds) if outcome.retry_after_seconds is not None else None
    hold = hint or DEFAULT_THROTTLE_HOLD
    held_until: datetime | None = None
    if outcome.throttle == "sender":
        held_until = deps.queue.throttle_sender(message.sender_account_id, hold)
    now = deps.queue.pacing.clock()
    delay = max(hold.total_seconds(), (held_until - now).total_seconds() if held_until else 0.0)
    deps.queue.settle_pending(
        message, delay_seconds=delay, outcome=outcome, refund_attempt=True, writer=writer
    )
    logger.info(
        "throttled; attempt not counted",
        extra={**_keys(message), "reason": outcome.reason, "scope": outcome.throttle, "delay_seconds": delay},
    )
    return held_until


def _pause_end(outcome: SendOutcome) -> datetime:
    return outcome.blocked_until or datetime.now(UTC) + timedelta(hours=1)


def _keys(message: ClaimedMessage) -> dict[str, object]:
    return {
        "queue_id": message.queue_id,
        "idempotency_key": message.idempotency_key,
        "channel": message.channel.value,
        "attempt": message.attempts,
    }
