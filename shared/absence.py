"""Evidence of absence: when an ``unknown`` row may be sent again (channel policy
``resend_if_silent``).

An ``unknown`` row's call may or may not have reached the provider. Most such rows that did
reach it are settled ``sent`` by the reconciler from webhooks. What stays is mostly messages
the provider never accepted (a 500 before acceptance, a kill between the DynamoDB write and
the call). This module decides, from evidence, that a message is absent. All of these must
hold, and each is recorded:

* **silence**: no provider event for its idempotency key, and no status for its recipient that
  no ledger row explains, arrived within G (``absence_grace_seconds``) after the attempt
  started;
* **live pipe**: at least N (``absence_min_pipe_messages``) other messages of the same sender,
  accepted within +-T (``absence_window_seconds``) of the attempt, had a status webhook
  arrive. Silence means nothing if the sender's webhooks are not arriving at all;
* **read-back** (LinkedIn through Unipile, whose webhooks carry no key): a read-back of the
  chat, after the attempt started, found no message with this text. With no known chat (a
  first message) Unipile's own-send webhook is the only evidence, which the silence covers;
* **attempts left**: a resend spends an attempt, so ``max_attempts`` bounds the copies a
  policy can risk.

The judgement (``judge``) is a pure function of the gathered figures, unit-tested on its own.
The requeue itself is ``shared.reconcile.requeue``: the writer-conditional forget of the
idempotency record (never one that proves sending), inside the transaction that holds the row.

The risk, stated: a message the provider accepted whose every status webhook was lost, while
the same sender's other webhooks arrived, is sent a second time. ``DuplicateSuspected`` flags
it if any of its webhooks turns up later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from shared.config import Settings
from shared.providers.outcome import Channel
from shared.queue import ClaimedMessage
from shared.storage import sql
from shared.storage.db import Database

POLICY = "resend_if_silent"


class ReadBackResult(StrEnum):
    """What a read-back of the chat said, for the row's attempt."""

    NOT_NEEDED = "not_needed"  # the channel's webhooks carry the key
    NO_MATCH = "no_match"  # read back after the attempt: no message with this text
    NO_CHAT = "no_chat"  # no known chat: a first message; the own-send webhook is the evidence
    UNAVAILABLE = "unavailable"  # a known chat, but no reader configured: nothing proves absence


@dataclass(frozen=True)
class AbsenceRule:
    grace: timedelta
    min_pipe_messages: int
    window: timedelta

    @classmethod
    def of(cls, settings: Settings) -> AbsenceRule:
        return cls(
            grace=timedelta(seconds=settings.absence_grace_seconds),
            min_pipe_messages=settings.absence_min_pipe_messages,
            window=timedelta(seconds=settings.absence_window_seconds),
        )


@dataclass(frozen=True)
class AbsenceEvidence:
    """The figures a judgement is taken on; stored with it, and with any requeue decision."""

    attempt_started_at: datetime
    checked_at: datetime
    events_for_key: int
    unexplained_events_for_recipient: int
    sender_messages_in_window: int
    sender_messages_heard_in_window: int
    sender_last_event_at: datetime | None
    read_back: ReadBackResult
    attempts: int
    max_attempts: int

    def as_json(self) -> dict[str, Any]:
        values = asdict(self)
        for name, value in values.items():
            if isinstance(value, datetime):
                values[name] = value.isoformat()
        values["read_back"] = self.read_back.value
        return values


class Hold(StrEnum):
    """Why a row is still held; each names one failing condition."""

    GRACE = "grace"
    HEARD = "heard"
    PIPE = "pipe"
    READ_BACK = "read_back"
    ATTEMPTS = "attempts"


@dataclass(frozen=True)
class AbsenceVerdict:
    absent: bool
    held_because: tuple[Hold, ...]
    reason: str
    next_step: str
    evidence: AbsenceEvidence

    def as_json(self, policy: str) -> dict[str, Any]:
        return {
            "policy": policy,
            "absent": self.absent,
            "held_because": [h.value for h in self.held_because],
            "reason": self.reason,
            "next_step": self.next_step,
            "evidence": self.evidence.as_json(),
        }


