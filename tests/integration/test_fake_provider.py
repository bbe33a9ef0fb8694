"""The adapters over real HTTP against the fake provider on 127.0.0.1: every fault action gives
the outcome a client must see, and the fake's ledger says what was really accepted."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.fake_provider import FakeProvider, FakeProviderClient, FaultConfig
from shared.channels.unipile.read_back import ReadBackError, UnipileReadBack
from shared.config import Settings
from shared.providers.http import HttpAdapter
from shared.providers.outcome import Channel, OutboundMessage, OutcomeKind, ProviderAdapter
from shared.providers.registry import build_adapters, build_read_backs, make_http_client
from shared.providers.secrets import StaticTokenSource

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SPEC = Path("/work/shared/reference/whatsapp-cloud-api-openapi-v23.0.yaml")
TOKENS = {
    "whatsapp": "test-whatsapp-token",
    "messenger": "test-messenger-token",
    "linkedin": "test-unipile-key",
}
SENDERS = {
    Channel.WHATSAPP: "106540352242922",
    Channel.MESSENGER: "page-1",
    Channel.LINKEDIN: "unipile-acct-1",
}
CHANNELS = list(Channel)
# How long a wait gives up after: a hang guard, never reached when the code under test is
# right, however busy the machine is.
HANG_GUARD_SECONDS = 300


# The session's fake provider and control client (tests/conftest.py), under shorter names.
@pytest.fixture
def fake(fake_provider: FakeProvider) -> FakeProvider:
    return fake_provider


@pytest.fixture
def control(fake_client: FakeProviderClient) -> FakeProviderClient:
    return fake_client


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "graph_api_base_url": url,
        "unipile_base_url": url,
        "provider_connect_timeout_seconds": 2.0,
        "provider_read_timeout_seconds": 5.0,
        "dispatcher_timeout_seconds": 900,  # room for the long read timeouts some tests use
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.fixture
def client(fake: FakeProvider) -> Iterator[httpx.Client]:
    with make_http_client(settings_for(fake.url, send_concurrency=64)) as http:
        yield http


@pytest.fixture
def adapters(fake: FakeProvider, client: httpx.Client) -> dict[Channel, ProviderAdapter]:
    return build_adapters(settings_for(fake.url), client, StaticTokenSource(TOKENS))


@pytest.fixture
def impatient(fake: FakeProvider) -> Iterator[dict[Channel, ProviderAdapter]]:
    """Adapters whose read timeout is far shorter than the fake's hold."""
    settings = settings_for(fake.url, provider_read_timeout_seconds=0.5)
    with make_http_client(settings) as http:
        yield build_adapters(settings, http, StaticTokenSource(TOKENS))


@pytest.fixture
def patient(fake: FakeProvider) -> Iterator[dict[Channel, ProviderAdapter]]:
    """Adapters with the longest timeouts Settings allows, for tests about what the fake
    accepts rather than how fast: on a busy machine a short timeout would turn a slow answer
    into an ambiguous outcome."""
    settings = settings_for(
        fake.url,
        provider_connect_timeout_seconds=30.0,
        provider_read_timeout_seconds=60.0,
        send_concurrency=64,
    )
    with make_http_client(settings) as http:
        yield build_adapters(settings, http, StaticTokenSource(TOKENS))


def message(
    channel: Channel, recipient: str = "15550100001", body: str = "hello", sender: str | None = None
) -> OutboundMessage:
    return OutboundMessage(
        queue_id=1,
        idempotency_key=f"idem-{uuid.uuid4().hex}",
        channel=channel,
        sender_account_id=uuid.uuid4(),
        sender_provider_id=sender or SENDERS[channel],
        recipient=recipient,
        body=body,
        message_type="intro",
    )


