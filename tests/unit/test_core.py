"""Unit tests of the pure parts: state machine, retry policy, settings, events, models."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import Settings
from shared.enqueue import InvalidAddressError, normalise_address
from shared.events import DispatchRequest, EnqueueRequest, InvalidEventError, SweepRequest, parse_event
from shared.observability import Metric, Stage, Tally
from shared.providers.outcome import PROVABLY_NOT_SENT, Channel, OutcomeKind, SendOutcome
from shared.queue import (
    ALLOWED_TRANSITIONS,
    IllegalTransitionError,
    QueueStatus,
    RetryPolicy,
    check_transition,
    interleave_by_sender,
)

EVENTS = Path(__file__).resolve().parents[2] / "events"


# --- state machine --------------------------------------------------------------------------


def test_nothing_leaves_sent() -> None:
    assert not [t for t in ALLOWED_TRANSITIONS if t[0] is QueueStatus.SENT]


def test_only_sending_rows_can_become_sent_and_only_a_heard_claim_skips_to_unknown() -> None:
    into_sent = {s for s, t in ALLOWED_TRANSITIONS if t is QueueStatus.SENT}
    assert into_sent <= {QueueStatus.SENDING, QueueStatus.UNKNOWN}
    into_unknown = {s for s, t in ALLOWED_TRANSITIONS if t is QueueStatus.UNKNOWN}
    # CLAIMED -> UNKNOWN: mark_sending found a webhook for an earlier attempt (no call made).
    assert into_unknown == {QueueStatus.SENDING, QueueStatus.CLAIMED}


def test_pending_is_never_skipped_to_sending() -> None:
    with pytest.raises(IllegalTransitionError):
        check_transition(QueueStatus.PENDING, QueueStatus.SENDING)
    with pytest.raises(IllegalTransitionError):
        check_transition(QueueStatus.SENT, QueueStatus.PENDING)
    check_transition(QueueStatus.CLAIMED, QueueStatus.SENDING)


def test_only_provably_unsent_outcomes_may_lead_to_another_call() -> None:
    assert {OutcomeKind.RETRY_LATER, OutcomeKind.SENDER_BLOCKED, OutcomeKind.PERMANENT} == PROVABLY_NOT_SENT
    assert not SendOutcome.ambiguous("x").provably_not_sent
    assert not SendOutcome.sent("m").provably_not_sent
    assert SendOutcome.retry_later(None, "x").provably_not_sent


# --- retry policy --------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 10, 40])
def test_backoff_grows_with_jitter_and_respects_the_cap(attempts: int) -> None:
    policy = RetryPolicy(base_seconds=30, cap_seconds=3600)
    rng = random.Random(attempts)
    delays = [policy.delay_seconds(attempts, rng=rng) for _ in range(200)]
    ceiling = min(3600, 30 * 2 ** (attempts - 1))
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len({round(d, 3) for d in delays}) > 100, "jittered, not constant"


def test_provider_retry_after_is_a_floor_even_above_the_cap() -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=60)
    assert policy.delay_seconds(1, provider_hint_seconds=45) == 45
    assert policy.delay_seconds(1, provider_hint_seconds=600) == 600
    assert policy.delay_seconds(30) <= 60


# --- settings ------------------------------------------------------------------------------


def test_lease_outlives_the_function_timeout() -> None:
    settings = Settings(dispatcher_timeout_seconds=150, lease_margin_seconds=30)
    assert settings.lease_seconds == 180 > settings.dispatcher_timeout_seconds


def test_stop_margin_covers_a_whole_provider_call() -> None:
    settings = Settings(provider_connect_timeout_seconds=3, provider_read_timeout_seconds=10)
    assert settings.stop_claiming_margin_ms >= settings.provider_call_budget_seconds * 1000


def test_a_timeout_too_short_for_a_provider_call_is_rejected_at_cold_start() -> None:
    with pytest.raises(ValidationError, match="more than twice the stop-claiming margin"):
        Settings(dispatcher_timeout_seconds=60, provider_read_timeout_seconds=10)


def test_stop_margin_includes_both_dynamodb_writes() -> None:
    settings = Settings()
    expected = (
        settings.provider_call_budget_seconds
        + 2 * settings.dynamodb_call_budget_seconds
        + 2 * settings.postgres_statement_budget_seconds
        + 5
    )
    assert settings.stop_claiming_margin_ms == int(expected * 1000)


def test_stop_margin_includes_both_postgres_statements_and_their_pool_waits() -> None:
    """mark_sending and the settle statement each wait for a pooled connection, then run
    under statement_timeout: both are in the margin (71 s with the defaults)."""
    base = Settings()
    assert base.postgres_statement_budget_seconds == 2 + 3
    assert base.stop_claiming_margin_ms == 71_000
    slower = Settings(dispatcher_timeout_seconds=300, db_pool_wait_seconds=3, db_statement_timeout_seconds=5)
    assert slower.stop_claiming_margin_ms - base.stop_claiming_margin_ms == 2 * (1 + 2) * 1000


def test_powertools_kill_switch_is_refused_at_cold_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_IDEMPOTENCY_DISABLED", "true")
    with pytest.raises(ValidationError, match="POWERTOOLS_IDEMPOTENCY_DISABLED"):
        Settings()


def test_repeated_step_in_one_enqueue_is_an_error_not_a_silent_drop() -> None:
    event = json.loads((EVENTS / "enqueue-campaign.json").read_text())
    event["steps"] = [event["steps"][0], event["steps"][0]]
    with pytest.raises(InvalidEventError, match="repeated: intro"):
        parse_event(EnqueueRequest, event)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("SENDONCE_BATCH_SIZE", "7")
    monkeypatch.setenv("SENDONCE_UNKNOWN_POLICY_LINKEDIN", "resend")
    settings = Settings()
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://u@h/db"
    assert "u@h" not in repr(settings), "the URL may carry a password"
    assert settings.batch_size == 7
    assert settings.unknown_policies["linkedin"] == "resend"


def test_bad_environment_fails_with_the_field_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDONCE_SEND_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="send_concurrency"):
        Settings()


# --- events --------------------------------------------------------------------------------


def test_sample_events_parse() -> None:
    parse_event(DispatchRequest, json.loads((EVENTS / "dispatcher-scheduled.json").read_text()))
    parse_event(SweepRequest, json.loads((EVENTS / "sweeper-scheduled.json").read_text()))
    parse_event(EnqueueRequest, json.loads((EVENTS / "enqueue-campaign.json").read_text()))


def test_malformed_event_error_names_every_problem() -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_event(DispatchRequest, {"source": "cron", "batch_size": "many", "surprise": 1})
    message = str(caught.value)
    assert message.startswith("invalid DispatchRequest event (3 problems)")
    for field in ("source", "batch_size", "surprise"):
        assert field in message


@pytest.mark.parametrize("event", [None, [], "text", 42])
def test_non_object_events_are_rejected(event: object) -> None:
    with pytest.raises(InvalidEventError):
        parse_event(DispatchRequest, event)


# --- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["+1 (555) 000-1111", "15550001111", " 1-555-000-1111 ", "+1.555.000.1111"])
def test_whatsapp_addresses_normalise_to_one_form(raw: str) -> None:
    assert normalise_address(Channel.WHATSAPP, raw) == "15550001111"


@pytest.mark.parametrize("raw", ["abc", "123", "1" * 16, "+44 20 7946 0958 ext 2"])
def test_invalid_whatsapp_addresses_are_refused(raw: str) -> None:
    with pytest.raises(InvalidAddressError):
        normalise_address(Channel.WHATSAPP, raw)


def test_opaque_ids_are_kept_as_given_but_trimmed() -> None:
    assert normalise_address(Channel.MESSENGER, " 2468013579 ") == "2468013579"
    with pytest.raises(InvalidAddressError):
        normalise_address(Channel.LINKEDIN, "ACo AAB")


# --- observability -------------------------------------------------------------------------


def test_tally_reports_every_metric_and_stage() -> None:
    tally = Tally()
    tally.add(Metric.SENT, 3)
    tally.add_seconds(Stage.PROVIDER, 0.5)
    assert tally.counts()["Sent"] == 3
    assert tally.counts()["DuplicatePrevented"] == 0
    assert tally.seconds() == {"postgres": 0.0, "dynamodb": 0.0, "provider": 0.5, "call_slot": 0.0}


def test_claimed_rows_are_handed_out_in_turns_between_senders() -> None:
    rows = [
        {"sender_account_id": s, "n": n}
        for s, n in [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("b", 2)]
    ]
    order = [(r["sender_account_id"], r["n"]) for r in interleave_by_sender(rows)]
    assert order == [("a", 1), ("b", 1), ("c", 1), ("a", 2), ("b", 2), ("a", 3)]
    assert interleave_by_sender([]) == []
