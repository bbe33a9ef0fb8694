"""Every log line of a chaos run and of the demo, read back from the processes' output: no
phone number, Messenger PSID, LinkedIn id, message body or token appears in any of them.

The handlers log at DEBUG here, the most they ever say, while overlapping dispatchers meet
provider faults (errors, refusals, a paused sender, accepted-then-dropped requests, rate
limits) and sweepers settle what they left behind: the paths where error messages, quoted
database rows and provider responses reach the logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.aws import TEST_SECRETS
from devstack.demo import demo_campaigns
from devstack.stack import ROOT, LocalStack
from devstack.testing import TEST_TOKENS, end_holds, enqueue_contacts, expire_leases
from tests.chaos.demo_run import DEMO_CONTACTS, DemoRun

pytestmark = pytest.mark.chaos
SCHEDULED = ROOT / "events" / "dispatcher-scheduled.json"
SWEEP = ROOT / "events" / "sweeper-scheduled.json"
HANG_GUARD_SECONDS = 600
# The shortest dispatcher timeout the settings accept (twice the 59 s stop-claiming margin, plus
# 1 s) leaves a claiming budget shorter than Messenger's 60 s throttle hold (code 613), so the
# dispatchers end instead of waiting the hold out, idle, for a minute; every row not held is
# still sent before they end. The test then moves the clock past the hold (``end_holds``) and the
# next tick sends the held rows.
DISPATCHER_TIMEOUT = 119

PHONES = [f"1555{i:07d}" for i in range(24)]
# Messenger page-scoped ids are long digit strings.
PSIDS = [f"7{i:015d}" for i in range(12)]
LINKEDIN_IDS = [f"ACoAAB{i:04d}xYz9Qw" for i in range(12)]
BODIES = {
    "whatsapp": "Confidential offer for you: code 5pQ7 whatsapp",
    "messenger": "Private note to our page visitor zK3m",
    "linkedin": "Personal invitation to talk, ref Lx8v",
}
TOKENS = sorted({*TEST_SECRETS.values(), *TEST_TOKENS.values()})


@pytest.fixture
def stack(pg_server: Any) -> Iterator[LocalStack]:
    overrides = {"send_concurrency": 4, "dispatcher_timeout_seconds": DISPATCHER_TIMEOUT}
    with LocalStack(database_url=pg_server.admin_url, settings_overrides=overrides) as running:
        yield running


def debug_env(stack: LocalStack) -> dict[str, str]:
    return {**stack.env(), "POWERTOOLS_LOG_LEVEL": "DEBUG"}


def captured_lines(workdir: Path) -> list[str]:
    """Every line the handler processes wrote (stdout: results, EMF; stderr: logs)."""
    lines: list[str] = []
    for path in sorted(workdir.glob("*.out")) + sorted(workdir.glob("*.err")):
        lines += path.read_text(errors="replace").splitlines()
    return lines


def leaks(lines: list[str], needles: dict[str, list[str]]) -> list[str]:
    found = []
    for line in lines:
        for kind, values in needles.items():
            for value in values:
                if value in line:
                    found.append(f"{kind} {value!r}: {line[:300]}")
    return found


def test_chaos_run_logs_no_contact_data_body_or_token(stack: LocalStack) -> None:
    enqueue_contacts(stack.db, "whatsapp", PHONES, sender="wa-sender", body=BODIES["whatsapp"])
    enqueue_contacts(stack.db, "messenger", PSIDS, sender="page-1", body=BODIES["messenger"])
    enqueue_contacts(stack.db, "linkedin", LINKEDIN_IDS, sender="li-account", body=BODIES["linkedin"])
    stack.provider.set_faults(
        {
            "latency_ms": 2,
            "rules": [
                {"action": "server_error", "match": {"recipient": PHONES[0:3]}},
                {"action": "permanent", "match": {"recipient": [PHONES[3], PSIDS[0]]}},
                {"action": "accept_then_drop", "match": {"recipient": [PHONES[4], LINKEDIN_IDS[0]]}},
                {"action": "accept_then_5xx", "match": {"recipient": PSIDS[1]}},
                {"action": "sender_blocked", "match": {"recipient": LINKEDIN_IDS[5]}},
                {"action": "rate_limit", "times": 2, "match": {"channel": "messenger"}},
            ],
        }
    )
    env = debug_env(stack)
    dispatchers = [
        stack.spawn(
            "dispatcher", SCHEDULED, timeout_seconds=DISPATCHER_TIMEOUT, env=env, log_name=f"dispatcher-{n}"
        )
        for n in range(3)
    ]
    reports = [d.finish(timeout=HANG_GUARD_SECONDS) for d in dispatchers]
    # Leases and throttle holds run out (the clock, moved by SQL), the sweeper settles, the next
    # tick sends more.
    expire_leases(stack.db)
    end_holds(stack.db)
    stack.spawn("sweeper", SWEEP, env=env).finish(timeout=HANG_GUARD_SECONDS)
    stack.spawn(
        "dispatcher", SCHEDULED, timeout_seconds=DISPATCHER_TIMEOUT, env=env, log_name="dispatcher-again"
    ).finish(timeout=HANG_GUARD_SECONDS)
    stack.spawn("sweeper", SWEEP, env=env, log_name="sweeper-again").finish(timeout=HANG_GUARD_SECONDS)

    counts = {k: sum(r["counts"][k] for r in reports) for k in ("Sent", "Failed", "Ambiguous", "Retried")}
    assert counts["Sent"] > 0 and counts["Failed"] > 0 and counts["Ambiguous"] > 0, counts
    lines = captured_lines(stack.workdir)
    # The run said a lot, at DEBUG, about these very rows: a capture that read nothing (or
    # the wrong files) fails here rather than passing vacuously.
    messages = [line for line in lines if '"level":"DEBUG"' in line]
    assert len(messages) >= 3, f"{len(lines)} lines captured, {len(messages)} at DEBUG"
    assert any('"message":"sent"' in line for line in lines)
    assert any("permanent failure" in line for line in lines)
    assert any("sender paused" in line for line in lines)
    needles = {
        "phone": PHONES,
        "psid": PSIDS,
        "linkedin id": LINKEDIN_IDS,
        "body": list(BODIES.values()),
        "token": TOKENS,
    }
    assert leaks(lines, needles) == []


def test_demo_logs_no_contact_data_body_or_token(demo_run: DemoRun) -> None:
    """`make demo`, kept logs included: what a new user sees, and what its handlers wrote.
    The run is the one the demo's verdict test judges (tests/chaos/conftest.py)."""
    keep = demo_run.logs
    assert demo_run.returncode == 0, demo_run.tail()
    campaigns = demo_campaigns(DEMO_CONTACTS)
    addresses: list[str] = []
    bodies: list[str] = []
    for campaign in campaigns:
        contacts = campaign["contacts"]
        steps = campaign["steps"]
        assert isinstance(contacts, list) and isinstance(steps, list)
        addresses += [str(c["address"]) for c in contacts]
        bodies += [str(s["body"]) for s in steps]
    # A phone as stored (digits only), as typed, and as its national part.
    phones = {re.sub(r"\D", "", a) for a in addresses if a.startswith("+")}
    others = {a for a in addresses if not a.startswith("+")}
    lines = demo_run.stdout.splitlines() + demo_run.stderr.splitlines() + captured_lines(keep)
    assert any("verdict" in line for line in lines)
    assert len(captured_lines(keep)) > 10, "the demo's handler output was not found"
    needles = {"phone": sorted(phones), "address": sorted(others), "body": bodies, "token": TOKENS}
    assert leaks(lines, needles) == []
