"""Powertools Logger, Metrics and Tracer, plus a thread-safe tally that becomes metrics.

Dispatch threads count into a ``Tally``; the handler's thread turns it into EMF metrics once
per invocation, so metric emission never races and every figure is also in the return value.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
metrics = Metrics(namespace="sendonce")
tracer = Tracer()


class Metric(StrEnum):
    CLAIMED = "Claimed"
    SENT = "Sent"
    RETRIED = "Retried"
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
    # Sweeper. The *Rows metrics are gauges: emitted every run, zero included, so alarms on
    # them clear by themselves once the level drops.
    UNKNOWN_ROWS = "UnknownRows"
    STALE_OWNED_ROWS = "StaleOwnedRows"
    RELEASED_CLAIMS = "ReleasedClaims"
    SWEPT_TO_PENDING = "SweptToPending"
    SWEPT_TO_UNKNOWN = "SweptToUnknown"
    DEAD_LETTERED = "DeadLettered"
    DUPLICATE_SUSPECTED = "DuplicateSuspected"
    CAMPAIGNS_COMPLETED = "CampaignsCompleted"


class Stage(StrEnum):
    POSTGRES = "postgres"
    DYNAMODB = "dynamodb"
    PROVIDER = "provider"


class Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._seconds: dict[str, float] = {}

    def add(self, metric: Metric, value: int = 1) -> None:
        with self._lock:
            self._counts[metric.value] += value

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

    def emit(self, sink: Metrics = metrics) -> None:
        for name, value in self.counts().items():
            if value:
                sink.add_metric(name=name, unit=MetricUnit.Count, value=value)


def emit_values(values: dict[Metric, int], sink: Metrics = metrics) -> None:
    for metric, value in values.items():
        sink.add_metric(name=metric.value, unit=MetricUnit.Count, value=value)
