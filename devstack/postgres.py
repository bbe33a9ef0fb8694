"""An embedded PostgreSQL server for tests, the local stack and benchmarks.

Uses the machine's PostgreSQL binaries when present (``pg_config --bindir`` or
/usr/lib/postgresql/*/bin), otherwise the ones shipped inside the ``pgserver`` wheel. Binds to
127.0.0.1 only. Postgres refuses to run as root, so under root the cluster is owned by and
run as an unprivileged user (``postgres`` if it exists, else one created for the purpose).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from devstack.service import Service

SUPERUSER = "sendonce"


def find_bin_dir() -> Path:
    override = os.environ.get("SENDONCE_PG_BIN_DIR")
    if override:
        return Path(override)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for candidate in system:
        if (candidate / "initdb").exists():
            return candidate
    try:
        import pgserver  # ships its own PostgreSQL build
    except ImportError as exc:  # pragma: no cover - pgserver is a pinned dev dependency
        raise RuntimeError("no PostgreSQL binaries found: install postgresql or pgserver") from exc
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_as_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "sendonce-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "sendonce-pg"], check=True, capture_output=True
    )
    return "sendonce-pg"


class EmbeddedPostgres(Service):
    """Start with ``start()`` (or as a context manager); ``url`` names the server's
    ``postgres`` database; ``create_database()`` makes fresh ones, optionally from a template."""

    def __init__(
        self, data_dir: Path | None = None, port: int | None = None, *, durable: bool = False
    ) -> None:
        self._owns_dir = data_dir is None
        self.base_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="sendonce-pg-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.port = port or free_port()
        self.durable = durable
        self.bin_dir = find_bin_dir()
        self._user = run_as_user()
        self._started = False

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _cmd(self, *args: str) -> list[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        return ["runuser", "-u", self._user, "--", *command] if self._user else command

    def start(self) -> EmbeddedPostgres:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._user:
            shutil.chown(self.base_dir, self._user)
            shutil.chown(self.socket_dir, self._user)
            os.chmod(self.base_dir, 0o755)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                self._cmd(
                    "initdb",
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ),
                check=True,
                capture_output=True,
                text=True,
            )
        # Tests trade durability for speed; the benchmark runs with fsync on (durable=True).
        speed = (
            [] if self.durable else ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        )
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.socket_dir}",
                "-c max_connections=300",
                "-c shared_buffers=128MB",
                *speed,
            ]
        )
        result = subprocess.run(
            self._cmd(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.base_dir / "postgres.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            log = (self.base_dir / "postgres.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"postgres failed to start: {result.stderr.strip()}\n{log}")
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            subprocess.run(
                self._cmd("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"),
                capture_output=True,
                check=False,
            )
            self._started = False
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            clause = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{clause}'.encode())
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
