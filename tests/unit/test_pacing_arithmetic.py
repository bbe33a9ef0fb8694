"""The pacing arithmetic, with a frozen clock: windows at their edges and across DST, caps that
reset at local midnight, warm-up, the token bucket, spacing, throttling, and the fair plan."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, time, timedelta

import pytest

from shared.pacing import (
    SPACED_CALL_PAD_SECONDS,
    Action,
    Allowance,
    BudgetState,
    CallGap,
    ChannelDefaults,
    EffectivePacing,
    SenderPacing,
    Usage,
    allowance,
    daily_cap,
    local_day_start,
    next_window_open,
    plan_batch,
    spend,
    throttle_factor,
    throttled,
    window_open,
)

UNPACED = ChannelDefaults(rate_per_second=None, burst=None)
BERLIN_OFFICE = SenderPacing(
    timezone="Europe/Berlin", window_days=(1, 2, 3, 4, 5), window_start=time(9), window_end=time(18)
)
RECOVERY = 300.0


def effective(config: SenderPacing, defaults: ChannelDefaults = UNPACED) -> EffectivePacing:
    return EffectivePacing.merge(config, defaults)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def allowed(
    pacing: EffectivePacing,
    now: datetime,
    state: BudgetState | None = None,
    usage: dict[Action, Usage] | None = None,
    want: int = 25,
) -> Allowance:
    return allowance(pacing, state or BudgetState(), usage or {}, now, want=want, recovery_seconds=RECOVERY)


# --- windows --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "is_open"),
    [
        # Wednesday 2026-12-02; Berlin is UTC+1 in winter.
        ("2026-12-02T07:59:59", False),  # 08:59:59 local
        ("2026-12-02T08:00:00", True),  # 09:00:00 local: the window opens
        ("2026-12-02T16:59:59", True),  # 17:59:59 local
        ("2026-12-02T17:00:00", False),  # 18:00:00 local: closed
        ("2026-12-05T10:00:00", False),  # Saturday
        # Summer (UTC+2): 09:00 local is 07:00 UTC.
        ("2026-07-01T06:59:59", False),
        ("2026-07-01T07:00:00", True),
    ],
)
def test_window_edges_in_the_senders_time_zone(instant: str, is_open: bool) -> None:
    assert window_open(effective(BERLIN_OFFICE), utc(instant)) is is_open


def test_window_across_the_spring_dst_change() -> None:
    """2026-03-29: Berlin jumps from 02:00 to 03:00. A 02:30-04:00 window opens at 03:00."""
    night = effective(SenderPacing(timezone="Europe/Berlin", window_start=time(2, 30), window_end=time(4)))
    assert not window_open(night, utc("2026-03-29T00:59:59"))  # 01:59:59 CET
    assert window_open(night, utc("2026-03-29T01:00:00"))  # 03:00 CEST
    assert next_window_open(night, utc("2026-03-29T00:30:00")) == utc("2026-03-29T01:00:00")


def test_overnight_window_belongs_to_the_day_it_opened() -> None:
    nights = effective(
        SenderPacing(timezone="UTC", window_days=(5,), window_start=time(22), window_end=time(6))
    )
    assert window_open(nights, utc("2026-12-04T22:00:00"))  # Friday 22:00
    assert window_open(nights, utc("2026-12-05T05:59:59"))  # Saturday, Friday's window
    assert not window_open(nights, utc("2026-12-05T22:00:00"))  # Saturday's own window: no
    assert not window_open(nights, utc("2026-12-04T05:00:00"))  # Friday 05:00: Thursday's


def test_next_window_open_skips_the_weekend() -> None:
    friday_evening = utc("2026-12-04T18:30:00")
    assert next_window_open(effective(BERLIN_OFFICE), friday_evening) == utc("2026-12-07T08:00:00")


def test_closed_window_allows_nothing_until_it_opens() -> None:
    pacing = effective(BERLIN_OFFICE)
    result = allowed(pacing, utc("2026-12-02T07:59:59"))
    assert result.total == 0
    assert (result.limited_by, result.retry_at) == ("window closed", utc("2026-12-02T08:00:00"))
    assert allowed(pacing, utc("2026-12-02T08:00:00")).total == 25


# --- caps -----------------------------------------------------------------------------------------


def test_daily_cap_resets_at_local_midnight() -> None:
    """Auckland is UTC+13 in December: its midnight is 11:00 UTC."""
    capped = effective(SenderPacing(timezone="Pacific/Auckland", daily_invitation_cap=80))
    before = utc("2026-12-02T10:59:59")
    after = utc("2026-12-02T11:00:00")
    assert local_day_start(capped, before) == utc("2026-12-01T11:00:00")
    assert local_day_start(capped, after) == after
    spent = {Action.INVITATION: Usage(today=80, this_week=80)}
    refused = allowed(capped, before, usage=spent)
    assert refused.per_action[Action.INVITATION] == 0
    assert refused.per_action[Action.MESSAGE] == 25, "message caps are separate"
    # After local midnight the usage query counts from the new day start: nothing used today.
    fresh = allowed(capped, after, usage={Action.INVITATION: Usage(today=0, this_week=80)})
    assert fresh.per_action[Action.INVITATION] == 25


def test_weekly_cap_binds_even_when_the_day_has_room() -> None:
    capped = effective(SenderPacing(daily_invitation_cap=80, weekly_invitation_cap=200))
    usage = {Action.INVITATION: Usage(today=10, this_week=195)}
    assert allowed(capped, utc("2026-12-02T12:00:00"), usage=usage).per_action[Action.INVITATION] == 5


def test_every_cap_spent_parks_the_sender_until_the_next_local_day() -> None:
    capped = effective(SenderPacing(timezone="Europe/Berlin", daily_message_cap=10, daily_invitation_cap=10))
    usage = {action: Usage(today=10, this_week=10) for action in Action}
    result = allowed(capped, utc("2026-12-02T12:00:00"), usage=usage)
    assert (result.total, result.limited_by) == (0, "cap reached")
    assert result.retry_at == utc("2026-12-02T23:00:00")  # Berlin midnight


def test_warm_up_ramps_the_daily_cap() -> None:
    started = utc("2026-12-01T12:00:00")
    warming = effective(
        SenderPacing(daily_message_cap=100, warmup_started_at=started, warmup_days=10, warmup_start_daily=20)
    )
    assert daily_cap(warming, Action.MESSAGE, started) == 20
    assert daily_cap(warming, Action.MESSAGE, started + timedelta(days=5)) == 60
    assert daily_cap(warming, Action.MESSAGE, started + timedelta(days=10)) == 100
    assert daily_cap(warming, Action.MESSAGE, started + timedelta(days=400)) == 100


# --- rate, burst, spacing, throttling -------------------------------------------------------------


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    paced = effective(SenderPacing(rate_per_second=20, burst=5))
    now = utc("2026-12-02T12:00:00")
    first = allowed(paced, now)
    assert (first.total, first.limited_by) == (5, "rate")
    state = spend(paced, BudgetState(), 5, now, recovery_seconds=RECOVERY, rng=random.Random(1))
    assert allowed(paced, now, state).total == 0
    assert allowed(paced, now + timedelta(milliseconds=100), state).total == 2
    assert allowed(paced, now + timedelta(seconds=10), state).total == 5, "never above the burst"


def test_empty_bucket_parks_the_sender_until_its_next_token() -> None:
    paced = effective(SenderPacing(rate_per_second=2, burst=1))
    now = utc("2026-12-02T12:00:00")
    state = spend(paced, BudgetState(), 1, now, recovery_seconds=RECOVERY, rng=random.Random(1))
    result = allowed(paced, now, state)
    assert (result.total, result.retry_at) == (0, now + timedelta(seconds=0.5))


def test_spacing_allows_one_send_per_slot_with_jitter() -> None:
    spaced = effective(SenderPacing(min_spacing_seconds=60, spacing_jitter_seconds=30))
    now = utc("2026-12-02T12:00:00")
    assert allowed(spaced, now).total == 1
    state = spend(spaced, BudgetState(), 1, now, recovery_seconds=RECOVERY, rng=random.Random(7))
    assert state.next_slot_at is not None
    gap = (state.next_slot_at - now).total_seconds()
    assert 60 <= gap <= 90
    assert allowed(spaced, state.next_slot_at - timedelta(seconds=1), state).total == 0
    assert allowed(spaced, state.next_slot_at, state).total == 1


def test_throttle_halves_the_rate_holds_the_sender_and_recovers() -> None:
    now = utc("2026-12-02T12:00:00")
    state = throttled(BudgetState(), now, timedelta(seconds=30))
    assert (state.throttle_factor, state.next_slot_at, state.tokens) == (
        0.5,
        now + timedelta(seconds=30),
        0.0,
    )
    again = throttled(state, now, None)
    assert again.throttle_factor == 0.25
    assert again.next_slot_at == now + timedelta(seconds=30), "a hold is never shortened"
    assert throttle_factor(again, now + timedelta(seconds=150), RECOVERY) == pytest.approx(0.75)
    assert throttle_factor(again, now + timedelta(seconds=600), RECOVERY) == 1.0
    paced = effective(SenderPacing(rate_per_second=10, burst=10))
    assert allowed(paced, now + timedelta(seconds=29), again).total == 0, "held for the Retry-After"


def test_a_sender_throttled_many_times_keeps_probing() -> None:
    now = utc("2026-12-02T12:00:00")
    state = BudgetState()
    for _ in range(20):
        state = throttled(state, now, None)
    assert state.throttle_factor == pytest.approx(0.05)


# --- the fair plan ---------------------------------------------------------------------------------


def test_a_big_sender_cannot_take_the_batch_from_a_small_one() -> None:
    big, small = uuid.uuid4(), uuid.uuid4()
    everything = Allowance(dict.fromkeys(Action, 25), "batch")
    lanes = plan_batch([(big, everything), (small, everything)], 25)
    totals = {lane.sender_id: lane.total for lane in lanes}
    assert totals == {big: 13, small: 12}


def test_the_plan_never_exceeds_a_senders_allowance() -> None:
    slow, fast = uuid.uuid4(), uuid.uuid4()
    lanes = plan_batch(
        [
            (slow, Allowance({Action.MESSAGE: 1, Action.INVITATION: 0}, "spacing")),
            (fast, Allowance(dict.fromkeys(Action, 25), "batch")),
        ],
        25,
    )
    totals = {lane.sender_id: lane.total for lane in lanes}
    assert totals == {slow: 1, fast: 24}
    assert all(lane.quota > 0 for lane in lanes)
    assert {(lane.sender_id, lane.action) for lane in lanes} == {
        (slow, Action.MESSAGE),
        (fast, Action.MESSAGE),
        (fast, Action.INVITATION),
    }


def test_channel_defaults_apply_where_the_sender_sets_nothing() -> None:
    linkedin = ChannelDefaults(
        rate_per_second=None, burst=None, min_spacing_seconds=30, daily_invitation_cap=80
    )
    merged = effective(SenderPacing(daily_invitation_cap=40), linkedin)
    assert merged.min_spacing_seconds == 30
    assert merged.daily_caps[Action.INVITATION] == 40, "the sender's own value wins"
    with pytest.raises(ValueError, match="IANA time zone"):
        SenderPacing(timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="set together"):
        SenderPacing(window_start=time(9))


def test_the_call_gap_is_the_rate_interval_or_the_padded_spacing() -> None:
    assert CallGap.of(effective(SenderPacing())) == CallGap(0.0, spaced=False)
    assert CallGap.of(effective(SenderPacing(rate_per_second=20, burst=5))) == CallGap(0.05, spaced=False)
    spaced = CallGap.of(effective(SenderPacing(min_spacing_seconds=30, spacing_jitter_seconds=60)))
    assert spaced == CallGap(30 + SPACED_CALL_PAD_SECONDS, spaced=True)
    # Both set: the longer of the two, and the compare-and-set that keeps a spacing exact.
    both = CallGap.of(effective(SenderPacing(rate_per_second=0.01, min_spacing_seconds=30)))
    assert both == CallGap(100.0, spaced=True)
