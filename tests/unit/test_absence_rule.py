"""The evidence-of-absence rule (shared.absence.judge): each condition failing alone holds the
row and says why; all holding requeues."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from shared.absence import AbsenceEvidence, AbsenceRule, Hold, ReadBackResult, judge
from shared.config import Settings

RULE = AbsenceRule(grace=timedelta(hours=1), min_pipe_messages=3, window=timedelta(minutes=15))
STARTED = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
SILENT = AbsenceEvidence(
    attempt_started_at=STARTED,
    checked_at=STARTED + timedelta(hours=1),
    events_for_key=0,
    unexplained_events_for_recipient=0,
    sender_messages_in_window=5,
    sender_messages_heard_in_window=3,
    sender_last_event_at=STARTED + timedelta(minutes=1),
    read_back=ReadBackResult.NOT_NEEDED,
    attempts=1,
    max_attempts=5,
)


def test_all_conditions_hold_so_the_message_is_absent() -> None:
    verdict = judge(RULE, SILENT)
    assert verdict.absent and verdict.held_because == ()
    assert "3 of 5 other message(s)" in verdict.reason


@pytest.mark.parametrize(
    ("change", "hold"),
    [
        ({"checked_at": STARTED + timedelta(minutes=59)}, Hold.GRACE),
        ({"events_for_key": 1}, Hold.HEARD),
        ({"unexplained_events_for_recipient": 1}, Hold.HEARD),
        ({"sender_messages_heard_in_window": 2}, Hold.PIPE),
        ({"read_back": ReadBackResult.UNAVAILABLE}, Hold.READ_BACK),
        ({"attempts": 5}, Hold.ATTEMPTS),
    ],
)
def test_each_condition_failing_alone_holds_the_row(change: dict[str, object], hold: Hold) -> None:
    verdict = judge(RULE, dataclasses.replace(SILENT, **change))  # type: ignore[arg-type]
    assert not verdict.absent
    assert verdict.held_because == (hold,)
    assert verdict.reason and verdict.next_step


def test_a_silent_pipe_names_when_it_last_spoke() -> None:
    verdict = judge(RULE, dataclasses.replace(SILENT, sender_messages_heard_in_window=0))
    assert "webhook pipe silent for this sender since 2026-12-03 10:01" in verdict.reason


@pytest.mark.parametrize("read_back", [ReadBackResult.NO_MATCH, ReadBackResult.NO_CHAT])
def test_unipile_read_back_without_a_match_or_a_first_message_allows_a_resend(
    read_back: ReadBackResult,
) -> None:
    assert judge(RULE, dataclasses.replace(SILENT, read_back=read_back)).absent


def test_hold_stays_the_default_policy_and_the_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    assert set(settings.unknown_policies.values()) == {"hold"}
    assert settings.absence_grace_seconds == 3600
    assert settings.absence_min_pipe_messages == 3
    assert settings.absence_window_seconds == 900
