"""The channel rules end to end, against real Postgres and the fake provider: WhatsApp
template approval checked at enqueue, the 24-hour window held at send (and refused by the
fake as Meta refuses it), and a LinkedIn invitation, its acceptance, then the follow-up."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.engine_testing import by_step, deliver, make_due, reply, rows, run_dispatcher
from devstack.fake_channels import unipile as fake_unipile
from devstack.fake_provider import FakeProvider
from devstack.testing import TEST_TOKENS, build_backlog, executed_plan, plan_nodes
from shared.campaigns import create_campaign
from shared.channels.whatsapp.templates import list_templates, sync_templates, template_sync_status
from shared.contacts_import import import_contacts
from shared.dispatch import DispatchDeps
from shared.enqueue import EnqueueReport, StepRejectedError, enqueue_campaign
from shared.events import DEFAULT_EVENT_TIMEOUT_SECONDS, CampaignSpec, EnqueueRequest, EnqueueStep
from shared.providers.outcome import Channel, OutboundMessage, OutcomeKind
from shared.providers.registry import build_resolvers, make_http_client
from shared.providers.secrets import StaticTokenSource
from shared.runtime import build_template_sync
from shared.sequences import EngineConfig
from shared.storage import sql
from shared.storage.db import Database
from shared.sweeper import SweepDeps, sweep

pytestmark = pytest.mark.integration

WABA = "waba-1"
SENDER = "sender-1"
TEMPLATES: list[dict[str, Any]] = [
    {
        "name": "order_update",
        "language": "en_US",
        "status": "APPROVED",
        "category": "UTILITY",
        "id": "t1",
        "components": [
            {"type": "BODY", "text": "Hi {{1}}, order {{2}} shipped."},
            {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Stop promotions"}]},
        ],
    },
    {
        "name": "spring_sale",
        "language": "en_US",
        "status": "PAUSED",
        "category": "MARKETING",
        "id": "t2",
        "components": [{"type": "BODY", "text": "Spring sale!"}],
    },
]
ORDER_UPDATE = {
    "kind": "template",
    "name": "order_update",
    "language": "en_US",
    "body_parameters": ["Ana", "#1234"],
    "buttons": [{"type": "quick_reply", "index": 0, "payload": "STOP"}],
}


def campaign(
    db: Database,
    channel: str,
    steps: list[dict[str, Any]],
    contacts: list[str],
    *,
    sender: str = SENDER,
    policy: str = "skip",
) -> uuid.UUID:
    campaign_id = uuid.uuid4()
    spec = CampaignSpec.model_validate(
        {
            "campaign_id": str(campaign_id),
            "name": f"channels {campaign_id.hex[:6]}",
            "channel": channel,
            "senders": [sender],
            "steps": steps,
            "contacts": [{"address": a} for a in contacts],
            "cross_campaign_policy": policy,
        }
    )
    create_campaign(db, spec, operator="test", config=EngineConfig(), start=True)
    return campaign_id


def synced(database: Database, fake_provider: FakeProvider, deps: DispatchDeps) -> None:
    """The sender exists (a first campaign creates it), then its WABA's templates are synced."""
    fake_provider.set_templates(WABA, [SENDER], TEMPLATES)
    client = make_http_client(deps.settings)
    try:
        count = sync_templates(
            database,
            client,
            base_url=deps.settings.graph_api_base_url,
            version=deps.settings.graph_api_version,
            business_account_id=WABA,
            phone_number_ids=[SENDER],
            token=lambda: "test-whatsapp-token",
        )
    finally:
        client.close()
    assert count == 2


