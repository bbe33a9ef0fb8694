"""The throughput scenario: the dispatcher side by side with a naive sender, in one run.

For each provider latency (0 ms, and a realistic one: see ``REALISTIC_LATENCY_MS``) it
enqueues N WhatsApp messages into a fresh database on an embedded Postgres (fsync on) and
sends them three ways, each in separate OS processes against the same fake provider:

* the naive sender (``devstack/bench/naive.py``: ``SELECT ... FOR UPDATE SKIP LOCKED``, call,
  ``UPDATE``; no DynamoDB) with as many threads as a dispatcher has send threads;
* 1 dispatcher, then 4 dispatchers, each the real handler (``python -m devstack.invoke``)
  with the template's default log level.

It prints, per run: messages per second (from the first send to the last: process start-up
is left out), the wall time, duplicates (messages the provider accepted more than
once: must be 0), CPU per message of the senders and of the DynamoDB store (the moto server
process), read from ``/proc/<pid>/stat`` (utime + stime) and net of a process's start-up (an
invocation on an empty queue, measured first), the DynamoDB requests counted in the
dispatcher processes, the log bytes they wrote, and the cost per million messages those
counts give at us-east-1 prices (``PRICES``), and how busy the store was (moto CPU seconds per
second of sending). Then 1 and 4 dispatchers again at ``SCALING_LATENCY_MS``, where the store
has headroom, and the dispatcher/naive and 4-vs-1 ratios against the targets.

``python -m devstack.bench throughput [--quick] [--throughput-messages N] [--latency-ms 0 250]``
Results are also written as JSON to bench-results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from devstack.bench.common import DISPATCH_EVENT, console, summary, write_results
from devstack.stack import ROOT, LocalStack
from devstack.testing import enqueue_contacts
from shared.queue import QueueRepository
from shared.storage import sql

# WhatsApp's send answers: Meta publishes no latency figure. A Lambda in us-east-1 reaches
# graph.facebook.com over TLS; third-party measurements put Meta's processing of a send at
# 50-200 ms plus the round trip to its regional endpoint
# (https://wa-guides.com/article/whatsapp-message-template-delivery-latency-global-api-benchmarks).
# 250 ms is the middle of that range with one round trip on a kept-alive connection.
REALISTIC_LATENCY_MS = 250

# us-east-1 list prices (checked 2026-12):
# - DynamoDB on-demand: $0.625 per million write request units, $0.125 per million read
#   request units (https://aws.amazon.com/dynamodb/pricing/on-demand/, after the November
#   2024 on-demand price cut). An item under 1 KB costs 1 WRU per write; a strongly
#   consistent read of an item under 4 KB costs 1 RRU.
# - Lambda x86: $0.0000166667 per GB-second, $0.20 per million requests
#   (https://aws.amazon.com/lambda/pricing/).
# - CloudWatch Logs, standard class: $0.50 per GB ingested
#   (https://aws.amazon.com/cloudwatch/pricing/).
PRICES = {
    "wru": 0.625e-6,
    "rru": 0.125e-6,
    "gb_second": 0.0000166667,
    "lambda_request": 0.20e-6,
    "log_gb": 0.50,
}
WRITE_OPERATIONS = ("PutItem", "UpdateItem", "DeleteItem")
READ_OPERATIONS = ("GetItem",)
# The dispatcher's MemorySize in template.yaml (DispatcherFunction; an infra test keeps them equal).
DISPATCHER_MEMORY_MB = 768
LAMBDA_MEMORY_GB = DISPATCHER_MEMORY_MB / 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TARGET_NAIVE_RATIO = 0.8
TARGET_SCALING = 1.8
# The 4-vs-1 target holds "when the store is not the bottleneck". The local store is one moto
# process that handles one request at a time (devstack/moto_server.py), so it saturates at one
# core; at 250 ms its work for 1 dispatcher and for 4 fills most of a core on this 2-core
# machine. At 1,000 ms of provider latency 4 dispatchers (32 sends in flight) need under half
# a core of it: the scaling is graded there, and each run prints how busy the store was.
SCALING_LATENCY_MS = 1000
# Store busier than this (cores of moto CPU per second of sending) is reported as the limit.
STORE_BOTTLENECK_CORES = 0.6


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc/<pid>/stat, or None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    # Fields 14 and 15 of stat(5); after the ")" of the command name the list starts at field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuSampler:
    """Reads the CPU of the given processes every few ms until they exit; a process's figure
    is its last reading (the last ms before its exit are lost, a few ms per process)."""

    def __init__(self, pids: list[int]) -> None:
        self.last: dict[int, float] = {}
        self._pids = pids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self._pids:
                value = cpu_seconds(pid)
                if value is not None:
                    self.last[pid] = value
            self._stop.wait(0.005)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.last.values())


@dataclass
class BenchResult:
    sender: str  # "naive" or "dispatcher"
    processes: int
    latency_ms: int
    concurrency: int
    messages: int
    wall_seconds: float
    messages_per_second: float
    duplicates: int
    sent: int
    sender_cpu_ms_per_message: float
    store_cpu_ms_per_message: float
    # moto CPU seconds per second from the first send to the last: 1.0 is a saturated store.
    store_busy_cores: float = 0.0
    aws_calls: dict[str, int] = field(default_factory=dict)
    log_bytes: int = 0
    # A send thread's milliseconds per message in each stage, from the dispatchers' own
    # "dispatch finished" log lines (shared.observability.Stage).
    stage_ms_per_message: dict[str, float] = field(default_factory=dict)
    cost_per_million: dict[str, float] = field(default_factory=dict)


def _spawn_naive(stack: LocalStack, threads: int, name: str) -> tuple[subprocess.Popen[str], Path]:
    out = stack.workdir / f"{name}.out"
    with open(out, "w") as stdout, open(stack.workdir / f"{name}.err", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack.bench.naive", "--threads", str(threads)],
            cwd=ROOT,
            env=stack.env(),
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
    return process, out


def _startup_cpu(stack: LocalStack, sender: str, concurrency: int, env: dict[str, str]) -> float:
    """CPU of one process of this kind on an empty queue: imports, clients, a claim."""
    if sender == "naive":
        process, _ = _spawn_naive(stack, concurrency, "naive-empty")
        sampler = CpuSampler([process.pid])
        process.wait(timeout=300)
    else:
        invocation = stack.spawn("dispatcher", DISPATCH_EVENT, env=env, log_name="empty")
        sampler = CpuSampler([invocation.pid])
        invocation.finish(timeout=300)
    return sampler.stop()


def run_one(sender: str, messages: int, processes: int, latency_ms: int, concurrency: int) -> BenchResult:
    overrides = {
        "send_concurrency": concurrency,
        "batch_size": max(25, concurrency * 2),
        # The naive sender paces nothing; the dispatcher's one bench sender gets WhatsApp's
        # highest per-number throughput (1,000 msg/s, reference/providers.md) instead of the
        # default 20/s, so both are limited by the machinery, not by a rate limit. The pacing
        # scenario measures the pacing.
        "pacing_whatsapp": {"rate_per_second": 1000, "burst": 1000},
    }
    with LocalStack(durable_postgres=True, settings_overrides=overrides) as stack:
        assert stack.moto._process is not None
        moto_pid = stack.moto._process.pid
        counts_dir = stack.workdir / "aws-call-counts"
        counts_dir.mkdir()
        # The template's default log level, so log bytes and logging CPU are what AWS would see.
        base_env = {**stack.env(), "POWERTOOLS_LOG_LEVEL": "INFO"}
        startup = _startup_cpu(stack, sender, concurrency, base_env)

        addresses = [f"1555{i:07d}" for i in range(messages)]
        enqueue_contacts(stack.db, "whatsapp", addresses, sender="bench-sender", body="benchmark message")
        stack.provider.set_faults({"latency_ms": latency_ms})
        store_before = cpu_seconds(moto_pid) or 0.0
        started = time.perf_counter()
        log_paths: list[Path] = []
        if sender == "naive":
            runs = [_spawn_naive(stack, concurrency, f"naive-{n}") for n in range(processes)]
            sampler = CpuSampler([p.pid for p, _ in runs])
            for process, _ in runs:
                process.wait(timeout=1800)
        else:
            invocations = [
                stack.spawn(
                    "dispatcher",
                    DISPATCH_EVENT,
                    env={**base_env, "DEVSTACK_AWS_CALL_COUNTS_FILE": str(counts_dir / f"{n}.json")},
                    log_name=f"bench-{n}",
                )
                for n in range(processes)
            ]
            sampler = CpuSampler([inv.pid for inv in invocations])
            for invocation in invocations:
                invocation.finish(timeout=1800)
                log_paths += [invocation.stdout_path, invocation.stderr_path]
        wall = time.perf_counter() - started
        sender_cpu = sampler.stop() - startup * processes
        store_cpu = (cpu_seconds(moto_pid) or 0.0) - store_before

        calls = Counter[str]()
        for path in counts_dir.glob("*.json"):
            calls.update(json.loads(path.read_text()))
        per_message = Counter((m["recipient"], m["text"]) for m in stack.provider.ledger())
        duplicates = sum(v - 1 for v in per_message.values() if v > 1)
        sent = sum(per_message.values()) - duplicates
        remaining = QueueRepository(stack.db).status_counts()
        if remaining != {"sent": messages}:
            console.print(f"[red]{sender}: queue not fully sent: {remaining}[/]")
        log_bytes = sum(p.stat().st_size for p in log_paths)
        stages = stage_seconds(log_paths)
        span = stack.db.fetch_one(sql.BENCH_SENT_SPAN)
        assert span is not None and span["sent"] > 1
        # The rate between the first and the last send: process start-up (imports, clients,
        # on a loaded machine seconds of it) is left out, for the naive sender and the
        # dispatcher alike. Lambda keeps containers warm between scheduled invocations.
        sending_seconds = max(1e-6, (span["last_sent"] - span["first_sent"]).total_seconds())
        steady = (span["sent"] - 1) / sending_seconds
    result = BenchResult(
        sender=sender,
        processes=processes,
        latency_ms=latency_ms,
        concurrency=concurrency,
        messages=messages,
        wall_seconds=round(wall, 2),
        messages_per_second=round(steady, 1),
        duplicates=duplicates,
        sent=sent,
        sender_cpu_ms_per_message=round(max(0.0, sender_cpu) * 1000 / messages, 2),
        store_cpu_ms_per_message=round(store_cpu * 1000 / messages, 2),
        store_busy_cores=round(store_cpu / sending_seconds, 2) if sender == "dispatcher" else 0.0,
        aws_calls=dict(calls),
        log_bytes=log_bytes,
        stage_ms_per_message={stage: round(sec * 1000 / messages, 1) for stage, sec in stages.items()},
    )
    if sender == "dispatcher":
        result.cost_per_million = cost_per_million(result)
    return result


def stage_seconds(log_paths: list[Path]) -> Counter[str]:
    """The stage seconds of every "dispatch finished" line in the dispatchers' logs, summed."""
    totals = Counter[str]()
    for path in log_paths:
        for line in path.read_text(errors="replace").splitlines():
            if '"stage_seconds"' not in line:
                continue
            try:
                report = json.loads(line).get("report", {})
            except json.JSONDecodeError:
                continue
            for stage, seconds in report.get("stage_seconds", {}).items():
                totals[stage] += seconds
    return totals