def _hhmm(when: datetime | None) -> str:
    return f"{when:%Y-%m-%d %H:%M %Z}" if when is not None else "never (no status in 7 days)"


def judge(rule: AbsenceRule, evidence: AbsenceEvidence) -> AbsenceVerdict:
    """Whether the evidence proves the message absent, and if not, every condition that fails,
    why, and what would change it. Pure: no I/O, no clock but the evidence's."""
    held: list[Hold] = []
    reasons: list[str] = []
    steps: list[str] = []
    e = evidence
    waited = e.checked_at - e.attempt_started_at
    if waited < rule.grace:
        held.append(Hold.GRACE)
        ready = e.attempt_started_at + rule.grace
        reasons.append(f"grace period G={rule.grace} not over since the attempt")
        steps.append(f"wait: judged again after {_hhmm(ready)}")
    heard = e.events_for_key + e.unexplained_events_for_recipient
    if heard:
        held.append(Hold.HEARD)
        reasons.append(
            f"the provider spoke about this message or its recipient ({e.events_for_key} event(s) for the "
            f"key, {e.unexplained_events_for_recipient} status(es) for the recipient no ledger row explains)"
        )
        steps.append("read the events with `sendonce audit`, then `sendonce resolve` mark-sent or resend")
    if e.sender_messages_heard_in_window < rule.min_pipe_messages:
        held.append(Hold.PIPE)
        reasons.append(
            f"webhook pipe not shown alive for this sender: {e.sender_messages_heard_in_window} of "
            f"{e.sender_messages_in_window} other message(s) within +-{rule.window} had a status webhook "
            f"(N={rule.min_pipe_messages} needed); webhook pipe silent for this sender since "
            f"{_hhmm(e.sender_last_event_at)}"
        )
        steps.append(
            "check the webhook subscription and the webhook function's errors for this sender; if the "
            "sender sent too little around the attempt, an operator decides with `sendonce resolve`"
        )
    if e.read_back is ReadBackResult.UNAVAILABLE:
        held.append(Hold.READ_BACK)
        reasons.append("the chat is known but no read-back is configured for the channel")
        steps.append("configure the Unipile read-back, or decide with `sendonce resolve`")
    if e.attempts >= e.max_attempts:
        held.append(Hold.ATTEMPTS)
        reasons.append(f"attempts used up ({e.attempts} of {e.max_attempts})")
        steps.append("an operator decides with `sendonce resolve`")
    if held:
        return AbsenceVerdict(False, tuple(held), "; ".join(reasons), "; ".join(steps), evidence)
    return AbsenceVerdict(
        True,
        (),
        (
            f"evidence of absence: no provider event for the message within G={rule.grace} after the "
            f"attempt; {e.sender_messages_heard_in_window} of {e.sender_messages_in_window} other "
            f"message(s) of the sender within +-{rule.window} had status webhooks "
            f"(N={rule.min_pipe_messages}); "
            f"read-back: {e.read_back.value}"
        ),
        "requeued: sent again once, within max attempts",
        evidence,
    )


def gather(
    db: Database,
    rule: AbsenceRule,
    message: ClaimedMessage,
    attempt_started_at: datetime,
    now: datetime,
    read_back: ReadBackResult,
    clock_skew: timedelta,
) -> AbsenceEvidence:
    """The figures for ``judge``, read from Postgres as of ``now``."""
    params = {
        "channel": message.channel.value,
        "idempotency_key": message.idempotency_key,
        "recipient": message.recipient,
        "started": attempt_started_at,
        "clock_skew_seconds": clock_skew.total_seconds(),
        "window_seconds": rule.window.total_seconds(),
        "sender_account_id": message.sender_account_id,
        "queue_id": message.queue_id,
    }
    events = db.fetch_one(sql.ABSENCE_EVENTS_FOR_MESSAGE, params)
    pipe = db.fetch_one(sql.ABSENCE_PIPE, params)
    assert events is not None and pipe is not None
    return AbsenceEvidence(
        attempt_started_at=attempt_started_at,
        checked_at=now,
        events_for_key=int(events["by_key"]),
        unexplained_events_for_recipient=int(events["unexplained_for_recipient"]),
        sender_messages_in_window=int(pipe["sent_in_window"]),
        sender_messages_heard_in_window=int(pipe["heard_in_window"]),
        sender_last_event_at=pipe["sender_last_event_at"],
        read_back=read_back,
        attempts=message.attempts,
        max_attempts=message.max_attempts,
    )


