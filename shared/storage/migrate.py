"""Versioned SQL migrations with an idempotent runner.

Files ``migrations/NNNN_name.sql`` apply in order, each in its own transaction, under an
advisory lock. A second run applies nothing. A migration whose file changed after it was
applied is refused (checksum mismatch): history is never rewritten silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

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