def cost_per_million(r: BenchResult) -> dict[str, float]:
    """Dollars per million messages from what this run counted. Lambda duration is the wall
    time of each invocation at the template's memory (every process ran the whole run)."""
    scale = 1_000_000 / r.messages
    writes = sum(n for op, n in r.aws_calls.items() if op.split(".")[-1] in WRITE_OPERATIONS)
    reads = sum(n for op, n in r.aws_calls.items() if op.split(".")[-1] in READ_OPERATIONS)
    gb_seconds = r.wall_seconds * r.processes * LAMBDA_MEMORY_GB
    costs = {
        "dynamodb": (writes * PRICES["wru"] + reads * PRICES["rru"]) * scale,
        "lambda": (gb_seconds * PRICES["gb_second"] + r.processes * PRICES["lambda_request"]) * scale,
        "logs": r.log_bytes / 1e9 * PRICES["log_gb"] * scale,
    }
    costs["total"] = sum(costs.values())
    return {k: round(v, 3) for k, v in costs.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--throughput-messages", type=int, default=2000, help="messages per throughput run")
    parser.add_argument("--dispatchers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--latency-ms", type=int, nargs="+", default=[0, REALISTIC_LATENCY_MS])
    parser.add_argument("--concurrency", type=int, default=8, help="sends in flight per dispatcher")
    parser.add_argument(
        "--scaling-latency-ms",
        type=int,
        default=SCALING_LATENCY_MS,
        help="provider latency of the graded N-vs-1-dispatchers runs (0: none)",
    )
    parser.add_argument("--scaling-messages", type=int, default=400, help="messages per scaling run")


def run(args: argparse.Namespace) -> int:
    messages = min(args.throughput_messages, 300) if args.quick else args.throughput_messages
    results: list[BenchResult] = []
    for latency in args.latency_ms:
        plan = [("naive", 1)] + [("dispatcher", n) for n in args.dispatchers]
        for sender, processes in plan:
            with console.status(f"{sender} x{processes}, {messages} messages, {latency} ms latency"):
                result = run_one(sender, messages, processes, latency, args.concurrency)
            results.append(result)
            _report(result)
    scaling = args.scaling_latency_ms
    if scaling and scaling not in args.latency_ms and len(args.dispatchers) > 1:
        scaling_messages = min(args.scaling_messages, 300) if args.quick else args.scaling_messages
        for processes in args.dispatchers:
            label = f"dispatcher x{processes}, {scaling_messages} messages, {scaling} ms latency"
            with console.status(label):
                result = run_one("dispatcher", scaling_messages, processes, scaling, args.concurrency)
            results.append(result)
            _report(result)
    print_table(results)
    for r in results:
        if r.stage_ms_per_message:
            parts = ", ".join(f"{stage} {ms:.1f}" for stage, ms in r.stage_ms_per_message.items())
            console.print(f"dispatcher x{r.processes} at {r.latency_ms} ms, ms per message by stage: {parts}")
    verdicts = ratios(results, scaling)
    for line, _ in verdicts:
        console.print(line)
    load = os.getloadavg()
    console.print(
        f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)"
    )
    write_results("throughput", results)
    best = max((r for r in results if r.sender == "dispatcher"), key=lambda r: r.messages_per_second)
    summary(
        "throughput",
        f"best dispatcher {best.messages_per_second:.1f} msg/s ({best.processes} processes, "
        f"{best.latency_ms} ms), duplicates {sum(r.duplicates for r in results)}, "
        f"targets {'met' if all(ok for _, ok in verdicts) else '[red]missed[/]'}",
    )
    clean = all(r.duplicates == 0 and r.sent == r.messages for r in results)
    return 0 if clean else 1


