"""Unipile read-back evidence, end to end: the real dispatcher leaves a LinkedIn row
``unknown``, and the reconciler reads the chat back from the fake provider over HTTP.

Only a message our account sent after the attempt started (less the clock-skew allowance),
and not already credited to another row by the ledger, may settle the row ``sent``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.fake_provider import FakeProvider
from devstack.testing import TEST_TOKENS, enqueue_contacts
from shared.config import Settings
from shared.dispatch import DispatchDeps, dispatch
from shared.events import DispatchRequest
from shared.idempotency import SendGuard
from shared.providers.registry import build_read_backs, make_http_client
from shared.providers.secrets import StaticTokenSource
from shared.queue import QueueRepository
from shared.reconcile import ReconcileDeps, reconcile_unknown
from shared.storage.db import Database

pytestmark = pytest.mark.integration
MANUAL = DispatchRequest(source="sendonce.manual")
SENDER = "unipile-acct-1"
RECIPIENT = "ACoAA0001"


class Plenty:
    def get_remaining_time_in_millis(self) -> int:
        return 10 * 60 * 1000


@pytest.fixture
def reconciler(settings: Settings, queue: QueueRepository, guard: SendGuard) -> Iterator[ReconcileDeps]:
    with make_http_client(settings) as client:
        yield ReconcileDeps(
            settings,
            queue,
            guard,
            read_back=build_read_backs(settings, client, StaticTokenSource(TEST_TOKENS)),
        )


def send_campaign(
    database: Database, deps: DispatchDeps, fake: FakeProvider, body: str, fault: str | None = None
) -> int:
    """One LinkedIn message to RECIPIENT in a campaign of its own; returns its queue id. The
    campaigns share their recipient on purpose: the cross-campaign policy is off."""
    campaign = enqueue_contacts(
        database, "linkedin", [RECIPIENT], sender=SENDER, body=body, cross_campaign_policy="allow"
    )
    fake.set_faults([{"action": fault}] if fault else [])
    dispatch(deps, MANUAL, Plenty())
    fake.set_faults([])
    row = database.fetch_one("SELECT id FROM send_queue WHERE campaign_id = %(c)s", {"c": campaign})
    assert row is not None
    return int(row["id"])


def row(database: Database, queue_id: int) -> dict[str, Any]:
    found = database.fetch_one(
        "SELECT status::text AS state, last_error, provider_message_id FROM send_queue WHERE id = %(id)s",
        {"id": queue_id},
    )
    assert found is not None
    return dict(found)


def decisions(database: Database, queue_id: int) -> list[dict[str, Any]]:
    return [
        dict(d)
        for d in database.fetch_all(
            "SELECT from_status::text AS source, to_status::text AS target, decided_by, reason "
            "FROM queue_decisions WHERE queue_id = %(id)s ORDER BY id",
            {"id": queue_id},
        )
    ]


def test_an_older_hand_typed_message_with_the_same_text_is_not_evidence(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, reconciler: ReconcileDeps
) -> None:
    # A first campaign makes the chat known; the second send is refused with a 500, so nothing
    # was delivered, but the row can only be `unknown`.
    send_campaign(database, deps, fake_provider, "Nice to meet you")
    unsent = send_campaign(database, deps, fake_provider, "Shall we talk next week?", fault="server_error")
    assert row(database, unsent)["state"] == "unknown"
    # The same words, typed by hand two days ago on another device.
    fake_provider.add_chat_message(
        SENDER, RECIPIENT, "Shall we talk next week?", timestamp=datetime.now(UTC) - timedelta(days=2)
    )

    report = reconcile_unknown(reconciler)
    assert (report.resolved_sent, report.errors) == (0, 0)
    assert row(database, unsent)["state"] == "unknown"


def test_a_message_the_ledger_credits_to_another_row_holds_the_row_with_its_reason(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, reconciler: ReconcileDeps
) -> None:
    # Two campaigns, the same text, the same person (seed 000). The first was delivered and is
    # in the ledger; the second was refused with a 500 and never delivered.
    delivered = send_campaign(database, deps, fake_provider, "Great to connect")
    unsent = send_campaign(database, deps, fake_provider, "Great to connect", fault="server_error")
    credited = row(database, delivered)["provider_message_id"]
    assert credited and row(database, unsent)["state"] == "unknown"

    later = datetime.now(UTC) + timedelta(days=1)  # past the grace period: the policy would apply
    for _ in range(3):
        report = reconcile_unknown(reconciler, now=later)
        assert (report.resolved_sent, report.held, report.errors) == (0, 1, 0)
    held = row(database, unsent)
    assert held["state"] == "unknown"
    assert credited in held["last_error"]
    [decision] = decisions(database, unsent)  # recorded once, not once per sweep
    assert (decision["source"], decision["target"], decision["decided_by"]) == (
        "unknown",
        "unknown",
        "reconciler",
    )
    assert credited in decision["reason"]


def test_a_genuine_message_after_the_attempt_settles_the_row_sent(
    database: Database, deps: DispatchDeps, fake_provider: FakeProvider, reconciler: ReconcileDeps
) -> None:
    send_campaign(database, deps, fake_provider, "Nice to meet you")
    # Accepted by the provider, answered with a 500: delivered, and `unknown` here.
    sent_unknowingly = send_campaign(
        database, deps, fake_provider, "Great to connect", fault="accept_then_5xx"
    )
    assert row(database, sent_unknowingly)["state"] == "unknown"
    genuine = fake_provider.ledger()[-1]["provider_message_id"]
    # A later campaign sends the same text to the same person and is delivered: the chat's
    # newest match belongs to that row, not to this one.
    later_row = send_campaign(database, deps, fake_provider, "Great to connect")
    assert row(database, later_row)["state"] == "sent"
    fake_provider.add_chat_message(
        SENDER, RECIPIENT, "Great to connect", timestamp=datetime.now(UTC) - timedelta(days=3)
    )

    report = reconcile_unknown(reconciler)
    assert (report.resolved_sent, report.errors) == (1, 0)
    settled = row(database, sent_unknowingly)
    assert (settled["state"], settled["provider_message_id"]) == ("sent", genuine)
    ledger = database.fetch_one(
        "SELECT recovered_from FROM message_ledger WHERE queue_id = %(id)s", {"id": sent_unknowingly}
    )
    assert ledger is not None and ledger["recovered_from"] == "read_back"
