"""The pacing scenario: six overlapping dispatcher processes share one WhatsApp sender that the
fake provider limits to R msg/s (a real token bucket answering 130429 when it is empty), and one
LinkedIn account paced by spacing.

The sender is configured a little below the provider's limit (0.95 R, a burst of R / 4), as an
operator would configure it. Reported, from the provider's own ledger and the queue:

* the most messages the provider accepted from the sender in any 1-second window (must be <= R +
  the sender's burst);
* the achieved rate, first to last acceptance (target >= 0.9 R);
* throttled answers as a share of requests (target < 1 %);
* messages that ended ``failed`` because of throttling (must be 0);
* the LinkedIn account's smallest gap between sends (must be >= its spacing).
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from devstack.bench.common import DISPATCH_EVENT, console, summary, write_results
from devstack.stack import Invocation, LocalStack
from devstack.testing import enqueue_contacts
from shared.pacing import SenderPacing
from shared.providers.outcome import Channel
from shared.senders import configure_sender

DISPATCHERS = 6
SPACING_SECONDS = 3.0


@dataclass
class PacingResult:
    provider_rate: float
    configured_rate: float
    burst: int
    messages: int
    busiest_second: int
    achieved_rate: float
    throttled_share: float
    throttled: int
    requests: int
    failed_by_throttling: int
    duplicates: int
    linkedin_min_gap_seconds: float
    # The same two figures on the call slots the gate granted (the database's clock): what the
    # gate bounds, before each process's own delay to its request.
    granted_busiest_second: int
    granted_linkedin_min_gap_seconds: float
    wall_seconds: float


def busiest_second(times: list[datetime]) -> int:
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= timedelta(seconds=1):
            start += 1
        best = max(best, end - start + 1)
    return best


def _min_gap(times: list[datetime]) -> float:
    return (
        round(min((b - a).total_seconds() for a, b in itertools.pairwise(times)), 2)
        if len(times) > 1
        else 0.0
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=20.0, help="the provider's limit R, msg/s")
    # Its own flag: throughput already defines --messages, and argparse refuses a second one.
    parser.add_argument("--pacing-messages", type=int, default=1200)


def _drain(stack: LocalStack) -> None:
    running: list[Invocation] = []
    while True:
        row = stack.db.fetch_one(
            "SELECT count(*) AS n FROM send_queue WHERE status NOT IN ('sent', 'failed')"
        )
        assert row is not None
        if row["n"] == 0:
            break
        running = [inv for inv in running if inv.process.poll() is None]
        while len(running) < DISPATCHERS:
            running.append(stack.spawn("dispatcher", DISPATCH_EVENT, log_name="pacing"))
        time.sleep(0.5)
    for invocation in running:
        invocation.finish()


def run(args: argparse.Namespace) -> int:
    rate, messages = args.rate, args.pacing_messages
    configured = round(rate * 0.95, 2)
    burst = max(1, int(rate / 4))
    overrides: dict[str, Any] = {"send_concurrency": 4}
    with LocalStack(settings_overrides=overrides) as stack:
        enqueue_contacts(stack.db, "whatsapp", [f"1555{i:07d}" for i in range(messages)], sender="wa-bench")
        enqueue_contacts(stack.db, "linkedin", [f"ACoAA{i:05d}" for i in range(5)], sender="li-bench")
        configure_sender(
            stack.db,
            Channel.WHATSAPP,
            "wa-bench",
            SenderPacing(rate_per_second=configured, burst=burst),
            operator="bench",
        )
        configure_sender(
            stack.db,
            Channel.LINKEDIN,
            "li-bench",
            SenderPacing(min_spacing_seconds=SPACING_SECONDS, spacing_jitter_seconds=1),
            operator="bench",
        )
        stack.provider.set_faults(
            [
                {
                    "action": "rate_limit",
                    "match": {"channel": "whatsapp"},
                    "per_sender_per_second": rate,
                    "burst": int(rate),
                }
            ]
        )
        started = time.perf_counter()
        with console.status(f"pacing: {messages} messages at R = {rate}/s through {DISPATCHERS} dispatchers"):
            _drain(stack)
        wall = time.perf_counter() - started
        ledger = stack.provider.ledger()
        stats = stack.provider.stats()
        wa = sorted(datetime.fromisoformat(m["timestamp"]) for m in ledger if m["channel"] == "whatsapp")
        li = sorted(datetime.fromisoformat(m["timestamp"]) for m in ledger if m["channel"] == "linkedin")
        attempts = stack.db.fetch_all(
            "SELECT count(*) FILTER (WHERE reason = 'whatsapp:130429') AS throttled, count(*) AS requests"
            " FROM send_attempts"
        )[0]
        failed = stack.db.fetch_one(
            "SELECT count(*) AS n FROM send_queue"
            " WHERE status = 'failed' AND failure_reason LIKE '%%130429%%'"
        )
        assert failed is not None
        granted = {
            channel: [
                r["call_granted_at"]
                for r in stack.db.fetch_all(
                    "SELECT q.call_granted_at FROM send_queue q"
                    " JOIN sender_accounts s ON s.id = q.sender_account_id"
                    " WHERE s.channel = %(c)s::channel AND q.status = 'sent'"
                    " AND q.call_granted_at IS NOT NULL ORDER BY q.call_granted_at",
                    {"c": channel},
                )
            ]
            for channel in ("whatsapp", "linkedin")
        }
    result = PacingResult(
        provider_rate=rate,
        configured_rate=configured,
        burst=burst,
        messages=messages,
        busiest_second=busiest_second(wa),
        achieved_rate=round((len(wa) - 1) / (wa[-1] - wa[0]).total_seconds(), 2),
        throttled_share=round(attempts["throttled"] / max(1, attempts["requests"]), 4),
        throttled=int(attempts["throttled"]),
        requests=int(attempts["requests"]),
        failed_by_throttling=int(failed["n"]),
        duplicates=int(stats["duplicates"]),
        linkedin_min_gap_seconds=_min_gap(li),
        granted_busiest_second=busiest_second(granted["whatsapp"]),
        granted_linkedin_min_gap_seconds=_min_gap(granted["linkedin"]),
        wall_seconds=round(wall, 1),
    )
    write_results("pacing", [result])
    ok = (
        result.busiest_second <= rate + burst
        and result.achieved_rate >= 0.9 * rate
        and result.throttled_share < 0.01
        and result.failed_by_throttling == 0
        and result.duplicates == 0
        and result.linkedin_min_gap_seconds >= SPACING_SECONDS
    )
    summary(
        "pacing",
        f"R = {rate:g}/s (sender at {configured:g}/s, burst {burst}); busiest second {result.busiest_second} "
        f"(limit R + burst = {rate + burst:g}); achieved {result.achieved_rate:g}/s = "
        f"{result.achieved_rate / rate:.2f} R; throttled {result.throttled}/{result.requests} requests "
        f"({result.throttled_share:.2%}); failed by throttling {result.failed_by_throttling}; duplicates "
        f"{result.duplicates}; LinkedIn smallest gap {result.linkedin_min_gap_seconds:g} s "
        f"(spacing {SPACING_SECONDS:g} s); call slots granted: busiest second "
        f"{result.granted_busiest_second}, "
        f"LinkedIn smallest gap {result.granted_linkedin_min_gap_seconds:g} s; "
        f"{'targets met' if ok else '[red]targets missed[/]'}",
    )
    return 0 if ok else 1
