"""Fixtures shared by the chaos tests."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devstack.stack import ROOT
from tests.chaos.demo_run import DEMO_CONTACTS, DemoRun

DEMO_HANG_GUARD_SECONDS = 600


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The demo, run once per session as `make demo` runs it (its own process, its own local
    stack), for every test that judges it: its verdict and what its logs hold. Each run costs
    minutes of process start-ups on a busy machine, and one run answers both."""
    keep = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack.demo",
            "--contacts",
            str(DEMO_CONTACTS),
            "--dispatchers",
            "2",
            "--keep",
            str(keep),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEMO_HANG_GUARD_SECONDS,
        check=False,
    )
    return DemoRun(result.returncode, result.stdout, result.stderr, keep)
