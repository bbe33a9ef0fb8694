"""An error code the adapters' tables do not list is ambiguous end to end: real Postgres, moto
DynamoDB and the fake provider over HTTP answering codes nobody documented as a refusal.

The record stays (COMPLETED, ambiguous), the row settles ``unknown`` and never ``failed``, and
redrive refuses it even after an operator fails it. A documented refusal (WhatsApp 131026) is
the control: its record is deleted and redrive requeues it, so the assertions below can fail.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import pytest

from devstack.fake_provider import FakeProvider
from devstack.testing import TEST_TOKENS, enqueue_contacts, outlive_claims
from shared.config import Settings
from shared.dispatch import DispatchDeps, dispatch
from shared.events import DispatchRequest
from shared.idempotency import GuardVerdict, RecordState, SendGuard
from shared.providers.outcome import Channel, OutboundMessage, OutcomeKind
from shared.providers.registry import build_adapters, make_http_client
from shared.providers.secrets import StaticTokenSource
from shared.queue import QueueRepository
from shared.reconcile import OperatorAction, ReconcileDeps, redrive, resolve
from shared.storage.db import Database

pytestmark = pytest.mark.integration
MANUAL = DispatchRequest(source="sendonce.manual")

# (channel, recipient, code or type, HTTP status): none is in its adapter's table.
Case = tuple[str, str, int | str, int]
UNKNOWN: list[Case] = [
    ("whatsapp", "15550000001", 1, 400),  # Meta: "invalid request or possible server error"
    ("whatsapp", "15550000002", 132999, 400),  # inside the template range, not a documented code
    ("messenger", "psid-unknown", 987654, 403),
    ("linkedin", "ACoAAunknown", "some_new_type", 422),
]
CONTROL: Case = ("whatsapp", "15550000009", 131026, 400)  # "Message Undeliverable": a documented refusal


class Plenty:
    def get_remaining_time_in_millis(self) -> int:
        return 10 * 60 * 1000


def error_rule(channel: str, recipient: str, code: int | str, status: int) -> dict[str, Any]:
    return {
        "action": "error_code",
        "code": code,
        "error_status": status,
        "match": {"channel": channel, "recipient": recipient},
    }


def rows_by_recipient(database: Database) -> dict[str, dict[str, Any]]:
    found = database.fetch_all(
        "SELECT q.*, q.status::text AS state, c.address FROM send_queue q JOIN contacts c ON c.id = q.contact_id"
    )
    return {r["address"]: dict(r) for r in found}


def test_unknown_codes_through_the_guard_keep_their_record(
    settings: Settings, guard: SendGuard, fake_provider: FakeProvider
) -> None:
    fake_provider.set_faults([error_rule(*case) for case in UNKNOWN])
    with make_http_client(settings) as client:
        adapters = build_adapters(settings, client, StaticTokenSource(TEST_TOKENS))
        for channel, recipient, code, _status in UNKNOWN:
            message = OutboundMessage(
                queue_id=1,
                idempotency_key=f"so1-{uuid.uuid4().hex}",
                channel=Channel(channel),
                sender_account_id=uuid.uuid4(),
                sender_provider_id="sender-1",
                recipient=recipient,
                body="hello",
                message_type="intro",
            )
            send = partial(adapters[message.channel].send, message)
            first = guard.deliver_once(message.idempotency_key, send)
            assert first.verdict is GuardVerdict.CALLED
            assert first.outcome is not None and first.outcome.kind is OutcomeKind.AMBIGUOUS, (code, first)
            record = guard.lookup(message.idempotency_key)
            assert record.state is RecordState.COMPLETED, f"{code}: the record must not be deleted"
            assert record.outcome is not None and record.outcome.kind is OutcomeKind.AMBIGUOUS
            again = guard.deliver_once(message.idempotency_key, send)
            assert again.verdict is GuardVerdict.REPLAYED, f"{code}: a second call must be blocked"
    assert fake_provider.stats()["requests_total"] == len(UNKNOWN), "one provider call per message"


def test_dispatcher_settles_unknown_codes_unknown_and_redrive_refuses_them(
    database: Database,
    deps: DispatchDeps,
    settings: Settings,
    queue: QueueRepository,
    guard: SendGuard,
    fake_provider: FakeProvider,
) -> None:
    for channel, recipient, _code, _status in [*UNKNOWN, CONTROL]:
        enqueue_contacts(database, channel, [recipient])
    fake_provider.set_faults([error_rule(*case) for case in [*UNKNOWN, CONTROL]])

    report = dispatch(deps, MANUAL, Plenty())
    assert (report.counts["Ambiguous"], report.counts["Failed"]) == (len(UNKNOWN), 1)

    rows = rows_by_recipient(database)
    control = rows.pop(CONTROL[1])
    assert control["state"] == "failed"
    assert guard.lookup(control["idempotency_key"]).state is RecordState.ABSENT
    for recipient, row in rows.items():
        assert row["state"] == "unknown", f"{recipient}: an unknown code must not fail the row"
        record = guard.lookup(row["idempotency_key"])
        assert record.state is RecordState.COMPLETED, f"{recipient}: the record must not be deleted"
        assert record.outcome is not None and record.outcome.kind is OutcomeKind.AMBIGUOUS

    reconcile = ReconcileDeps(settings, queue, guard)
    outlive_claims(database)
    # Even an operator's "fail" does not make them redrivable: the attempt was ambiguous.
    for row in rows.values():
        resolve(reconcile, row["id"], OperatorAction.FAIL, "alice", "gave up waiting for evidence")
    result = redrive(reconcile)
    assert result.requeued == [control["id"]], "only the documented refusal is requeued"
    assert set(result.skipped) == {row["id"] for row in rows.values()}
    states = {r["address"]: r["state"] for r in rows_by_recipient(database).values()}
    assert states == {**{recipient: "failed" for recipient in rows}, CONTROL[1]: "pending"}
