"""Powertools Logger, Metrics and Tracer, plus a thread-safe tally that becomes metrics.

Dispatch threads count into a ``Tally``; the handler's thread turns it into EMF metrics once
per invocation, so metric emission never races and every figure is also in the return value.

Contact data stays out of logs. Nothing here logs an address or a message body on purpose,
and every log line also passes through ``PiiScrubbingFormatter``: the last defence against an
address that reaches a log by way of an error message (a database constraint's DETAIL, a
provider's error text). It masks the recipient forms sendonce stores: phone numbers as digit
runs, Messenger PSIDs and LinkedIn (Unipile) member ids.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.logging.types import LogRecord
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

# A standalone run of 8-20 digits (phone numbers in E.164 digits, Messenger PSIDs), not part
# of a longer token (a hex idempotency key, a timestamp, a decimal, a UUID).
_DIGIT_RUN = re.compile(r"(?<![\w.:/-])\+?(\d{3})\d{3,15}(\d{2})(?![\w.:/-])")
# LinkedIn member ids as Unipile returns them (``ACoAAA...``, ``ACwAAA...``).
_LINKEDIN_ID = re.compile(r"\bAC[a-z]A[A-Za-z0-9_-]{6,}")


def scrub(text: str) -> str:
    """``text`` with recipient identifiers masked: first 3 and last 2 digits of a number kept."""
    text = _DIGIT_RUN.sub(lambda m: f"{m.group(1)}***{m.group(2)}", text)
    return _LINKEDIN_ID.sub(lambda m: f"{m.group(0)[:5]}***", text)


class PiiScrubbingFormatter(LambdaPowertoolsFormatter):
    def serialize(self, log: LogRecord) -> str:
        return scrub(super().serialize(log))


logger = Logger(logger_formatter=PiiScrubbingFormatter())
metrics = Metrics(namespace="sendonce")
tracer = Tracer()


class Metric(StrEnum):
    CLAIMED = "Claimed"
    SENT = "Sent"
    RETRIED = "Retried"
    THROTTLED = "Throttled"
    FAILED = "Failed"
    AMBIGUOUS = "Ambiguous"
    DUPLICATE_PREVENTED = "DuplicatePrevented"
    RECOVERED_SENT = "RecoveredSent"
    LEASE_LOST_BEFORE_SEND = "LeaseLostBeforeSend"
    LEASE_LOST_AFTER_SEND = "LeaseLostAfterSend"
    RELEASED_UNSENT = "ReleasedUnsent"
    SENDER_PAUSED = "SenderPaused"
    IDEMPOTENCY_STORE_UNAVAILABLE = "IdempotencyStoreUnavailable"
    IDEMPOTENCY_RECORD_UNSETTLED = "IdempotencyRecordUnsettled"
    SETTLE_ERRORS = "SettleErrors"
    STALE_RECORD_RELEASED = "StaleRecordReleased"
    # Claimed, then found cancelled or its contact's sequence stopped before the provider call.
    CANCELLED = "Cancelled"
    # Claimed again after a requeue, then found heard of: a webhook for an earlier attempt
    # arrived meanwhile, so the row went back to `unknown` instead of being sent twice.
    HEARD_BEFORE_RESEND = "HeardBeforeResend"
    # The send-time gate (shared/call_slots.py) found no call slot within its wait limit.
    CALL_SLOT_DECLINED = "CallSlotDeclined"
    # Sweeper. The *Rows metrics are gauges: emitted every run, zero included, so alarms on
    # them clear by themselves once the level drops.
    UNKNOWN_ROWS = "UnknownRows"
    STALE_OWNED_ROWS = "StaleOwnedRows"
    RELEASED_CLAIMS = "ReleasedClaims"
    SWEPT_TO_PENDING = "SweptToPending"
    SWEPT_TO_UNKNOWN = "SweptToUnknown"
    DEAD_LETTERED = "DeadLettered"
    DUPLICATE_SUSPECTED = "DuplicateSuspected"
    # Unknown rows requeued by policy resend_if_silent (shared.absence).
    RESENT_ON_ABSENCE = "ResentOnAbsence"
    CAMPAIGNS_COMPLETED = "CampaignsCompleted"
    # WABAs whose template sync failed this sweep (enqueue then checks against the last good one).
    TEMPLATE_SYNC_ERRORS = "TemplateSyncErrors"
    # Sweeper gauges, per channel (dimension ``channel``) for the dashboard, and across
    # channels (``service`` only) for the alarms.
    DUE_PENDING_ROWS = "DuePendingRows"
    OLDEST_DUE_PENDING_AGE = "OldestDuePendingAgeSeconds"
    PAUSED_SENDERS = "PausedSenders"
    PROVIDER_PAUSED_SENDERS = "ProviderPausedSenders"
    # Dispatcher, per channel only: milliseconds of each provider call.
    PROVIDER_LATENCY = "ProviderLatency"


# The outcomes the dashboard plots per channel, next to their across-channel totals.
CHANNEL_COUNTS = (Metric.SENT, Metric.FAILED, Metric.AMBIGUOUS)


class Stage(StrEnum):
    POSTGRES = "postgres"
    DYNAMODB = "dynamodb"
    PROVIDER = "provider"
    # Time sends waited for their sender's call slot (shared/call_slots.py).
    CALL_SLOT = "call_slot"


class Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._seconds: dict[str, float] = {}
        self._channel_counts: Counter[tuple[str, str]] = Counter()
        self._latencies_ms: dict[str, list[float]] = {}

    def add(self, metric: Metric, value: int = 1, *, channel: str | None = None) -> None:
        with self._lock:
            self._counts[metric.value] += value
            if channel is not None and metric in CHANNEL_COUNTS:
                self._channel_counts[(channel, metric.value)] += value

    def add_provider_latency(self, channel: str, seconds: float) -> None:
        with self._lock:
            self._latencies_ms.setdefault(channel, []).append(round(seconds * 1000, 1))

    def add_seconds(self, stage: Stage, seconds: float) -> None:
        with self._lock:
            self._seconds[stage.value] = self._seconds.get(stage.value, 0.0) + seconds

    @contextmanager
    def timed(self, stage: Stage) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add_seconds(stage, time.perf_counter() - started)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {metric.value: self._counts.get(metric.value, 0) for metric in Metric}

    def seconds(self) -> dict[str, float]:
        with self._lock:
            return {stage.value: round(self._seconds.get(stage.value, 0.0), 6) for stage in Stage}

    def channel_counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            counts: dict[str, dict[str, int]] = {}
            for (channel, name), value in self._channel_counts.items():
                counts.setdefault(channel, {})[name] = value
            return counts

    def emit(self, sink: Metrics = metrics) -> None:
        for name, value in self.counts().items():
            if value:
                sink.add_metric(name=name, unit=MetricUnit.Count, value=value)
        counts = self.channel_counts()
        with self._lock:
            latencies = {channel: list(values) for channel, values in self._latencies_ms.items()}
        for channel in sorted(set(counts) | set(latencies)):
            per_channel = channel_sink(channel)
            for name, count in counts.get(channel, {}).items():
                per_channel.add_metric(name=name, unit=MetricUnit.Count, value=count)
            # Powertools publishes a document at 100 values (EMF's limit) and starts another,
            # keeping the default dimensions; CloudWatch computes the percentiles.
            for milliseconds in latencies.get(channel, []):
                per_channel.add_metric(
                    name=Metric.PROVIDER_LATENCY.value, unit=MetricUnit.Milliseconds, value=milliseconds
                )
            if per_channel.metric_set:
                per_channel.flush_metrics()


def channel_sink(channel: str) -> EphemeralMetrics:
    """An EMF document of its own with the ``channel`` dimension next to ``service``: one
    Metrics instance has one dimension set, and the handler's carries ``service`` only."""
    sink = EphemeralMetrics(namespace="sendonce")
    sink.set_default_dimensions(channel=channel)
    return sink


def emit_values(values: dict[Metric, int], sink: Metrics = metrics) -> None:
    for metric, value in values.items():
        sink.add_metric(name=metric.value, unit=MetricUnit.Count, value=value)


def emit_channel_gauges(channel: str, values: dict[Metric, float]) -> None:
    sink = channel_sink(channel)
    for metric, value in values.items():
        unit = MetricUnit.Seconds if metric is Metric.OLDEST_DUE_PENDING_AGE else MetricUnit.Count
        sink.add_metric(name=metric.value, unit=unit, value=value)
    sink.flush_metrics()
