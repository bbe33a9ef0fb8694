"""The schema during a deploy: the migrate function as CloudFormation's custom resource, and
the dispatcher and sweeper refusing to run ahead of their schema.

CloudFormation's requests (``events/migrate-cfn-*.json``) go through the real migrate handler
in its own process. A loopback HTTP server stands in for the presigned S3 ``ResponseURL``
and keeps what the handler PUT there, which is what CloudFormation would read.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devstack.service import Service
from devstack.stack import ROOT, LocalStack
from devstack.testing import enqueue_contacts
from shared.queue import QueueRepository
from shared.storage.migrate import bundled_migrations, migrate, required_version

pytestmark = pytest.mark.integration
EVENTS = ROOT / "events"
DISPATCH = EVENTS / "dispatcher-scheduled.json"
SWEEP = EVENTS / "sweeper-scheduled.json"
RESPONSE_FIELDS = {
    "Status",
    "Reason",
    "PhysicalResourceId",
    "StackId",
    "RequestId",
    "LogicalResourceId",
    "Data",
}
UNREACHABLE_DB = {
    "DATABASE_URL": "postgresql://sendonce@127.0.0.1:1/nowhere",
    "SENDONCE_DB_CONNECT_TIMEOUT_SECONDS": "1",
}


@dataclass
class Upload:
    path: str
    headers: dict[str, str]
    body: bytes


class ResponseBucket(Service):
    """Takes PUTs the way a presigned S3 URL does, and answers with ``status``."""

    def __init__(self) -> None:
        self.uploads: list[Upload] = []
        self.status = 200
        bucket = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                bucket.uploads.append(Upload(self.path, dict(self.headers.items()), body))
                self.send_response(bucket.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def start(self) -> ResponseBucket:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def bucket() -> Iterator[ResponseBucket]:
    with ResponseBucket() as running:
        yield running


@pytest.fixture
def unmigrated(pg_server: Any) -> Iterator[LocalStack]:
    """A stack whose database is empty, as on the first deploy."""
    with LocalStack(database_url=pg_server.admin_url, migrate=False, database_from_secret=True) as running:
        yield running


def cfn_event(name: str, bucket: ResponseBucket) -> tuple[dict[str, Any], str]:
    """The sample, with its ResponseURL moved to the loopback bucket (same path and query)."""
    event: dict[str, Any] = json.loads((EVENTS / f"migrate-cfn-{name}.json").read_text())
    path = "/" + event["ResponseURL"].split("/", 3)[3]
    event["ResponseURL"] = bucket.url(path)
    return event, path


def answer(
    stack: LocalStack, bucket: ResponseBucket, name: str, **env: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one CloudFormation request through the handler; return what reached the bucket
    and the sample it answered."""
    event, path = cfn_event(name, bucket)
    before = len(bucket.uploads)
    result = stack.spawn("migrate", event, env=stack.env(**env) if env else None).finish(timeout=120)
    [upload] = bucket.uploads[before:]
    assert upload.path == path, "the answer goes to the presigned URL, query string and all"
    assert upload.headers.get("Content-Type") == "", "the URL may be signed for an empty Content-Type"
    assert len(upload.body) < 4096, "CloudFormation's limit for a response body"
    body: dict[str, Any] = json.loads(upload.body)
    assert body == result, "the handler returns what it sent"
    assert set(body) == RESPONSE_FIELDS
    assert (body["StackId"], body["RequestId"], body["LogicalResourceId"]) == (
        event["StackId"],
        event["RequestId"],
        event["LogicalResourceId"],
    )
    return body, event


def applied_versions(stack: LocalStack) -> list[str]:
    rows = stack.db.fetch_all("SELECT version FROM schema_migrations ORDER BY version")
    return [r["version"] for r in rows]


def test_first_deploy_migrates_before_anything_runs(unmigrated: LocalStack, bucket: ResponseBucket) -> None:
    """Before the Create, the dispatcher and sweeper find no schema and do nothing; the Create
    applies every migration and answers SUCCESS; then the dispatcher sends."""
    stack = unmigrated
    behind = stack.spawn("dispatcher", DISPATCH).finish()
    assert (
        behind["stopped_because"]
        == f"schema behind: schema at nothing, code needs {required_version()}: run migrate"
    )
    assert stack.spawn("sweeper", SWEEP).finish()["skipped_because"] == behind["stopped_because"]

    body, _ = answer(stack, bucket, "create")

    everything = [m.version for m in bundled_migrations()]
    assert body["Status"] == "SUCCESS", body
    assert body["PhysicalResourceId"] == "sendonce-schema"
    assert body["Data"] == {"SchemaVersion": required_version(), "Applied": ",".join(everything)}
    assert applied_versions(stack) == everything
    enqueue_contacts(stack.db, "whatsapp", ["15550000001"])
    assert stack.spawn("dispatcher", DISPATCH).finish()["counts"]["Sent"] == 1