def read_back_result(channel: Channel, read_back_ran: bool, thread_known: bool) -> ReadBackResult:
    """Only Unipile needs a read-back: WhatsApp and Messenger webhooks carry the key."""
    if channel is not Channel.LINKEDIN:
        return ReadBackResult.NOT_NEEDED
    if not thread_known:
        return ReadBackResult.NO_CHAT
    return ReadBackResult.NO_MATCH if read_back_ran else ReadBackResult.UNAVAILABLE


def still_silent(
    db: Database, message: ClaimedMessage, attempt_started_at: datetime, clock_skew: timedelta
) -> bool:
    """Checked again inside the requeue's transaction, just before the record is forgotten: an
    event that arrived since the judgement keeps the row."""
    row = db.fetch_one(
        sql.ABSENCE_EVENTS_FOR_MESSAGE,
        {
            "channel": message.channel.value,
            "idempotency_key": message.idempotency_key,
            "recipient": message.recipient,
            "started": attempt_started_at,
            "clock_skew_seconds": clock_skew.total_seconds(),
        },
    )
    return row is not None and int(row["by_key"]) == 0 and int(row["unexplained_for_recipient"]) == 0


def held_unknowns(
    db: Database, settings: Settings, *, campaign_id: Any = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Every ``unknown`` row with why it is still held and what would move it (``sendonce
    unknown``). Read from the reconciler's latest judgement; no provider call."""
    policies = settings.unknown_policies
    rows = db.fetch_all(sql.HELD_UNKNOWN_ROWS, {"campaign_id": campaign_id, "limit": limit})
    held: list[dict[str, Any]] = []
    for row in rows:
        policy = policies.get(row["channel"], "hold")
        check: dict[str, Any] | None = row["absence_check"]
        if check is None:
            why = f"not judged yet by the reconciler ({row['last_error'] or 'no error recorded'})"
            step = "wait for the next sweep, or run `sendonce sweep`"
        elif policy == POLICY:
            why = check["reason"]
            step = check["next_step"] if not check["absent"] else "requeue at the next sweep"
        elif policy == "resend":
            why = (
                "channel policy is resend: requeued once SENDONCE_UNKNOWN_GRACE_SECONDS has passed, "
                "while attempts last"
            )
            step = "wait for the next sweep; with attempts used up, `sendonce resolve`"
        else:
            why = f"channel policy is {policy}: an operator decides"
            if check["absent"]:
                step = (
                    f"evidence of absence holds ({check['reason']}): `sendonce resolve {row['queue_id']} "
                    f"resend`, or set SENDONCE_UNKNOWN_POLICY_{row['channel'].upper()}={POLICY}"
                )
            else:
                step = (
                    f"`sendonce audit`, then `sendonce resolve`; evidence of absence fails: {check['reason']}"
                )
        held.append(
            {
                "queue_id": row["queue_id"],
                "campaign": row["campaign"],
                "channel": row["channel"],
                "policy": policy,
                "attempts": f"{row['attempts']}/{row['max_attempts']}",
                "unknown_since": row["unknown_since"],
                "checked_at": row["absence_checked_at"],
                "held_because": ",".join(check["held_because"]) if check else "",
                "why": why,
                "next_step": step,
            }
        )
    return held
