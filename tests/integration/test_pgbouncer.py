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

import psycopg
import pytest
from psycopg import sql

from devstack.aws import LocalAwsResources
from devstack.pgbouncer import PgBouncer
from devstack.testing import TEST_TOKENS, enqueue_contacts, make_settings
from shared.config import Settings
from shared.dispatch import DispatchDeps, dispatch
from shared.events import DispatchRequest
from shared.idempotency import SendGuard
from shared.providers.registry import build_adapters, make_http_client
from shared.providers.secrets import StaticTokenSource
from shared.queue import QueueRepository
from shared.runtime import build_database
from shared.storage.db import Database, DatabaseMisconfiguredError, DatabaseUnavailableError
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


def sweeper(db: Database, settings: Settings, guard: SendGuard) -> SweepDeps:
    return SweepDeps(settings=settings, queue=QueueRepository(db), guard=guard, sqs=None)


def test_sweeper_single_flight_holds_through_pgbouncer(
    pooled_a: Database, pooled_b: Database, db_url: str, aws: LocalAwsResources, guard: SendGuard
) -> None:
    settings = make_settings(db_url, aws, "http://127.0.0.1:9")
    first = sweeper(pooled_a, settings, guard)
    second = sweeper(pooled_b, settings, guard)
    with _single_flight(first) as held:
        assert held
        assert not sweep(second).ran, "a second sweeper ran while the first held the single-flight lock"
    # Released, not leaked onto whatever server connection the pooler handed out.
    assert sweep(second).ran
    assert sweep(first).ran


def set_role_statement_timeout(db_url: str, value: str) -> None:
    """What docs/deploy.md asks of a pooled deployment, scoped to this test's database."""
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} SET statement_timeout = {}").format(
                sql.Identifier(str(dbname)), sql.Literal(value)
            )
        )


def test_dispatcher_and_sweeper_run_through_pgbouncer(
    bouncer: PgBouncer, db_url: str, aws: LocalAwsResources, guard: SendGuard, fake_provider: Any
) -> None:
    """The real wiring (``runtime.build_database``) with the settings a pooled deployment
    uses. With psycopg's default prepare threshold, clients sharing a server session collide
    on their prepared statements' names ("prepared statement _pg3_4 already exists")."""
    set_role_statement_timeout(db_url, "3s")
    settings = make_settings(bouncer.url_for(db_url), aws, fake_provider.url, db_behind_pooler=True)
    addresses = [f"1555{i:07d}" for i in range(120)]
    send_db = build_database(settings, send_path=True)
    other_db = build_database(settings)
    client = make_http_client(settings)
    try:
        enqueue_contacts(other_db, "whatsapp", addresses)
        deps = DispatchDeps(
            settings=settings,
            queue=QueueRepository(send_db),
            guard=guard,
            adapters=build_adapters(settings, client, StaticTokenSource(TEST_TOKENS)),
        )
        report = dispatch(deps, DispatchRequest(source="sendonce.manual"), Plenty())
        sweeps = [sweep(sweeper(other_db, settings, guard)) for _ in range(2)]
        statuses = Counter(r["status"] for r in other_db.fetch_all("SELECT status::text FROM send_queue"))
    finally:
        client.close()
        send_db.close()
        other_db.close()
    assert report.counts.get("SettleErrors", 0) == 0, report
    assert statuses == {"sent": len(addresses)}
    assert Counter(m["recipient"] for m in fake_provider.ledger()) == Counter(addresses)
    assert [s.ran for s in sweeps] == [True, True], "the first sweep left its single-flight lock behind"


def test_statement_timeout_through_pgbouncer_is_the_role_default(bouncer: PgBouncer, db_url: str) -> None:
    set_role_statement_timeout(db_url, "1s")
    db = Database(bouncer.url_for(db_url), max_size=2, statement_timeout_seconds=1, behind_pooler=True)
    try:
        db.ping()
        with pytest.raises(DatabaseUnavailableError, match="statement timeout"):
            db.fetch_one("SELECT pg_sleep(60)")
    finally:
        db.close()


def test_dispatcher_behind_a_pooler_refuses_to_run_without_a_statement_timeout(
    bouncer: PgBouncer, db_url: str
) -> None:
    db = Database(bouncer.url_for(db_url), max_size=2, statement_timeout_seconds=3, behind_pooler=True)
    try:
        with pytest.raises(DatabaseMisconfiguredError, match="ALTER ROLE"):
            db.ping()
    finally:
        db.close()


def test_pgbouncer_refuses_the_statement_timeout_startup_option(bouncer: PgBouncer, db_url: str) -> None:
    """Why ``db_behind_pooler`` exists: the direct way to set the timeout cannot pass PgBouncer."""
    db = Database(bouncer.url_for(db_url), max_size=1, connect_timeout_seconds=1, statement_timeout_seconds=3)
    try:
        with pytest.raises(DatabaseUnavailableError):
            db.ping()
    finally:
        db.close()
    assert "unsupported startup parameter: options" in bouncer.log
