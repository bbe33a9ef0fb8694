"""Sequences on real Postgres, moto and the fake provider: progression one step at a time,
every stop condition, and the races between a stop, a settle and the dispatcher's last look."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from typing import Any

import pytest

from devstack.engine_testing import (
    CONFIG,
    by_step,
    deliver,
    make_due,
    new_campaign,
    reply,
    rows,
    run_dispatcher,
    sequence,
    whatsapp_status,
)
from devstack.testing import expire_leases
from shared.campaigns import campaign_status, start_campaign
from shared.config import Settings
from shared.dispatch import DispatchDeps
from shared.enqueue import enqueue_campaign
from shared.events import EnqueueRequest
from shared.idempotency import SendGuard
from shared.pacing import UNPACED, EffectivePacing, SenderPacing, next_window_open
from shared.providers.outcome import Channel, SendOutcome
from shared.queue import ClaimedMessage, QueueRepository, QueueStatus, SendingVerdict
from shared.reconcile import OperatorAction, ReconcileDeps, resolve
from shared.senders import configure_sender
from shared.sequences import StopCause, stop_contact
from shared.storage import sql
from shared.storage.db import Database
from shared.sweeper import SweepDeps, sweep

pytestmark = pytest.mark.integration

A, B, C = "15550000001", "15550000002", "15550000003"


def sender_id(database: Database, provider_account_id: str = "sender-1") -> uuid.UUID:
    row = database.fetch_one(
        "SELECT id FROM sender_accounts WHERE provider_account_id = %(p)s", {"p": provider_account_id}
    )
    assert row is not None
    return uuid.UUID(str(row["id"]))


# --- progression -----------------------------------------------------------------------------------


def test_step_two_is_queued_when_step_one_is_sent_and_due_its_delay_after(
    database: Database, deps: DispatchDeps, fake_provider: Any
) -> None:
    campaign = new_campaign(database, [A, B])
    assert by_step(database, campaign) == {(A, "intro"): "pending", (B, "intro"): "pending"}, "only step 1"
    assert run_dispatcher(deps)["Sent"] == 2
    queued = {(r["address"], r["message_type"]): r for r in rows(database, campaign)}
    for address in (A, B):
        first, second = queued[(address, "intro")], queued[(address, "follow_up")]
        assert (first["status"], second["status"]) == ("sent", "pending")
        assert second["scheduled_for"] - first["sent_at"] == timedelta(seconds=3600)
        assert second["sender_account_id"] == first["sender_account_id"]
        assert sequence(database, campaign, address)["sequence_state"] == "active"
    # Nothing is due yet: the follow-ups wait for their delay.
    assert run_dispatcher(deps)["Sent"] == 0
    make_due(database)
    assert run_dispatcher(deps)["Sent"] == 2
    assert set(by_step(database, campaign).values()) == {"sent"}
    assert [sequence(database, campaign, a)["sequence_state"] for a in (A, B)] == ["completed", "completed"]
    sent = Counter((m["recipient"], m["text"].split(" ")[0]) for m in fake_provider.ledger())
    assert sent == {(A, "intro"): 1, (B, "intro"): 1, (A, "follow_up"): 1, (B, "follow_up"): 1}


def test_the_next_step_moves_into_the_senders_window(database: Database, queue: QueueRepository) -> None:
    campaign = new_campaign(database, [A], steps=(("intro", 0), ("follow_up", 600)))
    [message] = queue.claim_batch(uuid.uuid4(), 10, 60)
    assert queue.mark_sending(message) is SendingVerdict.SENDING
    # The window, set while step 1 is in flight, opens in 3 hours and lasts 2: the follow-up is
    # due when it next opens, not 10 minutes after step 1.
    now = datetime.now(UTC)
    opens, closes = ((now + timedelta(hours=h)).time().replace(second=0, microsecond=0) for h in (3, 5))
    window = SenderPacing(timezone="UTC", window_start=opens, window_end=closes)
    configure_sender(database, Channel.WHATSAPP, "sender-1", window, "test")
    assert queue.settle_sent(message, SendOutcome.sent("wamid.window"))
    queued = {r["message_type"]: r for r in rows(database, campaign)}
    expected = next_window_open(
        EffectivePacing.merge(window, UNPACED), queued["intro"]["sent_at"] + timedelta(seconds=600)
    )
    assert queued["follow_up"]["scheduled_for"] == expected
    assert queued["follow_up"]["scheduled_for"] - queued["intro"]["sent_at"] > timedelta(hours=2)


WINDOWS = [
    SenderPacing(
        timezone="Europe/Berlin", window_days=(1, 2, 3, 4, 5), window_start=clock(9), window_end=clock(18)
    ),
    SenderPacing(timezone="America/New_York", window_start=clock(22), window_end=clock(6)),
    SenderPacing(timezone="Europe/Berlin", window_days=(7,), window_start=clock(2), window_end=clock(4)),
    SenderPacing(timezone="Australia/Sydney", window_days=(6, 7)),
    SenderPacing(timezone="UTC"),
]


@pytest.mark.parametrize(
    "pacing", WINDOWS, ids=["berlin-office", "ny-overnight", "berlin-dst-hour", "sydney-weekend", "always"]
)
def test_sql_next_window_open_matches_python_across_weeks_and_dst(
    database: Database, pacing: SenderPacing
) -> None:
    effective = EffectivePacing.merge(pacing, UNPACED)
    # Every 37 minutes over both 2025 DST changes in Europe and the US, and Sydney's.
    starts = [
        datetime(2025, 3, 7, tzinfo=UTC),
        datetime(2025, 3, 27, tzinfo=UTC),
        datetime(2025, 10, 24, tzinfo=UTC),
        datetime(2025, 4, 3, tzinfo=UTC),
    ]
    instants = [start + timedelta(minutes=37 * i) for start in starts for i in range(0, 6 * 24 * 60 // 37)]
    found = database.fetch_all(
        "SELECT sendonce_next_window_open(t, %(tz)s, %(days)s::smallint[], %(opens)s, %(closes)s) AS at"
        " FROM unnest(%(instants)s::timestamptz[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
        {
            "tz": pacing.timezone,
            "days": list(pacing.window_days) if pacing.window_days else None,
            "opens": pacing.window_start,
            "closes": pacing.window_end,
            "instants": instants,
        },
    )
    expected = [next_window_open(effective, at) for at in instants]
    mismatches = [
        (at, got["at"], want)
        for at, got, want in zip(instants, found, expected, strict=True)
        if got["at"] != want
    ]
    assert mismatches == []


def test_nothing_follows_a_failed_or_unknown_step_and_the_contact_says_why(
    database: Database, deps: DispatchDeps, fake_provider: Any
) -> None:
    campaign = new_campaign(database, [A, B, C], steps=(("intro", 0), ("follow_up", 0)))
    fake_provider.set_faults(
        [
            {"action": "permanent", "match": {"recipient": A}},
            {"action": "accept_then_drop", "match": {"recipient": B}},
        ]
    )
    run_dispatcher(deps)
    fake_provider.set_faults([])
    run_dispatcher(deps)  # C's follow-up (delay 0) is due at once
    assert by_step(database, campaign) == {
        (A, "intro"): "failed",
        (B, "intro"): "unknown",
        (C, "intro"): "sent",
        (C, "follow_up"): "sent",
    }
    failed, unknown = sequence(database, campaign, A), sequence(database, campaign, B)
    assert (failed["sequence_state"], failed["stop_cause"]) == ("halted", "failed")
    assert failed["stopped_reason"].startswith("step intro ended failed: whatsapp:131026")
    assert (unknown["sequence_state"], unknown["stop_cause"]) == ("halted", "unknown")
    assert sequence(database, campaign, C)["sequence_state"] == "completed"


@pytest.mark.parametrize("path", ["operator mark-sent", "sweeper recovery from the record"])
def test_every_path_that_settles_a_row_sent_queues_the_next_step(
    database: Database, queue: QueueRepository, guard: SendGuard, settings: Settings, path: str
) -> None:
    campaign = new_campaign(database, [A])
    [message] = queue.claim_batch(uuid.uuid4(), 10, 60)
    assert queue.mark_sending(message)
    if path == "operator mark-sent":
        # The send's outcome is ambiguous: unknown, halted; an operator then confirms it.
        assert queue.settle_terminal(message, QueueStatus.UNKNOWN, outcome=None, failure_reason="timeout")
        assert sequence(database, campaign, A)["sequence_state"] == "halted"
        resolve(
            ReconcileDeps(settings, queue, guard), message.queue_id, OperatorAction.MARK_SENT, "ops", "seen"
        )
    else:
        # The dispatcher died after the provider accepted; the record holds the outcome.
        guard.deliver_once(message.idempotency_key, lambda: SendOutcome.sent("wamid.recovered"))
        expire_leases(database)
        report = sweep(SweepDeps(settings=settings, queue=queue, guard=guard, sqs=None))
        assert report.recovered_sent == 1
    assert by_step(database, campaign) == {(A, "intro"): "sent", (A, "follow_up"): "pending"}
    state = sequence(database, campaign, A)
    assert (state["sequence_state"], state["stop_cause"]) == ("active", None), "a sent step resumes it"


# --- stop conditions -----------------------------------------------------------------------------

CONTACT = {
    Channel.WHATSAPP: "15550000009",
    Channel.MESSENGER: "6284930172648239",
    Channel.LINKEDIN: "ACoAAReplier",
}


@pytest.mark.parametrize("channel", list(Channel), ids=lambda c: c.value)
def test_a_reply_on_each_channel_stops_the_sequence_everywhere(
    database: Database, deps: DispatchDeps, channel: Channel
) -> None:
    contact = CONTACT[channel]
    first = new_campaign(database, [contact], channel=channel.value)
    other = new_campaign(database, [contact], channel=channel.value, senders=("sender-2",))
    run_dispatcher(deps)
    assert by_step(database, first) == {(contact, "intro"): "sent", (contact, "follow_up"): "pending"}

    deliver(database, channel, reply(channel, contact))

    for campaign in (first, other):
        state = sequence(database, campaign, contact)
        assert (state["sequence_state"], state["stop_cause"]) == ("stopped", "reply")
        assert state["stopped_reason"].startswith(f"replied: {channel.value}")
    assert by_step(database, first) == {(contact, "intro"): "sent", (contact, "follow_up"): "cancelled"}
    steps = campaign_status(database, first).steps
    assert [(s.sent, s.cancelled, s.replied) for s in steps] == [(1, 0, 1), (0, 1, 0)], (
        "the reply counts for step 1"
    )
    make_due(database)
    assert run_dispatcher(deps)["Sent"] == 0
    event = database.fetch_one(
        "SELECT event_type, status, contact FROM provider_events WHERE status = 'received'"
    )
    assert event is not None and event["contact"] == contact


def test_a_replayed_old_reply_does_not_stop_a_later_sequence(database: Database, deps: DispatchDeps) -> None:
    message = reply(Channel.WHATSAPP, A, message_id="same-reply")
    first = new_campaign(database, [A])
    deliver(database, Channel.WHATSAPP, message)
    assert sequence(database, first, A)["sequence_state"] == "stopped"
    later = new_campaign(database, [A], senders=("sender-2",))
    deliver(database, Channel.WHATSAPP, message)  # Meta retries deliveries for days
    assert sequence(database, later, A)["sequence_state"] == "active"


def test_a_reply_before_the_campaign_starts_stops_the_waiting_contact(database: Database) -> None:
    draft = new_campaign(database, [A, B], start=False)
    deliver(database, Channel.WHATSAPP, reply(Channel.WHATSAPP, A))
    assert sequence(database, draft, A)["sequence_state"] == "stopped"
    start_campaign(database, draft, operator="ops", config=CONFIG)
    assert by_step(database, draft) == {(B, "intro"): "pending"}, "only the contact who did not reply starts"


def test_an_opt_out_through_the_library_function_stops_the_sequence(
    database: Database, deps: DispatchDeps
) -> None:
    campaign = new_campaign(database, [A, B])
    run_dispatcher(deps)
    report = stop_contact(
        database,
        Channel.WHATSAPP,
        "+1 555 000 0001",
        cause=StopCause.OPT_OUT,
        reason="keyword STOP",
        decided_by="webhook",
    )
    assert (report.sequences_stopped, report.rows_cancelled, report.campaigns) == (1, 1, [str(campaign)])
    state = sequence(database, campaign, A)
    assert (state["sequence_state"], state["stop_cause"], state["stopped_reason"]) == (
        "stopped",
        "opt_out",
        "keyword STOP",
    )
    assert by_step(database, campaign)[(A, "follow_up")] == "cancelled"
    assert by_step(database, campaign)[(B, "follow_up")] == "pending", "only that contact"


def test_an_operator_stops_one_campaign_only(database: Database, deps: DispatchDeps) -> None:
    one = new_campaign(database, [A])
    two = new_campaign(database, [A], senders=("sender-2",))
    stop_contact(
        database,
        Channel.WHATSAPP,
        A,
        cause=StopCause.OPERATOR,
        reason="asked by phone",
        decided_by="operator:ops",
        campaign_id=one,
    )
    assert by_step(database, one) == {(A, "intro"): "cancelled"}
    assert by_step(database, two) == {(A, "intro"): "pending"}
    assert run_dispatcher(deps)["Sent"] == 1


def test_a_configured_event_stops_only_the_campaigns_that_list_it(
    database: Database, deps: DispatchDeps
) -> None:
    listing = new_campaign(database, [A], stop_on_events=("status:read",))
    silent = new_campaign(database, [A], senders=("sender-2",))
    run_dispatcher(deps)
    deliver(database, Channel.WHATSAPP, whatsapp_status(A, "delivered"))
    assert sequence(database, listing, A)["sequence_state"] == "active", "an unlisted status stops nothing"
    deliver(database, Channel.WHATSAPP, whatsapp_status(A, "read"))
    state = sequence(database, listing, A)
    assert (state["sequence_state"], state["stop_cause"]) == ("stopped", "event")
    assert "status:read" in state["stopped_reason"]
    assert by_step(database, listing)[(A, "follow_up")] == "cancelled"
    assert sequence(database, silent, A)["sequence_state"] == "active"
    assert by_step(database, silent)[(A, "follow_up")] == "pending"


class ReplyBeforeSending(QueueRepository):
    """The contact replies after the dispatcher claimed step 2, before it marks it sending."""

    def __init__(self, db: Database, on_claimed: Callable[[ClaimedMessage], None]) -> None:
        super().__init__(db)
        self._on_claimed = on_claimed
        self.verdicts: list[SendingVerdict] = []

    def mark_sending(self, message: ClaimedMessage) -> SendingVerdict:
        self._on_claimed(message)
        verdict = super().mark_sending(message)
        self.verdicts.append(verdict)
        return verdict


def test_a_reply_while_step_two_is_claimed_keeps_step_two_from_going_out(
    database: Database, deps: DispatchDeps, fake_provider: Any
) -> None:
    campaign = new_campaign(database, [A])
    run_dispatcher(deps)
    make_due(database)

    def replied(message: ClaimedMessage) -> None:
        assert by_step(database, campaign)[(A, "follow_up")] == "claimed"
        deliver(database, Channel.WHATSAPP, reply(Channel.WHATSAPP, A))

    hooked = ReplyBeforeSending(database, replied)
    deps.queue = hooked
    counts = run_dispatcher(deps)
    assert hooked.verdicts == [SendingVerdict.CANCELLED]
    assert (counts["Claimed"], counts["Sent"], counts["Cancelled"]) == (1, 0, 1)
    assert by_step(database, campaign) == {(A, "intro"): "sent", (A, "follow_up"): "cancelled"}
    assert [m["text"].split(" ")[0] for m in fake_provider.ledger()] == ["intro"]
    decision = database.fetch_one(
        "SELECT from_status::text AS f, to_status::text AS t, reason FROM queue_decisions"
    )
    assert decision is not None and (decision["f"], decision["t"]) == ("claimed", "cancelled")
    assert decision["reason"].startswith("sequence stopped: replied")


# --- races between a stop and a settle --------------------------------------------------------------


def _wait_until_blocked(database: Database) -> None:
    """Until another session of this test's database waits on a lock (a condition, not a
    sleep-and-hope)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = database.fetch_one(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if row and row["n"]:
            return
        time.sleep(0.01)
    raise AssertionError("the racing statement never waited for the lock")


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # pragma: no cover - surfaced by the assertion below
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _claimed_first_step(database: Database, queue: QueueRepository) -> tuple[uuid.UUID, ClaimedMessage]:
    campaign = new_campaign(database, [A])
    [message] = queue.claim_batch(uuid.uuid4(), 10, 60)
    assert queue.mark_sending(message)
    return campaign, message


def _settle_params(message: ClaimedMessage) -> dict[str, Any]:
    return {
        "queue_id": message.queue_id,
        "claim_token": message.claim_token,
        "expected_status": "sending",
        "provider_message_id": "wamid.race",
        "provider_thread_id": None,
        "recovered_from": "dispatch",
        "attempt": message.attempts,
        "reason": "",
        "http_status": 200,
        "record_attempt": True,
        "writer": None,
    }


def test_a_stop_waiting_on_a_settle_cancels_the_step_that_settle_queued(
    db_url: str, database: Database, queue: QueueRepository
) -> None:
    campaign, message = _claimed_first_step(database, queue)
    stopper = Database(db_url, max_size=1)
    with database.connection() as conn, conn.transaction():
        # The settle of step 1 holds the contact's sequence row (and has queued step 2)...
        assert conn.execute(sql.SETTLE_SENT, _settle_params(message)).fetchone() == {"settled": 1}
        # ...while a reply's stop starts and has to wait for it.
        thread, out = _in_thread(
            lambda: stop_contact(
                stopper, Channel.WHATSAPP, A, cause=StopCause.REPLY, reason="r", decided_by="t"
            )
        )
        _wait_until_blocked(database)
    thread.join(60)
    stopper.close()
    assert out and out[0].rows_cancelled == 1, out
    assert by_step(database, campaign) == {(A, "intro"): "sent", (A, "follow_up"): "cancelled"}


def test_a_settle_waiting_on_a_stop_queues_no_next_step(
    db_url: str, database: Database, queue: QueueRepository
) -> None:
    campaign, message = _claimed_first_step(database, queue)
    settler = QueueRepository(Database(db_url, max_size=1))
    with database.connection() as conn, conn.transaction():
        # The stop's first statement holds the sequence row...
        stopped = conn.execute(
            sql.STOP_SEQUENCES,
            {
                "channel": "whatsapp",
                "addresses": [A],
                "event_names": [None],
                "reasons": ["r"],
                "cause": "reply",
                "campaign_id": None,
            },
        ).fetchall()
        assert len(stopped) == 1
        # ...while the dispatcher settles step 1 and has to wait before queueing step 2.
        thread, out = _in_thread(lambda: settler.settle_sent(message, SendOutcome.sent("wamid.race")))
        _wait_until_blocked(database)
        conn.execute(
            sql.CANCEL_STOPPED_ROWS,
            {
                "campaign_ids": [r["campaign_id"] for r in stopped],
                "contact_ids": [r["contact_id"] for r in stopped],
                "decided_by": "t",
            },
        )
    thread.join(60)
    settler.db.close()
    assert out == [True]
    assert by_step(database, campaign) == {(A, "intro"): "sent"}, "the settle saw the stop: nothing queued"
    assert sequence(database, campaign, A)["sequence_state"] == "stopped"


def test_steps_stay_unique_under_racing_enqueues_and_dispatchers(
    database: Database, settings: Settings, guard: SendGuard, deps: DispatchDeps, fake_provider: Any
) -> None:
    contacts = [f"1555{i:07d}" for i in range(120)]
    campaign = uuid.uuid4()
    request = EnqueueRequest.model_validate(
        {
            "source": "sendonce.manual",
            "campaign_id": str(campaign),
            "campaign_name": "race",
            "channel": "whatsapp",
            "sender_provider_id": "sender-1",
            "contacts": [{"address": a} for a in contacts],
            "steps": [{"message_type": f"s{n}", "body": f"step {n}"} for n in range(3)],
        }
    )
    enqueue_campaign(database, request)
    errors: list[BaseException] = []
    done = threading.Event()

    def enqueue_again() -> None:
        try:
            while not done.is_set():
                enqueue_campaign(database, request)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    def dispatch_until_drained() -> None:
        try:
            mine = DispatchDeps(
                settings=settings, queue=QueueRepository(database), guard=guard, adapters=deps.adapters
            )
            while run_dispatcher(mine)["Claimed"]:
                pass
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    enqueuers = [threading.Thread(target=enqueue_again) for _ in range(2)]
    dispatchers = [threading.Thread(target=dispatch_until_drained) for _ in range(3)]
    for t in enqueuers + dispatchers:
        t.start()
    for t in dispatchers:
        t.join()
    done.set()
    for t in enqueuers:
        t.join()
    while run_dispatcher(deps)["Claimed"]:
        pass
    assert errors == []
    steps = Counter(by_step(database, campaign).values())
    assert steps == {"sent": 360}
    assert set(Counter((m["recipient"], m["text"]) for m in fake_provider.ledger()).values()) == {1}
    assert len(fake_provider.ledger()) == 360


def test_a_sequence_queued_before_this_engine_progresses_without_a_second_step(
    database: Database, deps: DispatchDeps, fake_provider: Any
) -> None:
    """Campaigns enqueued before migration 0008 had every step queued at once: settling step 1
    finds step 2 already there and adds nothing (the unique step, ON CONFLICT)."""
    campaign = new_campaign(database, [A])
    with database.connection() as conn:
        conn.execute(
            "INSERT INTO send_queue (campaign_id, contact_id, sender_account_id, message_type, body, scheduled_for)"
            " SELECT campaign_id, contact_id, sender_account_id, 'follow_up', 'legacy', now() + interval '1 day'"
            " FROM send_queue"
        )
    counts = run_dispatcher(deps)
    assert (counts["Sent"], counts["SettleErrors"]) == (1, 0)
    follow_ups = [r for r in rows(database, campaign) if r["message_type"] == "follow_up"]
    assert [
        (r["status"], r["scheduled_for"] > datetime.now(UTC) + timedelta(hours=23)) for r in follow_ups
    ] == [("pending", True)]
    assert sequence(database, campaign, A)["sequence_state"] == "active"
