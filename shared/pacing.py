"""Per-sender pacing: how many rows a sender account may send now, decided in the claim.

Each sender account has a token bucket (rate and burst), a minimum spacing with random jitter
between sends, daily and weekly caps per action (message, invitation), a sending window in its
own time zone, and an optional warm-up ramp of its daily caps. What an operator leaves unset
comes from the channel's defaults in ``Settings``.

The claim (``shared/claim.py``) locks each sender row it serves, asks ``allowance`` how many rows
the sender may send now, claims at most that many, and writes back ``spend``'s new budget state
before committing. Because the budget lives in Postgres and is only changed under the sender's
row lock, every overlapping dispatcher sees the same budget: together they can never exceed it.
A crash after the claim loses the spent tokens, never refunds them, so a crash can only make a
sender slower, never faster.

Everything here is a pure function of its inputs and an explicit ``now``, so the arithmetic is
unit-tested with a frozen clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.config import Settings

WEEK = timedelta(days=7)
# The throttle factor never falls below this share of the configured rate: a sender that was
# throttled still probes, slowly, so it recovers once the provider lets it.
MIN_THROTTLE_FACTOR = 0.05


class Action(StrEnum):
    MESSAGE = "message"
    INVITATION = "invitation"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin)") from exc


class SenderPacing(BaseModel):
    """What an operator configures for one sender account. ``None`` means the channel default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_second: float | None = Field(default=None, gt=0, le=10_000)
    burst: int | None = Field(default=None, ge=1, le=10_000)
    min_spacing_seconds: float | None = Field(default=None, ge=0, le=7 * 24 * 3600)
    spacing_jitter_seconds: float | None = Field(default=None, ge=0, le=24 * 3600)
    daily_message_cap: int | None = Field(default=None, ge=0)
    weekly_message_cap: int | None = Field(default=None, ge=0)
    daily_invitation_cap: int | None = Field(default=None, ge=0)
    weekly_invitation_cap: int | None = Field(default=None, ge=0)
    timezone: str = "UTC"
    window_days: tuple[int, ...] | None = Field(default=None, description="ISO days, 1 = Monday")
    window_start: time | None = None
    window_end: time | None = None
    warmup_started_at: datetime | None = None
    warmup_days: int | None = Field(default=None, ge=1, le=365)
    warmup_start_daily: int | None = Field(default=None, ge=0)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        _zone(value)
        return value

    @field_validator("window_days")
    @classmethod
    def _iso_days(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not value or any(day not in range(1, 8) for day in value):
            raise ValueError("window_days are ISO weekdays 1 (Monday) to 7 (Sunday), at least one")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _consistent(self) -> SenderPacing:
        if (self.window_start is None) != (self.window_end is None):
            raise ValueError("window_start and window_end are set together")
        if self.window_start is not None and self.window_start == self.window_end:
            raise ValueError("window_start and window_end must differ (leave both unset for all day)")
        if (self.warmup_days is None) != (self.warmup_start_daily is None):
            raise ValueError("warmup_days and warmup_start_daily are set together")
        return self


@dataclass(frozen=True)
class ChannelDefaults:
    """The pacing a channel gets where its sender account sets nothing (from ``Settings``)."""

    rate_per_second: float | None
    burst: int | None
    min_spacing_seconds: float = 0.0
    spacing_jitter_seconds: float = 0.0
    daily_message_cap: int | None = None
    weekly_message_cap: int | None = None
    daily_invitation_cap: int | None = None
    weekly_invitation_cap: int | None = None


@dataclass(frozen=True)
class EffectivePacing:
    """A sender's configuration merged with its channel's defaults."""

    rate_per_second: float | None  # None: no rate limit
    burst: int
    min_spacing_seconds: float
    spacing_jitter_seconds: float
    daily_caps: dict[Action, int | None]
    weekly_caps: dict[Action, int | None]
    zone: ZoneInfo
    window_days: tuple[int, ...] | None
    window_start: time | None
    window_end: time | None
    warmup_started_at: datetime | None
    warmup_days: int | None
    warmup_start_daily: int | None

    @classmethod
    def merge(cls, config: SenderPacing, defaults: ChannelDefaults) -> EffectivePacing:
        def pick[T](own: T | None, default: T) -> T:
            return own if own is not None else default

        rate = pick(config.rate_per_second, defaults.rate_per_second)
        burst = pick(config.burst, defaults.burst)
        if burst is None:
            burst = max(1, math.ceil(rate)) if rate is not None else 1
        return cls(
            rate_per_second=rate,
            burst=burst,
            min_spacing_seconds=pick(config.min_spacing_seconds, defaults.min_spacing_seconds),
            spacing_jitter_seconds=pick(config.spacing_jitter_seconds, defaults.spacing_jitter_seconds),
            daily_caps={
                Action.MESSAGE: pick(config.daily_message_cap, defaults.daily_message_cap),
                Action.INVITATION: pick(config.daily_invitation_cap, defaults.daily_invitation_cap),
            },
            weekly_caps={
                Action.MESSAGE: pick(config.weekly_message_cap, defaults.weekly_message_cap),
                Action.INVITATION: pick(config.weekly_invitation_cap, defaults.weekly_invitation_cap),
            },
            zone=_zone(config.timezone),
            window_days=config.window_days,
            window_start=config.window_start,
            window_end=config.window_end,
            warmup_started_at=config.warmup_started_at,
            warmup_days=config.warmup_days,
            warmup_start_daily=config.warmup_start_daily,
        )

    @property
    def has_caps(self) -> bool:
        return any(cap is not None for cap in (*self.daily_caps.values(), *self.weekly_caps.values()))


@dataclass(frozen=True)
class BudgetState:
    """What the claim reads and writes back under the sender's row lock."""

    tokens: float | None = None  # None: a full bucket (never claimed)
    tokens_at: datetime | None = None
    next_slot_at: datetime | None = None  # spacing, or a provider's Retry-After
    throttle_factor: float = 1.0
    throttled_at: datetime | None = None


@dataclass(frozen=True)
class Usage:
    """Rows of one action claimed since the start of the local day and in the last 7 days
    that may have reached the provider (claimed, sending, sent, unknown)."""

    today: int = 0
    this_week: int = 0


# --- the sending window ---------------------------------------------------------------------


def _local(pacing: EffectivePacing, now: datetime) -> datetime:
    return now.astimezone(pacing.zone)


def window_open(pacing: EffectivePacing, now: datetime) -> bool:
    """Whether ``now`` falls in the sender's window. A window whose end is before its start
    wraps past midnight and belongs to the day it opened on (Friday 22:00-06:00 covers
    Saturday 02:00)."""
    local = _local(pacing, now)
    day = local.isoweekday()
    start, end = pacing.window_start, pacing.window_end
    if start is None or end is None:
        return pacing.window_days is None or day in pacing.window_days
    clock = local.time()
    if start < end:
        opened_on = day if start <= clock < end else None
    elif clock >= start:
        opened_on = day
    elif clock < end:
        opened_on = (day - 2) % 7 + 1  # yesterday's window, still open
    else:
        opened_on = None
    return opened_on is not None and (pacing.window_days is None or opened_on in pacing.window_days)


def next_window_open(pacing: EffectivePacing, now: datetime) -> datetime:
    """The first instant at or after ``now`` inside the window (``now`` itself if open)."""
    if window_open(pacing, now):
        return now
    local = _local(pacing, now)
    start = pacing.window_start or time(0)
    for offset in range(0, 8):
        day = local.date() + timedelta(days=offset)
        candidate = _at(pacing, day, start)
        if candidate >= now and window_open(pacing, candidate):
            return candidate
    raise ValueError("the sending window never opens")  # pragma: no cover - validated config


def _at(pacing: EffectivePacing, day: date, clock: time) -> datetime:
    """The first instant whose local wall-clock time on ``day`` is ``clock`` or later: for a
    time in a DST gap (02:30 on a spring-forward night), the moment the clocks jump."""
    naive = datetime.combine(day, clock)
    earlier = naive.replace(tzinfo=pacing.zone, fold=1).astimezone(UTC)
    later = naive.replace(tzinfo=pacing.zone, fold=0).astimezone(UTC)
    if earlier.astimezone(pacing.zone).replace(tzinfo=None) == naive:
        return min(earlier, later) if later.astimezone(pacing.zone).replace(tzinfo=None) == naive else earlier
    # In a gap: the two readings straddle the transition; walk to it by the minute.
    instant = min(earlier, later)
    while instant.astimezone(pacing.zone).replace(tzinfo=None) < naive:
        instant += timedelta(minutes=1)
    return instant


def local_day_start(pacing: EffectivePacing, now: datetime) -> datetime:
    """Midnight of the sender's local day containing ``now``, as an aware UTC instant."""
    return _at(pacing, _local(pacing, now).date(), time(0))


def next_local_day_start(pacing: EffectivePacing, now: datetime) -> datetime:
    return _at(pacing, _local(pacing, now).date() + timedelta(days=1), time(0))


# --- caps -------------------------------------------------------------------------------------


def daily_cap(pacing: EffectivePacing, action: Action, now: datetime) -> int | None:
    """The day's cap for ``action``, ramped during warm-up. Warm-up applies to every action
    with a daily cap; a ramp never raises a cap above the configured one."""
    cap = pacing.daily_caps[action]
    if cap is None or pacing.warmup_started_at is None or pacing.warmup_days is None:
        return cap
    start = pacing.warmup_start_daily or 0
    days = (local_day_start(pacing, now) - local_day_start(pacing, pacing.warmup_started_at)).days
    if days >= pacing.warmup_days:
        return cap
    ramped = start + (cap - start) * max(0, days) / pacing.warmup_days
    return min(cap, math.floor(ramped))


def cap_room(pacing: EffectivePacing, action: Action, usage: Usage, now: datetime) -> int | None:
    """How many more rows of ``action`` the caps allow now; ``None`` when uncapped."""
    rooms = []
    day_cap = daily_cap(pacing, action, now)
    if day_cap is not None:
        rooms.append(day_cap - usage.today)
    week_cap = pacing.weekly_caps[action]
    if week_cap is not None:
        rooms.append(week_cap - usage.this_week)
    return max(0, min(rooms)) if rooms else None


# --- rate, burst, spacing, throttling ---------------------------------------------------------


def throttle_factor(state: BudgetState, now: datetime, recovery_seconds: float) -> float:
    """Additive increase: the factor climbs back linearly to 1 over ``recovery_seconds``
    after the last throttle (the multiplicative decrease happens in ``throttled``)."""
    if state.throttled_at is None or state.throttle_factor >= 1.0:
        return 1.0
    elapsed = max(0.0, (now - state.throttled_at).total_seconds())
    return min(1.0, state.throttle_factor + elapsed / recovery_seconds)


def tokens_now(pacing: EffectivePacing, state: BudgetState, now: datetime, recovery_seconds: float) -> float:
    if pacing.rate_per_second is None:
        return math.inf
    if state.tokens is None or state.tokens_at is None:
        return float(pacing.burst)
    elapsed = max(0.0, (now - state.tokens_at).total_seconds())
    rate = pacing.rate_per_second * throttle_factor(state, now, recovery_seconds)
    return min(float(pacing.burst), state.tokens + rate * elapsed)


@dataclass(frozen=True)
class Allowance:
    """How many rows a sender may send now, per action, and why not more."""

    per_action: dict[Action, int]
    limited_by: str
    # When nothing is allowed: the earliest instant worth looking again (window opening, a
    # new local day, the next spacing slot). The claim writes it to ``next_slot_at`` so the
    # sender is not locked and re-examined by every claim until then.
    retry_at: datetime | None = None
    # Rate, burst and spacing bound all actions together; caps bound each action.
    budget: int | None = None

    @property
    def total(self) -> int:
        combined = sum(self.per_action.values())
        return combined if self.budget is None else min(self.budget, combined)


def allowance(
    pacing: EffectivePacing,
    state: BudgetState,
    usage: dict[Action, Usage],
    now: datetime,
    *,
    want: int,
    recovery_seconds: float,
) -> Allowance:
    """At most ``want`` rows the sender may start sending now, split by action."""
    nothing = dict.fromkeys(Action, 0)
    if not window_open(pacing, now):
        return Allowance(nothing, "window closed", next_window_open(pacing, now))
    if state.next_slot_at is not None and state.next_slot_at > now:
        return Allowance(nothing, "spacing", state.next_slot_at)
    budget = want
    limited_by = "batch"
    available = tokens_now(pacing, state, now, recovery_seconds)
    if available < budget:
        budget, limited_by = max(0, math.floor(available)), "rate"
    if pacing.min_spacing_seconds > 0 and budget > 1:
        budget, limited_by = 1, "spacing"
    per_action: dict[Action, int] = {}
    for action in Action:
        room = cap_room(pacing, action, usage.get(action, Usage()), now)
        per_action[action] = budget if room is None else min(budget, room)
    if budget > 0 and not any(per_action.values()):
        return Allowance(nothing, "cap reached", next_local_day_start(pacing, now))
    if budget == 0 and pacing.rate_per_second is not None:
        missing = 1.0 - tokens_now(pacing, state, now, recovery_seconds)
        rate = pacing.rate_per_second * throttle_factor(state, now, recovery_seconds)
        return Allowance(nothing, "rate", now + timedelta(seconds=max(0.0, missing) / rate))
    return Allowance(per_action, limited_by, budget=budget)


def spend(
    pacing: EffectivePacing,
    state: BudgetState,
    claimed: int,
    now: datetime,
    *,
    recovery_seconds: float,
    rng: random.Random,
) -> BudgetState:
    """The budget after ``claimed`` rows were claimed at ``now``. Spent tokens are never given
    back, even if a claimed row is later released unsent: a crash or a release can only make
    the sender slower than its limit, never faster."""
    if claimed <= 0:
        return state
    tokens = tokens_now(pacing, state, now, recovery_seconds)
    next_slot = state.next_slot_at
    if pacing.min_spacing_seconds > 0:
        jitter = rng.uniform(0.0, pacing.spacing_jitter_seconds) if pacing.spacing_jitter_seconds else 0.0
        next_slot = now + timedelta(seconds=pacing.min_spacing_seconds + jitter)
    return replace(
        state,
        tokens=None if math.isinf(tokens) else tokens - claimed,
        tokens_at=now,
        next_slot_at=next_slot,
        throttle_factor=throttle_factor(state, now, recovery_seconds),
        throttled_at=state.throttled_at if state.throttle_factor < 1.0 else None,
    )


def throttled(state: BudgetState, now: datetime, retry_after: timedelta | None) -> BudgetState:
    """A provider throttled the sender: halve its rate (multiplicative decrease), hold it until
    the provider's Retry-After, and empty its bucket so the next claim waits for new tokens."""
    held_until = now + retry_after if retry_after is not None else None
    if state.next_slot_at is not None and (held_until is None or state.next_slot_at > held_until):
        held_until = state.next_slot_at
    return replace(
        state,
        tokens=0.0,
        tokens_at=now,
        next_slot_at=held_until,
        throttle_factor=max(MIN_THROTTLE_FACTOR, state.throttle_factor * 0.5),
        throttled_at=now,
    )


# --- the send-time gate's spacing (shared/call_slots.py) ------------------------------------------

# A granted spaced call reaches the provider a few milliseconds after its grant (the commit, the
# answer, the HTTP request), a little more or less each time; this much is added to the spacing
# so the calls' arrival times, not only their grants, keep it.
SPACED_CALL_PAD_SECONDS = 0.05


@dataclass(frozen=True)
class CallGap:
    """The least time between the starts of two provider calls of one sender."""

    seconds: float = 0.0
    spaced: bool = False

    @classmethod
    def of(cls, pacing: EffectivePacing) -> CallGap:
        rate_gap = 1.0 / pacing.rate_per_second if pacing.rate_per_second else 0.0
        if pacing.min_spacing_seconds > 0:
            return cls(max(rate_gap, pacing.min_spacing_seconds + SPACED_CALL_PAD_SECONDS), spaced=True)
        return cls(rate_gap)


# --- the claim's plan -----------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PacingPolicy:
    """What the claim needs besides the database: each channel's defaults (a channel without
    an entry is unpaced unless its senders set limits), how fast a throttled sender recovers,
    the clock and the jitter source. Tests freeze the clock and seed the jitter."""

    defaults: dict[str, ChannelDefaults] = field(default_factory=dict)
    recovery_seconds: float = 300.0
    clock: Callable[[], datetime] = _utcnow
    rng: random.Random = field(default_factory=random.Random)

    def effective(self, row: Mapping[str, Any]) -> EffectivePacing:
        return EffectivePacing.merge(sender_pacing(row), self.defaults.get(row["channel"], UNPACED))


UNPACED = ChannelDefaults(rate_per_second=None, burst=None)


def policy_from_settings(settings: Settings) -> PacingPolicy:
    """The production policy: each channel's defaults and recovery time from ``Settings``."""
    by_channel = {
        "whatsapp": settings.pacing_whatsapp,
        "messenger": settings.pacing_messenger,
        "linkedin": settings.pacing_linkedin,
    }
    return PacingPolicy(
        defaults={channel: ChannelDefaults(**pacing.model_dump()) for channel, pacing in by_channel.items()},
        recovery_seconds=settings.throttle_recovery_seconds,
    )


_CONFIG_COLUMNS = tuple(SenderPacing.model_fields)


def sender_pacing(row: Mapping[str, Any]) -> SenderPacing:
    """A sender account's configuration, from its ``sender_accounts`` row."""
    values = {name: row[name] for name in _CONFIG_COLUMNS if name in row and row[name] is not None}
    if "window_days" in values:
        values["window_days"] = tuple(values["window_days"])
    return SenderPacing.model_validate(values)


def budget_state(row: Mapping[str, Any]) -> BudgetState:
    return BudgetState(
        tokens=row["tokens"],
        tokens_at=row["tokens_at"],
        next_slot_at=row["next_slot_at"],
        throttle_factor=row["throttle_factor"],
        throttled_at=row["throttled_at"],
    )


@dataclass(frozen=True)
class Lane:
    """How many rows of one action the claim takes from one sender, and its sender's total."""

    sender_id: UUID
    action: Action
    quota: int
    total: int


def plan_batch(allowances: list[tuple[UUID, Allowance]], limit: int) -> list[Lane]:
    """Share ``limit`` rows between senders, in their round-robin order, one at a time, so a
    sender with a large backlog cannot take the batch from a sender with a small one."""
    totals = {sender: 0 for sender, _ in allowances}
    remaining = limit
    while remaining > 0:
        gave = False
        for sender, allowed in allowances:
            if remaining > 0 and totals[sender] < allowed.total:
                totals[sender] += 1
                remaining -= 1
                gave = True
        if not gave:
            break
    return [
        Lane(sender, action, min(quota, totals[sender]), totals[sender])
        for sender, allowed in allowances
        for action, quota in allowed.per_action.items()
        if totals[sender] > 0 and quota > 0
    ]
