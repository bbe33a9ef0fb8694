"""The IAM recorder names the resources IAM checks, and only those."""

from __future__ import annotations

import pytest

from devstack.aws_calls import call_entry


def test_a_dynamodb_item_key_is_not_a_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEMPOTENCY_TABLE_NAME", "sendonce-idempotency")
    entry = call_entry(
        "sweeper",
        "dynamodb",
        "GetItem",
        {"TableName": "sendonce-idempotency", "Key": {"id": {"S": "sendonce-send#abc"}}},
    )
    assert entry["resources"] == {"TableName": "sendonce-idempotency"}
    assert "IDEMPOTENCY_TABLE_NAME" in entry["configured_by"]["TableName"]


def test_an_s3_object_key_is_part_of_the_resource() -> None:
    entry = call_entry("contacts", "s3", "GetObject", {"Bucket": "imports", "Key": "imports/a.csv"})
    assert entry["resources"] == {"Bucket": "imports", "Key": "imports/a.csv"}


def test_an_unlisted_service_names_no_resource() -> None:
    entry = call_entry("dispatcher", "cloudwatch", "PutMetricData", {"Namespace": "sendonce"})
    assert entry["resources"] == {}
