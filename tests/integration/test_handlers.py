"""Every sample event through its real handler, in its own process, configured by the
environment, exactly as ``sam local invoke -e events/<file>.json`` would run it.

Webhook samples are covered the same way in test_webhooks.py and test_handler_processes.py;
CloudFormation's requests to the migrate function (``migrate-cfn-*``), which answer at a URL,
in test_deploy.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import ROOT, LocalStack
from shared.queue import QueueRepository

pytestmark = pytest.mark.integration
EVENTS = ROOT / "events"
FUNCTION_OF = {"dispatcher": "dispatcher", "sweeper": "sweeper", "enqueue": "enqueue", "migrate": "migrate"}


def function_for(event: Path) -> str:
    return FUNCTION_OF[event.stem.split("-")[0]]


def sample_events() -> list[Path]:
    return sorted(
        p
        for p in EVENTS.glob("*.json")
        if not p.name.startswith(("webhook-", "migrate-cfn-")) and p.name != "env.json"
    )


@pytest.fixture(scope="module")
def stack(pg_server: Any) -> Iterator[LocalStack]:
    with LocalStack(database_url=pg_server.admin_url, database_from_secret=True) as running:
        yield running


def snapshot(stack: LocalStack) -> dict[str, int]:
    return QueueRepository(stack.db).status_counts()


def test_every_sample_event_has_a_handler() -> None:
    assert {p.name for p in sample_events()} >= {
        "dispatcher-scheduled.json",
        "dispatcher-manual.json",
        "sweeper-scheduled.json",
        "migrate.json",
        "enqueue-campaign.json",
        "enqueue-linkedin.json",
        "enqueue-messenger.json",
    }
    for event in sample_events():
        assert (ROOT / "functions" / function_for(event) / "app.py").exists()


def test_sample_events_run_through_their_handlers(stack: LocalStack) -> None:
    # Enqueue first so the dispatcher and sweeper samples have work; migrate is a no-op now.
    order = sorted(
        sample_events(), key=lambda p: ("enqueue", "migrate", "dispatcher", "sweeper").index(function_for(p))
    )
    results = {event.name: stack.spawn(function_for(event), event).finish() for event in order}

    enqueued = results["enqueue-campaign.json"]
    assert enqueued["duplicate_contacts_dropped"] >= 1, "the sample repeats a contact"
    assert results["migrate.json"]["applied"] == []
    assert results["dispatcher-manual.json"]["batches"] <= 2
    assert results["sweeper-scheduled.json"]["ran"] is True
    sent = sum(r["counts"]["Sent"] for name, r in results.items() if name.startswith("dispatcher"))
    enqueued_rows = sum(r["rows_enqueued"] for name, r in results.items() if name.startswith("enqueue"))
    # The samples' follow-up steps are delayed by days: those stay pending, everything due is sent.
    assert snapshot(stack) == {"sent": sent, "pending": enqueued_rows - sent}
    assert sent == len(stack.provider.ledger())
    again = stack.spawn("enqueue", EVENTS / "enqueue-campaign.json").finish()
    assert again["rows_enqueued"] == 0, "replaying an enqueue event adds nothing"


@pytest.mark.parametrize("event", sorted((EVENTS / "invalid").glob("*.json")), ids=lambda p: p.name)
def test_malformed_events_fail_clearly_and_change_nothing(stack: LocalStack, event: Path) -> None:
    before = snapshot(stack)
    invocation = stack.spawn(event.stem.split("-")[0], event)
    with pytest.raises(RuntimeError) as failed:
        invocation.finish()
    error = invocation.error()
    assert error["errorType"] == "InvalidEventError"
    assert error["errorMessage"].startswith("invalid ")
    assert "problems)" in error["errorMessage"]
    assert "exit code 1" in str(failed.value)
    assert snapshot(stack) == before


def written(stack: LocalStack) -> dict[str, Any]:
    row = stack.db.fetch_one(
        "SELECT (SELECT count(*) FROM sender_accounts) AS senders, (SELECT count(*) FROM contacts) AS contacts,"
        " (SELECT count(*) FROM campaign_contacts) AS members,"
        " (SELECT array_agg(default_region ORDER BY id) FROM sender_accounts) AS regions"
    )
    assert row is not None
    return {**dict(row), "queue": snapshot(stack)}


def test_a_campaign_reused_with_another_sender_fails_clearly_and_writes_nothing(stack: LocalStack) -> None:
    event = json.loads((EVENTS / "enqueue-campaign.json").read_text())
    event["campaign_id"] = str(uuid.uuid4())
    stack.spawn("enqueue", event).finish()
    before = written(stack)
    other = {
        **event,
        "sender_provider_id": "998877665544332",
        "sender_default_region": "GB",
        "contacts": [{"address": "07700 900123"}],
    }
    invocation = stack.spawn("enqueue", other)
    with pytest.raises(RuntimeError):
        invocation.finish()
    error = invocation.error()
    assert error["errorType"] == "CampaignSenderConflictError"
    assert error["errorMessage"].startswith(f"campaign {event['campaign_id']} sends from whatsapp sender")
    assert "'106540352242922'" in error["errorMessage"] and "'998877665544332'" in error["errorMessage"]
    assert written(stack) == before


def test_handler_with_the_database_down_fails_fast_and_clearly(stack: LocalStack) -> None:
    env = stack.env(
        DATABASE_URL="postgresql://sendonce@127.0.0.1:1/nowhere", SENDONCE_DB_CONNECT_TIMEOUT_SECONDS="1"
    )
    invocation = stack.spawn("dispatcher", EVENTS / "dispatcher-scheduled.json", env=env)
    with pytest.raises(RuntimeError):
        invocation.finish()
    error = invocation.error()
    assert error["errorType"] == "DatabaseUnavailableError"
    assert "127.0.0.1:1/nowhere is unreachable" in error["errorMessage"]


def test_bad_configuration_fails_at_cold_start_with_the_field_name(stack: LocalStack) -> None:
    env = stack.env(SENDONCE_BATCH_SIZE="lots")
    invocation = stack.spawn("dispatcher", EVENTS / "dispatcher-scheduled.json", env=env)
    with pytest.raises(RuntimeError, match="batch_size"):
        invocation.finish()
