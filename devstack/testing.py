"""Helpers shared by the tests, the local stack and the benchmark."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any, LiteralString

import psycopg

from devstack.aws import FAKE_CREDENTIALS, LocalAwsResources, MotoServer
from shared.config import Settings
from shared.enqueue import enqueue_campaign
from shared.events import EnqueueRequest
from shared.storage.db import Database

TEST_TOKENS = {
    "whatsapp": "test-whatsapp-token",
    "messenger": "test-messenger-token",
    "linkedin": "test-unipile-key",
}


def make_settings(db_url: str, aws: LocalAwsResources, provider_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "idempotency_table": aws.idempotency_table,
        "failed_messages_queue_url": aws.failed_messages_queue_url,
        "graph_api_base_url": provider_url,
        "unipile_base_url": provider_url,
        "provider_connect_timeout_seconds": 2.0,
        "provider_read_timeout_seconds": 5.0,
        "db_connect_timeout_seconds": 3.0,
        "retry_base_seconds": 1.0,
        "retry_cap_seconds": 60.0,
        # Unpaced unless a test configures pacing: the suites send thousands of messages
        # through a handful of sender accounts.
        "pacing_whatsapp": {},
        "pacing_messenger": {},
        "pacing_linkedin": {},
        # No windows unless a test turns them on: the suites send to contacts that never wrote.
        "channel_windows": False,
        **{field: secret_id for field, secret_id in aws.secret_ids.items()},
        **overrides,
    }
    return Settings.model_validate(values)


def function_env(
    settings: Settings, moto: MotoServer, database_secret_id: str | None = None
) -> dict[str, str]:
    """The environment a real handler process needs: what Lambda would be given. With
    ``database_secret_id`` the handler reads the database URL from that secret, as deployed
    functions do, instead of from ``DATABASE_URL``."""
    assert settings.database_url is not None
    database = (
        {"SENDONCE_DATABASE_SECRET_ID": database_secret_id}
        if database_secret_id
        else {"DATABASE_URL": settings.database_url.get_secret_value()}
    )
    env = {
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": moto.endpoint,
        **database,
        "POWERTOOLS_SERVICE_NAME": "sendonce-test",
        "POWERTOOLS_METRICS_NAMESPACE": "sendonce",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }
    for name, value in settings.model_dump(
        mode="json", exclude={"database_url", "database_secret_id"}
    ).items():
        if value is not None:
            env[f"SENDONCE_{name.upper()}"] = (
                json.dumps(value) if isinstance(value, dict | list) else str(value)
            )
    return env


def expire_leases(db: Database) -> None:
    """Move every lease into the past: the clock jumping ahead, not a change of state."""
    with db.connection() as conn:
        conn.execute(
            "UPDATE send_queue SET lease_expires_at = now() - interval '1 second' "
            "WHERE lease_expires_at IS NOT NULL"
        )


def end_holds(db: Database) -> None:
    """Move every sender's throttle hold (its next slot) and every pending row's backoff into the
    past: the clock jumping ahead past a provider's Retry-After, not a change of state."""
    with db.connection() as conn:
        conn.execute("UPDATE sender_accounts SET next_slot_at = now() WHERE next_slot_at > now()")
        conn.execute(
            "UPDATE send_queue SET scheduled_for = now() WHERE status = 'pending' AND scheduled_for > now()"
        )


def outlive_claims(db: Database) -> None:
    """Move every row's last claim a day into the past: every invocation that claimed one has
    long been stopped by Lambda, so decisions that wait for that (a resend, a redrive) may act."""
    with db.connection() as conn:
        conn.execute(
            "UPDATE send_queue SET claimed_at = claimed_at - interval '1 day' WHERE claimed_at IS NOT NULL"
        )


def enqueue_contacts(
    db: Database,
    channel: str,
    addresses: list[str],
    *,
    sender: str = "sender-1",
    body: str = "hello",
    steps: list[str] | None = None,
    campaign_id: uuid.UUID | None = None,
    cross_campaign_policy: str | None = None,
) -> uuid.UUID:
    """Enqueue one campaign through the real enqueue path; returns its id. ``steps`` names
    the message types (one per step), all with ``body``. ``cross_campaign_policy="allow"``
    lets a test message one person from several campaigns of one sender."""
    campaign = campaign_id or uuid.uuid4()
    enqueue_campaign(
        db,
        EnqueueRequest.model_validate(
            {
                "source": "sendonce.manual",
                "campaign_id": str(campaign),
                "campaign_name": f"{channel} test",
                "channel": channel,
                "sender_provider_id": sender,
                "contacts": [{"address": a} for a in addresses],
                "steps": [{"message_type": t, "body": body} for t in (steps or ["intro"])],
                **({"cross_campaign_policy": cross_campaign_policy} if cross_campaign_policy else {}),
            }
        ),
    )
    return campaign


def build_backlog(db: Database, rows: int, *, senders: int) -> None:
    """``rows`` due rows spread over ``senders`` WhatsApp senders with two campaigns each,
    inserted in bulk with SQL (fast at a million rows; the enqueue path is tested on its own),
    then analysed, as a settled production table would be."""
    with db.connection() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO sender_accounts (channel, provider_account_id)"
            " SELECT 'whatsapp', 'bulk-' || g FROM generate_series(1, %(senders)s) g",
            {"senders": senders},
        )
        conn.execute(
            "INSERT INTO campaigns (name, sender_account_id)"
            " SELECT 'bulk', s.id FROM sender_accounts s, generate_series(1, 2)"
        )
        conn.execute(
            "INSERT INTO campaign_senders (campaign_id, sender_account_id)"
            " SELECT id, sender_account_id FROM campaigns"
        )
        conn.execute(
            "INSERT INTO contacts (channel, address)"
            " SELECT 'whatsapp', (15550000000 + g)::text FROM generate_series(1, %(rows)s) g",
            {"rows": rows},
        )
        conn.execute(
            """
            INSERT INTO send_queue
                (campaign_id, contact_id, sender_account_id, message_type, body, scheduled_for)
            SELECT cp.id, c.id, cp.sender_account_id, 'intro', 'hello', now() - interval '1 hour'
            FROM (SELECT id, row_number() OVER () AS n FROM contacts) c
            JOIN (SELECT id, sender_account_id, row_number() OVER () - 1 AS k FROM campaigns) cp
              ON cp.k = c.n %% (2 * %(senders)s)
            """,
            {"senders": senders},
        )
    with db.connection() as conn:
        conn.execute("VACUUM ANALYZE")


def executed_plan(database: Database, query: LiteralString, params: dict[str, Any]) -> dict[str, Any]:
    """The executed plan of ``query`` (EXPLAIN ANALYZE, JSON), in a transaction rolled back."""
    plan: dict[str, Any] = {}
    with database.connection() as conn, conn.transaction():
        row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params).fetchone()
        assert row is not None
        plan = row["QUERY PLAN"][0]["Plan"]
        raise psycopg.Rollback()
    return plan


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a JSON plan, depth first."""
    found = [plan]
    for child in plan.get("Plans", []):
        found += plan_nodes(child)
    return found


def run_in_threads(target: Callable[[], object], count: int) -> None:
    """Start ``count`` threads running ``target`` at once and wait for all of them."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
