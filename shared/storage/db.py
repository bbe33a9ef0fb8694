"""Connection handling: one psycopg pool per process, failing fast and clearly when Postgres
is unreachable instead of hanging until Lambda's timeout."""

from __future__ import annotations

from collections.abc import Iterator
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
    """

    def __init__(self, url: str, *, max_size: int = 10, connect_timeout_seconds: float = 5.0) -> None:
        self._where = _redacted(url)
        self._acquire_timeout = connect_timeout_seconds
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            url,
            min_size=0,
            max_size=max_size,
            open=True,
            timeout=connect_timeout_seconds,
            reconnect_timeout=connect_timeout_seconds,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": max(1, int(connect_timeout_seconds)),
                "application_name": "sendonce",
            },
            connection_class=psycopg.Connection[DictRow],
            configure=_configure,
            name="sendonce",
        )

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[DictRow]]:
        try:
            with self._pool.connection(timeout=self._acquire_timeout) as conn:
                yield conn
        except PoolTimeout as exc:
            stats = self._pool.get_stats()
            raise DatabaseUnavailableError(
                f"Postgres at {self._where} is unreachable (no connection within "
                f"{self._acquire_timeout:g}s; pool size={stats.get('pool_size')} "
                f"available={stats.get('pool_available')} errors={stats.get('connections_errors', 0)}); "
                "no row was changed"
            ) from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"Postgres at {self._where} failed: {exc}") from exc

    def ping(self) -> None:
        """Fail fast at the start of an invocation rather than after claiming work."""
        with self.connection() as conn:
            conn.execute(sql.PING)

    def fetch_all(self, query: LiteralString, params: dict[str, Any] | None = None) -> list[DictRow]:
        with self.connection() as conn:
            return conn.execute(query, params).fetchall()

    def fetch_one(self, query: LiteralString, params: dict[str, Any] | None = None) -> DictRow | None:
        with self.connection() as conn:
            return conn.execute(query, params).fetchone()

    def close(self) -> None:
        self._pool.close()
