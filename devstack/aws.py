"""moto standing in for AWS on loopback: a moto server process (shared by every dispatcher
process, unlike in-process ``mock_aws``) and the resources template.yaml would create."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from devstack.postgres import free_port
from devstack.service import Service

REGION = "us-east-1"
# moto accepts any credentials; these keep boto3 from looking for real ones.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}

TEST_SECRETS: Mapping[str, str] = {
    "whatsapp_token_secret_id": "test-whatsapp-token",
    "messenger_token_secret_id": "test-messenger-token",
    "unipile_api_key_secret_id": "test-unipile-key",
    "meta_app_secret_id": "test-meta-app-secret",
    "meta_verify_token_secret_id": "test-meta-verify-token",
    "unipile_webhook_secret_id": "test-unipile-webhook-secret",
}


def wait_for_port(
    port: int, timeout_seconds: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Until something listens on the port. Given the ``process`` that should, a process that
    exited fails at once, so ``timeout_seconds`` can be generous enough for a busy machine."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited ({process.returncode}) before listening on {port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_seconds}s")


@dataclass
class MotoServer(Service):
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> MotoServer:
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [sys.executable, "-m", "devstack.moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **FAKE_CREDENTIALS},
        )
        # About a second when idle; a loaded machine may take many times that. A moto that
        # died is reported at once instead.
        wait_for_port(self.port, timeout_seconds=300, process=self._process)
        return self

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None


def aws_client(service: str, endpoint: str | None, config: BotoConfig | None = None) -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        config=config,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token="testing",
    )


@dataclass(frozen=True)
class LocalAwsResources:
    idempotency_table: str
    failed_messages_queue_url: str
    secret_ids: dict[str, str]


def secret_name(prefix: str, field_name: str) -> str:
    """The secret a ``*_secret_id`` setting names in a stack with this prefix."""
    return f"{prefix}/{field_name.removesuffix('_secret_id').replace('_', '-')}"


def provision(endpoint: str | None, prefix: str = "sendonce") -> LocalAwsResources:
    """Create what template.yaml creates: the idempotency table (Powertools layout, TTL on
    ``expiration``), the failed-messages queue and the provider secrets."""
    dynamodb = aws_client("dynamodb", endpoint)
    table = f"{prefix}-idempotency"
    existing = dynamodb.list_tables()["TableNames"]
    if table not in existing:
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
        )
    sqs = aws_client("sqs", endpoint)
    queue_url = sqs.create_queue(QueueName=f"{prefix}-failed-messages")["QueueUrl"]
    secret_ids = {
        field_name: put_secret(endpoint, secret_name(prefix, field_name), value)
        for field_name, value in TEST_SECRETS.items()
    }
    return LocalAwsResources(table, queue_url, secret_ids)


def put_secret(endpoint: str | None, name: str, value: str) -> str:
    """Create (or overwrite) a secret and return its id."""
    secrets = aws_client("secretsmanager", endpoint)
    try:
        secrets.create_secret(Name=name, SecretString=value)
    except secrets.exceptions.ResourceExistsException:
        secrets.put_secret_value(SecretId=name, SecretString=value)
    return name


def settings_env(resources: LocalAwsResources) -> dict[str, str]:
    """The SENDONCE_* variables a function needs to use these resources."""
    env = {
        "SENDONCE_IDEMPOTENCY_TABLE": resources.idempotency_table,
        "SENDONCE_FAILED_MESSAGES_QUEUE_URL": resources.failed_messages_queue_url,
    }
    for field_name, secret_id in resources.secret_ids.items():
        env[f"SENDONCE_{field_name.upper()}"] = secret_id
    return env