def test_unapproved_template_rejected_at_enqueue(
    database: Database, fake_provider: FakeProvider, deps: DispatchDeps
) -> None:
    campaign(database, "whatsapp", [{"message_type": "hello", "body": "hello"}], ["15550100001"])
    synced(database, fake_provider, deps)
    paused = {"kind": "template", "name": "spring_sale", "language": "en_US"}
    wrong_count = {**ORDER_UPDATE, "body_parameters": ["Ana"]}
    missing = {"kind": "template", "name": "no_such", "language": "en_US"}
    for content, why in (
        (paused, "PAUSED"),
        (wrong_count, "takes 2 body parameters"),
        (missing, "does not exist"),
    ):
        step = {"message_type": "intro", "body": "[template]", "content": content}
        with pytest.raises(StepRejectedError, match=why):
            campaign(database, "whatsapp", [step], ["15550100002"])
    # Nothing of a rejected campaign was written.
    assert database.fetch_one("SELECT count(*) AS n FROM campaigns")["n"] == 1  # type: ignore[index]

    approved = campaign(
        database,
        "whatsapp",
        [{"message_type": "intro", "body": "[template order_update]", "content": ORDER_UPDATE}],
        ["15550100002"],
    )
    assert run_dispatcher(deps)["Sent"] == 2  # the first campaign's text, and the template
    assert by_step(database, approved) == {("15550100002", "intro"): "sent"}
    [entry] = [m for m in fake_provider.ledger() if m["recipient"] == "15550100002"]
    assert entry["kind"] == "template"


def test_fake_refuses_an_unapproved_template_as_meta_does(
    database: Database, fake_provider: FakeProvider, deps: DispatchDeps
) -> None:
    fake_provider.set_templates(WABA, [SENDER], TEMPLATES)
    adapter = deps.adapters[Channel.WHATSAPP]

    def send(content: dict[str, Any]) -> Any:
        return adapter.send(
            OutboundMessage(
                queue_id=1,
                idempotency_key=f"idem-{uuid.uuid4().hex}",
                channel=Channel.WHATSAPP,
                sender_account_id=uuid.uuid4(),
                sender_provider_id=SENDER,
                recipient="15550100009",
                body="x",
                message_type="x",
                content=content,
            )
        )

    paused = send({"kind": "template", "name": "spring_sale", "language": "en_US"})
    assert (paused.kind, paused.reason) == (OutcomeKind.PERMANENT, "whatsapp:132015")
    mismatch = send({**ORDER_UPDATE, "body_parameters": []})
    assert (mismatch.kind, mismatch.reason) == (OutcomeKind.PERMANENT, "whatsapp:132000")
    assert send(ORDER_UPDATE).kind is OutcomeKind.SENT