@pytest.mark.parametrize("channel", CHANNELS)
def test_sent_is_recorded_with_its_correlation(
    channel: Channel, fake: FakeProvider, adapters: dict[Channel, ProviderAdapter]
) -> None:
    sent = message(channel)
    outcome = adapters[channel].send(sent)
    assert outcome.kind is OutcomeKind.SENT
    [entry] = fake.ledger()
    assert entry["channel"] == channel.value
    assert entry["sender_id"] == SENDERS[channel]
    assert (entry["recipient"], entry["text"]) == (sent.recipient, sent.body)
    assert entry["provider_message_id"] == outcome.provider_message_id
    assert entry["fault"] is None
    if channel is Channel.LINKEDIN:
        assert entry["correlation"] is None
        assert entry["thread_id"] == outcome.provider_thread_id is not None
    else:
        assert entry["correlation"] == sent.idempotency_key
    prefix = {Channel.WHATSAPP: "wamid.", Channel.MESSENGER: "m_", Channel.LINKEDIN: ""}[channel]
    assert entry["provider_message_id"].startswith(prefix)


REJECTING = [
    (
        "rate_limit",
        OutcomeKind.RETRY_LATER,
        {
            "whatsapp": "whatsapp:130429",
            "messenger": "messenger:613",
            "linkedin": "unipile:too_many_requests",
        },
    ),
    (
        "server_error",
        OutcomeKind.AMBIGUOUS,
        {"whatsapp": "whatsapp:131000", "messenger": "messenger:2", "linkedin": "unipile:unexpected_error"},
    ),
    (
        "permanent",
        OutcomeKind.PERMANENT,
        {
            "whatsapp": "whatsapp:131026",
            "messenger": "messenger:551",
            "linkedin": "unipile:no_connection_with_recipient",
        },
    ),
    (
        "sender_blocked",
        OutcomeKind.SENDER_BLOCKED,
        {
            "whatsapp": "whatsapp:131048",
            "messenger": "messenger:190",
            "linkedin": "unipile:account_restricted",
        },
    ),
]


@pytest.mark.parametrize(("action", "kind", "reasons"), REJECTING, ids=[r[0] for r in REJECTING])
@pytest.mark.parametrize("channel", CHANNELS)
def test_rejecting_faults_record_nothing(
    channel: Channel,
    action: str,
    kind: OutcomeKind,
    reasons: dict[str, str],
    fake: FakeProvider,
    adapters: dict[Channel, ProviderAdapter],
) -> None:
    fake.set_faults([{"action": action}])
    outcome = adapters[channel].send(message(channel))
    assert (outcome.kind, outcome.reason) == (kind, reasons[channel.value])
    assert fake.ledger() == []
    stats = fake.stats()
    assert (stats["requests_total"], stats["requests_rejected"], stats["faults_fired"]) == (1, 1, {action: 1})


@pytest.mark.parametrize("status", [503, 504])
@pytest.mark.parametrize("channel", CHANNELS)
def test_other_server_errors_are_ambiguous(
    channel: Channel, status: int, fake: FakeProvider, adapters: dict[Channel, ProviderAdapter]
) -> None:
    fake.set_faults([{"action": "server_error", "status": status}])
    assert adapters[channel].send(message(channel)).kind is OutcomeKind.AMBIGUOUS


