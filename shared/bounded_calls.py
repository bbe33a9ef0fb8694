"""A wall-clock budget for every call of a boto3 client.

botocore's ``connect_timeout`` and ``read_timeout`` bound each socket operation, and its
retries add backoff and throttling hints on top: no setting bounds a call. A server that
answers one byte at a time keeps a call alive indefinitely. The stop-claiming margin counts
``dynamodb_call_budget_seconds`` per DynamoDB call, so the call must end within it.

``BoundedClient`` runs each API call on a helper thread and stops waiting at the budget,
raising ``CallBudgetExceededError`` (a ``BotoCoreError``, so callers treat it like any other
store failure: no answer, outcome unknown). The abandoned call makes no further attempt (a
``before-send`` hook refuses once the budget is spent), but an attempt already on the wire
may still land. The send protocol makes that harmless: a late put is the "delayed put" the
writer id and the attempt rows account for, and a late conditional delete or update only
acts on a record that still names its writer (see the spec in ``shared.idempotency``).

The helper thread runs in a copy of the caller's context (``contextvars.copy_context``), so
context variables such as the idempotency writer id reach botocore's event hooks, which run
on the thread that makes the call. Thread-locals would not cross. Everything else (``meta``,
``meta.events``, ``exceptions``, paginators) is the wrapped client's own.
"""

from __future__ import annotations

import contextvars
import functools
import queue
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError

_deadline: ContextVar[float | None] = ContextVar("sendonce_aws_call_deadline", default=None)


class CallBudgetExceededError(BotoCoreError):
    fmt = "{operation} did not finish within its {budget:g}s budget; its outcome is unknown"


class AttemptAfterBudgetError(BotoCoreError):
    """Raised on the abandoned call's own thread; nobody waits for it any more."""

    fmt = "{operation}: no further attempt, the call's budget is spent"


def _refuse_spent_attempt(event_name: str = "", **_: Any) -> None:
    """Runs before every HTTP attempt, retries included, on the thread making the call."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() >= deadline:
        raise AttemptAfterBudgetError(operation=event_name.rpartition(".")[2])


@dataclass
class _Call:
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class _HelperThreads:
    """Daemon threads that run calls, reused between calls instead of one started per call.

    Every call gets a thread that is free at that moment: an idle one if there is one, a new
    one otherwise. A thread whose call was abandoned (stuck on a socket until botocore's read
    timeout) is simply not idle, so it never holds up a later call, and, being a daemon, never
    the process exit. Threads that were needed at a peak stay, idle, for the next peak."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._idle = 0
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def run(self, task: Callable[[], None]) -> None:
        with self._lock:
            # Each idle thread takes exactly one queued task, so a task queued against an idle
            # count never waits behind a busy thread.
            start = self._idle == 0
            if not start:
                self._idle -= 1
        self._tasks.put(task)
        if start:
            threading.Thread(target=self._work, name=self._name, daemon=True).start()

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            task()
            with self._lock:
                self._idle += 1


class BoundedClient:
    """Wraps a boto3 client; each API method returns within ``budget_seconds`` or raises."""

    def __init__(self, client: Any, budget_seconds: float) -> None:
        self._client = client
        self._budget = budget_seconds
        self._operations = frozenset(client.meta.method_to_api_mapping)
        self._threads = _HelperThreads("aws-call")
        client.meta.events.register("before-send", _refuse_spent_attempt, unique_id="sendonce-call-budget")

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name not in self._operations:
            return attribute

        def bounded(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, attribute, args, kwargs)

        return bounded

    def _call(
        self, name: str, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        deadline = time.monotonic() + self._budget
        call = _Call()

        def run() -> None:
            _deadline.set(deadline)
            try:
                call.value = method(*args, **kwargs)
            except BaseException as exc:  # handed to the caller, if it is still waiting
                call.error = exc
            finally:
                call.done.set()

        # A helper thread (reused, see _HelperThreads), not the caller's: an abandoned call may
        # stay blocked on a socket until botocore's own read timeout. It runs in a copy of the
        # caller's context, taken now, so each call sees the caller's context variables.
        self._threads.run(functools.partial(contextvars.copy_context().run, run))
        if not call.done.wait(max(0.0, deadline - time.monotonic())):
            operation = self._client.meta.method_to_api_mapping[name]
            raise CallBudgetExceededError(operation=operation, budget=self._budget)
        if call.error is not None:
            raise call.error
        return call.value
