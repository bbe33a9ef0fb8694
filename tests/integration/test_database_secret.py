"""A rotated database secret reaches a warm process: the pool asks for the connection string
again for every new connection, so nothing needs a restart after RDS rotates the password."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from shared.storage import dsn
from shared.storage.db import Database

pytestmark = pytest.mark.integration


def _current_database(db: Database) -> str:
    row = db.fetch_one("SELECT current_database() AS name")
    assert row is not None
    return str(row["name"])


def test_new_connections_use_the_secrets_current_value(pg_server: Any) -> None:
    names = [f"sendonce_rot_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    urls = [pg_server.create(name) for name in names]
    secret = {"value": urls[0]}
    db = Database(lambda: secret["value"], max_size=1, connect_timeout_seconds=3)
    try:
        assert _current_database(db) == names[0]
        secret["value"] = urls[1]  # the secret rotated
        assert _current_database(db) == names[0], "an open connection stays as it was"
        with db.connection() as conn:
            conn.close()  # the pool discards it; the next one is new
        assert _current_database(db) == names[1]
    finally:
        db.close()
        for name in names:
            pg_server.drop(name)


def test_rds_json_secret_connects_to_a_real_server(pg_server: Any) -> None:
    name = f"sendonce_json_{uuid.uuid4().hex[:8]}"
    params = conninfo_to_dict(pg_server.create(name))
    secret = json.dumps(
        {
            "engine": "postgres",
            "username": params.get("user", "postgres"),
            "password": params.get("password") or "p@ss/w%rd",
            "host": params.get("host", "127.0.0.1"),
            "port": int(params.get("port") or 5432),
            "dbname": name,
        }
    )
    db = Database(lambda: dsn.secure(dsn.from_secret(secret)), max_size=1, connect_timeout_seconds=3)
    try:
        assert _current_database(db) == name
    finally:
        db.close()
        pg_server.drop(name)