@pytest.mark.parametrize("channel", CHANNELS)
def test_accept_then_5xx_is_ambiguous_but_was_sent(
    channel: Channel, fake: FakeProvider, adapters: dict[Channel, ProviderAdapter]
) -> None:
    fake.set_faults([{"action": "accept_then_5xx"}])
    outcome = adapters[channel].send(message(channel))
    assert (outcome.kind, outcome.http_status) == (OutcomeKind.AMBIGUOUS, 500)
    assert [e["fault"] for e in fake.ledger()] == ["accept_then_5xx"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_accept_then_drop_is_ambiguous_but_was_sent(
    channel: Channel, fake: FakeProvider, adapters: dict[Channel, ProviderAdapter]
) -> None:
    fake.set_faults([{"action": "accept_then_drop"}])
    outcome = adapters[channel].send(message(channel))
    assert outcome.kind is OutcomeKind.AMBIGUOUS
    assert outcome.reason.startswith("network:")
    assert [e["fault"] for e in fake.ledger()] == ["accept_then_drop"]
    # The pooled connection it used is gone; the next send dials anew and succeeds.
    fake.set_faults({})
    assert adapters[channel].send(message(channel)).kind is OutcomeKind.SENT


@pytest.mark.parametrize("channel", CHANNELS)
def test_accept_then_timeout_is_ambiguous_but_was_sent(
    channel: Channel, fake: FakeProvider, impatient: dict[Channel, ProviderAdapter]
) -> None:
    # Held far past the 0.5 s read timeout, so the client gives up first however slow the
    # machine is; the fake's stop() ends the hold.
    fake.set_faults([{"action": "accept_then_timeout", "hold_ms": 600_000}])
    outcome = impatient[channel].send(message(channel))
    assert (outcome.kind, outcome.reason) == (OutcomeKind.AMBIGUOUS, "network:read_timeout")
    assert [e["fault"] for e in fake.ledger()] == ["accept_then_timeout"]


def test_latency_past_the_read_timeout_is_ambiguous_and_lands_later(
    fake: FakeProvider, control: FakeProviderClient, impatient: dict[Channel, ProviderAdapter]
) -> None:
    fake.set_faults({"latency_ms": 3000})  # six times the read timeout: the client gives up first
    outcome = impatient[Channel.WHATSAPP].send(message(Channel.WHATSAPP))
    assert outcome.kind is OutcomeKind.AMBIGUOUS
    # The fake finishes processing after the client gave up: exactly the ambiguous case.
    [entry] = control.wait_for_ledger(1, timeout_seconds=HANG_GUARD_SECONDS)
    assert entry["fault"] is None


def test_latency_rules_add_up_and_do_not_decide(
    fake: FakeProvider, adapters: dict[Channel, ProviderAdapter]
) -> None:
    fake.set_faults([{"action": "latency", "ms": 5}, {"action": "latency", "latency_ms": 5}])
    assert adapters[Channel.MESSENGER].send(message(Channel.MESSENGER)).kind is OutcomeKind.SENT
    assert fake.stats()["faults_fired"] == {"latency": 2}


def test_rules_match_times_and_order(fake: FakeProvider, adapters: dict[Channel, ProviderAdapter]) -> None:
    fake.set_faults(
        [
            {"action": "permanent", "match": {"channel": "whatsapp", "recipient": "15550000009"}},
            {"action": "rate_limit", "times": 2, "match": {"channel": "whatsapp"}},
        ]
    )
    wa = adapters[Channel.WHATSAPP]
    kinds = [wa.send(message(Channel.WHATSAPP, "15550000001")).kind for _ in range(3)]
    assert kinds == [OutcomeKind.RETRY_LATER, OutcomeKind.RETRY_LATER, OutcomeKind.SENT]
    assert wa.send(message(Channel.WHATSAPP, "15550000009")).kind is OutcomeKind.PERMANENT
    assert adapters[Channel.MESSENGER].send(message(Channel.MESSENGER)).kind is OutcomeKind.SENT


def test_match_by_sender_and_recipient_list(
    fake: FakeProvider, adapters: dict[Channel, ProviderAdapter]
) -> None:
    fake.set_faults([{"action": "sender_blocked", "match": {"sender": "page-2", "recipient": ["a", "b"]}}])
    ms = adapters[Channel.MESSENGER]
    assert ms.send(message(Channel.MESSENGER, "a", sender="page-2")).kind is OutcomeKind.SENDER_BLOCKED
    assert ms.send(message(Channel.MESSENGER, "b", sender="page-2")).kind is OutcomeKind.SENDER_BLOCKED
    assert ms.send(message(Channel.MESSENGER, "c", sender="page-2")).kind is OutcomeKind.SENT
    assert ms.send(message(Channel.MESSENGER, "a", sender="page-1")).kind is OutcomeKind.SENT


def test_probability_is_reproducible_with_a_seed(
    fake: FakeProvider, adapters: dict[Channel, ProviderAdapter]
) -> None:
    def run() -> list[OutcomeKind]:
        fake.reset()
        fake.set_faults({"seed": 1234, "rules": [{"action": "rate_limit", "probability": 0.5}]})
        return [adapters[Channel.LINKEDIN].send(message(Channel.LINKEDIN, f"r{i}")).kind for i in range(20)]

    first = run()
    assert first == run()
    assert set(first) == {OutcomeKind.SENT, OutcomeKind.RETRY_LATER}


def test_per_sender_rate_limiter(fake: FakeProvider, adapters: dict[Channel, ProviderAdapter]) -> None:
    # A refill this slow is never reached during the test: exactly `burst` sends pass.
    fake.set_faults([{"action": "rate_limit", "per_sender_per_second": 0.0001, "burst": 2}])
    for channel in CHANNELS:
        kinds = Counter(adapters[channel].send(message(channel, f"r{i}")).kind for i in range(5))
        assert kinds == {OutcomeKind.SENT: 2, OutcomeKind.RETRY_LATER: 3}, channel
        other_sender = adapters[channel].send(message(channel, "r9", sender="another-sender"))
        assert other_sender.kind is OutcomeKind.SENT
    assert len(fake.ledger()) == 9


def test_unipile_rate_limit_carries_retry_after(
    fake: FakeProvider, adapters: dict[Channel, ProviderAdapter]
) -> None:
    fake.set_faults([{"action": "rate_limit", "retry_after_seconds": 7}])
    assert adapters[Channel.LINKEDIN].send(message(Channel.LINKEDIN)).retry_after_seconds == 7
    fake.set_faults([{"action": "rate_limit", "retry_after_seconds": None}])
    assert adapters[Channel.LINKEDIN].send(message(Channel.LINKEDIN)).retry_after_seconds == 120


@pytest.mark.parametrize("channel", CHANNELS)
def test_wrong_credentials_pause_the_sender(
    channel: Channel, fake: FakeProvider, client: httpx.Client
) -> None:
    wrong = StaticTokenSource({name: "not-the-right-token" for name in TOKENS})
    adapter = build_adapters(settings_for(fake.url), client, wrong)[channel]
    outcome = adapter.send(message(channel))
    assert outcome.kind is OutcomeKind.SENDER_BLOCKED
    assert outcome.http_status == 401 or outcome.reason == "messenger:190"
    assert fake.ledger() == []
    assert fake.stats()["requests_unauthorized"] == 1


def test_invalid_requests_are_rejected_in_the_provider_shape(fake: FakeProvider) -> None:
    with httpx.Client(base_url=fake.url) as http:
        auth = {"Authorization": "Bearer test-whatsapp-token"}
        wa = http.post("/v23.0/1/messages", headers=auth, json={"messaging_product": "whatsapp", "to": "1"})
        assert (wa.status_code, wa.json()["error"]["code"]) == (400, 100)
        form = http.post(
            "/api/v1/chats",
            headers={"X-API-KEY": "test-unipile-key"},
            data={"account_id": "a", "text": "t", "attendees_ids": "x"},
        )
        assert (form.status_code, form.json()["type"]) == (400, "errors/invalid_parameters")
        missing = http.post("/api/v1/chats", files=[("account_id", (None, "a"))])
        assert (missing.status_code, missing.json()["type"]) == (401, "errors/missing_credentials")
    assert fake.ledger() == []
    assert fake.stats()["requests_invalid"] == 2


def test_unipile_read_back(
    fake: FakeProvider, client: httpx.Client, adapters: dict[Channel, ProviderAdapter]
) -> None:
    linkedin = adapters[Channel.LINKEDIN]
    since = datetime.now(UTC) - timedelta(seconds=1)  # read-back looks for sends after this
    first = linkedin.send(message(Channel.LINKEDIN, "ACoAA1", "first"))
    second = linkedin.send(message(Channel.LINKEDIN, "ACoAA1", "second"))
    assert first.provider_thread_id == second.provider_thread_id is not None
    with httpx.Client(base_url=fake.url, headers={"X-API-KEY": "test-unipile-key"}) as http:
        listed = http.get(f"/api/v1/chats/{first.provider_thread_id}/messages").json()
        assert http.get("/api/v1/chats/nope/messages").status_code == 404
    assert [(i["id"], i["text"], i["is_sender"]) for i in listed["items"]] == [
        (second.provider_message_id, "second", 1),
        (first.provider_message_id, "first", 1),
    ]

    reader = build_read_backs(settings_for(fake.url), client, StaticTokenSource(TOKENS))[Channel.LINKEDIN]
    assert isinstance(reader, UnipileReadBack)
    assert first.provider_thread_id is not None
    found = reader.find_sent(
        message(Channel.LINKEDIN, "ACoAA1", "first"), first.provider_thread_id, not_before=since
    )
    assert [f.provider_message_id for f in found] == [first.provider_message_id]
    never = message(Channel.LINKEDIN, "ACoAA1", "never sent")
    assert reader.find_sent(never, first.provider_thread_id, not_before=since) == []
    with pytest.raises(ReadBackError):
        reader.find_sent(message(Channel.LINKEDIN, "ACoAA1", "first"), "unknown-chat", not_before=since)


def test_hand_typed_chat_messages_show_in_read_back_by_date_but_not_in_the_ledger(
    fake: FakeProvider, control: FakeProviderClient, adapters: dict[Channel, ProviderAdapter]
) -> None:
    sent = adapters[Channel.LINKEDIN].send(message(Channel.LINKEDIN, "ACoAA1", "by the API"))
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    typed = control.add_chat_message(SENDERS[Channel.LINKEDIN], "ACoAA1", "by hand", timestamp=two_days_ago)
    reply = fake.add_chat_message(SENDERS[Channel.LINKEDIN], "ACoAA1", "their reply", is_sender=False)
    assert typed["thread_id"] == reply["thread_id"] == sent.provider_thread_id
    assert datetime.fromisoformat(typed["timestamp"]) == two_days_ago
    with httpx.Client(base_url=fake.url, headers={"X-API-KEY": "test-unipile-key"}) as http:
        items = http.get(f"/api/v1/chats/{sent.provider_thread_id}/messages").json()["items"]
        assert http.post("/_fake/chat_messages", json={"text": "no chat"}).status_code == 400
        naive = {"account_id": "a", "attendee_id": "b", "text": "t", "timestamp": "2025-01-01T00:00:00"}
        assert http.post("/_fake/chat_messages", json=naive).status_code == 400
    # Most recent first, by date, whatever the order they were added in.
    assert [(i["text"], i["is_sender"]) for i in items] == [
        ("their reply", 0),
        ("by the API", 1),
        ("by hand", 1),
    ]
    assert [e["text"] for e in fake.ledger()] == ["by the API"]


@pytest.mark.parametrize(
    ("channel", "code", "status", "reason"),
    [
        (Channel.WHATSAPP, 1, 400, "whatsapp:1"),
        (Channel.WHATSAPP, 131026, 400, "whatsapp:131026"),
        (Channel.MESSENGER, 987654, 403, "messenger:987654"),
        (Channel.LINKEDIN, "some_new_type", 422, "unipile:some_new_type"),
        (Channel.LINKEDIN, "too_many_requests", 429, "unipile:too_many_requests"),
    ],
)
def test_error_code_fault_answers_any_provider_error(
    channel: Channel,
    code: int | str,
    status: int,
    reason: str,
    fake: FakeProvider,
    adapters: dict[Channel, ProviderAdapter],
) -> None:
    fake.set_faults([{"action": "error_code", "code": code, "error_status": status}])
    outcome = adapters[channel].send(message(channel))
    assert (outcome.reason, outcome.http_status) == (reason, status)
    assert fake.ledger() == []
    assert fake.stats()["faults_fired"] == {"error_code": 1}
    with pytest.raises(ValueError, match="needs a code"):
        fake.set_faults([{"action": "error_code"}])


def test_control_client(
    fake: FakeProvider, control: FakeProviderClient, adapters: dict[Channel, ProviderAdapter]
) -> None:
    assert control.health()
    applied = control.set_faults(
        {"latency_ms": 1, "rules": [{"action": "permanent", "match": {"recipient": "x"}}]}
    )
    assert control.faults() == applied == fake.faults()
    for channel in CHANNELS:
        adapters[channel].send(message(channel, "same", "dup"))
        adapters[channel].send(message(channel, "same", "dup"))
        adapters[channel].send(message(channel, "x", "refused"))
    assert control.counts_per_recipient() == {(c.value, "same"): 2 for c in CHANNELS}
    assert control.counts_per_message() == {(c.value, "same", "dup"): 2 for c in CHANNELS}
    stats = control.stats()
    assert (
        stats["accepted_total"],
        stats["duplicates"],
        stats["requests_total"],
        stats["requests_rejected"],
    ) == (6, 3, 9, 3)
    assert {(m["channel"], m["count"]) for m in stats["per_message"]} == {(c.value, 2) for c in CHANNELS}
    assert len(control.ledger()) == 6

    with httpx.Client(base_url=fake.url) as http:
        bad = http.post("/_fake/faults", json={"rules": [{"action": "explode"}]})
        assert bad.status_code == 400
    with pytest.raises(ValueError):
        control.set_faults([{"action": "latency", "unknown_field": 1}])
    control.set_faults({})
    assert control.faults() == FaultConfig()
    control.reset()
    assert control.ledger() == [] and control.stats()["requests_total"] == 0


def test_many_concurrent_connections(fake: FakeProvider, patient: dict[Channel, ProviderAdapter]) -> None:
    fake.set_faults({"latency_ms": 20})
    outcomes: list[OutcomeKind] = []
    lock = threading.Lock()
    start = threading.Barrier(64, timeout=HANG_GUARD_SECONDS)

    def worker(n: int) -> None:
        start.wait()
        channel = CHANNELS[n % 3]
        for i in range(10):
            kind = patient[channel].send(message(channel, f"r{n}-{i}")).kind
            with lock:
                outcomes.append(kind)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(outcomes) == {OutcomeKind.SENT: 640}
    assert len({m["provider_message_id"] for m in fake.ledger()}) == 640


_CLIENT_PROCESS = textwrap.dedent(
    """
    import sys, uuid
    from shared.config import Settings
    from shared.providers.outcome import Channel, OutboundMessage
    from shared.providers.registry import build_adapters, make_http_client
    from shared.providers.secrets import StaticTokenSource

    url, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # Timeouts as long as Settings allows: a busy machine answers slowly, and this is about
    # what the fake accepts from many processes, not how fast.
    settings = Settings(graph_api_base_url=url, unipile_base_url=url, send_concurrency=8,
                        provider_connect_timeout_seconds=30, provider_read_timeout_seconds=60,
                        dispatcher_timeout_seconds=900)
    tokens = {"whatsapp": "test-whatsapp-token", "messenger": "test-messenger-token",
              "linkedin": "test-unipile-key"}
    with make_http_client(settings) as client:
        adapters = build_adapters(settings, client, StaticTokenSource(tokens))
        kinds = []
        for i in range(count):
            channel = list(Channel)[i % 3]
            message = OutboundMessage(
                queue_id=i, idempotency_key=uuid.uuid4().hex, channel=channel,
                sender_account_id=uuid.uuid4(), sender_provider_id=f"sender-{worker}",
                recipient=f"w{worker}-r{i}", body="hi", message_type="intro")
            kinds.append(adapters[channel].send(message).kind.value)
    print(",".join(sorted(set(kinds))))
    """
)


def test_clients_in_eight_processes(fake: FakeProvider) -> None:
    per_process = 150
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLIENT_PROCESS, fake.url, str(n), str(per_process)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    results = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0] * 8, [err for _, err in results]
    assert [out.strip() for out, _ in results] == ["sent"] * 8
    ledger = fake.ledger()
    assert len(ledger) == 8 * per_process
    assert max(Counter((m["channel"], m["recipient"]) for m in ledger).values()) == 1


