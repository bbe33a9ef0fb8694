"""Evidence of absence, end to end: real Postgres, DynamoDB on moto, the fake provider over
HTTP sending signed status webhooks to the webhook logic on a loopback port.

An `unknown` row is made the way production makes one: the provider answers 500 before
accepting (``server_error``). The other messages of the same sender are accepted and their
webhooks arrive, so the pipe is alive unless a test says otherwise. Settings shrink G to 0
where a test needs the grace period over: no test waits on a clock.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.engine_testing import META_SECRET, UNIPILE_SECRET, deliver, webhook_deps, whatsapp_status
from devstack.fake_provider import FakeProvider
from devstack.fake_webhooks import WebhookConfig, WebhookEmitter, WebhookReceiver
from devstack.testing import enqueue_contacts, executed_plan, outlive_claims, plan_nodes
from shared.dispatch import DispatchDeps, dispatch
from shared.events import DispatchRequest
from shared.providers.outcome import Channel
from shared.reconcile import ReconcileDeps, audit, reconcile_unknown
from shared.storage import sql
from shared.storage.db import Database
from shared.sweeper import SweepDeps, sweep

pytestmark = pytest.mark.integration
MANUAL = DispatchRequest(source="sendonce.manual")
HANG_GUARD_SECONDS = 120
TARGET = "15550009999"
OTHERS = [f"1555000{i:04d}" for i in range(5)]


class Plenty:
    def get_remaining_time_in_millis(self) -> int:
        return 10 * 60 * 1000


@pytest.fixture
def webhooks(database: Database, fake_provider: FakeProvider) -> Iterator[WebhookEmitter]:
    receiver = WebhookReceiver(webhook_deps(database))
    url = receiver.start()
    emitter = fake_provider.send_webhooks(
        WebhookConfig(url=url, meta_app_secret=META_SECRET, unipile_secret=UNIPILE_SECRET)
    )
    assert emitter is not None
    yield emitter
    fake_provider.send_webhooks(None)
    receiver.stop()


def delivered_all(emitter: WebhookEmitter) -> None:
    """Wait until every scheduled webhook was delivered (a hang guard, not a timer)."""
    ceiling = time.monotonic() + HANG_GUARD_SECONDS
    while emitter.pending():
        assert time.monotonic() < ceiling, f"webhooks stuck: {dict(emitter.counts)}"
        time.sleep(0.02)


def reconciler(deps: DispatchDeps, **settings: Any) -> ReconcileDeps:
    config = deps.settings.model_copy(update={"unknown_policy_whatsapp": "resend_if_silent", **settings})
    return ReconcileDeps(config, deps.queue, deps.guard)


def make_unknown(database: Database, deps: DispatchDeps, fake: FakeProvider, emitter: WebhookEmitter) -> int:
    """Five messages accepted with their webhooks, and TARGET answered 500 before acceptance."""
    enqueue_contacts(database, "whatsapp", [*OTHERS, TARGET])
    fake.set_faults([{"action": "server_error", "match": {"recipient": TARGET}, "times": 1}])
    dispatch(deps, MANUAL, Plenty())
    fake.set_faults([])
    delivered_all(emitter)
    outlive_claims(database)
    row = database.fetch_one(
        "SELECT q.id, q.status::text AS status FROM send_queue q JOIN contacts c ON c.id = q.contact_id "
        "WHERE c.address = %(a)s",
        {"a": TARGET},
    )
    assert row is not None and row["status"] == "unknown"
    return int(row["id"])


def state(database: Database, queue_id: int) -> dict[str, Any]:
    row = database.fetch_one(
        "SELECT status::text AS status, attempts, absence_check FROM send_queue WHERE id = %(q)s",
        {"q": queue_id},
    )
    assert row is not None
    return dict(row)


def copies_to(fake: FakeProvider, recipient: str) -> int:
    return Counter(m["recipient"] for m in fake.ledger())[recipient]


def test_silence_with_a_live_pipe_requeues_once_and_sends_once(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, webhooks: WebhookEmitter
) -> None:
    queue_id = make_unknown(database, deps, fake_provider, webhooks)
    rec = reconciler(deps, absence_grace_seconds=0)
    report = reconcile_unknown(rec)
    assert report.resent_on_absence == 1
    assert state(database, queue_id)["status"] == "pending"
    # A second sweep finds nothing to requeue: the row is no longer unknown.
    assert reconcile_unknown(rec).resent_on_absence == 0
    dispatch(deps, MANUAL, Plenty())
    assert state(database, queue_id)["status"] == "sent"
    assert copies_to(fake_provider, TARGET) == 1
    decisions = audit(database, address=TARGET)["decisions"]
    requeue = [d for d in decisions if d["to_status"] == "pending"]
    assert len(requeue) == 1
    assert requeue[0]["reason"].startswith("policy resend_if_silent: evidence of absence")
    evidence = requeue[0]["evidence"]
    assert evidence["policy"] == "resend_if_silent"
    assert evidence["evidence"]["sender_messages_heard_in_window"] == 5
    assert evidence["evidence"]["events_for_key"] == 0


def test_grace_not_over_holds(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, webhooks: WebhookEmitter
) -> None:
    queue_id = make_unknown(database, deps, fake_provider, webhooks)
    reconcile_unknown(reconciler(deps, absence_grace_seconds=3600))
    row = state(database, queue_id)
    assert row["status"] == "unknown" and row["absence_check"]["held_because"] == ["grace"]


def test_an_unexplained_status_for_the_recipient_holds(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, webhooks: WebhookEmitter
) -> None:
    queue_id = make_unknown(database, deps, fake_provider, webhooks)
    # A status for the person with a provider id no ledger row knows, and no key.
    deliver(database, Channel.WHATSAPP, whatsapp_status(TARGET, "delivered", wamid="wamid.unexplained"))
    reconcile_unknown(reconciler(deps, absence_grace_seconds=0))
    row = state(database, queue_id)
    assert row["status"] == "unknown" and row["absence_check"]["held_because"] == ["heard"]


def test_a_silent_pipe_holds(database: Database, deps: DispatchDeps, fake_provider: FakeProvider) -> None:
    # No webhooks at all: silence proves nothing.
    enqueue_contacts(database, "whatsapp", [*OTHERS, TARGET])
    fake_provider.set_faults([{"action": "server_error", "match": {"recipient": TARGET}, "times": 1}])
    dispatch(deps, MANUAL, Plenty())
    outlive_claims(database)
    reconcile_unknown(reconciler(deps, absence_grace_seconds=0))
    (row,) = database.fetch_all(
        "SELECT status::text AS status, absence_check FROM send_queue WHERE status <> 'sent'"
    )
    assert row["status"] == "unknown" and row["absence_check"]["held_because"] == ["pipe"]
    assert "webhook pipe silent for this sender since never" in row["absence_check"]["reason"]


def test_too_few_messages_of_the_sender_around_the_attempt_hold(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, webhooks: WebhookEmitter
) -> None:
    queue_id = make_unknown(database, deps, fake_provider, webhooks)
    reconcile_unknown(reconciler(deps, absence_grace_seconds=0, absence_min_pipe_messages=6))
    row = state(database, queue_id)
    assert row["status"] == "unknown" and row["absence_check"]["held_because"] == ["pipe"]


def test_attempts_used_up_hold(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, webhooks: WebhookEmitter
) -> None:
    queue_id = make_unknown(database, deps, fake_provider, webhooks)
    with database.connection() as conn:
        conn.execute("UPDATE send_queue SET max_attempts = attempts WHERE id = %(q)s", {"q": queue_id})
    reconcile_unknown(reconciler(deps, absence_grace_seconds=0))
    row = state(database, queue_id)
    assert row["status"] == "unknown" and row["absence_check"]["held_because"] == ["attempts"]


def test_a_known_linkedin_chat_without_a_read_back_holds(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, webhooks: WebhookEmitter
) -> None:
    contacts = [f"ACoAA{i:04d}" for i in range(5)]
    enqueue_contacts(database, "linkedin", contacts)
    dispatch(deps, MANUAL, Plenty())  # every chat is known now
    # A second campaign of the same sender to a known chat; the provider answers 500 before accepting.
    enqueue_contacts(database, "linkedin", contacts[:1], body="again", cross_campaign_policy="allow")
    fake_provider.set_faults([{"action": "server_error", "times": 1}])
    dispatch(deps, MANUAL, Plenty())
    delivered_all(webhooks)
    outlive_claims(database)
    rec = dataclasses.replace(
        reconciler(deps, absence_grace_seconds=0, unknown_policy_linkedin="resend_if_silent"), read_back={}
    )
    reconcile_unknown(rec)
    (row,) = database.fetch_all(
        "SELECT status::text AS status, absence_check FROM send_queue WHERE status <> 'sent'"
    )
    assert row["status"] == "unknown" and row["absence_check"]["held_because"] == ["read_back"]


def test_the_provider_accepting_twice_raises_duplicate_suspected_within_one_sweep(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, webhooks: WebhookEmitter
) -> None:
    """The risk the policy takes, made real: the provider accepted, answered 500, and the
    webhooks of that copy are late beyond G. The row is resent; the provider holds two."""
    enqueue_contacts(database, "whatsapp", [*OTHERS, TARGET])
    webhooks.hold_recipients.add(TARGET)
    fake_provider.set_faults([{"action": "accept_then_5xx", "match": {"recipient": TARGET}, "times": 1}])
    dispatch(deps, MANUAL, Plenty())
    fake_provider.set_faults([])
    delivered_all(webhooks)
    outlive_claims(database)
    sweep_deps = SweepDeps(
        deps.settings.model_copy(
            update={"unknown_policy_whatsapp": "resend_if_silent", "absence_grace_seconds": 0}
        ),
        deps.queue,
        deps.guard,
        sqs=None,
    )
    assert sweep(sweep_deps).unknown_resent_on_absence == 1
    webhooks.hold_recipients.clear()
    dispatch(deps, MANUAL, Plenty())
    assert copies_to(fake_provider, TARGET) == 2, "the provider really holds two copies"
    webhooks.release_held()
    delivered_all(webhooks)
    report = sweep(sweep_deps)
    assert report.duplicates_suspected >= 1
    kinds = {s["kind"] for s in json.loads(json.dumps(_suspects(database), default=str))}
    assert {"same_key", "key_on_row_not_sent_by_it"} <= kinds


def requeue_then_hear_late(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, webhooks: WebhookEmitter
) -> None:
    """TARGET accepted but answered 500, its webhooks held back: requeued on silence, and then
    its webhooks arrive, before the row is sent again."""
    enqueue_contacts(database, "whatsapp", [*OTHERS, TARGET])
    webhooks.hold_recipients.add(TARGET)
    fake_provider.set_faults([{"action": "accept_then_5xx", "match": {"recipient": TARGET}, "times": 1}])
    dispatch(deps, MANUAL, Plenty())
    fake_provider.set_faults([])
    delivered_all(webhooks)
    outlive_claims(database)
    assert reconcile_unknown(reconciler(deps, absence_grace_seconds=0)).resent_on_absence == 1
    webhooks.release_held()
    delivered_all(webhooks)


def test_a_late_status_for_a_requeued_row_is_suspected_before_it_is_sent_again(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, webhooks: WebhookEmitter
) -> None:
    requeue_then_hear_late(database, deps, fake_provider, webhooks)
    suspects = _suspects(database)
    assert [(s["kind"], s["row_status"]) for s in suspects] == [("key_on_row_not_sent_by_it", "pending")]


def test_a_requeued_row_whose_late_webhook_arrived_is_settled_sent_not_sent_again(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, webhooks: WebhookEmitter
) -> None:
    """The accepted-but-every-webhook-late case: the row is requeued on silence, then the
    webhook arrives before the dispatcher gets to it. The recovery point (``mark_sending``)
    sees it and hands the row back to `unknown`; the reconciler settles it `sent` with the
    first acceptance's provider id. One message at the provider, no attempt spent."""
    requeue_then_hear_late(database, deps, fake_provider, webhooks)

    report = dispatch(deps, MANUAL, Plenty())

    assert report.counts.get("HeardBeforeResend") == 1
    row = database.fetch_one(
        "SELECT q.id, q.status::text AS status, q.attempts FROM send_queue q JOIN contacts c ON c.id = q.contact_id"
        " WHERE c.address = %(a)s",
        {"a": TARGET},
    )
    assert row is not None and row["status"] == "unknown"
    assert reconcile_unknown(reconciler(deps)).resolved_sent == 1
    [accepted] = [m for m in fake_provider.ledger() if m["recipient"] == TARGET]
    settled = database.fetch_one(
        "SELECT status::text AS status, provider_message_id, attempts FROM send_queue WHERE id = %(id)s",
        {"id": row["id"]},
    )
    assert settled is not None
    assert (settled["status"], settled["provider_message_id"]) == ("sent", accepted["provider_message_id"])
    assert settled["attempts"] == row["attempts"] == 1, "the refused claim spent no attempt"
    assert not _suspects(database), "settled by the id the webhook named: nothing looks duplicated"


