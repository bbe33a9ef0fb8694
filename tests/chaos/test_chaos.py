"""Overlap, crashes and stale leases, with every dispatcher a separate OS process running the
real handler against Postgres, the moto server and the fake provider over HTTP.

Where a test needs a lease to have expired, it moves ``lease_expires_at`` into the past with
SQL instead of waiting minutes: that is the clock moving, not a change of state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import LocalStack
from devstack.testing import enqueue_contacts, expire_leases

pytestmark = pytest.mark.chaos
ROOT = Path(__file__).resolve().parents[2]
SCHEDULED = ROOT / "events" / "dispatcher-scheduled.json"
SWEEP = ROOT / "events" / "sweeper-scheduled.json"
# How long a wait on a process gives up after: a hang guard, never reached when the code under
# test is right, however busy the machine is.
HANG_GUARD_SECONDS = 300


@pytest.fixture
def stack(pg_server: Any) -> Iterator[LocalStack]:
    with LocalStack(database_url=pg_server.admin_url, settings_overrides={"send_concurrency": 4}) as running:
        yield running


def enqueue(stack: LocalStack, channel: str, contacts: list[str], sender: str = "sender-1") -> None:
    enqueue_contacts(stack.db, channel, contacts, sender=sender, body=f"hello from {channel}")


def queue_counts(stack: LocalStack) -> dict[str, int]:
    rows = stack.db.fetch_all("SELECT status::text AS status, count(*) AS n FROM send_queue GROUP BY 1")
    return {r["status"]: r["n"] for r in rows}


def accepted_per_message(stack: LocalStack) -> Counter[tuple[str, str, str]]:
    return Counter((m["channel"], m["recipient"], m["text"]) for m in stack.provider.ledger())


def run(stack: LocalStack, function: str, event: Path) -> dict[str, Any]:
    return stack.spawn(function, event).finish()


def overlapping_dispatchers(stack: LocalStack, count: int) -> list[dict[str, Any]]:
    """``count`` dispatcher invocations started at once, as separate processes; their reports."""
    invocations = [stack.spawn("dispatcher", SCHEDULED, log_name=f"dispatcher-{n}") for n in range(count)]
    return [inv.finish() for inv in invocations]


def overlapping_pairs(stack: LocalStack, claim_tokens: set[str]) -> int:
    """How many pairs of these invocations recorded send attempts during each other's."""
    spans = stack.db.fetch_all(
        "SELECT claim_token::text AS token, min(recorded_at) AS first, max(recorded_at) AS last "
        "FROM send_attempts GROUP BY claim_token"
    )
    mine = [s for s in spans if s["token"] in claim_tokens]
    return sum(
        1
        for i, a in enumerate(mine)
        for b in mine[i + 1 :]
        if a["first"] < b["last"] and b["first"] < a["last"]
    )


# Every round below must send something (a stall fails at once), so a long run is a slow
# machine, not a hang; the global timeout would cut off a run that is still progressing.
@pytest.mark.timeout(3600)
def test_eight_overlapping_dispatchers_send_2000_messages_exactly_once(stack: LocalStack) -> None:
    # 2,000 queue rows across all three channels; the contact lists repeat 10% of their
    # addresses, as the seed 003 request did.
    whatsapp = [f"1555{i:07d}" for i in range(700)]
    enqueue(stack, "whatsapp", whatsapp + whatsapp[:70])
    enqueue(stack, "messenger", [f"psid-{i}" for i in range(650)] + [f"psid-{i}" for i in range(65)])
    enqueue(stack, "linkedin", [f"ACoAA{i:06d}" for i in range(650)])
    stack.provider.set_faults({"latency_ms": 2})

    first_round = overlapping_dispatchers(stack, 8)
    reports = list(first_round)
    # On a busy machine the eight can spend their simulated Lambda time before the queue is
    # empty: they stop claiming and release what they hold, as they must. The next scheduler
    # tick's invocations carry on, for as long as each round sends something.
    while pending := queue_counts(stack).get("pending", 0):
        next_round = overlapping_dispatchers(stack, 8)
        assert sum(r["counts"]["Sent"] for r in next_round) > 0, f"a round sent nothing, {pending} pending"
        reports += next_round

    accepted = accepted_per_message(stack)
    assert sum(accepted.values()) == 2000
    assert max(accepted.values()) == 1, [k for k, v in accepted.items() if v > 1][:5]
    assert queue_counts(stack) == {"sent": 2000}
    ledger = stack.db.fetch_all("SELECT provider_message_id FROM message_ledger")
    assert {r["provider_message_id"] for r in ledger} == {
        m["provider_message_id"] for m in stack.provider.ledger()
    }
    assert sum(r["counts"]["Sent"] for r in reports) == 2000
    assert sum(1 for r in first_round if r["counts"]["Claimed"] > 0) >= 2, "the invocations really overlapped"
    assert overlapping_pairs(stack, {r["claim_token"] for r in first_round}) >= 1, "and sent at the same time"


