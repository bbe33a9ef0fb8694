"""The operator CLI, run as a process configured by the environment, as an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.stack import ROOT, LocalStack
from devstack.testing import enqueue_contacts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(pg_server: Any) -> Iterator[LocalStack]:
    with LocalStack(database_url=pg_server.admin_url) as running:
        enqueue_contacts(running.db, "whatsapp", ["15550000001", "15550000002"], sender="cli-sender")
        running.provider.set_faults([{"action": "accept_then_drop", "match": {"recipient": "15550000002"}}])
        running.spawn("dispatcher", ROOT / "events" / "dispatcher-scheduled.json").finish()
        yield running


sendonce = LocalStack.cli


def test_stats_are_printed_from_state(stack: LocalStack) -> None:
    result = sendonce(stack, "stats")
    assert result.returncode == 0, result.stderr
    header, row = (
        [cell.strip() for cell in line.replace("┃", "│").split("│")[1:-1]]
        for line in result.stdout.splitlines()
        if "campaign_id" in line or "whatsapp test" in line
    )
    stats = dict(zip(header, row, strict=True))
    assert {k: stats[k] for k in ("total", "sent", "unknown", "pending", "failed")} == {
        "total": "2",
        "sent": "1",
        "unknown": "1",
        "pending": "0",
        "failed": "0",
    }


def test_audit_of_a_contact_as_json(stack: LocalStack) -> None:
    result = sendonce(stack, "audit", "--contact", "15550000001", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert [r["status"] for r in found["queue"]] == ["sent"]
    assert [a["outcome"] for a in found["attempts"]] == ["sent"]
    assert len(found["ledger"]) == 1


def test_resend_needs_the_explicit_risk_flag_and_sent_rows_are_refused(stack: LocalStack) -> None:
    rows = {
        r["recipient"]: r
        for r in json.loads(sendonce(stack, "audit", "--contact", "15550000002", "--json").stdout)["queue"]
    }
    unknown = rows["15550000002"]
    assert unknown["status"] == "unknown"
    refused = sendonce(
        stack, "resolve", str(unknown["queue_id"]), "resend", "--operator", "ops", "--reason", "test"
    )
    assert refused.returncode == 2
    assert "--i-accept-duplicate-risk" in refused.stdout
    sent_row = json.loads(sendonce(stack, "audit", "--contact", "15550000001", "--json").stdout)["queue"][0]
    not_unknown = sendonce(
        stack, "resolve", str(sent_row["queue_id"]), "fail", "--operator", "ops", "--reason", "x"
    )
    assert not_unknown.returncode == 1
    assert "only unknown rows take operator decisions" in not_unknown.stdout


def test_unknown_lists_each_held_row_with_why_and_the_next_step(stack: LocalStack) -> None:
    before = sendonce(stack, "unknown")
    assert before.returncode == 0, before.stderr
    assert "not judged yet by the reconciler" in before.stdout
    assert sendonce(stack, "sweep").returncode == 0
    listed = sendonce(stack, "unknown", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["policy"] == "hold"
    assert row["why"] == "channel policy is hold: an operator decides"
    # No webhook has ever arrived in this stack: the pipe condition names that.
    assert set(row["held_because"].split(",")) == {"grace", "pipe"}
    assert "webhook pipe silent for this sender since never" in row["next_step"]
    text = sendonce(stack, "unknown")
    assert "held: channel policy is hold" in text.stdout and "next: " in text.stdout


def test_operator_marks_an_unknown_row_sent_and_the_decision_is_audited(stack: LocalStack) -> None:
    row = json.loads(sendonce(stack, "audit", "--contact", "15550000002", "--json").stdout)["queue"][0]
    decided = sendonce(
        stack,
        "resolve",
        str(row["queue_id"]),
        "mark-sent",
        "--operator",
        "ops",
        "--reason",
        "seen in the inbox",
        "--provider-message-id",
        "wamid.seen-by-ops",
    )
    assert decided.returncode == 0, decided.stdout + decided.stderr
    audit = json.loads(sendonce(stack, "audit", "--contact", "15550000002", "--json").stdout)
    assert audit["queue"][0]["status"] == "sent"
    assert [(d["decided_by"], d["to_status"]) for d in audit["decisions"]][-1] == ("operator:ops", "sent")


def test_duplicates_redrive_and_migrate_report_cleanly(stack: LocalStack) -> None:
    duplicates = sendonce(stack, "duplicates")
    assert (duplicates.returncode, "no suspected duplicates" in duplicates.stdout) == (0, True)
    redrive = sendonce(stack, "redrive", "--operator", "ops")
    assert redrive.returncode == 0
    assert "requeued 0" in redrive.stdout
    migrate = sendonce(stack, "migrate", "--dry-run")
    assert migrate.returncode == 0
    assert "applied=[]" in migrate.stdout


# --- known failures: one line with the fix, non-zero exit, no traceback -----------------------


def _bare_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any database configuration."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDONCE_") and k != "DATABASE_URL"}
    return {**env, "COLUMNS": "200", **extra}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_no_database_configured() -> None:
    line = _one_line_failure(_run(_bare_env(), "stats"))
    assert line.startswith("sendonce: no database configured: set DATABASE_URL")
    assert 'eval "$(make -s env)"' in line


def test_database_unreachable() -> None:
    # Nothing listens on the discard port: the connection is refused at once.
    env = _bare_env(
        DATABASE_URL="postgresql://sendonce@127.0.0.1:9/sendonce", SENDONCE_DB_CONNECT_TIMEOUT_SECONDS="1"
    )
    line = _one_line_failure(_run(env, "stats"))
    assert line.startswith("sendonce: database unreachable: Postgres at 127.0.0.1:9/sendonce")
    assert "make up" in line


def test_plaintext_url_to_a_remote_host_is_refused_with_the_fix() -> None:
    env = _bare_env(DATABASE_URL="postgresql://sendonce:pw@db.example.com/sendonce")
    line = _one_line_failure(_run(env, "stats"))
    assert "add ?sslmode=verify-full" in line
    assert "pw" not in line.replace("plaintext", "")


def test_schema_not_migrated(pg_server: Any) -> None:
    name = f"sendonce_empty_{uuid.uuid4().hex[:8]}"
    url = pg_server.create(name)
    try:
        line = _one_line_failure(_run(_bare_env(DATABASE_URL=url), "stats"))
    finally:
        pg_server.drop(name)
    assert line.startswith("sendonce: schema not migrated (")
    assert line.endswith("run `sendonce migrate`")


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "--campaign", "00000000-0000-4000-8000-000000000000"],
        ["audit", "--campaign", "00000000-0000-4000-8000-000000000000"],
        ["campaign", "status", "00000000-0000-4000-8000-000000000000"],
        ["campaign", "pause", "00000000-0000-4000-8000-000000000000", "--operator", "ops"],
    ],
)
def test_unknown_campaign(stack: LocalStack, args: list[str]) -> None:
    line = _one_line_failure(sendonce(stack, *args))
    assert line == (
        "sendonce: unknown campaign: no campaign 00000000-0000-4000-8000-000000000000; "
        "`sendonce stats` lists the campaigns"
    )


def test_templates_sync_status_and_list(stack: LocalStack) -> None:
    """`sendonce templates`: nothing configured is one line with the fix; configured, a sync
    lists the WABA's templates from Graph with the token from the stack's secret."""
    unconfigured = sendonce(stack, "templates", "sync")
    assert unconfigured.returncode == 2
    assert (
        "SENDONCE_WHATSAPP_BUSINESS_ACCOUNTS" in unconfigured.stderr
        and "Traceback" not in unconfigured.stderr
    )

    template = {"name": "welcome", "language": "de", "status": "APPROVED", "components": []}
    stack.provider.set_templates("waba-cli", ["phone-cli"], [template])
    env = {"SENDONCE_WHATSAPP_BUSINESS_ACCOUNTS": json.dumps({"waba-cli": ["phone-cli"], "waba-gone": []})}
    synced = sendonce(stack, "templates", "sync", "--json", env=env)
    assert synced.returncode == 1, "one WABA failed"
    report = json.loads(synced.stdout)
    assert report["synced"] == {"waba-cli": 1} and list(report["failed"]) == ["waba-gone"]

    status = {
        r["business_account_id"]: r
        for r in json.loads(sendonce(stack, "templates", "status", "--json").stdout)
    }
    assert status["waba-cli"]["approved"] == 1 and status["waba-gone"]["last_error"]
    listed = sendonce(stack, "templates", "list", "--waba", "waba-cli")
    assert listed.returncode == 0 and "welcome" in listed.stdout
