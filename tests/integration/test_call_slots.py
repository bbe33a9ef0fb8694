"""The send-time gate (shared/call_slots.py) on real Postgres: call slots spaced on the
database's clock whoever asks, a send turned away before its call goes back unsent with its
record released, and a gate that cannot be asked never makes a row ``unknown``."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from devstack.testing import enqueue_contacts, run_in_threads
from shared.call_slots import CallGate, CallSlot
from shared.dispatch import DispatchDeps, dispatch
from shared.events import DispatchRequest
from shared.idempotency import RecordState
from shared.pacing import CallGap, SenderPacing
from shared.providers.outcome import Channel
from shared.queue import ClaimedMessage, QueueRepository
from shared.senders import configure_sender
from shared.storage.db import Database

pytestmark = pytest.mark.integration
MANUAL = DispatchRequest(source="sendonce.manual")


class Remaining:
    def get_remaining_time_in_millis(self) -> int:
        return 10 * 60 * 1000


def sender_id(database: Database, provider_id: str) -> uuid.UUID:
    row = database.fetch_one(
        "SELECT id FROM sender_accounts WHERE provider_account_id = %(p)s", {"p": provider_id}
    )
    assert row is not None
    return uuid.UUID(str(row["id"]))


def message_for(sender: uuid.UUID, gap: float, *, spaced: bool) -> ClaimedMessage:
    """A message as the claim hands it over; the gate reads only its sender and gap (the
    stamp on send_queue finds no row with this id and changes nothing)."""
    return ClaimedMessage(
        queue_id=-1,
        idempotency_key="k" * 16,
        channel=Channel.WHATSAPP,
        sender_account_id=sender,
        sender_provider_id="s",
        recipient="r",
        body="b",
        message_type="intro",
        claim_token=uuid.uuid4(),
        attempts=1,
        max_attempts=5,
        call_gap=CallGap(gap, spaced=spaced),
    )


def gaps(times: list[datetime]) -> list[float]:
    ordered = sorted(times)
    return [(b - a).total_seconds() for a, b in itertools.pairwise(ordered)]


def test_rate_slots_taken_by_racing_threads_are_a_gap_apart(database: Database) -> None:
    enqueue_contacts(database, "whatsapp", ["15550000001"], sender="wa-gate")
    sender = sender_id(database, "wa-gate")
    gap = 0.02
    # No real waiting: each thread reserves its slots back to back, so slots run ahead of the
    # clock and the spacing comes from the reservation alone.
    gate = CallGate(database, sleep=lambda _: None)
    granted: list[CallSlot] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(10):
            slot = gate.wait_for_slot(message_for(sender, gap, spaced=False), max_wait_seconds=60)
            with lock:
                granted.append(slot)

    run_in_threads(take, 8)
    assert len(granted) == 80 and all(s.granted for s in granted)
    times = [s.granted_at for s in granted if s.granted_at is not None]
    assert len(set(times)) == 80
    assert min(gaps(times)) >= gap - 1e-6


def test_a_rate_slot_beyond_the_wait_limit_is_refused_with_when_to_come_back(database: Database) -> None:
    enqueue_contacts(database, "whatsapp", ["15550000001"], sender="wa-gate")
    sender = sender_id(database, "wa-gate")
    waits: list[float] = []
    gate = CallGate(database, sleep=waits.append)
    message = message_for(sender, 10.0, spaced=False)
    first = gate.wait_for_slot(message, max_wait_seconds=15)
    second = gate.wait_for_slot(message, max_wait_seconds=15)
    third = gate.wait_for_slot(message, max_wait_seconds=15)
    assert first.granted and second.granted and not third.granted
    # The second waited for its slot, 10 s after the first; the third's would start about 20 s
    # from now, beyond the limit: refused, told to come back then, and no slot spent on it.
    assert len(waits) == 1 and 5 < waits[0] <= 10
    assert 15 < third.retry_after_seconds <= 20
    after = gate.wait_for_slot(message, max_wait_seconds=60)
    assert after.granted and after.granted_at is not None and second.granted_at is not None
    assert after.granted_at - second.granted_at == timedelta(seconds=10)


def test_spaced_calls_are_granted_no_closer_than_the_spacing(database: Database) -> None:
    enqueue_contacts(database, "linkedin", ["ACoAA0001"], sender="li-gate")
    sender = sender_id(database, "li-gate")
    spacing = 0.3
    gate = CallGate(database, sleep=time.sleep)
    results: list[CallSlot] = []
    lock = threading.Lock()

    def take() -> None:
        slot = gate.wait_for_slot(message_for(sender, spacing, spaced=True), max_wait_seconds=30)
        with lock:
            results.append(slot)

    run_in_threads(take, 5)
    granted = [s.granted_at for s in results if s.granted and s.granted_at is not None]
    # Callers race for each grant; how many win within their retries depends on the machine,
    # the spacing between the grants does not.
    assert len(granted) >= 2
    assert min(gaps(granted)) >= spacing


def paced_whatsapp(database: Database, addresses: list[str]) -> uuid.UUID:
    enqueue_contacts(database, "whatsapp", addresses, sender="wa-gate")
    configure_sender(
        database, Channel.WHATSAPP, "wa-gate", SenderPacing(rate_per_second=50, burst=50), operator="test"
    )
    return sender_id(database, "wa-gate")


def test_a_send_turned_away_by_the_gate_goes_back_unsent_with_its_record_released(
    database: Database, deps: DispatchDeps, fake_provider: Any
) -> None:
    sender = paced_whatsapp(database, ["15550000001", "15550000002"])
    # Another dispatcher has reserved this sender's calls for the next hour.
    database.fetch_one(
        "INSERT INTO sender_call_slots (sender_account_id, next_call_at)"
        " VALUES (%(s)s, clock_timestamp() + interval '1 hour') RETURNING 1",
        {"s": sender},
    )
    report = dispatch(deps, DispatchRequest(source="sendonce.manual", max_batches=1), Remaining())
    assert report.counts["CallSlotDeclined"] == 2
    assert fake_provider.ledger() == []
    rows = database.fetch_all("SELECT * FROM send_queue ORDER BY id")
    assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 0), ("pending", 0)]
    assert all(r["scheduled_for"] > datetime.now(r["scheduled_for"].tzinfo) for r in rows)
    attempts = database.fetch_all("SELECT outcome, writer FROM send_attempts")
    assert {a["outcome"] for a in attempts} == {"not_called"} and all(a["writer"] for a in attempts)
    for row in rows:
        assert deps.guard.lookup(row["idempotency_key"]).state is RecordState.ABSENT

    # The slot frees up: each message goes out once, its call stamped with its grant.
    database.fetch_one("DELETE FROM sender_call_slots RETURNING 1")
    database.fetch_one("UPDATE send_queue SET scheduled_for = now() RETURNING 1")
    dispatch(deps, MANUAL, Remaining())
    assert sorted(m["recipient"] for m in fake_provider.ledger()) == ["15550000001", "15550000002"]
    sent = database.fetch_all("SELECT status, call_granted_at FROM send_queue")
    assert all(r["status"] == "sent" and r["call_granted_at"] is not None for r in sent)


def test_a_gate_that_cannot_be_asked_returns_the_row_unsent_never_unknown(
    database: Database, db_url: str, deps: DispatchDeps, fake_provider: Any
) -> None:
    sender = paced_whatsapp(database, ["15550000001"])
    database.fetch_one(
        "INSERT INTO sender_call_slots (sender_account_id, next_call_at) VALUES (%(s)s, now()) RETURNING 1",
        {"s": sender},
    )
    # Another session holds the slot row's lock past the dispatcher's statement timeout: the
    # gate's statement is cancelled, inside the idempotency guard.
    blocker = Database(db_url, max_size=1)
    timed = Database(db_url, max_size=4, statement_timeout_seconds=1)
    timed_deps = dataclasses.replace(deps, queue=QueueRepository(timed))
    try:
        with blocker.connection() as conn, conn.transaction():
            conn.execute(
                "SELECT 1 FROM sender_call_slots WHERE sender_account_id = %(s)s FOR UPDATE", {"s": sender}
            )
            report = dispatch(
                timed_deps, DispatchRequest(source="sendonce.manual", max_batches=1), Remaining()
            )
    finally:
        blocker.close()
        timed.close()
    assert report.counts["CallSlotDeclined"] == 1
    assert fake_provider.ledger() == []
    row = database.fetch_one("SELECT status, attempts, idempotency_key FROM send_queue")
    assert row is not None and (row["status"], row["attempts"]) == ("pending", 0)
    assert deps.guard.lookup(row["idempotency_key"]).state is RecordState.ABSENT
