"""``sendonce campaign ...`` and ``sendonce sender ...`` as an operator runs them: OS processes
configured by the environment, against the local stack."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import ROOT, LocalStack

pytestmark = pytest.mark.integration
SCHEDULED = ROOT / "events" / "dispatcher-scheduled.json"


@pytest.fixture(scope="module")
def stack(pg_server: Any) -> Iterator[LocalStack]:
    with LocalStack(database_url=pg_server.admin_url) as running:
        yield running


sendonce = LocalStack.cli


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def spec_file(tmp_path: Path, campaign_id: uuid.UUID, addresses: list[str], senders: list[str]) -> Path:
    path = tmp_path / "campaign.json"
    path.write_text(
        json.dumps(
            {
                "campaign_id": str(campaign_id),
                "name": "cli campaign",
                "channel": "whatsapp",
                "senders": senders,
                "steps": [
                    {"message_type": "intro", "body": "Hello from the CLI"},
                    {"message_type": "follow_up", "body": "Still there?", "delay_seconds": 86400},
                ],
                "contacts": [{"address": a} for a in addresses],
            }
        )
    )
    return path


def status_json(stack: LocalStack, campaign_id: uuid.UUID) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(ok(sendonce(stack, "campaign", "status", str(campaign_id), "--json")))
    return found


def test_campaign_lifecycle_through_the_cli(stack: LocalStack, tmp_path: Path) -> None:
    campaign = uuid.uuid4()
    spec = spec_file(tmp_path, campaign, ["15551110001", "15551110002", "15551110003"], ["cli-a", "cli-b"])
    created = ok(sendonce(stack, "campaign", "create", "--file", str(spec), "--operator", "ops"))
    assert "status: draft" in created
    assert "status: active" in ok(sendonce(stack, "campaign", "start", str(campaign), "--operator", "ops"))
    status = status_json(stack, campaign)
    assert [(s["message_type"], s["queued"]) for s in status["steps"]] == [("intro", 3), ("follow_up", 0)]
    assert sum(s["contacts"] for s in status["senders"]) == 3

    refused = sendonce(stack, "campaign", "start", str(campaign), "--operator", "ops")
    assert refused.returncode == 0, "starting an active campaign again changes nothing"
    assert "status: paused" in ok(sendonce(stack, "campaign", "pause", str(campaign), "--operator", "ops"))
    again = sendonce(stack, "campaign", "start", str(campaign), "--operator", "ops")
    assert again.returncode == 1
    assert "CampaignStateError" in again.stdout and "use resume" in again.stdout
    assert "status: active" in ok(sendonce(stack, "campaign", "resume", str(campaign), "--operator", "ops"))

    stopped = ok(
        sendonce(
            stack,
            "campaign",
            "stop-contact",
            "--channel",
            "whatsapp",
            "--address",
            "+1 555 111 0003",
            "--campaign",
            str(campaign),
            "--operator",
            "ops",
            "--reason",
            "asked by phone",
        )
    )
    assert "rows_cancelled: 1" in stopped
    stack.spawn("dispatcher", SCHEDULED).finish()
    status = status_json(stack, campaign)
    assert [(s["sent"], s["queued"], s["cancelled"]) for s in status["steps"]] == [(2, 0, 1), (0, 2, 0)]
    assert status["contacts"] == {"active": 2, "stopped:operator": 1}

    cancelled = ok(
        sendonce(stack, "campaign", "cancel", str(campaign), "--operator", "ops", "--reason", "done")
    )
    assert "rows_cancelled: 2" in cancelled
    status = status_json(stack, campaign)
    assert status["status"] == "cancelled"
    assert [(s["sent"], s["queued"], s["cancelled"]) for s in status["steps"]] == [(2, 0, 1), (0, 0, 2)]


def _read_until(path: Path, condition: Callable[[str], bool], what: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text()
        if condition(text):
            return text
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; output so far:\n{path.read_text()[-2000:]}")


def test_status_watch_shows_live_progress_and_exits_on_ctrl_c(stack: LocalStack, tmp_path: Path) -> None:
    campaign = uuid.uuid4()
    addresses = [f"1555222{i:04d}" for i in range(5)]
    spec = spec_file(tmp_path, campaign, addresses, ["watch-a"])
    ok(sendonce(stack, "campaign", "create", "--file", str(spec), "--start", "--operator", "ops"))
    out = tmp_path / "watch.out"
    with out.open("w") as sink:
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devstack.cli",
                "campaign",
                "status",
                str(campaign),
                "--watch",
                "--interval",
                "0.2",
            ],
            env={**stack.env(), "COLUMNS": "200"},
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        # A row of the steps table: step, type, delay, queued, sent, failed, unknown, cancelled, replied.
        _read_until(
            out,
            lambda t: _step_row(t, "intro") == ["1", "intro", "0s", "5", "0", "0", "0", "0", "0"],
            "5 queued",
        )
        stack.spawn("dispatcher", SCHEDULED).finish()
        _read_until(
            out,
            lambda t: _step_row(t, "intro") == ["1", "intro", "0s", "0", "5", "0", "0", "0", "0"],
            "5 sent",
        )
        _read_until(out, lambda t: _step_row(t, "follow_up")[3:5] == ["5", "0"], "5 follow-ups queued")
        assert "watch-a" in out.read_text()
    finally:
        watcher.send_signal(signal.SIGINT)
        code = watcher.wait(timeout=60)
    assert code == 0
    assert out.read_text().rstrip().endswith("stopped watching")


def _step_row(text: str, message_type: str) -> list[str]:
    """The last rendering's row of a step, as cells."""
    rows = [line for line in text.splitlines() if f" {message_type} " in line and "│" in line]
    if not rows:
        return []
    return [cell.strip() for cell in rows[-1].split("│")[1:-1]]


