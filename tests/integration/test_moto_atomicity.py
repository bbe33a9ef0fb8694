"""The stand-in for DynamoDB must be as atomic as DynamoDB: of many conditional puts of one
key racing each other, exactly one succeeds. moto's own server evaluates the condition and
stores the item as separate steps; ``devstack.moto_server`` serialises request handling."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from botocore.config import Config as BotoConfig

from devstack.aws import LocalAwsResources, MotoServer, aws_client

pytestmark = pytest.mark.integration
RACERS = 16


def test_racing_conditional_puts_have_exactly_one_winner(
    aws: LocalAwsResources, moto_server: MotoServer
) -> None:
    client: Any = aws_client("dynamodb", moto_server.endpoint, config=BotoConfig(max_pool_connections=RACERS))
    for _ in range(30):
        key = uuid.uuid4().hex
        start = threading.Barrier(RACERS, timeout=30)
        winners: list[int] = []

        def race(
            n: int, key: str = key, start: threading.Barrier = start, winners: list[int] = winners
        ) -> None:
            start.wait()
            try:
                client.put_item(
                    TableName=aws.idempotency_table,
                    Item={"id": {"S": key}, "racer": {"N": str(n)}},
                    ConditionExpression="attribute_not_exists(id)",
                )
                winners.append(n)
            except client.exceptions.ConditionalCheckFailedException:
                pass

        threads = [threading.Thread(target=race, args=(n,)) for n in range(RACERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1, f"{len(winners)} conditional puts of one key succeeded"
