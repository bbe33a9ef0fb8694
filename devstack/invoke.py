"""Run a function's real handler in this process, the way ``sam local invoke -e`` does:
``python -m devstack.invoke dispatcher --event events/dispatcher-scheduled.json``.

Configuration comes from the environment, exactly as in Lambda. The handler's return value
is printed as one JSON line on stdout; a failure prints the error and exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from devstack.aws_calls import COUNTS_FILE_ENV, attributed_to, count_calls, write_counts
from devstack.lambda_context import LocalLambdaContext

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"


def load_handler_module(function: str) -> ModuleType:
    path = FUNCTIONS / function / "app.py"
    if not path.exists():
        raise SystemExit(f"no handler at {path}")
    spec = importlib.util.spec_from_file_location(f"sendonce_function_{function}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def invoke(function: str, event: Any, timeout_seconds: float = 150.0) -> Any:
    with attributed_to(function):
        module = load_handler_module(function)
        context = LocalLambdaContext(function_name=f"sendonce-{function}", timeout_seconds=timeout_seconds)
        _kill_at(timeout_seconds, function)
        return module.lambda_handler(event, context)


def _kill_at(timeout_seconds: float, function: str) -> None:
    """Lambda ends an invocation at its timeout, whatever it is doing; the lease arithmetic
    relies on that ("once a lease has expired, its claimant is dead"). So does this process."""

    def expire() -> None:
        record = {
            "errorType": "TaskTimedOut",
            "errorMessage": f"{function} timed out after {timeout_seconds:g}s",
        }
        print(json.dumps(record), file=sys.stderr, flush=True)
        os._exit(124)

    timer = threading.Timer(timeout_seconds, expire)
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("function", help="folder name under functions/")
    parser.add_argument("--event", required=True, type=Path, help="event JSON file")
    parser.add_argument("--timeout", type=float, default=150.0, help="the simulated Lambda timeout (s)")
    args = parser.parse_args(argv)
    event = json.loads(args.event.read_text())
    counts_file = os.environ.get(COUNTS_FILE_ENV, "").strip()
    if counts_file:
        count_calls()
    try:
        result = invoke(args.function, event, args.timeout)
    except Exception as exc:
        print(json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}), file=sys.stderr)
        return 1
    finally:
        if counts_file:
            write_counts(Path(counts_file))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
