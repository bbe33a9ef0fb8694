"""The database connection string: where it comes from, and the TLS it must use.

The secret may hold a libpq URL, or the JSON that RDS writes for a managed (and rotated)
master-user secret: ``{"username", "password", "host", "port", "dbname", "engine", ...}``
(Amazon RDS User Guide, "Password management with Amazon RDS and AWS Secrets Manager"). JSON
is turned into conninfo with every value quoted by libpq's own rules (``make_conninfo``), so
a rotated password with ``@``, ``/``, ``%`` or spaces needs no URL-encoding; in a URL the
operator must percent-encode the password themselves (docs/deploy.md).

TLS: libpq's default ``sslmode=prefer`` silently falls back to plaintext. A connection to
anything but loopback must therefore name a verifying mode, and a deployed stack (which
sets ``db_tls_ca_bundle``, the RDS CA bundle shipped in the layer) always uses
``verify-full`` against that bundle: an encrypted connection to an impostor is no better
than plaintext.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

# Modes that encrypt; the last two also authenticate the server (libpq docs, "SSL Support").
ENCRYPTED_MODES = ("require", "verify-ca", "verify-full")
RDS_SECRET_KEYS = ("username", "password", "host")


class DatabaseUrlError(ValueError):
    """A database secret or URL sendonce will not connect with; the message says the fix."""


def from_secret(value: str) -> str:
    """A secret's value as conninfo: a URL or conninfo string as is, RDS JSON converted."""
    text = value.strip()
    if not text:
        raise DatabaseUrlError("the database secret is empty: store a postgresql:// URL or RDS's JSON")
    if not text.startswith("{"):
        return text
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatabaseUrlError(f"the database secret is not valid JSON ({exc.msg})") from None
    missing = [key for key in RDS_SECRET_KEYS if not fields.get(key)]
    if missing:
        raise DatabaseUrlError(f"the database secret's JSON lacks {', '.join(missing)}")
    params: dict[str, str | int] = {
        "host": fields["host"],
        "user": fields["username"],
        "password": fields["password"],
        "port": int(fields.get("port") or 5432),
    }
    # RDS-managed secrets carry no dbname; the database then is the one named like the user.
    if fields.get("dbname"):
        params["dbname"] = fields["dbname"]
    return make_conninfo("", **params)


def is_loopback(host: str | None) -> bool:
    """No host, a socket directory, ``localhost`` or a loopback address: traffic that never
    leaves the machine."""
    if not host:
        return True
    hosts = host.split(",")
    return all(_one_loopback(h.strip()) for h in hosts)


def _one_loopback(host: str) -> bool:
    if host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secure(conninfo: str, *, ca_bundle: str | None = None, host_override: str | None = None) -> str:
    """``conninfo`` as sendonce connects with it, or ``DatabaseUrlError`` saying why not.

    ``host_override`` (an RDS Proxy endpoint) replaces the host the secret names: RDS's
    rotation keeps writing the instance's host into the secret. ``ca_bundle`` makes
    ``verify-full`` against that file mandatory for any non-loopback host."""
    try:
        params = conninfo_to_dict(conninfo)
    except Exception as exc:  # psycopg.ProgrammingError, with the offending fragment
        raise DatabaseUrlError(f"the database URL does not parse: {type(exc).__name__}") from None
    if host_override:
        params["host"] = host_override
        params.pop("hostaddr", None)
    host = params.get("host")
    if is_loopback(str(host) if host is not None else None):
        return make_conninfo("", **params)
    mode = str(params.get("sslmode") or "")
    if ca_bundle:
        if mode and mode != "verify-full":
            raise DatabaseUrlError(
                f"sslmode={mode} refused: a deployed stack verifies the server (sslmode=verify-full "
                "against the RDS CA bundle); drop sslmode from the URL"
            )
        if not Path(ca_bundle).is_file():
            raise DatabaseUrlError(f"CA bundle {ca_bundle} not found: build the layer with `make deploy`")
        params["sslmode"] = "verify-full"
        params.setdefault("sslrootcert", ca_bundle)
    elif mode not in ENCRYPTED_MODES:
        raise DatabaseUrlError(
            f"refusing a plaintext connection to {host}: add ?sslmode=verify-full (or require) to the "
            "database URL; only loopback may go without TLS"
        )
    return make_conninfo("", **params)
