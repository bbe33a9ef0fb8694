"""The fairness scenario: a 20,000-row campaign on one sender and a 10-row campaign on another,
both due at once, drained by overlapping dispatcher processes. Reported: when the small
campaign's last message went out, relative to the start, and how many of the big campaign's
had gone out by then. The claim shares each batch between senders, so the small campaign
should finish within one claim round, not behind the big one."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import datetime

from devstack.bench.common import DISPATCH_EVENT, console, summary, write_results
from devstack.stack import LocalStack
from devstack.testing import enqueue_contacts


@dataclass
class FairnessResult:
    big_rows: int
    small_rows: int
    dispatchers: int
    small_done_after_seconds: float
    big_sent_by_then: int
    big_done_after_seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--big", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--fairness-dispatchers", type=int, default=4)


def run(args: argparse.Namespace) -> int:
    with LocalStack(settings_overrides={"send_concurrency": 8}) as stack:
        with console.status(f"fairness: enqueueing {args.big} + {args.small} rows"):
            enqueue_contacts(stack.db, "whatsapp", [f"1555{i:07d}" for i in range(args.big)], sender="big")
            enqueue_contacts(stack.db, "messenger", [f"psid-{i}" for i in range(args.small)], sender="small")
        started = datetime.now().astimezone()
        clock = time.perf_counter()
        with console.status(f"fairness: {args.fairness_dispatchers} dispatchers draining"):
            invocations = [
                stack.spawn("dispatcher", DISPATCH_EVENT, timeout_seconds=900, log_name="fair")
                for _ in range(args.fairness_dispatchers)
            ]
            for invocation in invocations:
                invocation.finish(timeout=3600)
        wall = time.perf_counter() - clock
        ledger = stack.provider.ledger()
    small = sorted(datetime.fromisoformat(m["timestamp"]) for m in ledger if m["channel"] == "messenger")
    big = sorted(datetime.fromisoformat(m["timestamp"]) for m in ledger if m["channel"] == "whatsapp")
    small_done = small[-1]
    result = FairnessResult(
        big_rows=args.big,
        small_rows=args.small,
        dispatchers=args.fairness_dispatchers,
        small_done_after_seconds=round((small_done - started).total_seconds(), 2),
        big_sent_by_then=sum(1 for at in big if at <= small_done),
        big_done_after_seconds=round(wall, 1),
    )
    write_results("fairness", [result])
    ok = len(small) == args.small and len(big) == args.big
    summary(
        "fairness",
        f"the {args.small}-row campaign finished {result.small_done_after_seconds:g} s after the start, "
        f"when {result.big_sent_by_then} of the {args.big}-row campaign had gone out (it finished after "
        f"{result.big_done_after_seconds:g} s)",
    )
    return 0 if ok else 1
