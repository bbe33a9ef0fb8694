"""``make up`` / ``make down``: the local stack, kept running to try the CLI and the handlers.

    make up        # Postgres, moto (DynamoDB, SQS, Secrets Manager) and the fake provider
    eval "$(make -s env)"           # or: source .local/stack.env
    sendonce stats
    python -m devstack.invoke dispatcher --event events/dispatcher-manual.json
    make down

The servers listen on fixed ports on 127.0.0.1 (Postgres 54329, moto 45671, the fake provider
45672), so ``events/env.json`` names them for ``sam local invoke --env-vars events/env.json``;
the function's container reaches them with ``--docker-network host`` (Linux). Every ``make up``
starts from an empty, migrated database; ``make down`` stops everything and discards its state.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.aws import TEST_SECRETS, LocalAwsResources, MotoServer, provision, secret_name
from devstack.fake_provider import FakeProvider
from devstack.postgres import SUPERUSER, EmbeddedPostgres
from devstack.stack import ROOT
from devstack.testing import function_env, make_settings
from shared.storage.db import Database
from shared.storage.migrate import migrate

# Fixed, so events/env.json can name them; a second stack (a test) picks others.
PG_PORT = int(os.environ.get("SENDONCE_UP_PG_PORT", "54329"))
MOTO_PORT = int(os.environ.get("SENDONCE_UP_MOTO_PORT", "45671"))
FAKE_PORT = int(os.environ.get("SENDONCE_UP_PROVIDER_PORT", "45672"))
LOCAL = Path(os.environ.get("SENDONCE_UP_DIR", str(ROOT / ".local")))
PID_FILE = LOCAL / "up.pid"
READY_FILE = LOCAL / "up.ready"
ENV_FILE = LOCAL / "stack.env"
LOG_FILE = LOCAL / "up.log"
SAM_ENV_FILE = ROOT / "events" / "env.json"
PREFIX = "local"


def _serve() -> int:
    """Run the stack in this process until SIGTERM."""
    LOCAL.mkdir(exist_ok=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with (
        EmbeddedPostgres(port=PG_PORT) as postgres,
        MotoServer(port=MOTO_PORT, log_path=LOCAL / "moto.log") as moto,
    ):
        fake = FakeProvider(port=FAKE_PORT)
        fake.start()
        try:
            url = postgres.create_database("sendonce")
            db = Database(url, max_size=1)
            try:
                migrate(db)
            finally:
                db.close()
            env = stack_env(url, provision(moto.endpoint, prefix=PREFIX), fake.url, moto)
            ENV_FILE.write_text(
                "".join(f"export {name}={_quote(value)}\n" for name, value in sorted(env.items()))
            )
            READY_FILE.write_text("ready\n")
            while not stopping:
                time.sleep(0.5)
        finally:
            fake.stop()
    return 0


def stack_env(url: str, aws: LocalAwsResources, provider_url: str, moto: MotoServer) -> dict[str, str]:
    """What a function (or the CLI) needs to run against the local stack."""
    return function_env(make_settings(url, aws, provider_url), moto)


def sam_env_vars() -> dict[str, dict[str, str]]:
    """``events/env.json``: the same environment for every function, at the fixed ports."""
    aws = LocalAwsResources(
        idempotency_table=f"{PREFIX}-idempotency",
        failed_messages_queue_url=f"http://127.0.0.1:{MOTO_PORT}/123456789012/{PREFIX}-failed-messages",
        secret_ids={name: secret_name(PREFIX, name) for name in TEST_SECRETS},
    )
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{PG_PORT}/sendonce"
    env = stack_env(url, aws, f"http://127.0.0.1:{FAKE_PORT}", MotoServer(port=MOTO_PORT))
    return {"Parameters": env}


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _running_pid() -> int | None:
    try:
        pid = int(PID_FILE.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def _start() -> int:
    if (pid := _running_pid()) is not None:
        print(f"the local stack is already running (pid {pid}); `make down` stops it", file=sys.stderr)
        print(ENV_FILE.read_text() if ENV_FILE.exists() else "")
        return 0
    LOCAL.mkdir(exist_ok=True)
    READY_FILE.unlink(missing_ok=True)
    with LOG_FILE.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack.up", "serve"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `make up`
        )
    PID_FILE.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + 180
    while not READY_FILE.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            print(f"the local stack did not start; see {LOG_FILE}:", file=sys.stderr)
            print(LOG_FILE.read_text(errors="replace")[-2000:], file=sys.stderr)
            _stop()
            return 1
        time.sleep(0.2)
    print(f"# the local stack is up (pid {process.pid}). Configure this shell with:", file=sys.stderr)
    print(f"#   source {ENV_FILE}", file=sys.stderr)
    print("# then try: .venv/bin/sendonce stats; `make down` stops it.", file=sys.stderr)
    print(ENV_FILE.read_text(), end="")
    return 0


def _stop() -> int:
    pid = _running_pid()
    if pid is None:
        print("the local stack is not running")
    else:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _running_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if _running_pid() is not None:
            os.killpg(pid, signal.SIGKILL)
        print(f"the local stack (pid {pid}) is stopped")
    for path in (PID_FILE, READY_FILE, ENV_FILE):
        path.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.up",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action",
        choices=["start", "stop", "serve", "env", "sam-env"],
        help="start or stop the stack, print its environment, or write events/env.json",
    )
    args = parser.parse_args(argv)
    if args.action == "sam-env":
        SAM_ENV_FILE.write_text(json.dumps(sam_env_vars(), indent=2, sort_keys=True) + "\n")
        return 0
    if args.action == "serve":
        return _serve()
    if args.action == "stop":
        return _stop()
    if args.action == "env":
        if _running_pid() is None or not ENV_FILE.exists():
            print("the local stack is not running: `make up` starts it", file=sys.stderr)
            return 1
        print(ENV_FILE.read_text(), end="")
        return 0
    return _start()


if __name__ == "__main__":
    raise SystemExit(main())
