"""Records which AWS operations a function's code really makes, for the IAM test
(``tests/infra/test_iam.py``) that holds each function's role to exactly those.

Opt-in: nothing happens unless ``DEVSTACK_AWS_CALLS_DIR`` names a directory (the test session
sets it, see ``tests/conftest.py``). Every place that runs a handler attributes its calls to
the function: ``devstack.invoke`` (in-process and ``python -m devstack.invoke``, which
``LocalStack.spawn`` runs) and the chaos worker.

The hook wraps ``BaseClient._make_api_call``, the one method every botocore client's
operations go through. Unlike an event handler registered on a session, it also sees the
clients Powertools builds from sessions of its own (Parameters' Secrets Manager client), and
clients made before recording started. A call is recorded before it is sent, so one that
fails (a conditional check, a dropped connection, a process killed mid-call) still counts:
IAM authorises the attempt, not the success.

Each process appends JSON lines to its own file, one per distinct (function, service,
operation, resources), so a 5,000-message run writes a handful of lines, not thousands.
A resource is named by the request parameter that identifies it (``TableName``,
``QueueUrl``, ``SecretId``) and by the environment variables holding that value, which is
how the IAM test finds the template resource behind it (the template sets each variable
with ``!Ref <Resource>``).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from botocore.client import BaseClient

CALLS_DIR_ENV = "DEVSTACK_AWS_CALLS_DIR"
# The request parameters that name the resource an operation acts on, per service the functions
# use. Per service, because a name means different things: S3's ``Key`` is the object (part of
# the resource IAM checks), DynamoDB's ``Key`` is an item (not a resource, and one per message).
# An operation with none of them is recorded with no resource.
RESOURCE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "dynamodb": ("TableName",),
    "sqs": ("QueueUrl",),
    "secretsmanager": ("SecretId",),
    "s3": ("Bucket", "Key"),
}
# Private to botocore and absent from its type stubs: if it is ever renamed, getattr fails here,
# loudly, instead of the recording coming out empty.
_HOOKED_METHOD = "_make_api_call"

_lock = threading.Lock()
_function: str | None = None
_seen: set[str] = set()
_log_path: Path | None = None
_original_make_api_call: Any = None


def calls_dir() -> Path | None:
    value = os.environ.get(CALLS_DIR_ENV, "").strip()
    return Path(value) if value else None


@contextmanager
def attributed_to(function: str) -> Iterator[None]:
    """AWS calls made in this process while the block runs (from any thread: a handler's
    send threads included) are ``function``'s. Does nothing unless recording is enabled."""
    global _function
    directory = calls_dir()
    if directory is None:
        yield
        return
    _install(directory)
    with _lock:
        previous, _function = _function, function
    try:
        yield
    finally:
        with _lock:
            _function = previous


def _install(directory: Path) -> None:
    global _log_path, _original_make_api_call
    with _lock:
        if _original_make_api_call is not None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        _log_path = directory / f"calls-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        original = getattr(BaseClient, _HOOKED_METHOD)
        _original_make_api_call = original

    def recording_make_api_call(client: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
        _record(client, operation_name, api_params)
        return original(client, operation_name, api_params)

    setattr(BaseClient, _HOOKED_METHOD, recording_make_api_call)


def _record(client: BaseClient, operation: str, params: dict[str, Any]) -> None:
    function = _function
    if function is None:
        return  # the test harness's own calls (provisioning, assertions) are nobody's
    entry = call_entry(function, client.meta.service_model.service_name, operation, params)
    line = json.dumps(entry, sort_keys=True)
    with _lock:
        if line in _seen or _log_path is None:
            return
        _seen.add(line)
        with _log_path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")


def call_entry(function: str, service: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """What is recorded of one call: the resources it names and the variables naming them."""
    names = RESOURCE_PARAMETERS.get(service, ())
    resources = {name: str(params[name]) for name in names if name in params}
    return {
        "function": function,
        "service": service,
        "operation": operation,
        "resources": resources,
        "configured_by": {name: _variables_holding(value) for name, value in resources.items()},
    }


def _variables_holding(value: str) -> list[str]:
    return sorted(name for name, held in os.environ.items() if held == value)


# The benchmark's counts: how many requests of each operation a process made, for the cost per
# message (devstack/bench/throughput.py). Separate from the IAM recording above, and cheap: one
# counter increment per call, so the dispatcher's measured CPU is not inflated by it.
COUNTS_FILE_ENV = "DEVSTACK_AWS_CALL_COUNTS_FILE"
_counts: dict[str, int] = {}
_counting = False


def count_calls() -> None:
    """Count this process's AWS requests by ``service.operation`` from now on."""
    global _counting
    with _lock:
        if _counting:
            return
        _counting = True
        original = getattr(BaseClient, _HOOKED_METHOD)

    def counting_make_api_call(client: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
        name = f"{client.meta.service_model.service_name}.{operation_name}"
        with _lock:
            _counts[name] = _counts.get(name, 0) + 1
        return original(client, operation_name, api_params)

    setattr(BaseClient, _HOOKED_METHOD, counting_make_api_call)


def write_counts(path: Path) -> None:
    with _lock:
        path.write_text(json.dumps(_counts, sort_keys=True))
