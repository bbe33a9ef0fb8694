"""`make demo` is the README's main command: its run must pass, and its verdict must fail when
a message reached the provider twice or a row was left unsettled."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack import demo
from devstack.stack import LocalStack
from devstack.testing import TEST_TOKENS, enqueue_contacts
from shared.providers.outcome import Channel, OutboundMessage
from shared.providers.registry import build_adapters
from shared.providers.secrets import StaticTokenSource
from tests.chaos.demo_run import DemoRun

pytestmark = pytest.mark.chaos


def test_the_demo_runs_end_to_end_and_passes_its_verdict(demo_run: DemoRun) -> None:
    # The run is shared with the log test (tests/chaos/conftest.py): one demo, two verdicts.
    assert demo_run.returncode == 0, demo_run.tail()
    assert "verdict: every message reached its recipient at most once" in demo_run.stdout, demo_run.tail()


@pytest.fixture
def stack(pg_server: Any) -> Iterator[LocalStack]:
    with LocalStack(database_url=pg_server.admin_url) as running:
        yield running


def test_verdict_fails_on_an_unsettled_row(stack: LocalStack) -> None:
    enqueue_contacts(stack.db, "whatsapp", ["15550000001"])
    assert demo.verdict(stack) is False


def test_verdict_fails_when_the_provider_accepted_a_message_twice(stack: LocalStack) -> None:
    assert stack.settings is not None
    message = OutboundMessage(
        queue_id=1,
        idempotency_key="so1-" + "b" * 64,
        channel=Channel.WHATSAPP,
        sender_account_id=uuid.uuid4(),
        sender_provider_id="1",
        recipient="15550000002",
        body="twice",
        message_type="intro",
    )
    with httpx.Client() as client:
        adapter = build_adapters(stack.settings, client, StaticTokenSource(TEST_TOKENS))[Channel.WHATSAPP]
        for _ in range(2):  # around the gate, on purpose: the duplicate the verdict must catch
            assert adapter.send(message).kind == "sent"
    assert demo.verdict(stack) is False
