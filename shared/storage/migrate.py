"""Versioned SQL migrations with an idempotent runner.

Files ``migrations/NNNN_name.sql`` apply in order, each in its own transaction, under an
advisory lock. A second run applies nothing. A migration whose file changed after it was
applied is refused (checksum mismatch): history is never rewritten silently.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg

from shared.storage import sql
from shared.storage.db import Database


@dataclass(frozen=True)
class Migration:
    version: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


class MigrationChecksumError(RuntimeError):
    pass


def bundled_migrations() -> list[Migration]:
    folder = Path(__file__).with_name("migrations")
    found = [
        Migration(version=entry.stem, text=entry.read_text(encoding="utf-8"))
        for entry in folder.glob("*.sql")
    ]
    return sorted(found, key=lambda m: m.version)


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    already_applied: list[str]


def migrate(
    db: Database, migrations: list[Migration] | None = None, *, dry_run: bool = False
) -> MigrationReport:
    migrations = bundled_migrations() if migrations is None else migrations
    applied: list[str] = []
    with db.connection() as conn, conn.transaction():
        conn.execute(sql.MIGRATIONS_NO_STATEMENT_TIMEOUT)
        conn.execute(sql.MIGRATIONS_LOCK)
        conn.execute(sql.MIGRATIONS_TABLE)
        done = {row["version"]: row["checksum"] for row in conn.execute(sql.APPLIED_MIGRATIONS)}
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationChecksumError(
                        f"migration {migration.version} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            if not dry_run:
                # bytes without parameters go through the simple query protocol, which runs a
                # multi-statement file as one unit inside this transaction.
                conn.execute(migration.text.encode())
                conn.execute(
                    sql.RECORD_MIGRATION, {"version": migration.version, "checksum": migration.checksum}
                )
            applied.append(migration.version)
    return MigrationReport(applied=applied, already_applied=sorted(done))


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None  # newest applied migration; None when nothing was ever applied
    required: str  # newest migration this code ships

    @property
    def behind(self) -> bool:
        # Versions sort as their zero-padded names do. A schema ahead of the code (a rolled
        # back deploy) is fine: migrations only add.
        return self.current is None or self.current < self.required

    def describe(self) -> str:
        return f"schema at {self.current or 'nothing'}, code needs {self.required}: run migrate"


@cache
def required_version() -> str:
    """The newest migration this code ships: the schema it needs."""
    return bundled_migrations()[-1].version


def schema_status(db: Database) -> SchemaStatus:
    """One query on ``schema_migrations``."""
    required = required_version()
    try:
        row = db.fetch_one(sql.SCHEMA_VERSION)
    except psycopg.errors.UndefinedTable:
        return SchemaStatus(current=None, required=required)
    return SchemaStatus(current=row["version"] if row else None, required=required)


# Databases found current. A schema never goes back, so each database (one per container) is
# asked once; one found behind is asked again on the next invocation, which sees the migration.
_found_current: weakref.WeakSet[Database] = weakref.WeakSet()


def schema_behind(db: Database) -> str | None:
    """Why this code must not touch the database yet, or None when the schema is current."""
    if db in _found_current:
        return None
    status = schema_status(db)
    if status.behind:
        return status.describe()
    _found_current.add(db)
    return None
