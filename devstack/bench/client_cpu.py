"""Client CPU of the dispatcher's DynamoDB requests: ``python -m devstack.bench.client_cpu
[--pairs 300] [--rounds 3]``.

Against a moto server, one thread sends the idempotency record's two writes per message (a
conditional PutItem, then an UpdateItem, the shapes Powertools sends) through a client built
with ``shared.runtime.dynamodb_config``, with botocore's default User-Agent and with
``shared.runtime.AWS_USER_AGENT``, alternating, and reports the thread's CPU per pair
(``time.thread_time``: the server's work is in its own process and not counted).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import boto3

from devstack.aws import FAKE_CREDENTIALS, REGION, MotoServer
from shared.config import Settings
from shared.runtime import AWS_USER_AGENT, dynamodb_config

TABLE = "client-cpu"


def _client(endpoint: str, user_agent: str | None) -> Any:
    """The dispatcher's DynamoDB configuration (``shared.runtime.dynamodb_config``), unwrapped
    from its call budget (the helper thread's CPU would not be this thread's)."""
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=dynamodb_config(Settings(), user_agent=user_agent),
    )


def _pair(client: Any) -> None:
    key = uuid.uuid4().hex
    client.put_item(
        TableName=TABLE,
        Item={"id": {"S": key}, "status": {"S": "INPROGRESS"}, "expiration": {"N": "4102444800"}},
        ConditionExpression="attribute_not_exists(#id) OR #expiry < :now",
        ExpressionAttributeNames={"#id": "id", "#expiry": "expiration"},
        ExpressionAttributeValues={":now": {"N": "1"}},
    )
    client.update_item(
        TableName=TABLE,
        Key={"id": {"S": key}},
        UpdateExpression="SET #status = :status, #data = :data",
        ExpressionAttributeNames={"#status": "status", "#data": "data"},
        ExpressionAttributeValues={":status": {"S": "COMPLETED"}, ":data": {"S": "x" * 200}},
    )


def cpu_ms_per_pair(client: Any, pairs: int) -> float:
    started = time.thread_time()
    for _ in range(pairs):
        _pair(client)
    return (time.thread_time() - started) * 1000 / pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with MotoServer() as moto:
        clients = {
            "botocore default": _client(moto.endpoint, None),
            "AWS_USER_AGENT": _client(moto.endpoint, AWS_USER_AGENT),
        }
        clients["botocore default"].create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for client in clients.values():
            cpu_ms_per_pair(client, 30)  # connections, endpoint resolution, caches
        figures: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, client in clients.items():
                figures[name].append(cpu_ms_per_pair(client, args.pairs))
    for name, values in figures.items():
        print(
            f"{name:>16}: {statistics.median(values):.2f} ms of client CPU per put+update (rounds: "
            + ", ".join(f"{v:.2f}" for v in values)
            + ")"
        )
    default, fixed = (statistics.median(figures[n]) for n in ("botocore default", "AWS_USER_AGENT"))
    print(f"fixed User-Agent / default: {fixed / default:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