def test_sender_show_pause_resume_configure(stack: LocalStack, tmp_path: Path) -> None:
    campaign = uuid.uuid4()
    ok(
        sendonce(
            stack,
            "campaign",
            "create",
            "--file",
            str(spec_file(tmp_path, campaign, [], ["cfg-1"])),
            "--operator",
            "ops",
        )
    )
    account = ["--channel", "whatsapp", "--account", "cfg-1"]

    def shown() -> dict[str, Any]:
        found: dict[str, Any] = json.loads(ok(sendonce(stack, "sender", "show", *account, "--json")))
        return found

    assert shown()["paused_until"] is None
    # No end: paused until resumed (stored as Postgres 'infinity', still readable).
    ok(sendonce(stack, "sender", "pause", *account, "--operator", "ops", "--reason", "token revoked"))
    paused = shown()
    assert (paused["paused_until"][:4], paused["pause_reason"], paused["paused_by"]) == (
        "9999",
        "token revoked",
        "operator:ops",
    )
    ok(sendonce(stack, "sender", "resume", *account, "--operator", "ops"))
    assert shown()["paused_until"] is None

    ok(
        sendonce(
            stack,
            "sender",
            "configure",
            *account,
            "--operator",
            "ops",
            "--rate",
            "5",
            "--timezone",
            "Europe/Berlin",
            "--window",
            "09:00-18:00",
            "--window-days",
            "1,2,3,4,5",
        )
    )
    ok(sendonce(stack, "sender", "configure", *account, "--operator", "ops", "--burst", "3"))
    configured = shown()["configured"]
    assert {
        k: configured[k]
        for k in ("rate_per_second", "burst", "timezone", "window_start", "window_end", "window_days")
    } == {
        "rate_per_second": 5.0,
        "burst": 3,
        "timezone": "Europe/Berlin",
        "window_start": "09:00:00",
        "window_end": "18:00:00",
        "window_days": [1, 2, 3, 4, 5],
    }, "a second configure keeps what it does not name"
    ok(sendonce(stack, "sender", "configure", *account, "--operator", "ops", "--reset", "--rate", "2"))
    configured = shown()["configured"]
    assert (configured["rate_per_second"], configured["burst"], configured["window_start"]) == (
        2.0,
        None,
        None,
    )
    bad = sendonce(stack, "sender", "configure", *account, "--operator", "ops", "--timezone", "Mars/Olympus")
    assert bad.returncode == 1 and "not an IANA time zone" in bad.stdout
    unknown = sendonce(stack, "sender", "show", "--channel", "whatsapp", "--account", "nobody")
    assert unknown.returncode == 1 and "UnknownSenderError" in unknown.stdout
