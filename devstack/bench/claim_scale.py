"""The claim-scale scenario: how long one claim takes with 10,000 and with 1,000,000 due rows
(20 senders, 2 campaigns each), on an embedded Postgres with fsync on. The rows are inserted
in bulk with SQL; each claim is the real ``QueueRepository.claim_batch`` (lock the senders,
plan, claim 25 rows, save the budgets). Target: the claim at 1M costs at most 1.25x the claim
at 10k."""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from dataclasses import dataclass

from devstack.bench.common import console, summary, write_results
from devstack.postgres import EmbeddedPostgres
from devstack.testing import build_backlog
from shared.queue import QueueRepository
from shared.storage.db import Database
from shared.storage.migrate import migrate

SENDERS = 20
CLAIMS = 60


@dataclass
class ClaimScaleResult:
    backlog: int
    claims: int
    batch: int
    median_ms: float
    p90_ms: float
    build_seconds: float


def measure(server: EmbeddedPostgres, rows: int, batch: int) -> ClaimScaleResult:
    url = server.create_database(f"scale_{rows}_{uuid.uuid4().hex[:6]}")
    db = Database(url, max_size=2)
    try:
        migrate(db)
        started = time.perf_counter()
        with console.status(f"claim-scale: inserting {rows:,} due rows"):
            build_backlog(db, rows, senders=SENDERS)
        built = time.perf_counter() - started
        queue = QueueRepository(db)
        for _ in range(5):  # warm the caches and the pool
            queue.claim_batch(uuid.uuid4(), batch, 600)
        timings = []
        for _ in range(CLAIMS):
            began = time.perf_counter()
            claimed = queue.claim_batch(uuid.uuid4(), batch, 600)
            timings.append((time.perf_counter() - began) * 1000)
            assert len(claimed) == batch, "the backlog ran dry"
    finally:
        db.close()
    timings.sort()
    return ClaimScaleResult(
        backlog=rows,
        claims=CLAIMS,
        batch=batch,
        median_ms=round(statistics.median(timings), 2),
        p90_ms=round(timings[int(len(timings) * 0.9)], 2),
        build_seconds=round(built, 1),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small-backlog", type=int, default=10_000)
    parser.add_argument("--large-backlog", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=25)


def run(args: argparse.Namespace) -> int:
    with EmbeddedPostgres(durable=True) as server:
        results = [measure(server, rows, args.batch) for rows in (args.small_backlog, args.large_backlog)]
    small, large = results
    ratio = large.median_ms / small.median_ms
    write_results("claim-scale", results)
    summary(
        "claim-scale",
        f"claim of {args.batch} at {small.backlog:,} due rows {small.median_ms:g} ms (p90 {small.p90_ms:g}), "
        f"at {large.backlog:,} {large.median_ms:g} ms (p90 {large.p90_ms:g}): {ratio:.2f}x "
        f"({'within' if ratio <= 1.25 else '[red]over[/]'} the 1.25x target)",
    )
    return 0 if ratio <= 1.25 else 1