def test_window_rule_both_ways(database: Database, fake_provider: FakeProvider, deps: DispatchDeps) -> None:
    """A text step to a contact who wrote in the last 24 hours is sent; to one who did not, it
    is held with the reason (no provider call, no attempt spent), and a template step to that
    same contact is sent. The fake, like Meta, refuses the text outside the window (131047)."""
    fake_provider.set_windows(True)
    warm, cold = "15550100011", "15550100012"
    # The warm contact wrote before the campaign (a reply during it would stop its sequence).
    inbound = reply(Channel.WHATSAPP, warm)
    inbound["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = str(int(time.time()) - 3600)
    deliver(database, Channel.WHATSAPP, inbound)
    fake_provider.add_inbound("whatsapp", SENDER, warm)

    windowed = dataclasses.replace(deps, settings=deps.settings.model_copy(update={"channel_windows": True}))
    text = campaign(database, "whatsapp", [{"message_type": "intro", "body": "Hi there"}], [warm, cold])
    run_dispatcher(windowed)
    assert by_step(database, text) == {(warm, "intro"): "sent", (cold, "intro"): "pending"}
    [held] = [r for r in rows(database, text) if r["address"] == cold]
    assert held["attempts"] == 0
    reason = database.fetch_one("SELECT last_error FROM send_queue WHERE id = %(i)s", {"i": held["id"]})
    assert reason is not None and "24-hour customer service window" in reason["last_error"]
    assert [m["recipient"] for m in fake_provider.ledger()] == [warm]

    # Still outside the window when due again: held again, never sent to fail.
    make_due(database)
    run_dispatcher(windowed)
    assert by_step(database, text)[(cold, "intro")] == "pending"

    fake_provider.set_templates(WABA, [SENDER], TEMPLATES)
    synced(database, fake_provider, deps)
    template = campaign(
        database,
        "whatsapp",
        [{"message_type": "tpl", "body": "[template order_update]", "content": ORDER_UPDATE}],
        [cold],
        policy="allow",  # the held text campaign reached this contact moments ago
    )
    run_dispatcher(windowed)
    assert by_step(database, template) == {(cold, "tpl"): "sent"}

    # Without the hold (the library's check off), the fake refuses the text as Meta does.
    make_due(database)
    outcome_counts = run_dispatcher(deps)
    assert by_step(database, text)[(cold, "intro")] == "failed", outcome_counts
    failed = database.fetch_one("SELECT failure_reason FROM send_queue WHERE id = %(i)s", {"i": held["id"]})
    assert failed is not None and "131047" in failed["failure_reason"]


def wrote_an_hour_ago(
    database: Database, fake_provider: FakeProvider, channel: Channel, contact: str
) -> None:
    """The contact wrote to SENDER an hour ago, through the real webhook path (last_inbound_at)."""
    at = int(time.time()) - 3600
    inbound = reply(channel, contact)
    if channel is Channel.WHATSAPP:
        inbound["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = str(at)
    else:
        inbound["entry"][0]["time"] = inbound["entry"][0]["messaging"][0]["timestamp"] = at * 1000
    deliver(database, channel, inbound)
    fake_provider.add_inbound(channel.value, SENDER, contact, datetime.fromtimestamp(at, UTC))


def enqueue(
    database: Database,
    channel: Channel,
    contacts: list[str],
    step: dict[str, Any],
    *,
    windows: bool,
    policy: str = "allow",  # these campaigns reach one contact moments apart
) -> tuple[uuid.UUID, EnqueueReport]:
    campaign_id = uuid.uuid4()
    request = EnqueueRequest.model_validate(
        {
            "source": "sendonce.manual",
            "campaign_id": str(campaign_id),
            "campaign_name": f"window {channel.value}",
            "channel": channel.value,
            "sender_provider_id": SENDER,
            "contacts": [{"address": a} for a in contacts],
            "steps": [step],
            "cross_campaign_policy": policy,
        }
    )
    return campaign_id, enqueue_campaign(database, request, config=EngineConfig(channel_windows=windows))


@pytest.mark.parametrize(
    ("channel", "warm", "cold", "rule"),
    [
        (Channel.WHATSAPP, "15550100021", "15550100022", "WhatsApp's 24-hour customer service window"),
        (
            Channel.MESSENGER,
            "6284930172648021",
            "6284930172648022",
            "Messenger's 24-hour standard messaging window",
        ),
    ],
)
def test_enqueue_refuses_contacts_outside_the_window_and_sends_to_those_inside(
    database: Database,
    fake_provider: FakeProvider,
    deps: DispatchDeps,
    channel: Channel,
    warm: str,
    cold: str,
    rule: str,
) -> None:
    """A plain-text step (WhatsApp free-form; Messenger UPDATE) to a contact who has not written
    in 24 hours could only be held for ever (a reply would stop the sequence): enqueue refuses
    that contact with the reason and writes nothing for it; the warm contact is sent."""
    fake_provider.set_windows(True)
    wrote_an_hour_ago(database, fake_provider, channel, warm)
    windowed = dataclasses.replace(deps, settings=deps.settings.model_copy(update={"channel_windows": True}))

    campaign_id, report = enqueue(
        database, channel, [warm, cold], {"message_type": "intro", "body": "Hi there"}, windows=True
    )
    assert (report.rows_enqueued, report.contacts_rejected) == (1, 1)
    assert report.rejected_by_reason == {"window_closed": 1}
    [refused] = report.rejected_examples
    assert (refused.index, refused.reason) == (1, "window_closed")
    assert refused.address != cold  # masked, like every reported address
    assert refused.detail.startswith(f"step 1 (intro) needs {rule}")
    assert "has never written" in refused.detail and "could never be sent" in refused.detail
    written = database.fetch_one(
        "SELECT (SELECT count(*) FROM contacts WHERE address = %(a)s) AS contacts,"
        " (SELECT count(*) FROM campaign_contacts WHERE campaign_id = %(c)s) AS members",
        {"a": cold, "c": campaign_id},
    )
    assert written is not None and (written["contacts"], written["members"]) == (0, 1)

    run_dispatcher(windowed)
    assert by_step(database, campaign_id) == {(warm, "intro"): "sent"}
    assert [m["recipient"] for m in fake_provider.ledger()] == [warm]

    # A CSV import into the same campaign refuses the cold contact the same way, by line.
    imported = import_contacts(
        database, campaign_id, f"address\n{cold}\n".encode(), config=EngineConfig(channel_windows=True)
    )
    assert (imported.contacts_added, imported.rejected_by_reason) == (0, {"window_closed": 1})
    [problem] = imported.problems
    assert (problem.line, problem.reason) == (2, "window_closed")
    assert problem.detail.startswith(f"step 1 (intro) needs {rule}")
    # And so does campaign.create with contacts (checked against the stored steps).
    spec = CampaignSpec.model_validate(
        {
            "campaign_id": str(uuid.uuid4()),
            "name": "window create",
            "channel": channel.value,
            "senders": [SENDER],
            "steps": [{"message_type": "intro", "body": "Hi there"}],
            "contacts": [{"address": cold}],
        }
    )
    created = create_campaign(
        database, spec, operator="test", config=EngineConfig(channel_windows=True), start=True
    )
    assert (created.contacts_added, created.rejected_by_reason) == (0, {"window_closed": 1})

    # A step that needs no window is never refused: the cold contact is admitted and sent.
    exempt = (
        {"message_type": "tpl", "body": "[template order_update]", "content": ORDER_UPDATE}
        if channel is Channel.WHATSAPP
        else {
            "message_type": "tagged",
            "body": "Your account was updated",
            "content": {
                "kind": "text",
                "text": "Your account was updated",
                "messaging_type": "MESSAGE_TAG",
                "tag": "ACCOUNT_UPDATE",
            },
        }
    )
    if channel is Channel.WHATSAPP:
        synced(database, fake_provider, deps)
    tagged_id, tagged = enqueue(database, channel, [cold], exempt, windows=True)
    assert (tagged.rows_enqueued, tagged.contacts_rejected) == (1, 0)
    run_dispatcher(windowed)
    assert by_step(database, tagged_id) == {(cold, exempt["message_type"]): "sent"}

    # SENDONCE_CHANNEL_WINDOWS=false turns the enqueue check off too: the cold contact joins
    # (and nothing holds it at send time either).
    _, unchecked = enqueue(
        database, channel, [cold], {"message_type": "again", "body": "Hi again"}, windows=False
    )
    assert (unchecked.rows_enqueued, unchecked.contacts_rejected) == (1, 0)


def test_invitation_acceptance_then_follow_up(
    database: Database, fake_provider: FakeProvider, deps: DispatchDeps
) -> None:
    prospect = "ACoAAProspect01"
    invite = {
        "message_type": "invite",
        "body": "Hi, let's connect",
        "action": "invitation",
        "content": {"kind": "invitation", "note": "Hi, let's connect"},
    }
    follow_up = {"message_type": "message_1", "body": "Thanks for connecting!", "after_event": "new_relation"}
    campaign_id = campaign(database, "linkedin", [invite, follow_up], [prospect])

    run_dispatcher(deps)
    assert by_step(database, campaign_id) == {(prospect, "invite"): "sent"}
    [row] = database.fetch_all("SELECT action FROM send_queue WHERE campaign_id = %(c)s", {"c": campaign_id})
    assert row["action"] == "invitation"  # spent from the invitation caps, not the message caps
    [sent] = fake_provider.ledger()
    assert (sent["kind"], sent["recipient"], sent["text"]) == ("invitation", prospect, "Hi, let's connect")

    # Not accepted yet: nothing follows, and the campaign is not complete.
    make_due(database)
    run_dispatcher(deps)
    assert by_step(database, campaign_id) == {(prospect, "invite"): "sent"}
    state = database.fetch_one("SELECT status FROM campaigns WHERE id = %(c)s", {"c": campaign_id})
    assert state is not None and state["status"] == "active"

    # Accepted: Unipile's new_relation webhook queues message 1 (delivered twice: queued once).
    accepted = fake_provider.accept_invitation(SENDER, prospect)
    deliver(database, Channel.LINKEDIN, accepted)
    deliver(database, Channel.LINKEDIN, accepted)
    assert by_step(database, campaign_id) == {
        (prospect, "invite"): "sent",
        (prospect, "message_1"): "pending",
    }
    run_dispatcher(deps)
    assert by_step(database, campaign_id)[(prospect, "message_1")] == "sent"
    follow = [m for m in fake_provider.ledger() if m["kind"] == "text"]
    assert [(m["recipient"], m["text"]) for m in follow] == [(prospect, "Thanks for connecting!")]


def test_an_invitation_never_accepted_stops_the_sequence_after_its_timeout_and_the_campaign_completes(
    database: Database, fake_provider: FakeProvider, deps: DispatchDeps
) -> None:
    prospects = ["ACoAAProspect02", "ACoAAProspect03"]
    invite = {
        "message_type": "invite",
        "body": "Hi, let's connect",
        "action": "invitation",
        "content": {"kind": "invitation", "note": "Hi, let's connect"},
    }
    follow_up = {
        "message_type": "message_1",
        "body": "Thanks for connecting!",
        "after_event": "new_relation",
        "event_timeout_seconds": 7 * 24 * 3600,
    }
    campaign_id = campaign(database, "linkedin", [invite, follow_up], prospects)
    run_dispatcher(deps)
    settings = deps.settings
    sweeper = SweepDeps(settings=settings, queue=deps.queue, guard=deps.guard, sqs=None)
    assert sweep(sweeper).event_waits_expired == 0, "inside the wait: nothing expires"

    # The settle of each invitation set its wait's deadline: sent_at + 7 days.
    deadlines = database.fetch_all(
        "SELECT cc.event_wait_until - q.sent_at AS wait FROM campaign_contacts cc"
        " JOIN send_queue q ON q.campaign_id = cc.campaign_id AND q.contact_id = cc.contact_id"
        " WHERE cc.campaign_id = %(c)s",
        {"c": campaign_id},
    )
    assert [d["wait"] for d in deadlines] == [timedelta(days=7)] * 2
    # The first prospect's invitation was sent 8 days ago; the second accepts today.
    database.fetch_one(
        "WITH moved AS (UPDATE send_queue q SET sent_at = sent_at - interval '8 days' FROM contacts c"
        " WHERE c.id = q.contact_id AND c.address = %(a)s RETURNING q.campaign_id, q.contact_id)"
        " UPDATE campaign_contacts cc SET event_wait_until = event_wait_until - interval '8 days' FROM moved m"
        " WHERE cc.campaign_id = m.campaign_id AND cc.contact_id = m.contact_id RETURNING 1",
        {"a": prospects[0]},
    )
    deliver(database, Channel.LINKEDIN, fake_provider.accept_invitation(SENDER, prospects[1]))
    run_dispatcher(deps)
    report = sweep(sweeper)

    assert report.event_waits_expired == 1
    states = {
        r["address"]: (r["sequence_state"], r["stop_cause"], r["stopped_reason"])
        for r in database.fetch_all(
            "SELECT c.address, cc.sequence_state, cc.stop_cause, cc.stopped_reason FROM campaign_contacts cc"
            " JOIN contacts c ON c.id = cc.contact_id WHERE cc.campaign_id = %(c)s",
            {"c": campaign_id},
        )
    }
    assert states[prospects[0]] == (
        "stopped",
        "event_timeout",
        "no new_relation event within 7.0 days of the previous step",
    )
    assert states[prospects[1]][0] == "completed"
    assert by_step(database, campaign_id)[(prospects[1], "message_1")] == "sent"
    assert report.campaigns_completed == 1
    # A late acceptance of the expired invitation queues nothing.
    deliver(database, Channel.LINKEDIN, fake_provider.accept_invitation(SENDER, prospects[0]))
    assert (prospects[0], "message_1") not in by_step(database, campaign_id)


def test_the_wait_expiry_reads_only_expired_deadlines_not_the_sent_rows(database: Database) -> None:
    """With the planner's eyes: 10,000 contacts of one campaign wait for an acceptance, none
    expired. The sweeper's expiry reads the deadline index and no send_queue row (reading the
    step's sent rows instead cost 1 s per sweep at 200,000)."""
    build_backlog(database, 20_000, senders=1)
    with database.connection() as conn:
        [cid] = [r["id"] for r in conn.execute("SELECT id FROM campaigns ORDER BY id LIMIT 1").fetchall()]
        conn.execute("UPDATE campaigns SET status = 'active'")
        conn.execute(
            "INSERT INTO campaign_steps (campaign_id, position, message_type, body) VALUES (%(c)s, 1, 'intro', 'x')",
            {"c": cid},
        )
        conn.execute(
            "INSERT INTO campaign_steps (campaign_id, position, message_type, body, after_event,"
            " event_timeout_seconds) VALUES (%(c)s, 2, 'follow', 'y', 'new_relation', 2592000)",
            {"c": cid},
        )
        conn.execute("UPDATE send_queue SET status = 'sent', sent_at = now(), provider_message_id = id::text")
        conn.execute(
            "INSERT INTO campaign_contacts (campaign_id, contact_id, sender_account_id, sequence_state,"
            " event_wait_until) SELECT campaign_id, contact_id, sender_account_id, 'active',"
            " CASE WHEN campaign_id = %(c)s THEN now() + interval '30 days' END FROM send_queue",
            {"c": cid},
        )
        conn.execute("ANALYZE")
    nodes = plan_nodes(executed_plan(database, sql.EXPIRE_EVENT_WAITS, {"limit": 500}))
    memberships = [n for n in nodes if n.get("Relation Name") == "campaign_contacts" and "Index Name" in n]
    assert memberships[0]["Index Name"] == "campaign_contacts_event_wait", memberships
    queue_rows = sum(n.get("Actual Rows", 0) for n in nodes if n.get("Relation Name") == "send_queue")
    assert queue_rows == 0


def test_a_step_that_waits_for_nothing_cannot_time_out() -> None:
    with pytest.raises(ValueError, match="needs after_event"):
        EnqueueStep.model_validate({"message_type": "m", "body": "b", "event_timeout_seconds": 3600})
    waiting = EnqueueStep.model_validate({"message_type": "m", "body": "b", "after_event": "new_relation"})
    assert waiting.event_timeout_seconds == DEFAULT_EVENT_TIMEOUT_SECONDS


def test_an_invitation_step_must_be_an_invitation() -> None:
    with pytest.raises(ValueError, match="does not fit content kind"):
        CampaignSpec.model_validate(
            {
                "campaign_id": str(uuid.uuid4()),
                "name": "x",
                "channel": "linkedin",
                "senders": [SENDER],
                "steps": [{"message_type": "invite", "body": "hi", "action": "invitation"}],
            }
        )


def test_profile_url_is_looked_up_once_per_contact(
    database: Database, fake_provider: FakeProvider, deps: DispatchDeps
) -> None:
    """A LinkedIn contact given as a profile URL is sent to the provider id Unipile's lookup
    returns; the id is kept on the contact, so the follow-up after acceptance needs no lookup."""
    url = "https://www.linkedin.com/in/julien-crepieux/"
    client = make_http_client(deps.settings)
    resolving = dataclasses.replace(
        deps, resolvers=build_resolvers(deps.settings, client, StaticTokenSource(TEST_TOKENS), database)
    )
    invite = {
        "message_type": "invite",
        "body": "hello",
        "action": "invitation",
        "content": {"kind": "invitation"},
    }
    follow_up = {"message_type": "message_1", "body": "Thanks!", "after_event": "new_relation"}
    campaign_id = campaign(database, "linkedin", [invite, follow_up], [url])
    try:
        run_dispatcher(resolving)
        provider_id = fake_unipile.profile_id("julien-crepieux")
        [sent] = fake_provider.ledger()
        assert (sent["kind"], sent["recipient"]) == ("invitation", provider_id)
        cached = database.fetch_one(
            "SELECT provider_profile_id FROM contacts WHERE address = %(a)s", {"a": url}
        )
        assert cached is not None and cached["provider_profile_id"] == provider_id
        reads = fake_provider.stats()["read_requests"]

        deliver(database, Channel.LINKEDIN, fake_provider.accept_invitation(SENDER, provider_id))
        run_dispatcher(resolving)
        assert by_step(database, campaign_id)[(url, "message_1")] == "sent"
        assert fake_provider.ledger()[-1]["recipient"] == provider_id
        assert fake_provider.stats()["read_requests"] == reads  # served from the contact
    finally:
        client.close()


# --- template sync on the sweeper's schedule ------------------------------------------------------


def template_sweeper(
    deps: DispatchDeps, accounts: dict[str, list[str]], whatsapp_token: str = TEST_TOKENS["whatsapp"]
) -> SweepDeps:
    settings = deps.settings.model_copy(update={"whatsapp_business_accounts": accounts})
    tokens = StaticTokenSource({**TEST_TOKENS, "whatsapp": whatsapp_token})
    sync = build_template_sync(settings, make_http_client(settings), tokens)
    return SweepDeps(settings=settings, queue=deps.queue, guard=deps.guard, sqs=None, templates=sync)


def test_the_sweeper_syncs_configured_wabas_once_per_interval_and_keeps_the_cache_on_failure(
    database: Database, fake_provider: FakeProvider, deps: DispatchDeps
) -> None:
    fake_provider.set_templates(WABA, [SENDER], TEMPLATES)
    accounts = {WABA: [SENDER], "waba-unknown": ["sender-9"]}
    sweeper = template_sweeper(deps, accounts)

    first = sweep(sweeper)
    assert first.templates_synced == {WABA: 2}
    assert list(first.template_sync_errors) == ["waba-unknown"], "Graph answered 400 for it"
    assert "HTTP 400" in first.template_sync_errors["waba-unknown"]
    # Within the interval the good WABA is not listed again; the failed one is retried.
    second = sweep(sweeper)
    assert second.templates_synced == {}
    assert list(second.template_sync_errors) == ["waba-unknown"]

    # The interval over: listed again. Now Graph refuses the token: the cache is kept.
    database.fetch_one(
        "UPDATE whatsapp_template_syncs SET last_attempt_at = now() - interval '2 hours' RETURNING 1"
    )
    third = sweep(template_sweeper(deps, accounts, whatsapp_token="revoked"))
    assert list(third.template_sync_errors) == [WABA, "waba-unknown"]
    status = {row["business_account_id"]: row for row in template_sync_status(database)}
    assert status[WABA]["templates"] == 2 and status[WABA]["approved"] == 1
    assert "HTTP 401" in status[WABA]["last_error"]
    assert {t["name"] for t in list_templates(database, WABA)} == {"order_update", "spring_sale"}


def test_a_missing_whatsapp_token_fails_the_sync_without_failing_the_sweep(
    database: Database, fake_provider: FakeProvider, deps: DispatchDeps
) -> None:
    fake_provider.set_templates(WABA, [SENDER], TEMPLATES)
    report = sweep(template_sweeper(deps, {WABA: [SENDER]}, whatsapp_token=""))
    assert report.ran and report.templates_synced == {}
    assert "holds no token" in report.template_sync_errors[WABA]
    [status] = template_sync_status(database)
    assert status["synced_at"] is None and "holds no token" in status["last_error"]


def test_a_sender_created_after_the_sync_finds_its_wabas_templates(
    database: Database, fake_provider: FakeProvider, deps: DispatchDeps
) -> None:
    """The sync names the WABA's phone numbers; a sender first seen in a later campaign is
    checked against that WABA's templates at enqueue, without waiting for the next sync."""
    fake_provider.set_templates(WABA, [SENDER], TEMPLATES)
    assert sweep(template_sweeper(deps, {WABA: [SENDER]})).templates_synced == {WABA: 2}
    assert database.fetch_one("SELECT count(*) AS n FROM sender_accounts")["n"] == 0  # type: ignore[index]
    campaign(
        database,
        "whatsapp",
        [{"message_type": "intro", "body": "[template order_update]", "content": ORDER_UPDATE}],
        ["15550100003"],
    )
    paused = {"kind": "template", "name": "spring_sale", "language": "en_US"}
    with pytest.raises(StepRejectedError, match="PAUSED"):
        campaign(
            database, "whatsapp", [{"message_type": "x", "body": "[t]", "content": paused}], ["15550100004"]
        )
