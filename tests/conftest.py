"""Fixtures shared by every suite, started by the tests themselves on 127.0.0.1:

* one PostgreSQL server per session (embedded, or the server named by DATABASE_URL), with a
  migrated template database; each test gets a fresh database cloned from it;
* one moto server per session; each test gets its own table, queue and secrets (a prefix);
* the fake provider, reset for each test.

Every session also records the AWS operations handlers make (``devstack/aws_calls.py``) under
``build/aws-calls``; ``tests/infra/test_iam.py`` holds each function's role to them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.aws import LocalAwsResources, MotoServer, aws_client, provision
from devstack.aws_calls import CALLS_DIR_ENV
from devstack.fake_provider import FakeProvider, FakeProviderClient
from devstack.postgres import EmbeddedPostgres
from devstack.testing import TEST_TOKENS, make_settings
from shared.config import Settings
from shared.dispatch import DispatchDeps
from shared.idempotency import SendGuard
from shared.providers.registry import build_adapters, make_http_client
from shared.providers.secrets import StaticTokenSource
from shared.queue import QueueRepository
from shared.storage.db import Database
from shared.storage.migrate import migrate

TEMPLATE_DB = "sendonce_template"
TESTS = Path(__file__).resolve().parent
RECORDED_CALLS_DIR = TESTS.parent / "build" / "aws-calls"
# The suites whose handler processes show what each function's role must grant.
RECORDING_SUITES = ("integration", "chaos")


def pytest_configure(config: pytest.Config) -> None:
    # Inherited by every handler process the tests start (LocalStack copies os.environ).
    os.environ.setdefault(CALLS_DIR_ENV, str(RECORDED_CALLS_DIR))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave a note per recording suite that ran, so the IAM test can tell a recording from
    a complete run from one that never happened."""
    suites = [Path(item.path).relative_to(TESTS).parts[0] for item in session.items]
    directory = Path(os.environ[CALLS_DIR_ENV])
    for suite in RECORDING_SUITES:
        if suite in suites:
            directory.mkdir(parents=True, exist_ok=True)
            note = {"tests": suites.count(suite), "exitstatus": int(exitstatus), "args": session.config.args}
            (directory / f"suite-{suite}.json").write_text(json.dumps(note))


@dataclass
class PostgresServer:
    admin_url: str

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_url, autocommit=True)

    def url_for(self, dbname: str) -> str:
        info = psycopg.conninfo.conninfo_to_dict(self.admin_url)
        info["dbname"] = dbname
        return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]

    def create(self, name: str, template: str | None = None) -> str:
        with self._admin() as conn:
            clause = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
            conn.execute(f'CREATE DATABASE "{name}"{clause}'.encode())
        return self.url_for(name)

    def drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    external = os.environ.get("DATABASE_URL")
    if external:
        yield PostgresServer(external)
        return
    with EmbeddedPostgres() as server:
        yield PostgresServer(server.url)


@pytest.fixture(scope="session")
def template_db(pg_server: PostgresServer) -> str:
    url = pg_server.create(TEMPLATE_DB)
    db = Database(url, max_size=1)
    try:
        migrate(db)
    finally:
        db.close()
    return TEMPLATE_DB


@pytest.fixture
def db_url(pg_server: PostgresServer, template_db: str) -> Iterator[str]:
    name = f"sendonce_test_{uuid.uuid4().hex[:12]}"
    url = pg_server.create(name, template=template_db)
    yield url
    pg_server.drop(name)


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url, max_size=12, connect_timeout_seconds=3)
    yield db
    db.close()


@pytest.fixture
def queue(database: Database) -> QueueRepository:
    return QueueRepository(database)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def aws(moto_server: MotoServer) -> LocalAwsResources:
    return provision(moto_server.endpoint, prefix=f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def dynamodb(moto_server: MotoServer) -> Any:
    return aws_client("dynamodb", moto_server.endpoint)


@pytest.fixture(scope="session")
def fake_provider_server() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_provider(fake_provider_server: FakeProvider) -> FakeProvider:
    fake_provider_server.reset()
    return fake_provider_server


@pytest.fixture
def fake_client(fake_provider: FakeProvider) -> FakeProviderClient:
    return FakeProviderClient(fake_provider.url)


@pytest.fixture
def settings(db_url: str, aws: LocalAwsResources, fake_provider: FakeProvider) -> Settings:
    return make_settings(db_url, aws, fake_provider.url)


@pytest.fixture
def guard(aws: LocalAwsResources, moto_server: MotoServer) -> SendGuard:
    return SendGuard.for_table(
        aws.idempotency_table, 7 * 24 * 3600, boto3_client=aws_client("dynamodb", moto_server.endpoint)
    )


@pytest.fixture
def deps(settings: Settings, queue: QueueRepository, guard: SendGuard) -> Iterator[DispatchDeps]:
    client = make_http_client(settings)
    yield DispatchDeps(
        settings=settings,
        queue=queue,
        guard=guard,
        adapters=build_adapters(settings, client, StaticTokenSource(TEST_TOKENS)),
    )
    client.close()