def test_update_applies_what_the_deploy_added_and_keeps_the_physical_id(
    unmigrated: LocalStack, bucket: ResponseBucket
) -> None:
    stack = unmigrated
    migrate(stack.db, bundled_migrations()[:-1])
    body, event = answer(stack, bucket, "update")
    assert body["Status"] == "SUCCESS", body
    assert body["PhysicalResourceId"] == event["PhysicalResourceId"], (
        "a new id would make CloudFormation replace it"
    )
    assert body["Data"] == {"SchemaVersion": required_version(), "Applied": required_version()}
    again, _ = answer(stack, bucket, "update")
    assert (again["Status"], again["Data"]["Applied"]) == ("SUCCESS", "")


def test_delete_leaves_the_schema_and_never_connects(unmigrated: LocalStack, bucket: ResponseBucket) -> None:
    stack = unmigrated
    migrate(stack.db)
    body, event = answer(stack, bucket, "delete", **UNREACHABLE_DB)
    assert body["Status"] == "SUCCESS", body
    assert body["PhysicalResourceId"] == event["PhysicalResourceId"]
    assert applied_versions(stack) == [m.version for m in bundled_migrations()]


def test_a_failed_migration_is_answered_failed_with_its_reason(
    unmigrated: LocalStack, bucket: ResponseBucket
) -> None:
    body, _ = answer(unmigrated, bucket, "create", **UNREACHABLE_DB)
    assert body["Status"] == "FAILED"
    assert body["PhysicalResourceId"] == "sendonce-schema"
    assert "DatabaseUnavailableError" in body["Reason"]
    assert "127.0.0.1:1/nowhere" in body["Reason"]
    assert body["Data"] == {}


def test_a_bad_setting_is_answered_failed_not_left_unanswered(
    unmigrated: LocalStack, bucket: ResponseBucket
) -> None:
    body, _ = answer(unmigrated, bucket, "create", SENDONCE_DB_POOL_MAX_SIZE="lots")
    assert body["Status"] == "FAILED"
    assert "db_pool_max_size" in body["Reason"]


def test_an_answer_the_bucket_refuses_fails_the_invocation(
    unmigrated: LocalStack, bucket: ResponseBucket
) -> None:
    """Not swallowed: the failed invocation reaches the function's failure queue and alarm."""
    bucket.status = 403
    event, _ = cfn_event("delete", bucket)
    invocation = unmigrated.spawn("migrate", event)
    with pytest.raises(RuntimeError):
        invocation.finish(timeout=120)
    assert invocation.error()["errorType"] == "HTTPStatusError"
    assert len(bucket.uploads) == 1


def test_dispatcher_and_sweeper_behind_the_schema_do_nothing_and_say_so_once(
    unmigrated: LocalStack,
) -> None:
    stack = unmigrated
    older = bundled_migrations()[:-1]
    # The enqueue path needs the newest schema; then the database's record of the newest
    # migration goes, as in a restore from a snapshot taken before it was applied.
    migrate(stack.db)
    enqueue_contacts(stack.db, "whatsapp", ["15550000002"])
    with stack.db.connection() as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version > %(v)s", {"v": older[-1].version})
    expected = f"schema at {older[-1].version}, code needs {required_version()}: run migrate"

    dispatcher = stack.spawn("dispatcher", DISPATCH)
    report = dispatcher.finish()
    sweeper = stack.spawn("sweeper", SWEEP)
    swept = sweeper.finish()

    assert report["stopped_because"] == f"schema behind: {expected}"
    assert (report["batches"], report["counts"]) == (0, {})
    assert (swept["ran"], swept["skipped_because"]) == (False, f"schema behind: {expected}")
    assert QueueRepository(stack.db).status_counts() == {"pending": 1}, "nothing claimed"
    assert stack.provider.ledger() == []
    for invocation in (dispatcher, sweeper):
        # Powertools logs to stdout; errors and tracebacks would go to stderr.
        log = invocation.stdout_path.read_text() + invocation.stderr_path.read_text()
        assert log.count(expected) == 2, log  # the log line, and the returned report
        assert "Traceback" not in log
        logged = json.loads(next(line for line in log.splitlines() if '"level"' in line and expected in line))
        assert (logged["level"], logged["message"]) == ("ERROR", expected)


def _sample_names() -> list[str]:
    return sorted(p.stem.removeprefix("migrate-cfn-") for p in Path(EVENTS).glob("migrate-cfn-*.json"))


def test_there_is_a_sample_per_request_type() -> None:
    assert _sample_names() == ["create", "delete", "update"]
