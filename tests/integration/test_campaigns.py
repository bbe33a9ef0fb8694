"""The campaign lifecycle, the cross-campaign policy and sender pools, on real Postgres, moto
and the fake provider; pause and resume also across dispatcher processes."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devstack.engine_testing import (
    CONFIG,
    by_step,
    make_due,
    new_campaign,
    rows,
    run_dispatcher,
    sequence,
)
from devstack.stack import ROOT, LocalStack
from shared.campaigns import (
    CampaignStateError,
    campaign_status,
    cancel_campaign,
    pause_campaign,
    resume_campaign,
    settle_campaigns,
    start_campaign,
)
from shared.config import Settings
from shared.dispatch import DispatchDeps
from shared.enqueue import CampaignClosedError, enqueue_campaign
from shared.events import EnqueueRequest
from shared.idempotency import SendGuard
from shared.pacing import SenderPacing
from shared.providers.outcome import Channel, SendOutcome
from shared.queue import ClaimedMessage, QueueRepository, SendingVerdict
from shared.senders import configure_sender, pause_sender, resume_sender
from shared.sequences import EngineConfig, StopCause, stop_contact
from shared.storage.db import Database
from shared.sweeper import SweepDeps, sweep

pytestmark = pytest.mark.integration
SCHEDULED = ROOT / "events" / "dispatcher-scheduled.json"


def contacts(n: int, prefix: str = "1555") -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(n)]


def campaign_state(database: Database, campaign_id: uuid.UUID) -> str:
    row = database.fetch_one("SELECT status FROM campaigns WHERE id = %(c)s", {"c": campaign_id})
    assert row is not None
    return str(row["status"])


def statuses(database: Database, campaign_id: uuid.UUID) -> Counter[str]:
    return Counter(r["status"] for r in rows(database, campaign_id))


# --- pause, resume ---------------------------------------------------------------------------------


class PauseAfter(QueueRepository):
    """Pauses the campaign when the dispatcher is about to send its n-th row, with the rest of
    the batch already claimed: the pause lands mid-run."""

    def __init__(self, db: Database, campaign_id: uuid.UUID, n: int) -> None:
        super().__init__(db)
        self._campaign_id, self._left = campaign_id, n
        self._lock = threading.Lock()
        self.verdicts: list[SendingVerdict] = []

    def mark_sending(self, message: ClaimedMessage) -> SendingVerdict:
        with self._lock:
            self._left -= 1
            if self._left == 0:
                pause_campaign(self.db, self._campaign_id, operator="ops", reason="mid-run")
        verdict = super().mark_sending(message)
        with self._lock:
            self.verdicts.append(verdict)
        return verdict


def test_pause_mid_run_returns_claimed_rows_unsent_and_resume_never_resends(
    database: Database, settings: Settings, guard: SendGuard, deps: DispatchDeps, fake_provider: Any
) -> None:
    campaign = new_campaign(database, contacts(40), steps=(("intro", 0),))
    one_at_a_time = settings.model_copy(update={"send_concurrency": 1, "batch_size": 10})
    pausing = PauseAfter(database, campaign, n=4)
    run_dispatcher(DispatchDeps(one_at_a_time, pausing, guard, deps.adapters))

    # Three went out; the pause landed as the 4th was about to: it and the other rows this
    # invocation held (at most twice its one send thread: the pipeline's bound) went back to
    # pending, attempts refunded, and nothing more was claimed.
    verdicts = Counter(pausing.verdicts)
    assert verdicts[SendingVerdict.SENDING] == 3
    assert 1 <= verdicts[SendingVerdict.RETURNED] <= 2, verdicts
    assert set(verdicts) <= {SendingVerdict.SENDING, SendingVerdict.RETURNED}, verdicts
    assert statuses(database, campaign) == {"sent": 3, "pending": 37}
    assert {r["attempts"] for r in rows(database, campaign) if r["status"] == "pending"} == {0}
    assert len(fake_provider.ledger()) == 3
    assert run_dispatcher(deps)["Claimed"] == 0, "a paused campaign is not claimed"
    assert campaign_status(database, campaign).status == "paused"

    assert resume_campaign(database, campaign, operator="ops").status == "active"
    assert run_dispatcher(deps)["Sent"] == 37
    per_recipient = Counter(m["recipient"] for m in fake_provider.ledger())
    assert len(per_recipient) == 40 and set(per_recipient.values()) == {1}, "resume resent nothing"
    decisions = database.fetch_all(
        "SELECT action, from_status, to_status, decided_by, reason FROM campaign_decisions"
        " WHERE campaign_id = %(c)s ORDER BY id",
        {"c": campaign},
    )
    assert [(d["action"], d["to_status"], d["decided_by"]) for d in decisions] == [
        ("create", "draft", "operator:test"),
        ("start", "active", "operator:test"),
        ("pause", "paused", "operator:ops"),
        ("resume", "active", "operator:ops"),
    ]


@pytest.fixture(scope="module")
def stack(pg_server: Any) -> Iterator[LocalStack]:
    with LocalStack(database_url=pg_server.admin_url) as running:
        yield running


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_pause_and_resume_across_dispatcher_processes_never_resend(stack: LocalStack) -> None:
    assert stack.settings is not None
    campaign = new_campaign(
        stack.db,
        contacts(300, "1666"),
        steps=(("intro", 0),),
        config=EngineConfig.from_settings(stack.settings),
    )
    # 20 messages a second: the run takes 15 s, so the pause lands in the middle of it.
    configure_sender(stack.db, Channel.WHATSAPP, "sender-1", SenderPacing(rate_per_second=20, burst=5), "ops")
    dispatchers = [stack.spawn("dispatcher", SCHEDULED, log_name=f"pause-{n}") for n in range(2)]
    wait_for(lambda: len(stack.provider.ledger()) >= 40, "the first sends")
    pause_campaign(stack.db, campaign, operator="ops", reason="mid-run")
    reports = [d.finish() for d in dispatchers]
    sent_while_running = len(stack.provider.ledger())
    assert statuses(stack.db, campaign)["sent"] == sent_while_running < 300
    assert set(statuses(stack.db, campaign)) == {"sent", "pending"}, "nothing left claimed or sending"
    returned = sum(r["counts"]["ReleasedUnsent"] for r in reports)
    assert stack.db.fetch_one(
        "SELECT count(*) AS n FROM queue_decisions WHERE to_status = 'pending' AND reason = 'campaign paused'"
    ) == {"n": returned}

    idle = stack.spawn("dispatcher", SCHEDULED, log_name="paused").finish()
    assert idle["counts"]["Claimed"] == 0
    assert len(stack.provider.ledger()) == sent_while_running

    resume_campaign(stack.db, campaign, operator="ops")
    configure_sender(stack.db, Channel.WHATSAPP, "sender-1", SenderPacing(), "ops")
    stack.spawn("dispatcher", SCHEDULED, log_name="resumed").finish()
    per_message = Counter(m["recipient"] for m in stack.provider.ledger())
    assert len(per_message) == 300 and set(per_message.values()) == {1}, "resume resent nothing"
    assert statuses(stack.db, campaign) == {"sent": 300}


# --- cancel ------------------------------------------------------------------------------------------


def test_cancel_keeps_sent_rows_cancels_the_rest_and_lets_a_send_in_flight_finish(
    database: Database, queue: QueueRepository, deps: DispatchDeps, fake_provider: Any
) -> None:
    campaign = new_campaign(database, contacts(6), steps=(("intro", 0), ("follow_up", 3600)))
    # Two contacts sent (their follow-ups pending), one claimed, one in flight, two pending.
    sent = queue.claim_batch(uuid.uuid4(), 2, 60)
    for message in sent:
        assert queue.mark_sending(message)
        assert queue.settle_sent(message, SendOutcome.sent(f"wamid.{message.queue_id}"))
    [claimed] = queue.claim_batch(uuid.uuid4(), 1, 60)
    [in_flight] = queue.claim_batch(uuid.uuid4(), 1, 60)
    assert queue.mark_sending(in_flight)

    report = cancel_campaign(database, campaign, operator="ops", reason="offer withdrawn")
    # 2 pending first steps + 2 pending follow-ups + the claimed row; the sending row is left.
    assert (report.status, report.rows_cancelled, report.sequences_stopped) == ("cancelled", 5, 6)
    assert statuses(database, campaign) == {"sent": 2, "cancelled": 5, "sending": 1}

    assert queue.mark_sending(claimed) is SendingVerdict.CANCELLED
    assert queue.settle_sent(in_flight, SendOutcome.sent("wamid.in-flight")), "the send in flight settles"
    assert statuses(database, campaign) == {"sent": 3, "cancelled": 5}, "and nothing follows it"
    cancelled = [r for r in rows(database, campaign) if r["status"] == "cancelled"]
    assert {r["failure_reason"] for r in cancelled} == {"campaign cancelled by operator:ops: offer withdrawn"}
    make_due(database)
    assert run_dispatcher(deps)["Claimed"] == 0
    assert len(fake_provider.ledger()) == 0, "this test sent through the queue only"
    with pytest.raises(CampaignStateError):
        resume_campaign(database, campaign, operator="ops")
    with pytest.raises(CampaignClosedError):
        enqueue_campaign(database, _request(campaign, ["15559999999"]))


def _request(
    campaign_id: uuid.UUID,
    addresses: list[str],
    steps: tuple[tuple[str, int], ...] = (("intro", 0), ("follow_up", 3600)),
    sender: str = "sender-1",
) -> EnqueueRequest:
    return EnqueueRequest.model_validate(
        {
            "source": "sendonce.manual",
            "campaign_id": str(campaign_id),
            "campaign_name": "enqueued",
            "channel": "whatsapp",
            "sender_provider_id": sender,
            "contacts": [{"address": a} for a in addresses],
            "steps": [
                {"message_type": t, "body": f"{t} of {campaign_id.hex[:6]}", "delay_seconds": d}
                for t, d in steps
            ],
        }
    )


# --- completion, and the state machine ------------------------------------------------------------


def test_a_campaign_completes_by_itself_when_nothing_is_left_to_send(
    database: Database, settings: Settings, guard: SendGuard, deps: DispatchDeps, fake_provider: Any
) -> None:
    campaign = new_campaign(database, contacts(3), steps=(("intro", 0), ("follow_up", 3600)))
    sweeper = SweepDeps(settings=settings, queue=deps.queue, guard=guard, sqs=None)
    run_dispatcher(deps)
    assert sweep(sweeper).campaigns_completed == 0, "follow-ups are still to be sent"
    make_due(database)
    fake_provider.set_faults([{"action": "accept_then_drop", "match": {"recipient": "15550000000"}}])
    run_dispatcher(deps)
    # One follow-up is unknown: it is the last step, so nothing could follow it.
    assert statuses(database, campaign) == {"sent": 5, "unknown": 1}
    report = sweep(sweeper)
    assert report.campaigns_completed == 1
    assert campaign_state(database, campaign) == "completed"
    assert sweep(sweeper).campaigns_completed == 0, "counted once"
    # Contacts added later reopen it.
    added = enqueue_campaign(database, _request(campaign, ["15558888888"]))
    assert (added.campaign_status, added.rows_enqueued) == ("active", 1)


def test_an_unknown_step_that_could_still_lead_to_a_next_one_keeps_the_campaign_open(
    database: Database, settings: Settings, guard: SendGuard, deps: DispatchDeps, fake_provider: Any
) -> None:
    campaign = new_campaign(database, ["15550000001"], steps=(("intro", 0), ("follow_up", 0)))
    fake_provider.set_faults([{"action": "accept_then_drop"}])
    run_dispatcher(deps)
    assert statuses(database, campaign) == {"unknown": 1}
    assert settle_campaigns(database, limit=10).campaigns_completed == []
    assert campaign_state(database, campaign) == "active"


def test_the_lifecycle_refuses_commands_that_do_not_apply(database: Database) -> None:
    draft = new_campaign(database, ["15550000001"], start=False)
    assert statuses(database, draft) == Counter(), "a draft queues nothing"
    assert sequence(database, draft, "15550000001")["sequence_state"] == "waiting"
    with pytest.raises(CampaignStateError, match="is draft; pause applies only to an active campaign"):
        pause_campaign(database, draft, operator="ops")
    assert start_campaign(database, draft, operator="ops", config=CONFIG).rows_queued == 1
    assert start_campaign(database, draft, operator="ops", config=CONFIG).changed is False, "idempotent"
    pause_campaign(database, draft, operator="ops")
    assert pause_campaign(database, draft, operator="ops").changed is False
    with pytest.raises(CampaignStateError, match="use resume"):
        start_campaign(database, draft, operator="ops", config=CONFIG)
    assert resume_campaign(database, draft, operator="ops").status == "active"
    # A draft cancels too: its waiting contacts stop before they ever started.
    unstarted = new_campaign(database, ["15550000002", "15550000003"], start=False)
    assert cancel_campaign(database, unstarted, operator="ops").sequences_stopped == 2
    assert sequence(database, unstarted, "15550000002")["sequence_state"] == "stopped"
    with pytest.raises(CampaignStateError, match="only a draft campaign starts"):
        start_campaign(database, unstarted, operator="ops", config=CONFIG)


# --- the cross-campaign policy ----------------------------------------------------------------------


def test_a_contact_of_another_campaign_of_the_same_sender_is_skipped_with_the_reason(
    database: Database,
) -> None:
    first = new_campaign(database, ["15550000001", "15550000002"])
    second = new_campaign(database, ["15550000002", "15550000003"])
    assert by_step(database, second) == {("15550000003", "intro"): "pending"}
    skipped = sequence(database, second, "15550000002")
    assert (skipped["sequence_state"], skipped["stop_cause"]) == ("skipped", "cross_campaign")
    assert f"campaign {first} has a pending row" in skipped["stopped_reason"]
    # Through the enqueue event the report counts it by reason.
    report = enqueue_campaign(database, _request(uuid.uuid4(), ["15550000001", "15550000004"]))
    assert (report.rows_enqueued, report.contacts_skipped, report.skipped_by_reason) == (
        1,
        1,
        {"cross_campaign": 1},
    )
    # Off for a campaign, another sender, or outside the window: not skipped.
    allowed = new_campaign(database, ["15550000001"], policy="allow")
    elsewhere = new_campaign(database, ["15550000001"], senders=("sender-2",))
    assert by_step(database, allowed) == by_step(database, elsewhere) == {("15550000001", "intro"): "pending"}
    with database.connection() as conn:  # all of it, 31 days ago: outside the 30-day window
        conn.execute(
            "UPDATE send_queue SET status = 'sent', provider_message_id = 'x' || id,"
            " sent_at = now() - interval '31 days', created_at = now() - interval '31 days'"
        )
    later = new_campaign(database, ["15550000001", "15550000002"])
    assert by_step(database, later) == {
        ("15550000001", "intro"): "pending",
        ("15550000002", "intro"): "pending",
    }


def _race(database: Database, people: list[str], how: str) -> list[uuid.UUID]:
    """Two campaigns of one sender queue the same contacts at the same instant: two new
    campaigns enqueued, or two drafts started (no sender row is written on that path)."""
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    if how == "start":
        created = [new_campaign(database, people, steps=(("intro", 0),), start=False) for _ in range(2)]
    else:
        created = [uuid.uuid4(), uuid.uuid4()]

    def go(campaign_id: uuid.UUID) -> None:
        barrier.wait()
        try:
            if how == "start":
                start_campaign(database, campaign_id, operator="ops", config=CONFIG)
            else:
                enqueue_campaign(database, _request(campaign_id, people, steps=(("intro", 0),)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(c,)) for c in created]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return created


@pytest.mark.parametrize("how", ["start", "enqueue"])
def test_two_campaigns_racing_for_the_same_contacts_queue_each_contact_once(
    database: Database, how: str
) -> None:
    people = contacts(400, "1777")
    for _round in range(3):
        created = _race(database, people, how)
        queued = Counter(r["address"] for c in created for r in rows(database, c) if r["status"] == "pending")
        assert len(queued) == 400 and set(queued.values()) == {1}, "each contact in one campaign only"
        skipped = database.fetch_one(
            "SELECT count(*) AS n FROM campaign_contacts WHERE campaign_id = ANY(%(c)s) AND stop_cause = 'cross_campaign'",
            {"c": created},
        )
        assert skipped == {"n": 400}
        with database.connection() as conn:  # cancelled rows never reached anyone: the next round races again
            conn.execute("UPDATE send_queue SET status = 'cancelled' WHERE status = 'pending'")


# --- sender pools -------------------------------------------------------------------------------------


def names(database: Database) -> dict[Any, str]:
    return {
        r["id"]: r["provider_account_id"]
        for r in database.fetch_all("SELECT id, provider_account_id FROM sender_accounts")
    }


def test_contacts_are_balanced_across_the_pool_by_remaining_capacity(
    database: Database, settings: Settings
) -> None:
    config = EngineConfig.from_settings(settings)
    even = new_campaign(database, contacts(100), senders=("pool-a", "pool-b"), config=config)
    sender_of = names(database)
    assert Counter(sender_of[r["sender_account_id"]] for r in rows(database, even)) == {
        "pool-a": 50,
        "pool-b": 50,
    }
    # LinkedIn, capped per day: li-a has room for 30 more messages today, li-b for 10. The
    # first 20 contacts go to li-a until both have 10 left, then they alternate.
    for account, cap in (("li-a", 30), ("li-b", 10)):
        new_campaign(database, [], channel="linkedin", senders=(account,), start=False, config=config)
        configure_sender(database, Channel.LINKEDIN, account, SenderPacing(daily_message_cap=cap), "ops")
    capped = new_campaign(
        database,
        [f"ACoAA{i:04d}" for i in range(40)],
        channel="linkedin",
        senders=("li-a", "li-b"),
        config=config,
    )
    sender_of = names(database)
    assert Counter(sender_of[r["sender_account_id"]] for r in rows(database, capped)) == {
        "li-a": 30,
        "li-b": 10,
    }
    status = campaign_status(database, capped)
    assert {s.provider_account_id: (s.contacts, s.queued) for s in status.senders} == {
        "li-a": (30, 30),
        "li-b": (10, 10),
    }


def test_a_paused_senders_contacts_wait_and_never_move(
    database: Database, deps: DispatchDeps, fake_provider: Any
) -> None:
    campaign = new_campaign(
        database, contacts(20), senders=("pool-a", "pool-b"), steps=(("intro", 0), ("follow_up", 0))
    )
    sender_of = names(database)
    assigned = {r["address"]: sender_of[r["sender_account_id"]] for r in rows(database, campaign)}
    assert Counter(assigned.values()) == {"pool-a": 10, "pool-b": 10}
    pause_sender(database, Channel.WHATSAPP, "pool-b", until=None, reason="restricted", operator="ops")
    run_dispatcher(deps)
    # pool-a's contacts got both steps; pool-b's wait at step 1, still on pool-b.
    waiting = [r for r in rows(database, campaign) if r["status"] == "pending"]
    assert sorted(r["address"] for r in waiting) == sorted(a for a, s in assigned.items() if s == "pool-b")
    assert {sender_of[r["sender_account_id"]] for r in waiting} == {"pool-b"}
    assert Counter(m["sender_id"] for m in fake_provider.ledger()) == {"pool-a": 20}
    # Contacts added while pool-b is paused go to pool-a (counts alone would split them), even
    # through an enqueue that names pool-b; pool-b's contacts stay where they are.
    late = ["15559000001", "15559000002"]
    added = enqueue_campaign(
        database, _request(campaign, late, steps=(("intro", 0), ("follow_up", 0)), sender="pool-b")
    )
    assert added.assigned_by_sender == {"pool-a": 2}
    resume_sender(database, Channel.WHATSAPP, "pool-b", operator="ops")
    run_dispatcher(deps)
    assert set(statuses(database, campaign)) == {"sent"}
    assigned.update(dict.fromkeys(late, "pool-a"))
    for row in rows(database, campaign):
        assert sender_of[row["sender_account_id"]] == assigned[row["address"]]
        assert sequence(database, campaign, row["address"])["sender_account_id"] == row["sender_account_id"]
    assert {(m["recipient"], m["sender_id"]) for m in fake_provider.ledger()} == set(assigned.items())
    assert Counter(m["recipient"] for m in fake_provider.ledger()) == dict.fromkeys(assigned, 2)


def test_a_row_that_went_back_to_pending_after_a_stop_is_cancelled_by_the_sweeper(
    database: Database, settings: Settings, guard: SendGuard, queue: QueueRepository
) -> None:
    campaign = new_campaign(database, ["15550000001"], steps=(("intro", 0),))
    [message] = queue.claim_batch(uuid.uuid4(), 10, 60)
    assert queue.mark_sending(message)
    # The contact replies while the send is in flight; then the provider answers "throttled",
    # which provably did not send: the row goes back to pending, for a stopped contact.
    stop_contact(database, Channel.WHATSAPP, "15550000001", cause=StopCause.REPLY, reason="r", decided_by="t")
    assert queue.settle_pending(
        message, delay_seconds=0, outcome=SendOutcome.retry_later(None, "whatsapp:130429")
    )
    assert statuses(database, campaign) == {"pending": 1}
    report = sweep(SweepDeps(settings=settings, queue=queue, guard=guard, sqs=None))
    assert (report.stragglers_cancelled, report.campaigns_completed) == (1, 1)
    assert statuses(database, campaign) == {"cancelled": 1}
    assert campaign_state(database, campaign) == "completed"