def test_a_first_send_does_not_look_for_webhooks_of_earlier_attempts(
    database: Database, deps: DispatchDeps
) -> None:
    """With the planner's eyes: the late-webhook check in mark_sending runs only for a row that
    was in `sending` before; on a first send, the provider_events probe is never executed."""
    enqueue_contacts(database, "whatsapp", [TARGET])
    [message] = deps.queue.claim_batch(uuid.uuid4(), 1, 600)
    plan = executed_plan(
        database, sql.MARK_SENDING, {"queue_id": message.queue_id, "claim_token": message.claim_token}
    )
    probes = [n for n in plan_nodes(plan) if n.get("Relation Name") == "provider_events"]
    assert probes, "the check is in the statement"
    assert [n["Actual Loops"] for n in probes] == [0]


def _suspects(database: Database) -> list[dict[str, Any]]:
    from shared.reconcile import detect_duplicates

    return detect_duplicates(database)


def test_the_fake_provider_sends_signed_webhooks_with_duplicates_and_losses(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider
) -> None:
    receiver = WebhookReceiver(webhook_deps(database))
    url = receiver.start()
    try:
        twice = fake_provider.send_webhooks(
            WebhookConfig(
                url=url, meta_app_secret=META_SECRET, unipile_secret=UNIPILE_SECRET, duplicate_probability=1
            )
        )
        assert twice is not None
        enqueue_contacts(database, "whatsapp", ["15550001111"])
        enqueue_contacts(database, "messenger", ["psid-1"])
        enqueue_contacts(database, "linkedin", ["ACoAA1"])
        dispatch(deps, MANUAL, Plenty())
        delivered_all(twice)
        # WhatsApp sent + delivered, Messenger echo + delivery, Unipile's own-send message: each twice.
        assert twice.counts["delivered"] == 10
        stored = database.fetch_all(
            "SELECT channel::text AS channel, idempotency_key FROM provider_events ORDER BY channel"
        )
        assert Counter(r["channel"] for r in stored) == {"whatsapp": 2, "messenger": 2, "linkedin": 1}
        keys = {r["idempotency_key"] for r in stored if r["idempotency_key"]}
        assert keys == {
            r["idempotency_key"]
            for r in database.fetch_all("SELECT idempotency_key FROM send_queue")
            if r["idempotency_key"] is not None
        } - {
            r["idempotency_key"]
            for r in database.fetch_all(
                "SELECT q.idempotency_key FROM send_queue q JOIN contacts c ON c.id = q.contact_id "
                "WHERE c.channel = 'linkedin'"
            )
        }, "WhatsApp and Messenger webhooks carry the key; Unipile's carry none"
        lossy = fake_provider.send_webhooks(
            WebhookConfig(url=url, meta_app_secret="wrong", unipile_secret=UNIPILE_SECRET, loss_probability=1)
        )
        assert lossy is not None
        enqueue_contacts(database, "whatsapp", ["15550002222"])
        dispatch(deps, MANUAL, Plenty())
        delivered_all(lossy)
        assert (lossy.counts["lost"], lossy.counts["delivered"]) == (2, 0)
        badly_signed = fake_provider.send_webhooks(
            WebhookConfig(url=url, meta_app_secret="wrong", unipile_secret=UNIPILE_SECRET)
        )
        assert badly_signed is not None
        enqueue_contacts(database, "whatsapp", ["15550003333"])
        dispatch(deps, MANUAL, Plenty())
        delivered_all(badly_signed)
        assert badly_signed.counts["given_up"] == 2, "a bad signature is refused (401), retried, never stored"
        assert len(database.fetch_all("SELECT 1 FROM provider_events")) == 5
    finally:
        fake_provider.send_webhooks(None)
        receiver.stop()
