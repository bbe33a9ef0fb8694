"""What the shared demo run (``demo_run`` in tests/chaos/conftest.py) hands its tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEMO_CONTACTS = 12


@dataclass(frozen=True)
class DemoRun:
    """One ``make demo`` run: what it printed and the handler output it kept."""

    returncode: int
    stdout: str
    stderr: str
    logs: Path

    def tail(self) -> str:
        return self.stdout[-2000:] + self.stderr[-2000:]
