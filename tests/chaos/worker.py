"""A dispatcher process with a fault point, for chaos tests.

Configured from the environment exactly like the Lambda handler, it builds the real
dependencies and wraps one of them so the process stops itself at a chosen step:

* ``kill-after-send``: SIGKILL after the provider accepted and DynamoDB completed the record,
  before Postgres records ``sent``.
* ``pause-before-sending``: SIGSTOP right after claiming, before ``claimed -> sending``.
* ``pause-before-gate``: SIGSTOP after ``sending`` is committed, before the DynamoDB record.

The test resumes (SIGCONT) or kills the process. Usage:
``python tests/chaos/worker.py MODE``
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import boto3

from devstack.aws_calls import attributed_to
from devstack.lambda_context import LocalLambdaContext
from shared.dispatch import dispatch
from shared.events import DispatchRequest
from shared.idempotency import GuardResult, ProvesUnsent, SendGuard
from shared.providers.outcome import SendOutcome
from shared.queue import ClaimedMessage, QueueRepository, SendingVerdict
from shared.runtime import build_dispatch_deps, dispatch_database, settings


def _stop_self(sig: signal.Signals) -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), sig)
    # A signal sent to one's own process takes effect asynchronously: park here so the stop
    # lands now, not in the middle of the next step (where a deadline would run out while
    # stopped).
    time.sleep(0.5)


class KillAfterSend(QueueRepository):
    def settle_sent(self, message: ClaimedMessage, outcome: SendOutcome, **kwargs: Any) -> bool:
        _stop_self(signal.SIGKILL)
        raise AssertionError("unreachable")


class PauseBeforeSending(QueueRepository):
    def mark_sending(self, message: ClaimedMessage) -> SendingVerdict:
        _stop_self(signal.SIGSTOP)
        return super().mark_sending(message)


class PauseBeforeGate(SendGuard):
    def deliver_once(
        self, idempotency_key: str, send: Callable[[], SendOutcome], proves_unsent: ProvesUnsent | None = None
    ) -> GuardResult:
        _stop_self(signal.SIGSTOP)
        return super().deliver_once(idempotency_key, send, proves_unsent)


def main(mode: str) -> int:
    config = settings()
    deps = build_dispatch_deps(config, dispatch_database())
    if mode == "kill-after-send":
        deps.queue = KillAfterSend(deps.queue.db)
    elif mode == "pause-before-sending":
        deps.queue = PauseBeforeSending(deps.queue.db)
    elif mode == "pause-before-gate":
        deps.guard = PauseBeforeGate.for_table(
            config.idempotency_table, config.dedupe_window_seconds, boto3_client=boto3.client("dynamodb")
        )
    else:
        raise SystemExit(f"unknown mode {mode}")
    report = dispatch(deps, DispatchRequest(source="sendonce.manual", max_batches=1), LocalLambdaContext())
    print(json.dumps(report.model_dump()))
    return 0


if __name__ == "__main__":
    # The dispatcher's own dependency builder and code: its AWS calls are the dispatcher's.
    with attributed_to("dispatcher"):
        raise SystemExit(main(sys.argv[1]))
