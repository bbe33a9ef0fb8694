"""Webhooks on a real Postgres: storage, de-duplication, monotonic delivery status, and the
sample events through the real handler as ``sam local invoke -e`` would run them."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.aws import FAKE_CREDENTIALS, LocalAwsResources, MotoServer
from devstack.invoke import invoke
from shared.enqueue import enqueue_campaign
from shared.events import EnqueueRequest
from shared.providers.outcome import Channel, SendOutcome
from shared.queue import QueueRepository
from shared.reconcile import EVIDENCE_CLOCK_SKEW
from shared.storage import sql
from shared.storage.db import Database
from shared.webhooks import (
    ProviderEventStore,
    WebhookDeps,
    WebhookResult,
    WebhookSecrets,
    handle_webhook,
)

pytestmark = pytest.mark.integration

META_SECRET = "test-meta-app-secret"
VERIFY_TOKEN = "test-meta-verify-token"
UNIPILE_SECRET = "test-unipile-webhook-secret"
EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"
# Provider deliveries (POST); webhook-subscribe-*.json is Meta's GET subscription check.
SAMPLES = sorted(p for p in EVENTS_DIR.glob("webhook-*.json") if not p.name.startswith("webhook-subscribe-"))
SUBSCRIBE_SAMPLE = EVENTS_DIR / "webhook-subscribe-whatsapp.json"


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(META_SECRET.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def deps(database: Database) -> WebhookDeps:
    return WebhookDeps(
        store=ProviderEventStore(database), secrets=WebhookSecrets(META_SECRET, UNIPILE_SECRET, VERIFY_TOKEN)
    )


def deliver(deps: WebhookDeps, channel: Channel, document: Any) -> WebhookResult:
    body = json.dumps(document).encode()
    if channel is Channel.LINKEDIN:
        headers = {"unipile-auth": UNIPILE_SECRET}
    else:
        headers = {"x-hub-signature-256": sign(body)}
    return handle_webhook(deps, channel, headers, body)


def sent_message(
    database: Database, queue: QueueRepository, channel: Channel, address: str, provider_message_id: str
) -> int:
    """A queue row driven to `sent` the way the dispatcher does, leaving a ledger row."""
    enqueue_campaign(
        database,
        EnqueueRequest.model_validate(
            {
                "source": "sendonce.manual",
                "campaign_id": str(uuid.uuid4()),
                "campaign_name": "webhooks",
                "channel": channel.value,
                "sender_provider_id": "sender-1",
                "contacts": [{"address": address}],
                "steps": [{"message_type": "intro", "body": f"hello {provider_message_id}"}],
                # One campaign per message, several to one person: the policy would skip them.
                "cross_campaign_policy": "allow",
            }
        ),
    )
    [message] = queue.claim_batch(uuid.uuid4(), 10, 60)
    assert queue.mark_sending(message)
    assert queue.settle_sent(message, SendOutcome.sent(provider_message_id))
    return message.queue_id


def ledger_status(database: Database, provider_message_id: str) -> str:
    row = database.fetch_one(
        "SELECT delivery_status FROM message_ledger WHERE provider_message_id = %(id)s",
        {"id": provider_message_id},
    )
    assert row is not None
    return str(row["delivery_status"])


def event_count(database: Database) -> int:
    row = database.fetch_one("SELECT count(*) AS n FROM provider_events")
    assert row is not None
    return int(row["n"])


def wa(*statuses: tuple[str, str]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"phone_number_id": "106540352242922"},
                            "statuses": [
                                {
                                    "id": wamid,
                                    "status": status,
                                    "timestamp": "1763924700",
                                    "recipient_id": "15551230001",
                                }
                                for wamid, status in statuses
                            ],
                        },
                    }
                ],
            }
        ],
    }


# --- authentication and de-duplication --------------------------------------------------------


def test_bad_signature_is_401_and_stores_nothing(deps: WebhookDeps, database: Database) -> None:
    body = json.dumps(wa(("wamid.X", "delivered"))).encode()
    result = handle_webhook(deps, Channel.WHATSAPP, {"x-hub-signature-256": "sha256=" + "0" * 64}, body)
    assert result.status_code == 401
    assert (
        handle_webhook(deps, Channel.LINKEDIN, {"unipile-auth": "nope"}, b'{"event":"x"}').status_code == 401
    )
    assert event_count(database) == 0


def test_malformed_json_after_a_valid_signature_is_400_and_stores_nothing(
    deps: WebhookDeps, database: Database
) -> None:
    body = b'{"entry": ['
    assert (
        handle_webhook(deps, Channel.WHATSAPP, {"x-hub-signature-256": sign(body)}, body).status_code == 400
    )
    assert event_count(database) == 0


def test_duplicate_delivery_is_stored_once(deps: WebhookDeps, database: Database) -> None:
    document = wa(("wamid.X", "sent"), ("wamid.X", "delivered"))
    assert deliver(deps, Channel.WHATSAPP, document).json() == {"stored": 2, "duplicates": 0}
    assert deliver(deps, Channel.WHATSAPP, document).json() == {"stored": 0, "duplicates": 2}
    # A later delivery repeating one old status and adding a new one stores only the new one.
    assert deliver(deps, Channel.WHATSAPP, wa(("wamid.X", "delivered"), ("wamid.X", "read"))).json() == {
        "stored": 1,
        "duplicates": 1,
    }
    rows = database.fetch_all("SELECT dedupe_key FROM provider_events ORDER BY id")
    assert [r["dedupe_key"] for r in rows] == ["wamid.X:sent", "wamid.X:delivered", "wamid.X:read"]


def test_unrecognised_shape_is_stored_once(deps: WebhookDeps, database: Database) -> None:
    document = {"object": "page", "entry": [{"id": "1", "changes": [{"field": "feed"}]}]}
    assert deliver(deps, Channel.MESSENGER, document).json() == {"stored": 1, "duplicates": 0}
    assert deliver(deps, Channel.MESSENGER, document).json() == {"stored": 0, "duplicates": 1}
    row = database.fetch_one("SELECT event_type, payload, status FROM provider_events")
    assert row is not None
    assert (row["event_type"], row["payload"], row["status"]) == ("unrecognised", document["entry"][0], None)


def test_same_dedupe_key_on_two_channels_is_two_events(deps: WebhookDeps, database: Database) -> None:
    document = {"unknown": True}
    deliver(deps, Channel.WHATSAPP, document)
    deliver(deps, Channel.MESSENGER, document)
    assert event_count(database) == 2


def test_whatsapp_fields_and_errors_are_stored(deps: WebhookDeps, database: Database) -> None:
    errors = [{"code": 131026, "title": "Message undeliverable"}]
    document = wa(("wamid.F", "failed"))
    status = document["entry"][0]["changes"][0]["value"]["statuses"][0]
    status.update(errors=errors, biz_opaque_callback_data="so1-abc")
    deliver(deps, Channel.WHATSAPP, document)
    row = database.fetch_one("SELECT * FROM provider_events")
    assert row is not None
    assert row["channel"] == "whatsapp"
    assert (row["provider_message_id"], row["status"], row["recipient"]) == (
        "wamid.F",
        "failed",
        "15551230001",
    )
    assert row["idempotency_key"] == "so1-abc"
    assert row["occurred_at"] == datetime.fromtimestamp(1763924700, UTC)
    assert row["payload"]["errors"] == errors


# --- delivery status: monotonic ------------------------------------------------------------------


def test_read_before_delivered_ends_read(
    deps: WebhookDeps, database: Database, queue: QueueRepository
) -> None:
    sent_message(database, queue, Channel.WHATSAPP, "15551230001", "wamid.X")
    assert ledger_status(database, "wamid.X") == "accepted"
    deliver(deps, Channel.WHATSAPP, wa(("wamid.X", "read")))
    assert ledger_status(database, "wamid.X") == "read"
    deliver(deps, Channel.WHATSAPP, wa(("wamid.X", "delivered")))
    assert ledger_status(database, "wamid.X") == "read"
    row = database.fetch_one("SELECT delivery_updated_at FROM message_ledger")
    assert row is not None and row["delivery_updated_at"] == datetime.fromtimestamp(1763924700, UTC)


def test_failed_after_delivered_does_not_regress(
    deps: WebhookDeps, database: Database, queue: QueueRepository
) -> None:
    sent_message(database, queue, Channel.WHATSAPP, "15551230001", "wamid.X")
    sent_message(database, queue, Channel.WHATSAPP, "15551230002", "wamid.Y")
    deliver(deps, Channel.WHATSAPP, wa(("wamid.X", "delivered")))
    deliver(deps, Channel.WHATSAPP, wa(("wamid.X", "failed"), ("wamid.Y", "failed")))
    assert ledger_status(database, "wamid.X") == "delivered"
    assert ledger_status(database, "wamid.Y") == "failed"


def test_delivery_evidence_overrides_failed(
    deps: WebhookDeps, database: Database, queue: QueueRepository
) -> None:
    sent_message(database, queue, Channel.WHATSAPP, "15551230001", "wamid.X")
    deliver(deps, Channel.WHATSAPP, wa(("wamid.X", "failed")))
    deliver(deps, Channel.WHATSAPP, wa(("wamid.X", "delivered")))
    assert ledger_status(database, "wamid.X") == "delivered"


def test_several_statuses_of_one_message_in_one_delivery(
    deps: WebhookDeps, database: Database, queue: QueueRepository
) -> None:
    sent_message(database, queue, Channel.WHATSAPP, "15551230001", "wamid.X")
    sent_message(database, queue, Channel.WHATSAPP, "15551230002", "wamid.Y")
    result = deliver(
        deps,
        Channel.WHATSAPP,
        wa(("wamid.X", "failed"), ("wamid.X", "delivered"), ("wamid.X", "read"), ("wamid.Y", "delivered")),
    )
    assert result.json() == {"stored": 4, "duplicates": 0}
    assert ledger_status(database, "wamid.X") == "read"
    assert ledger_status(database, "wamid.Y") == "delivered"


def test_status_of_another_channel_does_not_touch_the_ledger(
    deps: WebhookDeps, database: Database, queue: QueueRepository
) -> None:
    sent_message(database, queue, Channel.WHATSAPP, "15551230001", "shared-id")
    deliver(
        deps,
        Channel.MESSENGER,
        {
            "entry": [
                {"messaging": [{"sender": {"id": "P"}, "delivery": {"mids": ["shared-id"], "watermark": 1}}]}
            ]
        },
    )
    assert ledger_status(database, "shared-id") == "accepted"


def test_concurrent_delivered_and_read_always_end_read(
    deps: WebhookDeps, database: Database, queue: QueueRepository
) -> None:
    ids = [f"wamid.C{i}" for i in range(8)]
    for i, wamid in enumerate(ids):
        sent_message(database, queue, Channel.WHATSAPP, f"1555123{i:04d}", wamid)
    jobs = [(wamid, status) for wamid in ids for status in ("delivered", "read", "delivered", "failed")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: deliver(deps, Channel.WHATSAPP, wa(job)), jobs))
    assert all(r.status_code == 200 for r in results)
    assert sum(r.json()["stored"] for r in results) == len(ids) * 3
    assert {ledger_status(database, wamid) for wamid in ids} == {"read"}


def test_unipile_read_marks_our_message_read(
    deps: WebhookDeps, database: Database, queue: QueueRepository
) -> None:
    sent_message(database, queue, Channel.LINKEDIN, "ACoTHEM", "msg-1")
    base = {"account_type": "LINKEDIN", "message_id": "msg-1", "chat_id": "chat-1", "is_sender": True}
    deliver(deps, Channel.LINKEDIN, {**base, "event": "message_read"})
    deliver(deps, Channel.LINKEDIN, {**base, "event": "message_received"})
    assert ledger_status(database, "msg-1") == "read"


# --- Messenger: mids and watermarks ------------------------------------------------------------


def messenger(*items: dict[str, Any]) -> dict[str, Any]:
    return {"object": "page", "entry": [{"id": "PAGE", "time": 1, "messaging": list(items)}]}


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def set_sent_at(database: Database, provider_message_id: str, sent_at: datetime) -> None:
    with database.connection() as conn:
        conn.execute(
            "UPDATE message_ledger SET sent_at = %(at)s WHERE provider_message_id = %(id)s",
            {"at": sent_at, "id": provider_message_id},
        )


def test_messenger_delivery_by_mid(deps: WebhookDeps, database: Database, queue: QueueRepository) -> None:
    sent_message(database, queue, Channel.MESSENGER, "PSID1", "m_1")
    sent_message(database, queue, Channel.MESSENGER, "PSID1", "m_2")
    item = {
        "sender": {"id": "PSID1"},
        "recipient": {"id": "PAGE"},
        "delivery": {"mids": ["m_1"], "watermark": 1},
    }
    assert deliver(deps, Channel.MESSENGER, messenger(item)).json() == {"stored": 1, "duplicates": 0}
    assert (ledger_status(database, "m_1"), ledger_status(database, "m_2")) == ("delivered", "accepted")


def test_messenger_read_watermark_marks_earlier_messages_of_that_recipient(
    deps: WebhookDeps, database: Database, queue: QueueRepository
) -> None:
    watermark = datetime(2025, 11, 23, 19, 0, tzinfo=UTC)
    for mid, psid, offset in [
        ("m_before", "PSID1", -60),
        ("m_after", "PSID1", 60),
        ("m_other", "PSID2", -60),
    ]:
        sent_message(database, queue, Channel.MESSENGER, psid, mid)
        set_sent_at(database, mid, watermark + timedelta(seconds=offset))
    deliver(
        deps,
        Channel.MESSENGER,
        messenger({"sender": {"id": "PSID1"}, "read": {"watermark": millis(watermark)}}),
    )
    statuses = {mid: ledger_status(database, mid) for mid in ("m_before", "m_after", "m_other")}
    assert statuses == {"m_before": "read", "m_after": "accepted", "m_other": "accepted"}


def test_messenger_read_uses_the_echo_time_when_sent_at_lags(
    deps: WebhookDeps, database: Database, queue: QueueRepository
) -> None:
    watermark = datetime(2025, 11, 23, 19, 0, tzinfo=UTC)
    sent_message(database, queue, Channel.MESSENGER, "PSID1", "m_late")
    # Our sent_at is taken after the Send API answered: a second after Meta's own timestamp.
    set_sent_at(database, "m_late", watermark + timedelta(seconds=1))
    echo = {
        "sender": {"id": "PAGE"},
        "recipient": {"id": "PSID1"},
        "timestamp": millis(watermark) - 500,
        "message": {"is_echo": True, "mid": "m_late", "metadata": "so1-x"},
    }
    deliver(deps, Channel.MESSENGER, messenger(echo))
    assert ledger_status(database, "m_late") == "accepted"
    deliver(
        deps,
        Channel.MESSENGER,
        messenger({"sender": {"id": "PSID1"}, "read": {"watermark": millis(watermark)}}),
    )
    assert ledger_status(database, "m_late") == "read"


def test_messenger_watermark_read_never_regresses_and_delivery_watermark_does_not_downgrade(
    deps: WebhookDeps, database: Database, queue: QueueRepository
) -> None:
    watermark = datetime(2025, 11, 23, 19, 0, tzinfo=UTC)
    sent_message(database, queue, Channel.MESSENGER, "PSID1", "m_1")
    set_sent_at(database, "m_1", watermark - timedelta(seconds=5))
    deliver(
        deps,
        Channel.MESSENGER,
        messenger({"sender": {"id": "PSID1"}, "read": {"watermark": millis(watermark)}}),
    )
    deliver(
        deps,
        Channel.MESSENGER,
        messenger({"sender": {"id": "PSID1"}, "delivery": {"watermark": millis(watermark)}}),
    )
    assert ledger_status(database, "m_1") == "read"


# --- late ledger rows ------------------------------------------------------------------------------


def test_status_that_beat_its_ledger_row_is_backfilled(
    deps: WebhookDeps, database: Database, queue: QueueRepository
) -> None:
    deliver(deps, Channel.WHATSAPP, wa(("wamid.EARLY", "delivered")))
    sent_message(database, queue, Channel.WHATSAPP, "15551230001", "wamid.EARLY")
    assert ledger_status(database, "wamid.EARLY") == "accepted"
    store = ProviderEventStore(database)
    assert store.backfill_delivery_status(lookback_seconds=3600) == 1
    assert ledger_status(database, "wamid.EARLY") == "delivered"
    assert store.backfill_delivery_status(lookback_seconds=3600) == 0


# --- the sample events through the real handler -------------------------------------------------


def _reset_runtime() -> None:
    """Handlers cache settings and dependencies per process (one Lambda container); each test
    is a fresh container with its own database."""
    from shared import runtime

    runtime.settings.cache_clear()
    for name in ("webhook", "database"):
        built = runtime._cache.pop(name, None)
        if isinstance(built, Database):
            built.close()


@pytest.fixture
def lambda_env(
    monkeypatch: pytest.MonkeyPatch, db_url: str, aws: LocalAwsResources, moto_server: MotoServer
) -> Iterator[None]:
    env = {
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": moto_server.endpoint,
        "DATABASE_URL": db_url,
        "SENDONCE_META_APP_SECRET_ID": aws.secret_ids["meta_app_secret_id"],
        "SENDONCE_META_VERIFY_TOKEN_SECRET_ID": aws.secret_ids["meta_verify_token_secret_id"],
        "SENDONCE_UNIPILE_WEBHOOK_SECRET_ID": aws.secret_ids["unipile_webhook_secret_id"],
        "POWERTOOLS_SERVICE_NAME": "sendonce-test",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _reset_runtime()
    yield
    _reset_runtime()


def load_sample(path: Path) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(path.read_text())
    return event


def test_there_is_a_sample_per_route() -> None:
    assert {load_sample(p)["rawPath"] for p in SAMPLES} == {
        "/webhooks/whatsapp",
        "/webhooks/messenger",
        "/webhooks/unipile",
    }


@pytest.mark.usefixtures("lambda_env")
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_event_through_the_handler(path: Path, database: Database) -> None:
    event = load_sample(path)
    response = invoke("webhook", event)
    assert response["statusCode"] == 200, response
    assert json.loads(response["body"]) == {"stored": 1, "duplicates": 0}
    # Replayed exactly, and again base64-encoded (as a Function URL may deliver it).
    assert json.loads(invoke("webhook", event)["body"]) == {"stored": 0, "duplicates": 1}
    encoded = {**event, "isBase64Encoded": True, "body": base64.b64encode(event["body"].encode()).decode()}
    assert json.loads(invoke("webhook", encoded)["body"]) == {"stored": 0, "duplicates": 1}
    assert event_count(database) == 1

    body = json.loads(event["body"])
    channel = {
        "/webhooks/whatsapp": "whatsapp",
        "/webhooks/messenger": "messenger",
        "/webhooks/unipile": "linkedin",
    }[event["rawPath"]]
    stored = database.fetch_one("SELECT * FROM provider_events")
    assert stored is not None and stored["channel"] == channel
    if channel == "whatsapp":
        [status] = body["entry"][0]["changes"][0]["value"]["statuses"]
        found = database.fetch_one(
            sql.EVIDENCE_BY_KEY, {"channel": channel, "idempotency_key": status["biz_opaque_callback_data"]}
        )
        assert found is not None and (found["provider_message_id"], found["status"]) == (
            status["id"],
            "delivered",
        )
    elif channel == "messenger":
        message = body["entry"][0]["messaging"][0]["message"]
        found = database.fetch_one(
            sql.EVIDENCE_BY_KEY, {"channel": channel, "idempotency_key": message["metadata"]}
        )
        assert found is not None and (found["provider_message_id"], found["status"]) == (
            message["mid"],
            "sent",
        )
    else:
        # What reconciliation of an `unknown` LinkedIn row looks for.
        found = database.fetch_one(
            sql.EVIDENCE_BY_TEXT,
            {
                "sending_started_at": datetime(2000, 1, 1, tzinfo=UTC),
                "clock_skew_seconds": EVIDENCE_CLOCK_SKEW.total_seconds(),
                "channel": channel,
                "recipient": body["attendees"][0]["attendee_provider_id"],
                "body": body["message"],
            },
        )
        assert found is not None
        assert (found["provider_message_id"], found["provider_thread_id"]) == (
            body["message_id"],
            body["chat_id"],
        )


@pytest.mark.usefixtures("lambda_env")
def test_whatsapp_sample_marks_the_ledger_delivered(database: Database, queue: QueueRepository) -> None:
    event = load_sample(EVENTS_DIR / "webhook-whatsapp-status.json")
    [status] = json.loads(event["body"])["entry"][0]["changes"][0]["value"]["statuses"]
    sent_message(database, queue, Channel.WHATSAPP, status["recipient_id"], status["id"])
    assert invoke("webhook", event)["statusCode"] == 200
    assert ledger_status(database, status["id"]) == "delivered"


@pytest.mark.usefixtures("lambda_env")
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_tampered_sample_is_401_through_the_handler(path: Path, database: Database) -> None:
    event = copy.deepcopy(load_sample(path))
    event["body"] = event["body"].replace("2025", "2024").replace("1763924", "1763925")
    assert event["body"] != load_sample(path)["body"]
    if event["rawPath"] == "/webhooks/unipile":
        event["headers"]["unipile-auth"] = "not-the-secret"
    response = invoke("webhook", event)
    assert response["statusCode"] == 401
    assert event_count(database) == 0


@pytest.mark.usefixtures("lambda_env")
def test_meta_subscription_check_through_the_handler() -> None:
    event = load_sample(SUBSCRIBE_SAMPLE)
    response = invoke("webhook", event)
    assert (response["statusCode"], response["body"]) == (200, "1158201444")
    messenger = {**event, "rawPath": "/webhooks/messenger"}
    messenger["requestContext"] = {**event["requestContext"], "http": {**event["requestContext"]["http"]}}
    messenger["requestContext"]["http"]["path"] = "/webhooks/messenger"
    assert invoke("webhook", messenger)["statusCode"] == 200
    # The app secret signs webhooks and must never work as the token that travels in a URL.
    for token in ("guess", META_SECRET):
        event["queryStringParameters"]["hub.verify_token"] = token
        assert invoke("webhook", event)["statusCode"] == 403


@pytest.mark.usefixtures("lambda_env")
def test_database_down_is_503_so_the_provider_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://sendonce@127.0.0.1:9/none")
    monkeypatch.setenv("SENDONCE_DB_CONNECT_TIMEOUT_SECONDS", "1")
    _reset_runtime()
    response = invoke("webhook", load_sample(EVENTS_DIR / "webhook-whatsapp-status.json"))
    assert response["statusCode"] == 503


# --- hostile requests through the handler -----------------------------------------------------------


@pytest.mark.usefixtures("lambda_env")
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_a_lone_surrogate_in_the_auth_header_is_401_through_the_handler(
    path: Path, database: Database
) -> None:
    event = copy.deepcopy(load_sample(path))
    header = "unipile-auth" if event["rawPath"] == "/webhooks/unipile" else "x-hub-signature-256"
    # As Lambda would hand it over after json.loads of a "\udc80" escape.
    event["headers"][header] = event["headers"][header][:-1] + "\udc80"
    response = invoke("webhook", event)
    assert response["statusCode"] == 401, response
    assert event_count(database) == 0


@pytest.mark.usefixtures("lambda_env")
def test_a_six_megabyte_unrecognised_body_is_stored_capped_with_its_hash(database: Database) -> None:
    event = copy.deepcopy(load_sample(EVENTS_DIR / "webhook-messenger-echo.json"))
    body = json.dumps({"object": "page", "entry": [{"id": "1", "blob": "x" * 6_000_000}]})
    event["body"] = body
    event["headers"]["x-hub-signature-256"] = sign(body.encode())
    response = invoke("webhook", event)
    assert (response["statusCode"], json.loads(response["body"])) == (200, {"stored": 1, "duplicates": 0})
    row = database.fetch_one(
        "SELECT event_type, octet_length(payload::text) AS size, payload->>'body_sha256' AS body_sha256 "
        "FROM provider_events"
    )
    assert row is not None
    assert row["event_type"] == "unrecognised"
    assert row["size"] < 64 * 1024
    assert row["body_sha256"] == hashlib.sha256(body.encode()).hexdigest()
    # The provider's retry of the same body is recognised as the same event.
    assert json.loads(invoke("webhook", event)["body"]) == {"stored": 0, "duplicates": 1}