def _report(result: BenchResult) -> None:
    console.print(
        f"{result.sender} x{result.processes} latency={result.latency_ms}ms: "
        f"{result.messages_per_second} msg/s, duplicates={result.duplicates}"
    )


def print_table(results: list[BenchResult]) -> None:
    table = Table(title="sendonce dispatch benchmark (moto as DynamoDB)")
    headers = [
        "sender",
        "procs",
        "latency",
        "msgs",
        "msg/s",
        "wall s",
        "dup",
        "sender CPU ms/msg",
        "store CPU ms/msg",
        "store busy, cores",
        "DDB req/msg",
        "log B/msg",
        "$ per 1M (ddb+λ+logs)",
    ]
    for header in headers:
        # Two columns whose values must never be cut: the rest wrap their headers instead.
        keep = {"sender": 10, "latency": 7, "$ per 1M (ddb+λ+logs)": 21}.get(header)
        table.add_column(header, justify="right", no_wrap=keep is not None, min_width=keep)
    for r in results:
        requests = sum(r.aws_calls.values()) / r.messages
        cost = r.cost_per_million
        table.add_row(
            r.sender,
            str(r.processes),
            f"{r.latency_ms} ms",
            str(r.messages),
            f"{r.messages_per_second:.1f}",
            f"{r.wall_seconds:.1f}",
            str(r.duplicates),
            f"{r.sender_cpu_ms_per_message:.2f}",
            f"{r.store_cpu_ms_per_message:.2f}" if r.sender == "dispatcher" else "-",
            f"{r.store_busy_cores:.2f}" if r.sender == "dispatcher" else "-",
            f"{requests:.2f}" if r.sender == "dispatcher" else "-",
            f"{r.log_bytes / r.messages:.0f}" if r.sender == "dispatcher" else "-",
            (
                f"{cost['total']:.2f} ({cost['dynamodb']:.2f}+{cost['lambda']:.2f}+{cost['logs']:.2f})"
                if cost
                else "-"
            ),
        )
    console.print(table)


