"""The throughput scenario: messages through overlapping dispatcher processes against the fake
provider.

For each (dispatchers, provider latency) configuration it enqueues N messages into a fresh
database on an embedded Postgres (fsync on), starts the dispatchers as separate OS processes
running the real handler, and reports:

* messages per second (wall clock from first start to last finish);
* per-message time spent in Postgres, DynamoDB (moto server) and the provider, from the
  dispatchers' own stage timers;
* duplicates (messages the provider accepted more than once: must be 0);
* peak RSS of a dispatcher process;
* ratios between configurations (scaling with processes, cost of latency).

``python -m devstack.bench throughput --messages 5000 --dispatchers 1 4 8 --latency-ms 0 50``
Results are also written as JSON to bench-results/.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections import Counter
from dataclasses import dataclass

from rich.table import Table

from devstack.bench.common import DISPATCH_EVENT, console, summary, write_results
from devstack.stack import LocalStack
from devstack.testing import enqueue_contacts
from shared.queue import QueueRepository


@dataclass
class BenchResult:
    messages: int
    dispatchers: int
    latency_ms: int
    concurrency: int
    wall_seconds: float
    messages_per_second: float
    postgres_ms_per_message: float
    dynamodb_ms_per_message: float
    provider_ms_per_message: float
    duplicates: int
    sent: int
    peak_rss_mb: float


def run_one(messages: int, dispatchers: int, latency_ms: int, concurrency: int) -> BenchResult:
    overrides = {"send_concurrency": concurrency, "batch_size": max(25, concurrency * 2)}
    with LocalStack(durable_postgres=True, settings_overrides=overrides) as stack:
        addresses = [f"1555{i:07d}" for i in range(messages)]
        enqueue_contacts(stack.db, "whatsapp", addresses, sender="bench-sender", body="benchmark message")
        stack.provider.set_faults({"latency_ms": latency_ms})
        started = time.perf_counter()
        invocations = [
            stack.spawn("dispatcher", DISPATCH_EVENT, log_name=f"bench-{n}") for n in range(dispatchers)
        ]
        reports = [inv.finish(timeout=1800) for inv in invocations]
        wall = time.perf_counter() - started

        stage = Counter[str]()
        sent = 0
        for report in reports:
            stage.update(report["stage_seconds"])
            sent += report["counts"]["Sent"]
        per_message = Counter((m["recipient"], m["text"]) for m in stack.provider.ledger())
        duplicates = sum(v - 1 for v in per_message.values() if v > 1)
        remaining = QueueRepository(stack.db).status_counts()
        if remaining != {"sent": messages}:
            console.print(f"[red]queue not fully sent: {remaining}[/]")
    # ru_maxrss of children is in KiB on Linux: the largest dispatcher process so far.
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return BenchResult(
        messages=messages,
        dispatchers=dispatchers,
        latency_ms=latency_ms,
        concurrency=concurrency,
        wall_seconds=round(wall, 2),
        messages_per_second=round(messages / wall, 1),
        postgres_ms_per_message=round(stage["postgres"] * 1000 / messages, 2),
        dynamodb_ms_per_message=round(stage["dynamodb"] * 1000 / messages, 2),
        provider_ms_per_message=round(stage["provider"] * 1000 / messages, 2),
        duplicates=duplicates,
        sent=sent,
        peak_rss_mb=round(peak_rss_mb, 1),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--dispatchers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--latency-ms", type=int, nargs="+", default=[0, 50])
    parser.add_argument("--concurrency", type=int, default=8, help="sends in flight per dispatcher")


def run(args: argparse.Namespace) -> int:
    results: list[BenchResult] = []
    for latency in args.latency_ms:
        for dispatchers in args.dispatchers:
            with console.status(f"{args.messages} messages, {dispatchers} dispatchers, {latency} ms latency"):
                result = run_one(args.messages, dispatchers, latency, args.concurrency)
            results.append(result)
            console.print(
                f"dispatchers={dispatchers} latency={latency}ms: {result.messages_per_second} msg/s, "
                f"duplicates={result.duplicates}"
            )

    table = Table(title=f"sendonce dispatch benchmark ({args.messages} messages per run)")
    headers = [
        "dispatchers",
        "latency ms",
        "msg/s",
        "wall s",
        "pg ms/msg",
        "ddb ms/msg",
        "provider ms/msg",
        "duplicates",
        "peak RSS MB",
    ]
    for header in headers:
        table.add_column(header, justify="right")
    for r in results:
        table.add_row(
            str(r.dispatchers),
            str(r.latency_ms),
            f"{r.messages_per_second:.1f}",
            f"{r.wall_seconds:.1f}",
            f"{r.postgres_ms_per_message:.2f}",
            f"{r.dynamodb_ms_per_message:.2f}",
            f"{r.provider_ms_per_message:.2f}",
            str(r.duplicates),
            f"{r.peak_rss_mb:.0f}",
        )
    console.print(table)
    for line in ratios(results):
        console.print(line)
    write_results("throughput", results)
    best = max(results, key=lambda r: r.messages_per_second)
    summary(
        "throughput",
        f"best {best.messages_per_second:.1f} msg/s ({best.dispatchers} dispatchers, {best.latency_ms} ms), "
        f"duplicates {sum(r.duplicates for r in results)}",
    )
    return 0 if all(r.duplicates == 0 and r.sent == r.messages for r in results) else 1


def ratios(results: list[BenchResult]) -> list[str]:
    lines: list[str] = []
    by_key = {(r.dispatchers, r.latency_ms): r for r in results}
    dispatchers = sorted({r.dispatchers for r in results})
    latencies = sorted({r.latency_ms for r in results})
    for latency in latencies:
        base = by_key.get((dispatchers[0], latency))
        for count in dispatchers[1:]:
            other = by_key.get((count, latency))
            if base and other:
                lines.append(
                    f"scaling at {latency} ms: {count} vs {dispatchers[0]} dispatchers = "
                    f"{other.messages_per_second / base.messages_per_second:.2f}x throughput"
                )
    for count in dispatchers:
        fast, slow = by_key.get((count, latencies[0])), by_key.get((count, latencies[-1]))
        if fast and slow and fast is not slow:
            lines.append(
                f"latency cost with {count} dispatchers: {latencies[-1]} ms vs {latencies[0]} ms = "
                f"{slow.messages_per_second / fast.messages_per_second:.2f}x throughput"
            )
    return lines
