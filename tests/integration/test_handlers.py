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
FUNCTION_OF = {
    "dispatcher": "dispatcher",
    "sweeper": "sweeper",
    "enqueue": "enqueue",
    "migrate": "migrate",
    "control": "control",
}
# Enqueue first so the dispatcher and sweeper samples have work; migrate is a no-op now. The
# control samples set up their campaign before the dispatcher runs; cancel comes last, after
# the first steps went out, so it shows sent rows staying sent.
ORDER = [
    "enqueue-campaign.json",
    "enqueue-linkedin.json",
    "enqueue-messenger.json",
    "migrate.json",
    "control-campaign-create.json",
    "control-campaign-start.json",
    "control-campaign-pause.json",
    "control-campaign-resume.json",
    "control-campaign-stop-contact.json",
    "control-sender-configure.json",
    "control-sender-pause.json",
    "control-sender-resume.json",
    "dispatcher-scheduled.json",
    "dispatcher-manual.json",
    "sweeper-scheduled.json",
    "control-campaign-cancel.json",
]


def function_for(event: Path) -> str:
    return FUNCTION_OF[event.stem.split("-")[0]]


def sample_events() -> list[Path]:
    return sorted(
        p
        for p in EVENTS.glob("*.json")
        # contacts-* read a CSV object from S3: test_contacts_import.py uploads one and runs them.
        if not p.name.startswith(("webhook-", "migrate-cfn-", "contacts-")) and p.name != "env.json"
    )


@pytest.fixture(scope="module")
def stack(pg_server: Any) -> Iterator[LocalStack]:
    with LocalStack(database_url=pg_server.admin_url, database_from_secret=True) as running:
        yield running


def snapshot(stack: LocalStack) -> dict[str, int]:
    return QueueRepository(stack.db).status_counts()


def test_every_sample_event_has_a_handler() -> None:
    assert {p.name for p in sample_events()} == set(ORDER)
    for event in sample_events():
        assert (ROOT / "functions" / function_for(event) / "app.py").exists()


def test_sample_events_run_through_their_handlers(stack: LocalStack) -> None:
    results = {name: stack.spawn(function_for(EVENTS / name), EVENTS / name).finish() for name in ORDER}

    enqueued = results["enqueue-campaign.json"]
    assert enqueued["duplicate_contacts_dropped"] >= 1, "the sample repeats a contact"
    assert results["migrate.json"]["applied"] == []
    assert results["dispatcher-manual.json"]["batches"] <= 2
    assert results["sweeper-scheduled.json"]["ran"] is True

    created = results["control-campaign-create.json"]
    assert (created["status"], created["contacts_added"], created["rows_queued"]) == ("draft", 3, 0)
    started = results["control-campaign-start.json"]
    # Ada is already in the spring reactivation campaign of the pool's first number: skipped.
    assert started["skipped_by_reason"] == {"cross_campaign": 1}
    assert (started["status"], started["rows_queued"]) == ("active", 2)
    assert started["assigned_by_sender"] == {"106540352242922": 1, "106540352242923": 1}
    assert [results[f"control-campaign-{c}.json"]["status"] for c in ("pause", "resume")] == [
        "paused",
        "active",
    ]
    assert results["control-campaign-stop-contact.json"]["rows_cancelled"] == 1
    assert results["control-sender-configure.json"]["configured"]["rate_per_second"] == 5
    assert results["control-sender-pause.json"]["paused_until"].startswith("2030-01-01")
    assert results["control-sender-resume.json"]["paused_until"] is None
    cancelled = results["control-campaign-cancel.json"]
    assert (cancelled["status"], cancelled["rows_cancelled"]) == ("cancelled", 1), "only its follow-up"

    sent = sum(r["counts"]["Sent"] for name, r in results.items() if name.startswith("dispatcher"))
    first_steps = sum(r["rows_enqueued"] for name, r in results.items() if name.startswith("enqueue"))
    # Every first step went out (the stopped contact's never did): its 8 sample rows and the
    # control campaign's one.
    assert sent == first_steps + 1 == 9
    assert sent == len(stack.provider.ledger())
    # Each sent first step of a two-step campaign queued its follow-up, due its delay after the
    # first step was sent: WhatsApp (4) and LinkedIn (2) stay pending for days, the control
    # campaign's was cancelled with it. Messenger has one step: nothing follows.
    follow_ups = stack.db.fetch_all(
        "SELECT f.status::text AS status, c.name, extract(epoch FROM f.scheduled_for - s.sent_at) AS delay "
        "FROM send_queue f JOIN campaigns c ON c.id = f.campaign_id "
        "JOIN send_queue s ON s.campaign_id = f.campaign_id AND s.contact_id = f.contact_id "
        "AND s.message_type <> f.message_type WHERE f.message_type = 'follow_up'"
    )
    assert sorted((r["status"], r["name"], int(r["delay"])) for r in follow_ups) == sorted(
        [("pending", "Spring reactivation (WhatsApp)", 172800)] * 4
        + [("pending", "Founder outreach (LinkedIn)", 259200)] * 2
        + [("cancelled", "Spring follow-up (WhatsApp, two numbers)", 172800)]
    )
    assert snapshot(stack) == {"sent": sent, "pending": 6, "cancelled": 2}
    # Nothing is left to send in the one-step Messenger campaign: the sweeper completed it.
    statuses = {r["name"]: r["status"] for r in stack.db.fetch_all("SELECT name, status FROM campaigns")}
    assert statuses["Order follow-up (Messenger)"] == "completed"
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


def test_the_enqueue_handler_answers_which_contacts_the_24_hour_window_refused(stack: LocalStack) -> None:
    """The Messenger sample (plain text: messaging_type UPDATE) to pages' contacts who never
    wrote, with the windows on as deployed: each is refused with the rule in the answer, and
    nothing is written for them (the campaign and its sender are created as for any enqueue)."""
    event = json.loads((EVENTS / "enqueue-messenger.json").read_text())
    event["campaign_id"] = str(uuid.uuid4())
    before = written(stack)
    answer = stack.spawn("enqueue", event, env=stack.env(SENDONCE_CHANNEL_WINDOWS="true")).finish()
    assert (answer["rows_enqueued"], answer["contacts_rejected"]) == (0, 2)
    assert answer["rejected_by_reason"] == {"window_closed": 2}
    assert [r["index"] for r in answer["rejected_examples"]] == [0, 1]
    for refused in answer["rejected_examples"]:
        assert refused["reason"] == "window_closed"
        assert refused["detail"].startswith(
            "step 1 (post_purchase) needs Messenger's 24-hour standard messaging window"
        )
        assert refused["detail"].endswith(
            "use messaging_type MESSAGE_TAG with a tag Meta allows for this message"
        )
    after = written(stack)
    assert [after[k] for k in ("contacts", "members", "queue")] == [
        before[k] for k in ("contacts", "members", "queue")
    ]