def ratios(
    results: list[BenchResult], scaling_latency_ms: int = SCALING_LATENCY_MS
) -> list[tuple[str, bool]]:
    """The target lines. Dispatcher/naive is graded at every latency above 0 ms (0.8x); at
    0 ms it is information (the local store and the 2 shared cores are the limit there). N vs 1
    dispatchers is graded at ``scaling_latency_ms`` (1.8x), where the store is not the
    bottleneck; elsewhere it is information, with how busy the store was."""
    lines: list[tuple[str, bool]] = []
    by_key = {(r.sender, r.processes, r.latency_ms): r for r in results}
    for latency in sorted({r.latency_ms for r in results}):
        naive = by_key.get(("naive", 1, latency))
        one = by_key.get(("dispatcher", 1, latency))
        if naive and one:
            ratio = one.messages_per_second / naive.messages_per_second
            graded = latency > 0
            ok = ratio >= TARGET_NAIVE_RATIO or not graded
            note = f"target {TARGET_NAIVE_RATIO}x: {'met' if ok else 'MISSED'}" if graded else "information"
            lines.append((f"{latency} ms: 1 dispatcher / naive = {ratio:.2f}x ({note})", ok))
        for other in sorted({r.processes for r in results if r.sender == "dispatcher"} - {1}):
            many = by_key.get(("dispatcher", other, latency))
            if not (one and many):
                continue
            ratio = many.messages_per_second / one.messages_per_second
            busiest = max(one.store_busy_cores, many.store_busy_cores)
            store = f"store busy up to {busiest:.2f} cores"
            if busiest >= STORE_BOTTLENECK_CORES:
                store += ": the store is the limit"
            graded = latency == scaling_latency_ms
            ok = ratio >= TARGET_SCALING or not graded
            if graded and busiest >= STORE_BOTTLENECK_CORES:
                ok = False
                note = f"target {TARGET_SCALING}x: NOT MEASURABLE, {store}"
            elif graded:
                note = f"target {TARGET_SCALING}x: {'met' if ok else 'MISSED'}, {store}"
            else:
                note = f"information, {store}"
            lines.append((f"{latency} ms: {other} vs 1 dispatchers = {ratio:.2f}x ({note})", ok))
    return lines