def test_kill_after_the_provider_accepted_never_resends(stack: LocalStack) -> None:
    """SIGKILL after the provider accepted and DynamoDB completed the record, before Postgres
    recorded it: the sweeper recovers `sent` from the record; nothing is sent again."""
    enqueue(stack, "whatsapp", ["15550000001"])
    worker = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "chaos" / "worker.py"), "kill-after-send"],
        env=stack.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
        check=False,
    )
    assert worker.returncode == -signal.SIGKILL
    assert queue_counts(stack) == {"sending": 1}
    assert len(stack.provider.ledger()) == 1

    run(stack, "dispatcher", SCHEDULED)  # the row is owned: nothing to claim
    expire_leases(stack.db)
    sweep = run(stack, "sweeper", SWEEP)
    run(stack, "dispatcher", SCHEDULED)

    assert sweep["recovered_sent"] == 1
    assert queue_counts(stack) == {"sent": 1}
    assert len(stack.provider.ledger()) == 1


def test_kill_while_the_provider_holds_the_request_ends_unknown(stack: LocalStack) -> None:
    """SIGKILL while the request is in flight (the provider accepted, no response yet): the
    DynamoDB record stays INPROGRESS, so the row ends `unknown` and is never resent."""
    enqueue(stack, "whatsapp", ["15550000002"])
    stack.provider.set_faults({"rules": [{"action": "accept_then_timeout", "hold_ms": 600_000}]})
    # The kill must land before the read timeout ends the request. With the stack's 5 s, a
    # busy machine could see the ledger too late; so the longest read timeout Settings allows,
    # and a Lambda timeout more than twice the stop-claiming margin that implies.
    patient = stack.env(
        SENDONCE_PROVIDER_READ_TIMEOUT_SECONDS="60", SENDONCE_DISPATCHER_TIMEOUT_SECONDS="900"
    )
    invocation = stack.spawn("dispatcher", SCHEDULED, timeout_seconds=900, env=patient)
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not stack.provider.ledger():
        assert invocation.process.poll() is None, invocation.stderr_path.read_text()
        assert time.monotonic() < deadline, "the provider never received the message"
        time.sleep(0.05)
    os.kill(invocation.pid, signal.SIGKILL)
    invocation.process.wait(timeout=HANG_GUARD_SECONDS)
    assert queue_counts(stack) == {"sending": 1}, "killed while the request was in flight"
    stack.provider.set_faults({})

    expire_leases(stack.db)
    sweep = run(stack, "sweeper", SWEEP)
    run(stack, "dispatcher", SCHEDULED)
    assert sweep["marked_unknown"] == 1
    assert queue_counts(stack) == {"unknown": 1}
    assert len(stack.provider.ledger()) == 1


def _paused_worker(stack: LocalStack, mode: str) -> subprocess.Popen[str]:
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "chaos" / "worker.py"), mode],
        env=stack.env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while _process_state(worker.pid) != "T":
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline, "worker never reached its pause point"
        time.sleep(0.05)
    return worker


def _process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.mark.parametrize("mode", ["pause-before-sending", "pause-before-gate"])
def test_a_worker_paused_past_its_lease_cannot_send_what_another_took_over(
    stack: LocalStack, mode: str
) -> None:
    """Worker A pauses past its lease; the sweeper releases the row and invocation B claims
    and sends it; then A resumes. A's CAS (or its DynamoDB conditional write) fails: one send."""
    enqueue(stack, "whatsapp", ["15550000003"])
    paused = _paused_worker(stack, mode)
    expire_leases(stack.db)
    sweep = run(stack, "sweeper", SWEEP)
    assert sweep["released_claims"] + sweep["returned_to_pending"] == 1
    taken_over = run(stack, "dispatcher", SCHEDULED)
    assert taken_over["counts"]["Sent"] == 1

    os.kill(paused.pid, signal.SIGCONT)
    out, err = paused.communicate(timeout=HANG_GUARD_SECONDS)
    assert paused.returncode == 0, err
    assert queue_counts(stack) == {"sent": 1}
    assert len(stack.provider.ledger()) == 1
    resumed = json.loads(out.strip().splitlines()[-1])
    assert resumed["counts"]["Sent"] == 0
    assert resumed["counts"]["LeaseLostBeforeSend"] + resumed["counts"]["DuplicatePrevented"] == 1, resumed[
        "counts"
    ]
