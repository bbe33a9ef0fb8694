"""PgBouncer in transaction mode, in front of a local PostgreSQL, for tests.

docs/deploy.md suggests PgBouncer in transaction mode when the connection budget is tight.
In that mode every transaction (every autocommit statement) may run on a different server
connection, which breaks anything that keeps state in a server session between statements
(session advisory locks, server-side prepared statements, ``SET``). The tests run the
sweeper and the dispatcher through this wrapper to prove nothing of the kind is left.

The ``pgbouncer`` binary comes from the Debian package (``make install`` installs it); this
module never installs anything. It binds to 127.0.0.1 on a free port, trusts every local
user (like the embedded Postgres behind it) and forwards any database name to the server.
PgBouncer refuses to run as root, so under root it runs as the same unprivileged user as
the embedded Postgres.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from devstack.aws import wait_for_port
from devstack.postgres import free_port, run_as_user
from devstack.service import Service

BINARY_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def find_pgbouncer() -> str:
    found = shutil.which("pgbouncer") or next((p for p in BINARY_CANDIDATES if Path(p).exists()), None)
    if found is None:
        raise RuntimeError("pgbouncer is not installed: run `make install` (apt-get install -y pgbouncer)")
    return found


class PgBouncer(Service):
    """``url_for(server_url)`` turns a libpq URL of the upstream server into the same URL
    through PgBouncer. ``pool_size`` is the number of server connections per (database,
    user): with 1, every client's transactions share one server session, which makes any
    session-state leak between clients deterministic instead of a matter of luck."""

    def __init__(self, upstream_host: str, upstream_port: int, *, pool_size: int = 20) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.pool_size = pool_size
        self.port = free_port()
        self.binary = find_pgbouncer()
        self.base_dir = Path(tempfile.mkdtemp(prefix="sendonce-pgbouncer-"))
        self._user = run_as_user()
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def in_front_of(cls, server_url: str, *, pool_size: int = 20) -> PgBouncer:
        info = psycopg.conninfo.conninfo_to_dict(server_url)
        return cls(str(info.get("host", "127.0.0.1")), int(info.get("port") or 5432), pool_size=pool_size)

    def url_for(self, server_url: str) -> str:
        info = psycopg.conninfo.conninfo_to_dict(server_url)
        info.update(host="127.0.0.1", port=str(self.port))
        return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]

    @property
    def log(self) -> str:
        path = self.base_dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_config(self) -> Path:
        users = self.base_dir / "users.txt"
        # auth_type=trust still requires the user to be listed; any password is accepted.
        users.write_text('"sendonce" ""\n')
        config = self.base_dir / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={self.upstream_host} port={self.upstream_port}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {users}",
                    "pool_mode = transaction",
                    f"default_pool_size = {self.pool_size}",
                    "max_client_conn = 500",
                    f"logfile = {self.base_dir / 'pgbouncer.log'}",
                    f"pidfile = {self.base_dir / 'pgbouncer.pid'}",
                    "",
                ]
            )
        )
        if self._user:
            shutil.chown(self.base_dir, self._user)
            for path in (users, config):
                shutil.chown(path, self._user)
        return config

    def start(self) -> PgBouncer:
        config = self._write_config()
        user = ["-u", self._user] if self._user else []
        command = [self.binary, "--quiet", *user, str(config)]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Everything it says also goes to its logfile (see ``log``).
        try:
            wait_for_port(self.port, timeout_seconds=300)  # a busy machine starts it slowly
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"pgbouncer did not start:\n{self.log[-2000:]}") from exc
        return self

    def stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                # SIGINT would wait for clients to disconnect; SIGTERM shuts down now.
                self._process.send_signal(signal.SIGTERM)
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        shutil.rmtree(self.base_dir, ignore_errors=True)
