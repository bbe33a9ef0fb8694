"""The AWS clients the handlers build (shared/runtime.py), checked on the request they send."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.aws import FAKE_CREDENTIALS, REGION
from shared.config import Settings
from shared.runtime import AWS_USER_AGENT, dynamodb_client


class Captured(Exception):
    pass


def test_the_dynamodb_client_sends_the_fixed_user_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's default User-Agent is rebuilt from ~16 components for every request (a tenth
    of the client's CPU per message); the dispatcher's client sends a fixed one instead."""
    for name, value in {**FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    client = dynamodb_client(Settings())
    sent: list[str] = []

    def capture(request: Any, **_: Any) -> None:
        value = request.headers["User-Agent"]  # bytes once botocore has prepared the request
        sent.append(value.decode() if isinstance(value, bytes) else value)
        raise Captured  # nothing leaves the process

    client.meta.events.register_last("before-send.dynamodb", capture)
    with pytest.raises(Captured):
        client.get_item(TableName="sendonce-idempotency", Key={"id": {"S": "any"}})
    # Powertools appends its own marker (PT/...) to whatever User-Agent a client sends.
    assert len(sent) == 1 and sent[0].startswith(AWS_USER_AGENT + " ")
    assert "ua/2.1" not in sent[0], "botocore's default User-Agent builder ran"
