"""Which conditional-check failures the gate may take for its own earlier write."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from shared.idempotency import WRITER_ATTR, BlockingDynamoDBPersistenceLayer


@pytest.fixture
def layer() -> BlockingDynamoDBPersistenceLayer:
    # No request is made: the client only has to exist.
    client = boto3.client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    return BlockingDynamoDBPersistenceLayer(table_name="sendonce-idempotency", boto3_client=client)


def conditional_failure(item: dict[str, Any] | None) -> ClientError:
    response: dict[str, Any] = {"Error": {"Code": "ConditionalCheckFailedException", "Message": "failed"}}
    if item is not None:
        response["Item"] = item
    return ClientError(response, "PutItem")  # type: ignore[arg-type]


def record(writer: str, status: str) -> dict[str, Any]:
    return {"id": {"S": "k"}, "status": {"S": status}, WRITER_ATTR: {"S": writer}}


def test_own_inprogress_record_is_recognised(layer: BlockingDynamoDBPersistenceLayer) -> None:
    with layer.writing_as("me"):
        assert layer._is_own_inprogress(conditional_failure(record("me", "INPROGRESS")))


@pytest.mark.parametrize(
    ("item", "why"),
    [
        (record("rival", "INPROGRESS"), "a rival's record"),
        (record("me", "COMPLETED"), "a completed record proves a call"),
        ({"id": {"S": "k"}, "status": {"S": "INPROGRESS"}}, "a record with no writer"),
        (None, "no old item returned"),
    ],
    ids=["rival", "completed", "no-writer", "no-item"],
)
def test_anything_else_is_not_ours(
    layer: BlockingDynamoDBPersistenceLayer, item: dict[str, Any] | None, why: str
) -> None:
    with layer.writing_as("me"):
        assert not layer._is_own_inprogress(conditional_failure(item)), why


def test_outside_a_call_nothing_is_ours(layer: BlockingDynamoDBPersistenceLayer) -> None:
    assert not layer._is_own_inprogress(conditional_failure(record("me", "INPROGRESS")))
    assert not layer._is_own_inprogress(None)


def test_put_items_are_stamped_only_inside_a_call(layer: BlockingDynamoDBPersistenceLayer) -> None:
    outside: dict[str, Any] = {"TableName": "sendonce-idempotency", "Item": {}}
    layer._stamp_writer(outside)
    assert WRITER_ATTR not in outside["Item"]
    inside: dict[str, Any] = {"TableName": "sendonce-idempotency", "Item": {}}
    other_table: dict[str, Any] = {"TableName": "another-table", "Item": {}}
    with layer.writing_as("me"):
        layer._stamp_writer(inside)
        layer._stamp_writer(other_table)
    assert inside["Item"][WRITER_ATTR] == {"S": "me"}
    assert WRITER_ATTR not in other_table["Item"]
