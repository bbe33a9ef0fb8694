"""The claim-scale scenario: the claim on a large queue, across many senders, and after a
day's sends.

On an embedded Postgres with fsync on, rows are inserted in bulk with SQL over ``--senders``
WhatsApp senders (two campaigns each); each claim is the real ``QueueRepository.claim_batch``
(lock the senders, plan, claim 25 rows, save the budgets). Measured:

1. claim latency (median, p90 of 60 claims) at ``--small-backlog`` and at ``--large-backlog``
   due rows. Target: the claim at the large backlog costs at most 1.25x the small one;
2. fairness across senders at the large backlog: rows per sender over ``FAIRNESS_CLAIMS``
   claims (senders served, min/max, Jain's index: 1.0 when every sender got the same);
3. a day of settled rows: the large backlog is built with ``--day-rows`` more rows, the oldest
   of which are then settled ``sent`` at once (a day's sends at 1M a day), with autovacuum
   off for the table. The claim is measured before the VACUUM (its index scans step over the
   dead entries), then the VACUUM's duration, and the claim after it, with the table's and its
   indexes' sizes.

``python -m devstack.bench claim-scale [--quick] [--senders 1000] [--day-rows 1000000]``
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from devstack.bench.common import console, summary, write_results
from devstack.postgres import EmbeddedPostgres
from devstack.testing import build_backlog
from shared.queue import QueueRepository
from shared.storage import sql
from shared.storage.db import Database
from shared.storage.migrate import migrate

CLAIMS = 60
FAIRNESS_CLAIMS = 200


@dataclass
class Latency:
    median_ms: float
    p90_ms: float


@dataclass
class ClaimScaleResult:
    backlog: int
    senders: int
    batch: int
    build_seconds: float
    claim: Latency
    fairness: dict[str, float] = field(default_factory=dict)
    day_rows_settled: int = 0
    claim_with_dead_rows: Latency | None = None
    vacuum_seconds: float | None = None
    claim_after_vacuum: Latency | None = None
    sizes_before_vacuum: dict[str, int] = field(default_factory=dict)
    sizes_after_vacuum: dict[str, int] = field(default_factory=dict)


def time_claims(queue: QueueRepository, batch: int, claims: int = CLAIMS) -> Latency:
    for _ in range(3):  # warm the caches and the pool
        queue.claim_batch(uuid.uuid4(), batch, 600)
    timings = []
    for _ in range(claims):
        began = time.perf_counter()
        claimed = queue.claim_batch(uuid.uuid4(), batch, 600)
        timings.append((time.perf_counter() - began) * 1000)
        assert len(claimed) == batch, "the backlog ran dry"
    timings.sort()
    return Latency(round(statistics.median(timings), 2), round(timings[int(len(timings) * 0.9)], 2))


def fairness(queue: QueueRepository, batch: int, senders: int) -> dict[str, float]:
    per_sender: Counter[object] = Counter()
    for _ in range(FAIRNESS_CLAIMS):
        for message in queue.claim_batch(uuid.uuid4(), batch, 600):
            per_sender[message.sender_account_id] += 1
    counts = [per_sender.get(s, 0) for s in per_sender] + [0] * (senders - len(per_sender))
    total = sum(counts)
    jain = total**2 / (len(counts) * sum(c * c for c in counts)) if total else 0.0
    return {
        "rows": total,
        "senders_served": len(per_sender),
        "min_per_sender": min(counts),
        "max_per_sender": max(counts),
        "jain_index": round(jain, 4),
    }


def sizes(db: Database) -> dict[str, int]:
    row = db.fetch_one(sql.BENCH_QUEUE_SIZES)
    assert row is not None
    return {k: int(v or 0) for k, v in row.items()}


def measure(
    server: EmbeddedPostgres, rows: int, batch: int, senders: int, day_rows: int = 0
) -> ClaimScaleResult:
    url = server.create_database(f"scale_{rows}_{uuid.uuid4().hex[:6]}")
    db = Database(url, max_size=2)
    try:
        migrate(db)
        started = time.perf_counter()
        with console.status(f"claim-scale: inserting {rows + day_rows:,} rows over {senders:,} senders"):
            build_backlog(db, rows + day_rows, senders=senders)
        built = time.perf_counter() - started
        queue = QueueRepository(db)
        result = ClaimScaleResult(
            backlog=rows, senders=senders, batch=batch, build_seconds=round(built, 1), claim=Latency(0, 0)
        )
        if day_rows:
            with db.connection() as conn:
                conn.execute(sql.BENCH_AUTOVACUUM_OFF)
            with console.status(f"claim-scale: settling a day's {day_rows:,} sends"), db.connection() as conn:
                conn.execute(sql.BENCH_SETTLE_OLDEST, {"rows": day_rows})
            result.day_rows_settled = day_rows
            result.sizes_before_vacuum = sizes(db)
            result.claim_with_dead_rows = time_claims(queue, batch)
            began = time.perf_counter()
            with console.status("claim-scale: VACUUM (ANALYZE) send_queue"), db.connection() as conn:
                conn.execute(sql.BENCH_VACUUM_QUEUE)
                conn.execute(sql.BENCH_AUTOVACUUM_ON)
            result.vacuum_seconds = round(time.perf_counter() - began, 1)
            result.sizes_after_vacuum = sizes(db)
            result.claim_after_vacuum = time_claims(queue, batch)
            result.claim = result.claim_after_vacuum
        else:
            result.claim = time_claims(queue, batch)
        if rows >= senders * batch:
            result.fairness = fairness(queue, batch, senders)
        return result
    finally:
        db.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small-backlog", type=int, default=10_000)
    parser.add_argument("--large-backlog", type=int, default=1_000_000)
    parser.add_argument("--senders", type=int, default=1_000, help="claim-scale: sender accounts")
    parser.add_argument("--day-rows", type=int, default=1_000_000, help="claim-scale: a day's settled rows")
    parser.add_argument("--batch", type=int, default=25)


def run(args: argparse.Namespace) -> int:
    small_rows, large_rows, day_rows = args.small_backlog, args.large_backlog, args.day_rows
    if args.quick:
        small_rows, large_rows, day_rows = (
            min(small_rows, 10_000),
            min(large_rows, 50_000),
            min(day_rows, 50_000),
        )
    with EmbeddedPostgres(durable=True) as server:
        small = measure(server, small_rows, args.batch, args.senders)
        large = measure(server, large_rows, args.batch, args.senders, day_rows)
    results = [small, large]
    ratio = large.claim.median_ms / small.claim.median_ms
    write_results("claim-scale", results)
    mib = 1024 * 1024
    before, after = large.sizes_before_vacuum, large.sizes_after_vacuum
    dead = large.claim_with_dead_rows
    if dead is not None:
        console.print(
            f"after a day of {large.day_rows_settled:,} settled rows, autovacuum off: "
            f"claim {dead.median_ms:g} ms (p90 {dead.p90_ms:g}) "
            f"with {before.get('dead_rows', 0):,} dead rows; "
            f"VACUUM (ANALYZE) {large.vacuum_seconds:g} s; "
            f"claim after {large.claim.median_ms:g} ms (p90 {large.claim.p90_ms:g}); "
            f"send_queue {after.get('total_rows', 0):,} rows, "
            f"table {after.get('table_bytes', 0) / mib:.0f} MiB, "
            f"indexes {after.get('index_bytes', 0) / mib:.0f} MiB "
            f"(due index {after.get('due_index_bytes', 0) / mib:.1f} MiB)"
        )
    if large.fairness:
        f = large.fairness
        console.print(
            f"fairness over {FAIRNESS_CLAIMS} claims of {args.batch} at {large_rows:,} due rows: "
            f"{f['senders_served']:g} of {args.senders} senders served, "
            f"{f['min_per_sender']:g}-{f['max_per_sender']:g} rows each, Jain's index {f['jain_index']:g}"
        )
    target = "within" if ratio <= 1.25 else "[red]over[/]"
    summary(
        "claim-scale",
        f"claim of {args.batch} over {args.senders:,} senders "
        f"at {small.backlog:,} due rows {small.claim.median_ms:g} ms (p90 {small.claim.p90_ms:g}), "
        f"at {large.backlog:,} {large.claim.median_ms:g} ms (p90 {large.claim.p90_ms:g}): "
        f"{ratio:.2f}x ({target} the 1.25x target)",
    )
    return 0 if ratio <= 1.25 else 1
