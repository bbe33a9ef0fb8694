"""Pacing across overlapping dispatcher processes running the real handler: six at a time
share one WhatsApp sender limited to R msg/s and one LinkedIn account with spacing.

What is asserted is what the claim and the send-time gate guarantee, read from Postgres: in any
1-second window the claims for a sender never exceed R + burst and its granted calls R + 1, and
a spaced account's claims and granted calls are never closer than its spacing. When the
provider sees each call also depends on how long each process takes from its grant to its
request, which a busy machine stretches; ``make bench`` reports that figure.
Every message still goes out exactly once and nothing fails for being throttled.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from devstack.stack import ROOT, Invocation, LocalStack
from devstack.testing import enqueue_contacts
from shared.pacing import SenderPacing
from shared.providers.outcome import Channel
from shared.senders import configure_sender

pytestmark = pytest.mark.chaos
DISPATCH = ROOT / "events" / "dispatcher-scheduled.json"
RATE, BURST = 10, 5
SPACING = 2.0
MESSAGES = 150
INVITES = 4
DISPATCHERS = 6
STALL_SECONDS = 120


@pytest.fixture
def stack(pg_server: Any) -> Iterator[LocalStack]:
    overrides = {"send_concurrency": 4, "dispatcher_timeout_seconds": 150}
    with LocalStack(database_url=pg_server.admin_url, settings_overrides=overrides) as running:
        yield running


def unsettled(stack: LocalStack) -> int:
    row = stack.db.fetch_one("SELECT count(*) AS n FROM send_queue WHERE status <> 'sent'")
    assert row is not None
    return int(row["n"])


def claim_times(stack: LocalStack, sender: str) -> list[datetime]:
    return sender_times(stack, sender, "claimed_at")


def call_grant_times(stack: LocalStack, sender: str) -> list[datetime]:
    """When the send-time gate let each row's provider call start (shared/call_slots.py)."""
    return sender_times(stack, sender, "call_granted_at")


def sender_times(stack: LocalStack, sender: str, column: str) -> list[datetime]:
    rows = stack.db.fetch_all(
        "SELECT q.claimed_at, q.call_granted_at FROM send_queue q"
        " JOIN sender_accounts s ON s.id = q.sender_account_id"
        " WHERE s.provider_account_id = %(sender)s",
        {"sender": sender},
    )
    times = [r[column] for r in rows]
    assert None not in times, f"a row of {sender} has no {column}"
    return sorted(times)


def busiest_second(times: list[datetime]) -> int:
    """The most claims in any window [t, t + 1 s), t ranging over the claims themselves."""
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= timedelta(seconds=1):
            start += 1
        best = max(best, end - start + 1)
    return best


def test_six_overlapping_dispatchers_keep_each_sender_within_its_pacing(stack: LocalStack) -> None:
    enqueue_contacts(stack.db, "whatsapp", [f"1555{i:07d}" for i in range(MESSAGES)], sender="wa-paced")
    enqueue_contacts(stack.db, "linkedin", [f"ACoAA{i:05d}" for i in range(INVITES)], sender="li-spaced")
    configure_sender(
        stack.db,
        Channel.WHATSAPP,
        "wa-paced",
        SenderPacing(rate_per_second=RATE, burst=BURST),
        operator="test",
    )
    configure_sender(
        stack.db,
        Channel.LINKEDIN,
        "li-spaced",
        SenderPacing(min_spacing_seconds=SPACING, spacing_jitter_seconds=0.5),
        operator="test",
    )
    # The provider enforces a limit a little above the sender's, as an operator would set it;
    # a throttle still halves the sender's rate and must not cost an attempt.
    stack.provider.set_faults(
        [
            {
                "action": "rate_limit",
                "match": {"channel": "whatsapp"},
                "per_sender_per_second": RATE + 2,
                "burst": BURST + 2,
            }
        ]
    )

    running: list[Invocation] = []
    last_progress, left = time.monotonic(), unsettled(stack)
    while left:
        assert time.monotonic() - last_progress < STALL_SECONDS, f"{left} rows unsettled"
        running = [inv for inv in running if inv.process.poll() is None]
        while len(running) < DISPATCHERS:
            running.append(stack.spawn("dispatcher", DISPATCH, log_name="paced-dispatch"))
        time.sleep(0.5)
        now_left = unsettled(stack)
        if now_left < left:
            last_progress, left = time.monotonic(), now_left
    for invocation in running:
        invocation.finish()

    ledger = stack.provider.ledger()
    per_message = Counter((m["channel"], m["recipient"]) for m in ledger)
    assert sum(per_message.values()) == MESSAGES + INVITES
    assert max(per_message.values()) == 1
    statuses = stack.db.fetch_all("SELECT status::text AS s, count(*) AS n FROM send_queue GROUP BY 1")
    assert {r["s"]: r["n"] for r in statuses} == {"sent": MESSAGES + INVITES}

    assert busiest_second(claim_times(stack, "wa-paced")) <= RATE + BURST
    # The gate spaces the calls themselves: a slot 1/R apart, so at most R + 1 start in any
    # second, whatever each process's delay between its claim and its call.
    assert busiest_second(call_grant_times(stack, "wa-paced")) <= RATE + 1
    for times in (claim_times(stack, "li-spaced"), call_grant_times(stack, "li-spaced")):
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert min(gaps) >= SPACING, gaps
