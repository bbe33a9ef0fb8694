"""Every AWS code path of every function, through its real handler in its own process,
configured by the environment as Lambda configures it (the database URL read from its
secret included).

The library tests prove each rule in-process; these prove the deployed wiring does the same,
and they are how ``tests/infra/test_iam.py`` learns which AWS operations each function's
role must allow: the recorder (``devstack/aws_calls.py``) only sees handler processes. A path
missing here would be a permission the role test cannot justify, or a call it cannot see.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.aws import aws_client
from devstack.lossy_proxy import LossyProxy
from devstack.stack import ROOT, LocalStack
from devstack.testing import enqueue_contacts, outlive_claims
from shared.idempotency import RecordState, SendGuard
from shared.queue import QueueRepository

pytestmark = pytest.mark.integration
EVENTS = ROOT / "events"
DISPATCH = EVENTS / "dispatcher-scheduled.json"
SWEEP = EVENTS / "sweeper-scheduled.json"


@pytest.fixture
def stack(pg_server: Any) -> Iterator[LocalStack]:
    with LocalStack(database_url=pg_server.admin_url, database_from_secret=True) as running:
        yield running


def enqueue(stack: LocalStack, channel: str, address: str, body: str) -> None:
    # Each call is its own campaign; "allow" lets a test message one contact twice.
    enqueue_contacts(
        stack.db, channel, [address], body=body, campaign_id=uuid.uuid4(), cross_campaign_policy="allow"
    )


def statuses(stack: LocalStack) -> dict[str, int]:
    return QueueRepository(stack.db).status_counts()


def guard(stack: LocalStack) -> SendGuard:
    assert stack.aws is not None
    return SendGuard.for_table(
        stack.aws.idempotency_table, 3600, boto3_client=aws_client("dynamodb", stack.moto.endpoint)
    )


def only_key(stack: LocalStack) -> str:
    [row] = stack.db.fetch_all("SELECT idempotency_key FROM send_queue")
    return str(row["idempotency_key"])


def test_sweeper_reads_back_a_known_unipile_chat(stack: LocalStack) -> None:
    """An ambiguous LinkedIn send in a chat we already wrote to is resolved by asking Unipile,
    with the API key the sweeper reads from its secret."""
    enqueue(stack, "linkedin", "ACoAA1", "first")
    assert stack.spawn("dispatcher", DISPATCH).finish()["counts"]["Sent"] == 1
    stack.provider.set_faults({"rules": [{"action": "accept_then_5xx", "match": {"channel": "linkedin"}}]})
    enqueue(stack, "linkedin", "ACoAA1", "second")
    assert stack.spawn("dispatcher", DISPATCH).finish()["counts"]["Ambiguous"] == 1
    stack.provider.set_faults({})

    report = stack.spawn("sweeper", SWEEP).finish()

    assert report["unknown_resolved_sent"] == 1
    assert statuses(stack) == {"sent": 2}
    recovered = stack.db.fetch_all("SELECT recovered_from FROM message_ledger ORDER BY sent_at")
    assert [r["recovered_from"] for r in recovered] == ["dispatch", "read_back"]
    assert len(stack.provider.ledger()) == 2, "resolved, not resent"


def test_sweeper_syncs_whatsapp_templates_with_the_token_from_its_secret(stack: LocalStack) -> None:
    """A configured WABA's templates are listed from Graph with the WhatsApp token the sweeper
    reads from its secret, as deployed (template.yaml passes WhatsAppBusinessAccounts)."""
    template = {"name": "hello", "language": "en_US", "status": "APPROVED", "components": []}
    stack.provider.set_templates("waba-1", ["phone-1"], [template])
    accounts = json.dumps({"waba-1": ["phone-1"]})

    report = stack.spawn(
        "sweeper", SWEEP, env=stack.env(SENDONCE_WHATSAPP_BUSINESS_ACCOUNTS=accounts)
    ).finish()

    assert report["templates_synced"] == {"waba-1": 1}
    assert report["template_sync_errors"] == {}


def test_sweeper_resend_policy_forgets_the_record(stack: LocalStack) -> None:
    enqueue(stack, "whatsapp", "15550000001", "hello")
    stack.provider.set_faults({"rules": [{"action": "server_error", "times": 1}]})
    assert stack.spawn("dispatcher", DISPATCH).finish()["counts"]["Ambiguous"] == 1
    key = only_key(stack)
    assert guard(stack).lookup(key).state is RecordState.COMPLETED
    outlive_claims(stack.db)  # a resend waits until the claiming invocation is surely gone

    env = stack.env(SENDONCE_UNKNOWN_POLICY_WHATSAPP="resend", SENDONCE_UNKNOWN_GRACE_SECONDS="0")
    report = stack.spawn("sweeper", SWEEP, env=env).finish()

    assert report["unknown_resent"] == 1
    assert statuses(stack) == {"pending": 1}
    assert guard(stack).lookup(key).state is RecordState.ABSENT


def test_sweeper_dead_letters_a_failed_message(stack: LocalStack) -> None:
    enqueue(stack, "messenger", "psid-1", "hello")
    stack.provider.set_faults({"rules": [{"action": "permanent"}]})
    assert stack.spawn("dispatcher", DISPATCH).finish()["counts"]["Failed"] == 1

    assert stack.spawn("sweeper", SWEEP).finish()["dead_lettered"] == 1

    assert stack.aws is not None
    sqs = aws_client("sqs", stack.moto.endpoint)
    received = sqs.receive_message(QueueUrl=stack.aws.failed_messages_queue_url, MaxNumberOfMessages=10)
    [record] = [json.loads(m["Body"]) for m in received["Messages"]]
    [row] = stack.db.fetch_all("SELECT contact_id FROM send_queue")
    assert (record["type"], record["contact_id"], record["idempotency_key"]) == (
        "sendonce.message_failed",
        str(row["contact_id"]),
        only_key(stack),
    )
    assert "psid-1" not in json.dumps(record), "failed-message records carry ids, not addresses"


def test_dispatcher_releases_its_own_record_when_every_write_answer_is_lost(stack: LocalStack) -> None:
    """DynamoDB commits the INPROGRESS write but every answer is lost: the dispatcher sends
    nothing, deletes its own record, and the next invocation sends the message once."""
    enqueue(stack, "whatsapp", "15550000002", "hello")
    with LossyProxy(stack.moto.endpoint) as lossy:
        lossy.lose_responses("PutItem", 2)
        env = stack.env(AWS_ENDPOINT_URL_DYNAMODB=lossy.endpoint, SENDONCE_DYNAMODB_MAX_ATTEMPTS="2")
        first = stack.spawn("dispatcher", DISPATCH, env=env).finish()
        assert lossy.dropped["PutItem"] == 2
        assert lossy.forwarded["DeleteItem"] == 1
    assert first["stopped_because"] == "idempotency store unavailable"
    assert stack.provider.ledger() == []
    assert guard(stack).lookup(only_key(stack)).state is RecordState.ABSENT

    assert stack.spawn("dispatcher", DISPATCH).finish()["counts"]["Sent"] == 1
    assert statuses(stack) == {"sent": 1}
    assert len(stack.provider.ledger()) == 1


@pytest.mark.parametrize(
    "event",
    sorted(EVENTS.glob("webhook-*.json")),
    ids=lambda p: p.name,
)
def test_webhook_sample_through_the_handler_process(stack: LocalStack, event: Path) -> None:
    """The webhook function reads the Meta app secret, the verify token or the Unipile
    secret, and the database URL, from Secrets Manager."""
    response = stack.spawn("webhook", event).finish()
    assert response["statusCode"] == 200, response
    if event.name.startswith("webhook-subscribe-"):
        assert response["body"] == json.loads(event.read_text())["queryStringParameters"]["hub.challenge"]
    else:
        assert json.loads(response["body"]) == {"stored": 1, "duplicates": 0}
