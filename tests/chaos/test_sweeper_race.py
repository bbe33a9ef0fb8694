"""Sweepers racing dispatchers over 2,000 rows (``SENDONCE_CHAOS_ROWS``; 5,000 or more for a
longer soak), with provider faults and dispatchers killed mid-run, until every row is settled. Afterwards the provider's own ledger, the queue, the
dead-letter queue and the campaign statistics must agree.

The timing is scaled down (60 s dispatcher timeout, 65 s lease) but keeps the production
arithmetic: each dispatcher process is given the same simulated Lambda timeout its lease was
derived from, so a live dispatcher is never swept.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.aws import aws_client
from devstack.stack import ROOT, Invocation, LocalStack
from devstack.testing import enqueue_contacts
from shared.queue import QueueRepository
from shared.reconcile import campaign_stats

pytestmark = pytest.mark.chaos
DISPATCH = ROOT / "events" / "dispatcher-scheduled.json"
SWEEP = ROOT / "events" / "sweeper-scheduled.json"
TIMEOUT = 60
STALL_SECONDS = 150
# How long a wait on a process gives up after: a hang guard, never reached when the code under
# test is right, however busy the machine is.
HANG_GUARD_SECONDS = 300
# The size of the run: half WhatsApp, 30% Messenger, 20% LinkedIn. CI runs 2,000 rows, which
# meets every fault below many times over; a soak sets more.
ROWS = int(os.environ.get("SENDONCE_CHAOS_ROWS", "2000"))
WHATSAPP_ROWS, MESSENGER_ROWS = ROWS // 2, ROWS * 3 // 10
LINKEDIN_ROWS = ROWS - WHATSAPP_ROWS - MESSENGER_ROWS
PERMANENT = [f"1555{i:07d}" for i in range(0, WHATSAPP_ROWS, WHATSAPP_ROWS // 20)]  # 20 the provider refuses
DROPPED = [f"psid-{i}" for i in range(5, MESSENGER_ROWS, MESSENGER_ROWS // 10)]  # 10 accepted, then dropped


@pytest.fixture
def stack(pg_server: Any) -> Iterator[LocalStack]:
    overrides = {
        "dispatcher_timeout_seconds": TIMEOUT,
        "lease_margin_seconds": 5,
        "provider_connect_timeout_seconds": 1.0,
        "provider_read_timeout_seconds": 1.0,
        "dynamodb_connect_timeout_seconds": 1.0,
        "dynamodb_read_timeout_seconds": 1.0,
        "dynamodb_max_attempts": 2,
        "sweeper_timeout_seconds": 10,
        "retry_base_seconds": 0.5,
        "retry_cap_seconds": 2.0,
        "send_concurrency": 6,
    }
    with LocalStack(database_url=pg_server.admin_url, settings_overrides=overrides) as running:
        yield running


def enqueue(stack: LocalStack, channel: str, addresses: list[str]) -> uuid.UUID:
    return enqueue_contacts(
        stack.db, channel, addresses, sender=f"{channel}-sender", body=f"hello from {channel}"
    )


def unsettled(stack: LocalStack) -> int:
    counts = QueueRepository(stack.db).status_counts()
    return sum(counts.get(s, 0) for s in ("pending", "claimed", "sending"))


def has_claimed_a_batch(dispatcher: Invocation) -> bool:
    # Powertools logs to stdout; at DEBUG the dispatcher logs each batch it claims.
    return '"claimed batch"' in dispatcher.stdout_path.read_text(errors="replace")


# The stall check below fails the test when nothing settles for STALL_SECONDS, so a long run
# is a slow machine, not a hang; the global timeout would cut off a run that still progresses.
@pytest.mark.timeout(3600)
def test_sweepers_racing_dispatchers_leave_no_duplicate_and_no_row_behind(stack: LocalStack) -> None:
    campaigns = [
        enqueue(stack, "whatsapp", [f"1555{i:07d}" for i in range(WHATSAPP_ROWS)]),
        enqueue(stack, "messenger", [f"psid-{i}" for i in range(MESSENGER_ROWS)]),
        enqueue(stack, "linkedin", [f"ACoAA{i:06d}" for i in range(LINKEDIN_ROWS)]),
    ]
    stack.provider.set_faults(
        {
            "seed": 7,
            "latency_ms": 1,
            "rules": [
                {"action": "permanent", "match": {"recipient": PERMANENT}},
                {"action": "accept_then_drop", "match": {"recipient": DROPPED}},
                # WhatsApp's throughput error carries no hint, so the backoff (capped at 2 s
                # here) decides; Unipile's 429 carries Retry-After, a floor the backoff obeys.
                # Messenger's rate-limit codes imply 60-300 s waits, which would only make the
                # run longer; they are covered by the adapter and retry tests.
                {"action": "rate_limit", "match": {"channel": "whatsapp"}, "probability": 0.05},
                {
                    "action": "rate_limit",
                    "match": {"channel": "linkedin"},
                    "probability": 0.05,
                    "retry_after_seconds": 1,
                },
                {"action": "server_error", "probability": 0.002},
            ],
        }
    )

    running: list[Invocation] = []
    killed = 0
    tick = 0
    next_kill_tick = 3
    logs_each_batch = stack.env(POWERTOOLS_LOG_LEVEL="DEBUG")
    # The run ends when every row is settled. It fails only when nothing settles for longer
    # than the longest legitimate wait (a killed dispatcher's 65 s lease, then a sweep), so a
    # slow machine makes it slower, never red.
    last_progress, last_unsettled = time.monotonic(), unsettled(stack)
    while last_unsettled:
        assert time.monotonic() - last_progress < STALL_SECONDS, QueueRepository(stack.db).status_counts()
        running = [inv for inv in running if inv.process.poll() is None]
        dispatchers = [inv for inv in running if "dispatch" in inv.stdout_path.name]
        sweepers = [inv for inv in running if "sweep" in inv.stdout_path.name]
        pending, seconds_until_due = QueueRepository(stack.db).next_pending()
        # Like scheduler ticks, but only when there is due work: idle process starts would
        # only starve the 2 cores.
        if len(dispatchers) < 4 and pending and seconds_until_due <= 0:
            running.append(
                stack.spawn(
                    "dispatcher", DISPATCH, timeout_seconds=TIMEOUT, env=logs_each_batch, log_name="dispatch"
                )
            )
        # At most two at once: on a busy machine, sweepers slower to start than the tick would
        # pile up and starve everything else.
        if tick % 4 == 0 and len(sweepers) < 2:
            running.append(stack.spawn("sweeper", SWEEP, timeout_seconds=10, log_name="sweep"))
        # A crashed invocation, twice: SIGKILL a dispatcher mid-run (it has claimed a batch;
        # on a busy machine one a few ticks old may still be starting).
        victim = None
        if killed < 2 and tick >= next_kill_tick:
            victim = next((inv for inv in dispatchers if has_claimed_a_batch(inv)), None)
        if victim is not None:
            os.kill(victim.pid, signal.SIGKILL)
            if victim.process.wait(timeout=HANG_GUARD_SECONDS) == -signal.SIGKILL:  # not finished first
                killed += 1
                next_kill_tick = tick + 3
        tick += 1
        time.sleep(1.0)
        now_unsettled = unsettled(stack)
        if now_unsettled < last_unsettled:
            last_progress = time.monotonic()
        last_unsettled = now_unsettled
    for inv in running:
        inv.process.wait(timeout=HANG_GUARD_SECONDS)
    stack.spawn("sweeper", SWEEP, timeout_seconds=10).finish()  # publish the last dead letters
    assert killed == 2
    assert unsettled(stack) == 0, QueueRepository(stack.db).status_counts()

    # 1. No duplicate reached the provider.
    ledger = stack.provider.ledger()
    copies = Counter((m["channel"], m["recipient"], m["text"]) for m in ledger)
    assert max(copies.values()) == 1

    # 2. Every row ended truthfully: sent rows are exactly what the provider holds for them,
    #    and whatever else the provider accepted is an `unknown` row, never failed or lost.
    rows = stack.db.fetch_all(
        "SELECT q.status::text AS status, q.provider_message_id, q.failure_reason, c.address, q.contact_id "
        "FROM send_queue q JOIN contacts c ON c.id = q.contact_id"
    )
    statuses = Counter(r["status"] for r in rows)
    assert set(statuses) <= {"sent", "failed", "unknown"}
    assert sum(statuses.values()) == ROWS
    accepted_ids = {m["provider_message_id"] for m in ledger}
    sent_ids = {r["provider_message_id"] for r in rows if r["status"] == "sent"}
    assert sent_ids <= accepted_ids
    accepted_recipients = {m["recipient"] for m in ledger}
    unaccounted = {m["recipient"] for m in ledger if m["provider_message_id"] not in sent_ids}
    unknown_recipients = {r["address"] for r in rows if r["status"] == "unknown"}
    assert unaccounted <= unknown_recipients
    failed_recipients = {r["address"] for r in rows if r["status"] == "failed"}
    assert not failed_recipients & accepted_recipients, "a failed row was in fact delivered"
    # A refusal the dispatcher saw ends `failed`. A refused request whose answer it never saw
    # (the process was SIGKILLed mid-call, or its client gave up first, as on a busy machine)
    # ends `unknown`, like any unanswered request: its reason is not the provider's code.
    unanswered = {
        r["address"]
        for r in rows
        if r["status"] == "unknown" and not (r["failure_reason"] or "").startswith("whatsapp:")
    }
    assert set(PERMANENT) <= failed_recipients | unanswered
    assert set(PERMANENT) & failed_recipients, "refusals reach `failed`"
    assert set(DROPPED) <= unknown_recipients

    # 3. Every failed row produced exactly one dead-letter record.
    sqs = aws_client("sqs", stack.moto.endpoint)
    assert stack.aws is not None
    records: list[dict[str, Any]] = []
    while batch := sqs.receive_message(
        QueueUrl=stack.aws.failed_messages_queue_url, MaxNumberOfMessages=10
    ).get("Messages"):
        records += [json.loads(m["Body"]) for m in batch]
        sqs.delete_message_batch(
            QueueUrl=stack.aws.failed_messages_queue_url,
            Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in batch],
        )
    # Records carry ids, never addresses (they are kept 14 days).
    failed_contacts = [str(r["contact_id"]) for r in rows if r["status"] == "failed"]
    assert sorted(r["contact_id"] for r in records) == sorted(failed_contacts)
    assert not any("recipient" in r for r in records)

    # 4. Statistics equal a recount of raw rows and of the provider's own ledger.
    stats = {s["campaign_id"]: s for s in campaign_stats(stack.db)}
    assert set(stats) == set(campaigns)
    assert sum(s["total"] for s in stats.values()) == ROWS
    assert sum(s["sent"] for s in stats.values()) == statuses["sent"] == len(sent_ids)
    assert sum(s["failed"] for s in stats.values()) == statuses["failed"]
    assert sum(s["unknown"] for s in stats.values()) == statuses["unknown"]
    assert sum(s["pending"] + s["in_flight"] for s in stats.values()) == 0
