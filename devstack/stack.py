"""The local stack: embedded Postgres, a moto server and the fake provider, all on 127.0.0.1,
and real handler processes run against them with the environment Lambda would give them.

Used by ``make demo``, ``make bench`` and the chaos tests, so all three exercise the same
wiring a deployed stack has: env-configured handlers, DynamoDB through boto3, provider
traffic over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.aws import LocalAwsResources, MotoServer, provision, put_secret
from devstack.fake_provider import FakeProvider, FakeProviderClient
from devstack.postgres import EmbeddedPostgres
from devstack.service import Service
from devstack.testing import function_env, make_settings
from shared.config import Settings
from shared.storage.db import Database
from shared.storage.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent


class LocalStack(Service):
    def __init__(
        self,
        *,
        database_url: str | None = None,
        durable_postgres: bool = False,
        workdir: Path | None = None,
        settings_overrides: dict[str, Any] | None = None,
        migrate: bool = True,
        database_from_secret: bool = False,
    ) -> None:
        """``database_from_secret``: handlers read the database URL from Secrets Manager, as
        deployed functions do, instead of from ``DATABASE_URL``. It costs a secret read at each
        process start, which the timing-sensitive chaos runs and the benchmark do without."""
        self._external_db = database_url or os.environ.get("DATABASE_URL")
        self._durable = durable_postgres
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="sendonce-stack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._overrides = settings_overrides or {}
        self._migrate = migrate
        self._database_from_secret = database_from_secret
        self._stack = ExitStack()
        self.postgres: EmbeddedPostgres | None = None
        self.moto = MotoServer(log_path=self.workdir / "moto.log")
        self.fake = FakeProvider()
        self.db_url = ""
        self.aws: LocalAwsResources | None = None
        self.database_secret_id = ""
        self.settings: Settings | None = None
        self.database: Database | None = None
        self._invocations: list[Invocation] = []

    def start(self) -> LocalStack:
        try:
            if self._external_db:
                self.db_url = self._fresh_database(self._external_db)
            else:
                self.postgres = self._stack.enter_context(EmbeddedPostgres(durable=self._durable))
                self.db_url = self.postgres.create_database(f"sendonce_{uuid.uuid4().hex[:8]}")
            self._stack.enter_context(self.moto)
            self.fake.start()
            self._stack.callback(self.fake.stop)
            prefix = f"s{uuid.uuid4().hex[:8]}"
            self.aws = provision(self.moto.endpoint, prefix=prefix)
            if self._database_from_secret:
                self.database_secret_id = put_secret(
                    self.moto.endpoint, f"{prefix}/database-url", self.db_url
                )
            self.settings = make_settings(self.db_url, self.aws, self.fake.url, **self._overrides)
            self.database = Database(self.db_url, max_size=4)
            self._stack.callback(self.database.close)
            if self._migrate:
                migrate(self.database)
        except BaseException:
            self._stack.close()
            raise
        return self

    def _fresh_database(self, server_url: str) -> str:
        import psycopg

        name = f"sendonce_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        info = psycopg.conninfo.conninfo_to_dict(server_url)
        info["dbname"] = name
        return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]

    def stop(self) -> None:
        for invocation in self._invocations:
            invocation.kill()
        self._stack.close()

    @property
    def db(self) -> Database:
        assert self.database is not None, "start() the stack first"
        return self.database

    @property
    def provider(self) -> FakeProviderClient:
        return FakeProviderClient(self.fake.url)

    def env(self, **overrides: str) -> dict[str, str]:
        assert self.settings is not None, "start() the stack first"
        # The caller's DATABASE_URL (the server the tests use) is never the stack's database,
        # and with the secret it would win over it.
        inherited = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        secret_id = self.database_secret_id or None
        return {**inherited, **function_env(self.settings, self.moto, secret_id), **overrides}

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``sendonce`` (``devstack.cli``) against this stack in its own process, as an
        operator would, with ``env`` on top of the stack's; the caller checks the exit status
        and output."""
        return subprocess.run(
            [sys.executable, "-m", "devstack.cli", *args],
            env={**self.env(), "COLUMNS": "200", **(env or {})},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def spawn(
        self,
        function: str,
        event: dict[str, Any] | Path,
        *,
        timeout_seconds: float = 150.0,
        env: dict[str, str] | None = None,
        log_name: str | None = None,
    ) -> Invocation:
        """Start one invocation of a real handler in its own OS process."""
        if isinstance(event, dict):
            path = self.workdir / f"event-{uuid.uuid4().hex[:8]}.json"
            path.write_text(json.dumps(event))
            event = path
        # Output goes to files, not pipes: many concurrent invocations must never block on
        # a full pipe while the caller waits on another one.
        log = self.workdir / f"{log_name or function}-{uuid.uuid4().hex[:6]}"
        command = [sys.executable, "-m", "devstack.invoke", function, "--event", str(event)]
        with open(f"{log}.out", "w") as stdout, open(f"{log}.err", "w") as stderr:
            process = subprocess.Popen(
                [*command, "--timeout", str(timeout_seconds)],
                cwd=ROOT,
                env=env or self.env(),
                stdout=stdout,
                stderr=stderr,
                text=True,
            )
        invocation = Invocation(process, Path(f"{log}.out"), Path(f"{log}.err"))
        self._invocations.append(invocation)
        return invocation


@dataclass
class Invocation:
    """One handler invocation running in its own OS process."""

    process: subprocess.Popen[str]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def error(self) -> dict[str, Any]:
        """The failed invocation's error record (errorType, errorMessage), as the Lambda
        runtime would report it. Background threads may log after it, so search for it."""
        for line in reversed(self.stderr_path.read_text(errors="replace").splitlines()):
            if line.startswith("{") and '"errorType"' in line:
                record: dict[str, Any] = json.loads(line)
                return record
        raise LookupError(f"no error record in {self.stderr_path}")

    def finish(self, timeout: float = 300) -> dict[str, Any]:
        """Wait, then return the handler's result; raise with its stderr if it failed."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        if self.process.returncode != 0:
            err = self.stderr_path.read_text(errors="replace").strip()[-800:]
            raise RuntimeError(f"invocation failed with exit code {self.process.returncode}: {err}")
        result: dict[str, Any] = json.loads(self.stdout_path.read_text().strip().splitlines()[-1])
        return result
