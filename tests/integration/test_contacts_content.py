"""Personalised content, suppression and opt-out on real Postgres, moto and the fake provider
(issue 8, sections 4 and 5)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devstack.engine_testing import by_step, deliver, make_due, reply, run_dispatcher, sequence
from shared.dispatch import DispatchDeps
from shared.enqueue import enqueue_campaign
from shared.events import EnqueueRequest
from shared.providers.outcome import Channel
from shared.queue import ClaimedMessage, QueueRepository, SendingVerdict
from shared.reconcile import audit
from shared.storage import sql
from shared.storage.db import Database
from shared.suppression import add_suppression, list_suppressions, remove_suppression

pytestmark = pytest.mark.integration

A, B, C = "15550000001", "15550000002", "15550000003"


def request(
    campaign_id: uuid.UUID, contacts: list[dict[str, Any]], steps: list[tuple[str, str, int]]
) -> EnqueueRequest:
    return EnqueueRequest.model_validate(
        {
            "source": "sendonce.manual",
            "campaign_id": str(campaign_id),
            "campaign_name": "content test",
            "channel": "whatsapp",
            "sender_provider_id": "sender-1",
            "contacts": contacts,
            "steps": [{"message_type": t, "body": b, "delay_seconds": d} for t, b, d in steps],
        }
    )


def bodies(database: Database, campaign_id: uuid.UUID) -> dict[tuple[str, str], str]:
    return {
        (r["address"], r["message_type"]): r["body"]
        for r in database.fetch_all(
            "SELECT c.address, q.message_type, q.body FROM send_queue q JOIN contacts c ON c.id = q.contact_id"
            " WHERE q.campaign_id = %(c)s",
            {"c": campaign_id},
        )
    }


def test_a_contact_missing_a_variable_is_rejected_at_enqueue_with_the_reason(database: Database) -> None:
    campaign = uuid.uuid4()
    report = enqueue_campaign(
        database,
        request(
            campaign,
            [
                {"address": A, "display_name": "Ada Lovelace", "fields": {"Company": "ACME"}},
                {"address": B, "display_name": "Bob"},  # no company
                {"address": C, "display_name": "Cy", "fields": {"company": "Initech"}},
            ],
            [
                ("intro", "Hi {first_name}, about {company}", 0),
                ("follow_up", "{~Hi|Hello} again, {name}", 60),
            ],
        ),
    )
    assert (report.rows_enqueued, report.contacts_rejected) == (2, 1)
    assert report.rejected_by_reason == {"missing_variable": 1}
    [example] = report.rejected_examples
    assert example.index == 1 and "{company}" in example.detail
    assert bodies(database, campaign) == {
        (A, "intro"): "Hi Ada, about ACME",
        (C, "intro"): "Hi Cy, about Initech",
    }
    member = database.fetch_one(
        "SELECT count(*) AS n FROM campaign_contacts cc JOIN contacts c ON c.id = cc.contact_id"
        " WHERE cc.campaign_id = %(c)s AND c.address = %(a)s",
        {"c": campaign, "a": B},
    )
    assert member is not None and member["n"] == 0, "a rejected contact is not queued, not even waiting"
    # The template is never sent as written.
    assert not any("{" in body for body in bodies(database, campaign).values())


def test_the_variant_survives_retries_and_re_enqueues_and_is_what_the_provider_received(
    database: Database, deps: DispatchDeps, fake_provider: Any
) -> None:
    campaign = uuid.uuid4()
    contacts = [{"address": f"1555000{n:04d}"} for n in range(12)]
    steps = [
        ("intro", "{~Hi|Hello|Hey|Good day} {first_name|there}", 0),
        ("follow_up", "{~Bye|Ciao} now", 60),
    ]
    enqueue_campaign(database, request(campaign, contacts, steps))
    stored = bodies(database, campaign)
    assert len({b.split()[0] for b in stored.values()}) > 1, "contacts get different greetings"
    # A throttle sends every claimed row back to the queue; the retry sends the stored text.
    fake_provider.set_faults([{"action": "rate_limit", "times": 1}])
    run_dispatcher(deps)
    enqueue_campaign(database, request(campaign, contacts, steps))  # a repeated enqueue changes nothing
    assert {k: v for k, v in bodies(database, campaign).items() if k[1] == "intro"} == stored
    with database.connection() as conn:
        conn.execute("UPDATE send_queue SET scheduled_for = now()")
        conn.execute("UPDATE sender_accounts SET next_slot_at = now()")

    def intro_states() -> set[str]:
        return {s for (_, step), s in by_step(database, campaign).items() if step == "intro"}

    for _ in range(5):
        run_dispatcher(deps)
        if intro_states() == {"sent"}:
            break
    assert intro_states() == {"sent"}
    make_due(database)
    run_dispatcher(deps)
    final = bodies(database, campaign)
    assert {k: v for k, v in final.items() if k[1] == "intro"} == stored, "retries sent the stored text"
    assert len(final) == 24 and set(by_step(database, campaign).values()) == {"sent"}
    received = [(m["recipient"], m["text"]) for m in fake_provider.ledger()]
    assert sorted(received) == sorted((a, b) for (a, _), b in final.items()), "what is stored is what is sent"
    # The audit shows the text that was stored, which is what was sent.
    found = audit(database, address="15550000000")
    assert {r["body"] for r in found["queue"]} == {
        b for (a, _), b in bodies(database, campaign).items() if a == "15550000000"
    }


def _stop(contact: str, text: str) -> dict[str, Any]:
    document = reply(Channel.WHATSAPP, contact)
    document["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = text
    return document


def test_stop_mid_sequence_suppresses_the_contact_and_nothing_more_is_sent(
    database: Database, deps: DispatchDeps, fake_provider: Any
) -> None:
    campaign = uuid.uuid4()
    steps = [("intro", "Hi {first_name|there}. Reply STOP to opt out", 0), ("follow_up", "Still there?", 60)]
    enqueue_campaign(database, request(campaign, [{"address": A}, {"address": B}], steps))
    assert run_dispatcher(deps)["Sent"] == 2
    deliver(database, Channel.WHATSAPP, _stop(A, " Stop. "))
    state = sequence(database, campaign, A)
    assert (state["sequence_state"], state["stop_cause"]) == ("stopped", "opt_out")
    [suppression] = list_suppressions(database, address=A)
    assert (suppression["source"], suppression["created_by"]) == ("keyword", "webhook")
    make_due(database)
    run_dispatcher(deps)
    assert by_step(database, campaign) == {
        (A, "intro"): "sent",
        (A, "follow_up"): "cancelled",
        (B, "intro"): "sent",
        (B, "follow_up"): "sent",
    }
    assert [m["text"] for m in fake_provider.ledger() if m["recipient"] == A] == [
        "Hi there. Reply STOP to opt out"
    ]
    # A later campaign does not reach the suppressed contact either.
    later = uuid.uuid4()
    report = enqueue_campaign(
        database, request(later, [{"address": A}, {"address": C}], [("hello", "Hello", 0)])
    )
    assert (report.contacts_suppressed, report.rows_enqueued) == (1, 1)
    assert audit(database, address=A)["suppressions"][0]["reason"] == "whatsapp keyword"


def test_an_ordinary_reply_containing_stop_is_not_an_opt_out(database: Database, deps: DispatchDeps) -> None:
    campaign = uuid.uuid4()
    enqueue_campaign(database, request(campaign, [{"address": A}], [("intro", "Hi", 0)]))
    deliver(database, Channel.WHATSAPP, _stop(A, "please don't stop writing"))
    assert list_suppressions(database, address=A) == []
    assert sequence(database, campaign, A)["stop_cause"] == "reply"


class SuppressBeforeSending(QueueRepository):
    def __init__(self, db: Database, on_claimed: Callable[[ClaimedMessage], None]) -> None:
        super().__init__(db)
        self._on_claimed = on_claimed
        self.verdicts: list[SendingVerdict] = []

    def mark_sending(self, message: ClaimedMessage) -> SendingVerdict:
        self._on_claimed(message)
        verdict = super().mark_sending(message)
        self.verdicts.append(verdict)
        return verdict


def test_a_row_claimed_then_suppressed_ends_cancelled_never_sent(
    database: Database, deps: DispatchDeps, fake_provider: Any
) -> None:
    """The suppression lands between the claim and the recovery point, and (the worst case) its
    stop did not reach the row: the recovery point reads the suppression list itself."""
    campaign = uuid.uuid4()
    enqueue_campaign(database, request(campaign, [{"address": A}], [("intro", "Hi", 0)]))

    def suppressed(message: ClaimedMessage) -> None:
        with database.connection() as conn:
            conn.execute(
                sql.ADD_SUPPRESSIONS,
                {
                    "channel": "whatsapp",
                    "addresses": [A],
                    "reasons": ["complaint by phone"],
                    "sender_account_id": None,
                    "source": "operator",
                    "created_by": "operator:test",
                },
            )

    hooked = SuppressBeforeSending(database, suppressed)
    deps.queue = hooked
    counts = run_dispatcher(deps)
    assert hooked.verdicts == [SendingVerdict.CANCELLED]
    assert (counts["Sent"], counts["Cancelled"]) == (0, 1)
    assert by_step(database, campaign) == {(A, "intro"): "cancelled"}
    assert fake_provider.ledger() == []
    row = database.fetch_one("SELECT failure_reason FROM send_queue")
    assert row is not None and row["failure_reason"] == "suppressed: complaint by phone"


def test_operator_suppress_add_stops_sequences_and_remove_is_recorded(database: Database) -> None:
    campaign = uuid.uuid4()
    enqueue_campaign(database, request(campaign, [{"address": A}], [("intro", "Hi", 3600)]))
    added = add_suppression(
        database, Channel.WHATSAPP, "+1 555 000 0001", reason="asked by email", operator="ops"
    )
    assert (added.address, added.changed, added.sequences_stopped) == (A, True, 1)
    assert add_suppression(database, Channel.WHATSAPP, A, reason="again", operator="ops").changed is False
    assert by_step(database, campaign) == {(A, "intro"): "cancelled"}
    removed = remove_suppression(database, Channel.WHATSAPP, A, reason="re-consented", operator="ops")
    assert removed.changed
    assert list_suppressions(database, address=A) == []
    [history] = list_suppressions(database, address=A, include_removed=True)
    assert (history["removed_by"], history["removed_reason"]) == ("operator:ops", "re-consented")


# --- absolute send times (section 7) ------------------------------------------------------------------


def test_send_at_with_a_time_zone_holds_a_step_and_a_campaign_until_then(
    database: Database, deps: DispatchDeps
) -> None:
    """Step 1 is due at the later of its relative delay and its send_at (or the campaign's);
    step 2 at the later of its delay after step 1 and its own send_at."""
    campaign = uuid.uuid4()
    step_two_at = datetime.now(UTC) + timedelta(days=3)
    req = request(campaign, [{"address": A}], [("intro", "Hi", 0), ("follow_up", "Again", 60)])
    payload = req.model_dump(mode="json")
    payload["send_at"] = "2030-06-01T09:00"
    payload["send_at_timezone"] = "Europe/Paris"
    payload["steps"][1]["send_at"] = step_two_at.isoformat()
    enqueue_campaign(database, EnqueueRequest.model_validate(payload))
    [row] = database.fetch_all(
        "SELECT scheduled_for FROM send_queue WHERE campaign_id = %(c)s", {"c": campaign}
    )
    assert row["scheduled_for"] == datetime(2030, 6, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert run_dispatcher(deps)["Sent"] == 0, "not before its send_at"
    with database.connection() as conn:
        conn.execute("UPDATE send_queue SET scheduled_for = now()")
    assert run_dispatcher(deps)["Sent"] == 1
    follow_up = database.fetch_one(
        "SELECT scheduled_for FROM send_queue WHERE campaign_id = %(c)s AND message_type = 'follow_up'",
        {"c": campaign},
    )
    assert follow_up is not None and follow_up["scheduled_for"] == step_two_at
