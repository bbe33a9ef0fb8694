"""What the benchmark scenarios share: the console, the results folder, a summary line."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from devstack.stack import ROOT
from devstack.terminal import make_console

console = make_console()
RESULTS = ROOT / "bench-results"
DISPATCH_EVENT = ROOT / "events" / "dispatcher-scheduled.json"


def summary(scenario: str, text: str) -> None:
    """The one line per scenario that starts with its name, for a quick read of a run."""
    console.print(f"[bold]{scenario}:[/] {text}")


def write_results(scenario: str, results: Any, out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    payload = [asdict(r) for r in results] if isinstance(results, list) else results
    if is_dataclass(payload) and not isinstance(payload, type):
        payload = asdict(payload)
    path.write_text(json.dumps(payload, indent=2, default=str))
    console.print(f"written {path}")
    return path
