"""The sweeper and the dispatcher through a real PgBouncer in transaction mode.

With ``pool_size=1`` every client's transactions share one server session, so anything that
leans on session state between statements (a session advisory lock, a server-side prepared
statement) is shared between clients every time, not only when the pooler happens to hand
out the same server connection.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.aws import LocalAwsResources
from devstack.pgbouncer import PgBouncer
from devstack.testing import TEST_TOKENS, enqueue_contacts, make_settings
from shared.dispatch import DispatchDeps, dispatch
from shared.events import DispatchRequest
from shared.idempotency import SendGuard
from shared.providers.registry import build_adapters, make_http_client
from shared.providers.secrets import StaticTokenSource
from shared.queue import QueueRepository
from shared.storage.db import Database
from shared.sweeper import SweepDeps, _single_flight, sweep

pytestmark = pytest.mark.integration


class Plenty:
    def get_remaining_time_in_millis(self) -> int:
        return 10 * 60 * 1000


@pytest.fixture
def bouncer(pg_server: Any) -> Iterator[PgBouncer]:
    with PgBouncer.in_front_of(pg_server.admin_url, pool_size=1) as running:
        yield running


def pooled(bouncer: PgBouncer, db_url: str) -> Iterator[Database]:
    db = Database(bouncer.url_for(db_url), max_size=12, connect_timeout_seconds=3)
    yield db
    db.close()


@pytest.fixture
def pooled_a(bouncer: PgBouncer, db_url: str) -> Iterator[Database]:
    yield from pooled(bouncer, db_url)


@pytest.fixture
def pooled_b(bouncer: PgBouncer, db_url: str) -> Iterator[Database]:
    yield from pooled(bouncer, db_url)


def sweeper(db: Database, db_url: str, aws: LocalAwsResources, guard: SendGuard) -> SweepDeps:
    settings = make_settings(db_url, aws, "http://127.0.0.1:9")
    return SweepDeps(settings=settings, queue=QueueRepository(db), guard=guard, sqs=None)


def test_sweeper_single_flight_holds_through_pgbouncer(
    pooled_a: Database, pooled_b: Database, db_url: str, aws: LocalAwsResources, guard: SendGuard
) -> None:
    first = sweeper(pooled_a, db_url, aws, guard)
    second = sweeper(pooled_b, db_url, aws, guard)
    with _single_flight(first) as held:
        assert held
        assert not sweep(second).ran, "a second sweeper ran while the first held the single-flight lock"
    # Released, not leaked onto whatever server connection the pooler handed out.
    assert sweep(second).ran
    assert sweep(first).ran


def test_dispatcher_sends_everything_once_through_pgbouncer(
    pooled_a: Database,
    db_url: str,
    aws: LocalAwsResources,
    guard: SendGuard,
    fake_provider: Any,
) -> None:
    addresses = [f"1555{i:07d}" for i in range(120)]
    enqueue_contacts(pooled_a, "whatsapp", addresses)
    settings = make_settings(db_url, aws, fake_provider.url)
    client = make_http_client(settings)
    deps = DispatchDeps(
        settings=settings,
        queue=QueueRepository(pooled_a),
        guard=guard,
        adapters=build_adapters(settings, client, StaticTokenSource(TEST_TOKENS)),
    )
    try:
        report = dispatch(deps, DispatchRequest(source="sendonce.manual"), Plenty())
    finally:
        client.close()
    statuses = Counter(r["status"] for r in pooled_a.fetch_all("SELECT status::text FROM send_queue"))
    assert report.counts.get("SettleErrors", 0) == 0, report
    assert statuses == {"sent": len(addresses)}
    assert Counter(m["recipient"] for m in fake_provider.ledger()) == Counter(addresses)
