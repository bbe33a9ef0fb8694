"""The database connection string: RDS's JSON secret, the TLS a deployed stack requires, and
the proxy endpoint that replaces the secret's host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from shared.config import Settings
from shared.runtime import ConfigurationError, database_url
from shared.storage.dsn import DatabaseUrlError, from_secret, is_loopback, secure

ROTATED_PASSWORD = "p@ss/w%rd :'\\x"
RDS_SECRET = json.dumps(
    {
        "engine": "postgres",
        "username": "sendonce",
        "password": ROTATED_PASSWORD,
        "host": "db.abc123.eu-west-1.rds.amazonaws.com",
        "port": 5432,
        "dbname": "sendonce",
    }
)


@pytest.fixture
def bundle(tmp_path: Path) -> str:
    path = tmp_path / "global-bundle.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


def test_rds_json_secret_becomes_conninfo_with_the_password_intact() -> None:
    params = conninfo_to_dict(from_secret(RDS_SECRET))
    assert params == {
        "host": "db.abc123.eu-west-1.rds.amazonaws.com",
        "port": "5432",
        "user": "sendonce",
        "password": ROTATED_PASSWORD,
        "dbname": "sendonce",
    }


def test_url_secret_is_used_as_is() -> None:
    url = "postgresql://u:p%40ss@db.example.com:5432/app?sslmode=verify-full"
    assert from_secret(f"  {url}\n") == url


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "empty"), ("{not json", "not valid JSON"), (json.dumps({"username": "u"}), "lacks password, host")],
)
def test_unusable_secret_is_refused_with_its_reason(value: str, message: str) -> None:
    with pytest.raises(DatabaseUrlError, match=message):
        from_secret(value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        (None, True),
        ("/var/run/postgresql", True),
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("10.0.0.5", False),
        ("db.example.com", False),
        ("127.0.0.1,db.example.com", False),
    ],
)
def test_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_loopback_may_go_without_tls() -> None:
    params = conninfo_to_dict(secure("postgresql://u:p@127.0.0.1:5432/db", ca_bundle=None))
    assert "sslmode" not in params


@pytest.mark.parametrize("mode", ["", "?sslmode=disable", "?sslmode=allow", "?sslmode=prefer"])
def test_plaintext_to_a_remote_host_is_refused(mode: str) -> None:
    with pytest.raises(DatabaseUrlError, match="refusing a plaintext connection"):
        secure(f"postgresql://u:p@db.example.com/db{mode}")


def test_remote_host_with_tls_is_accepted_without_a_bundle() -> None:
    params = conninfo_to_dict(secure("postgresql://u:p@db.example.com/db?sslmode=require"))
    assert params["sslmode"] == "require"


def test_deployed_stack_verifies_the_server_against_the_bundle(bundle: str) -> None:
    params = conninfo_to_dict(secure(from_secret(RDS_SECRET), ca_bundle=bundle))
    assert (params["sslmode"], params["sslrootcert"]) == ("verify-full", bundle)
    assert params["password"] == ROTATED_PASSWORD


@pytest.mark.parametrize("mode", ["require", "verify-ca", "prefer"])
def test_deployed_stack_refuses_a_weaker_mode(bundle: str, mode: str) -> None:
    with pytest.raises(DatabaseUrlError, match=f"sslmode={mode} refused"):
        secure(f"postgresql://u:p@db.example.com/db?sslmode={mode}", ca_bundle=bundle)


def test_deployed_stack_without_its_bundle_fails_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUrlError, match=r"CA bundle .* not found"):
        secure("postgresql://u:p@db.example.com/db", ca_bundle=str(tmp_path / "missing.pem"))


def test_proxy_endpoint_replaces_the_secrets_host(bundle: str) -> None:
    proxy = "sendonce.proxy-abc123.eu-west-1.rds.amazonaws.com"
    params = conninfo_to_dict(secure(from_secret(RDS_SECRET), ca_bundle=bundle, host_override=proxy))
    assert (params["host"], params["user"], params["sslmode"]) == (proxy, "sendonce", "verify-full")


def test_runtime_refuses_plaintext_before_connecting() -> None:
    config = Settings(database_url="postgresql://u:p@db.example.com/db")
    with pytest.raises(ConfigurationError, match="add \\?sslmode=verify-full"):
        database_url(config)