def test_stop_releases_held_requests() -> None:
    with FakeProvider() as fake:
        fake.set_faults([{"action": "accept_then_timeout", "hold_ms": 600_000}])
        settings = settings_for(fake.url, provider_read_timeout_seconds=30.0)
        outcomes: list[OutcomeKind] = []
        with make_http_client(settings) as http:
            adapter = build_adapters(settings, http, StaticTokenSource(TOKENS))[Channel.WHATSAPP]
            sender = threading.Thread(
                target=lambda: outcomes.append(adapter.send(message(Channel.WHATSAPP)).kind)
            )
            sender.start()
            FakeProviderClient(fake.url).wait_for_ledger(1, timeout_seconds=HANG_GUARD_SECONDS)
            fake.stop()
            sender.join(timeout=120)
        assert outcomes == [OutcomeKind.AMBIGUOUS]


def test_only_loopback() -> None:
    for host in ("0.0.0.0", "10.1.2.3", "example.com", ""):  # noqa: S104
        with pytest.raises(ValueError, match="loopback"):
            FakeProvider(host=host)


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.fake_provider",
            "--port",
            "0",
            "--token-whatsapp",
            "cli-token",
            "--faults",
            json.dumps({"rules": [{"action": "permanent", "match": {"recipient": "refused"}}]}),
            "--ready-file",
            str(ready),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while not ready.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the fake never became ready"
            time.sleep(0.05)
        url = ready.read_text().strip()
        assert url.startswith("http://127.0.0.1:")
        settings = settings_for(url)
        with make_http_client(settings) as http:
            adapters = build_adapters(settings, http, StaticTokenSource({**TOKENS, "whatsapp": "cli-token"}))
            assert adapters[Channel.WHATSAPP].send(message(Channel.WHATSAPP)).kind is OutcomeKind.SENT
            refused = adapters[Channel.WHATSAPP].send(message(Channel.WHATSAPP, "refused"))
            assert refused.kind is OutcomeKind.PERMANENT
        assert len(FakeProviderClient(url).ledger()) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.strip() == url


def test_cli_refuses_a_public_address() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack.fake_provider", "--host", "0.0.0.0"],  # noqa: S104
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ},
    )
    assert result.returncode != 0
    assert "loopback" in result.stderr


def test_adapter_is_an_http_adapter(adapters: dict[Channel, ProviderAdapter]) -> None:
    assert all(isinstance(a, HttpAdapter) for a in adapters.values())


def test_whatsapp_response_matches_the_openapi_spec(
    fake: FakeProvider, adapters: dict[Channel, ProviderAdapter]
) -> None:
    yaml = pytest.importorskip("yaml")
    jsonschema = pytest.importorskip("jsonschema")
    if not SPEC.exists():
        pytest.skip("the WhatsApp OpenAPI spec is not available")
    with SPEC.open() as handle:
        spec = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": copy.deepcopy(spec["components"]),
        "$ref": "#/components/schemas/MessageResponsePayload",
    }
    body = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15550100001",
        "type": "text",
        "text": {"body": "spec check"},
    }
    with httpx.Client(base_url=fake.url, headers={"Authorization": "Bearer test-whatsapp-token"}) as http:
        response = http.post("/v23.0/106540352242922/messages", json=body)
    assert response.status_code == 200
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(response.json())) == []
