"""Connection handling: one psycopg pool per process, failing fast and clearly when Postgres
is unreachable instead of hanging until Lambda's timeout."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, LiteralString

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.datetime import TimestamptzLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.storage import sql


class DatabaseUnavailableError(RuntimeError):
    """Postgres could not be reached; nothing was read or written."""


class DatabaseMisconfiguredError(RuntimeError):
    """The server's settings break a budget the configuration promises; nothing was written."""


def _redacted(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class InfinityTimestamptzLoader(TimestamptzLoader):
    """Postgres' 'infinity' (an operator's sender pause with no end) as the largest aware
    datetime, instead of the DataError psycopg raises by default: any row holding one could
    not be read at all."""

    def load(self, data: Any) -> datetime:
        if bytes(data) == b"infinity":
            return datetime.max.replace(tzinfo=UTC)
        if bytes(data) == b"-infinity":
            return datetime.min.replace(tzinfo=UTC)
        loaded: datetime = super().load(data)
        return loaded


def _configure(conn: psycopg.Connection[DictRow]) -> None:
    conn.adapters.register_loader("timestamptz", InfinityTimestamptzLoader)


class Database:
    """A small facade over ``psycopg_pool.ConnectionPool``.

    Connections are in autocommit mode: each CAS statement commits on its own, which is what
    the state machine wants (a committed ``sending`` before the provider call). Multi-statement
    work opens an explicit transaction.

    Nothing here keeps state in a server session between transactions, so a transaction-mode
    pooler (PgBouncer, RDS Proxy) may run every statement on a different server connection:

    * ``prepare_threshold`` is psycopg's; ``None`` (the default) never prepares statements
      server-side. A prepared statement lives in one server session, and PgBouncer before
      1.21 does not track them: the next execution lands on another session and fails
      ("prepared statement ... does not exist" / "already exists").
    * ``statement_timeout_seconds`` cancels any statement running longer. Directly, it is a
      libpq startup option. A pooler shares server sessions and PgBouncer refuses the
      ``options`` startup parameter, so ``behind_pooler`` leaves it to a role default
      (``ALTER ROLE ... SET statement_timeout``), which ``ping()`` checks is in place.
    * ``pool_wait_seconds`` bounds the wait for a pooled connection (``connect_timeout_seconds``
      when not given); ``ping()``, the first use of an invocation, waits ``connect_timeout``.
    """

    def __init__(
        self,
        url: str | Callable[[], str],
        *,
        max_size: int = 10,
        connect_timeout_seconds: float = 5.0,
        pool_wait_seconds: float | None = None,
        statement_timeout_seconds: float | None = None,
        behind_pooler: bool = False,
        prepare_threshold: int | None = None,
    ) -> None:
        # A callable is asked again for every new connection: a rotated secret's new password
        # is used once its cached value expires, with no restart. Asked once now, so a bad
        # secret or URL fails here, loudly, rather than at the first statement.
        self._where = _redacted(url() if callable(url) else url)
        self._connect_timeout = connect_timeout_seconds
        self._acquire_timeout = connect_timeout_seconds if pool_wait_seconds is None else pool_wait_seconds
        self._statement_timeout_ms = (
            None if statement_timeout_seconds is None else max(1, round(statement_timeout_seconds * 1000))
        )
        self._behind_pooler = behind_pooler
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            "connect_timeout": max(1, int(connect_timeout_seconds)),
            "application_name": "sendonce",
            "prepare_threshold": prepare_threshold,
        }
        if self._statement_timeout_ms is not None and not behind_pooler:
            kwargs["options"] = f"-c statement_timeout={self._statement_timeout_ms}"
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            url,
            min_size=0,
            max_size=max_size,
            open=True,
            timeout=self._acquire_timeout,
            reconnect_timeout=connect_timeout_seconds,
            kwargs=kwargs,
            connection_class=psycopg.Connection[DictRow],
            configure=_configure,
            name="sendonce",
        )

    @contextmanager
    def connection(self, *, wait_seconds: float | None = None) -> Iterator[psycopg.Connection[DictRow]]:
        wait = self._acquire_timeout if wait_seconds is None else wait_seconds
        try:
            with self._pool.connection(timeout=wait) as conn:
                yield conn
        except PoolTimeout as exc:
            stats = self._pool.get_stats()
            raise DatabaseUnavailableError(
                f"Postgres at {self._where} is unreachable (no connection within "
                f"{wait:g}s; pool size={stats.get('pool_size')} "
                f"available={stats.get('pool_available')} errors={stats.get('connections_errors', 0)}); "
                "no row was changed"
            ) from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"Postgres at {self._where} failed: {exc}") from exc

    def ping(self) -> None:
        """Fail fast at the start of an invocation rather than after claiming work; and fail
        if the server would let a statement outlive the statement timeout the stop margin
        counts (a role default missing behind a pooler)."""
        with self.connection(wait_seconds=self._connect_timeout) as conn:
            if self._statement_timeout_ms is None:
                conn.execute(sql.PING)
                return
            row = conn.execute(sql.STATEMENT_TIMEOUT_MS).fetchone()
        effective = int(row["statement_timeout_ms"]) if row else 0
        if effective == 0 or effective > self._statement_timeout_ms:
            fix = (
                "behind a pooler, set it as a role default: ALTER ROLE <role> SET statement_timeout = "
                f"'{self._statement_timeout_ms}ms'"
                if self._behind_pooler
                else "a server or pooler dropped the statement_timeout startup option"
            )
            raise DatabaseMisconfiguredError(
                f"Postgres at {self._where} runs statements with statement_timeout={effective}ms, "
                f"but the stop-claiming margin counts {self._statement_timeout_ms}ms; {fix}"
            )

    def fetch_all(self, query: LiteralString, params: dict[str, Any] | None = None) -> list[DictRow]:
        with self.connection() as conn:
            return conn.execute(query, params).fetchall()

    def fetch_one(self, query: LiteralString, params: dict[str, Any] | None = None) -> DictRow | None:
        with self.connection() as conn:
            return conn.execute(query, params).fetchone()

    def close(self) -> None:
        self._pool.close()
