"""``make up`` / ``make down``: the local stack kept running for the CLI and the handlers, and
``events/env.json`` for ``sam local invoke --env-vars``."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.postgres import free_port
from devstack.stack import ROOT
from devstack.up import sam_env_vars

pytestmark = pytest.mark.integration


def test_events_env_json_is_what_make_up_serves() -> None:
    committed = json.loads((ROOT / "events" / "env.json").read_text())
    assert committed == sam_env_vars(), "regenerate it: python -m devstack.up sam-env"
    assert committed["Parameters"]["DATABASE_URL"].endswith("@127.0.0.1:54329/sendonce")


def _run(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_up_serves_the_cli_and_the_handlers_until_down(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SENDONCE_UP_DIR": str(tmp_path / "local"),
        "SENDONCE_UP_PG_PORT": str(free_port()),
        "SENDONCE_UP_MOTO_PORT": str(free_port()),
        "SENDONCE_UP_PROVIDER_PORT": str(free_port()),
    }
    env.pop("DATABASE_URL", None)
    up = _run([sys.executable, "-m", "devstack.up", "start"], env)
    try:
        assert up.returncode == 0, up.stderr
        exported = dict(
            shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in up.stdout.splitlines()
        )
        assert exported["DATABASE_URL"].endswith(f":{env['SENDONCE_UP_PG_PORT']}/sendonce")
        stack_env = {**env, **exported}
        again = _run([sys.executable, "-m", "devstack.up", "start"], env)
        assert again.returncode == 0 and "already running" in again.stderr
        stats = _run([sys.executable, "-m", "devstack.cli", "stats"], stack_env)
        assert stats.returncode == 0, stats.stderr
        enqueue = _run(
            [sys.executable, "-m", "devstack.invoke", "enqueue", "--event", "events/enqueue-campaign.json"],
            stack_env,
        )
        assert enqueue.returncode == 0, enqueue.stderr
        dispatch = _run(
            [
                sys.executable,
                "-m",
                "devstack.invoke",
                "dispatcher",
                "--event",
                "events/dispatcher-manual.json",
            ],
            stack_env,
        )
        assert dispatch.returncode == 0, dispatch.stderr
        assert json.loads(dispatch.stdout.splitlines()[-1])["counts"]["Sent"] > 0
    finally:
        down = _run([sys.executable, "-m", "devstack.up", "stop"], env)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert _run([sys.executable, "-m", "devstack.up", "env"], env).returncode == 1, "nothing left running"
