"""The enqueue-time window check (``shared.windows``) at the edges, on a frozen clock: a
contact is refused only when a step needing Meta's 24-hour window could never be sent to it,
and by the same rule (``ChannelSpec.window_rule``) the dispatcher holds a row with."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.providers.outcome import Channel, OutboundMessage
from shared.providers.registry import channel_spec
from shared.windows import WindowStep, earliest_dues, window_problem

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
TEMPLATE = {"kind": "template", "name": "order_update", "language": "en_US"}
TAGGED = {"kind": "text", "text": "x", "messaging_type": "MESSAGE_TAG", "tag": "ACCOUNT_UPDATE"}
HUMAN_AGENT = {"kind": "text", "text": "x", "messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}


def step(
    channel: Channel,
    position: int,
    content: dict[str, Any] | None = None,
    *,
    delay: timedelta = timedelta(0),
    send_at: datetime | None = None,
    after_event: bool = False,
) -> WindowStep:
    spec = channel_spec(channel)
    parsed = None if content is None else spec.parse_content(content)
    return WindowStep(position, f"step_{position}", spec.window_rule(parsed), delay, send_at, after_event)


def problem(
    steps: list[WindowStep], wrote_ago: timedelta | None, campaign_send_at: datetime | None = None
) -> str | None:
    last = None if wrote_ago is None else NOW - wrote_ago
    return window_problem(earliest_dues(steps, NOW, campaign_send_at), last, NOW)


@pytest.mark.parametrize(
    ("wrote_ago", "refused"),
    [
        (HOUR, False),
        (24 * HOUR - timedelta(seconds=1), False),
        (24 * HOUR, True),  # exactly 24 h ago: the window has closed (as at send time)
        (30 * HOUR, True),
        (None, True),  # never wrote
    ],
)
def test_a_whatsapp_text_step_1_due_now_needs_a_message_in_the_last_24_hours(
    wrote_ago: timedelta | None, refused: bool
) -> None:
    reason = problem([step(Channel.WHATSAPP, 1)], wrote_ago)
    assert (reason is not None) == refused
    if reason is not None:
        assert reason.startswith("step 1 (step_1) needs WhatsApp's 24-hour customer service window")
        assert reason.endswith("use an approved template (content kind template)")
        assert ("has never written" in reason) == (wrote_ago is None)


def test_a_send_at_past_the_window_refuses_step_1_and_one_inside_it_does_not() -> None:
    # Wrote an hour ago: the window closes 23 hours from now.
    inside, edge = NOW + 23 * HOUR - timedelta(seconds=1), NOW + 23 * HOUR
    assert problem([step(Channel.WHATSAPP, 1, send_at=inside)], HOUR) is None
    reason = problem([step(Channel.WHATSAPP, 1, send_at=edge)], HOUR)
    assert reason is not None and "due at 2026-12-04 11:00 UTC at the earliest" in reason
    # The campaign's send_at applies to step 1 the same way (sql.QUEUE_FIRST_STEP).
    assert problem([step(Channel.WHATSAPP, 1)], HOUR, campaign_send_at=inside) is None
    assert problem([step(Channel.WHATSAPP, 1)], HOUR, campaign_send_at=edge) is not None
    # ... and step 1's own delay.
    assert problem([step(Channel.WHATSAPP, 1, delay=23 * HOUR)], HOUR) is not None


def test_a_later_step_whose_delays_push_it_past_the_window_refuses_the_contact() -> None:
    template_then_text = [
        step(Channel.WHATSAPP, 1, TEMPLATE),
        step(Channel.WHATSAPP, 2, delay=2 * 24 * HOUR),
    ]
    reason = problem(template_then_text, HOUR)
    assert reason is not None and reason.startswith("step 2 (step_2) needs WhatsApp's")
    # Delays add up: 10 h + 12 h after a message an hour old is still inside; 10 h + 13 h is not.
    assert (
        problem(
            [step(Channel.WHATSAPP, 1, delay=10 * HOUR), step(Channel.WHATSAPP, 2, delay=12 * HOUR)], HOUR
        )
        is None
    )
    late = problem(
        [step(Channel.WHATSAPP, 1, delay=10 * HOUR), step(Channel.WHATSAPP, 2, delay=13 * HOUR)], HOUR
    )
    assert late is not None and late.startswith("step 2")


def test_a_step_after_an_event_is_bounded_by_the_step_before_not_by_its_delay() -> None:
    # Its delay counts from the event, which may carry an older time: only the previous step's
    # bound is certain, so the check never refuses on the delay.
    steps = [
        step(Channel.WHATSAPP, 1, TEMPLATE),
        step(Channel.WHATSAPP, 2, delay=48 * HOUR, after_event=True),
    ]
    assert problem(steps, HOUR) is None
    assert problem(steps, None) is not None  # never wrote: closed whenever it comes


@pytest.mark.parametrize(
    ("channel", "content"),
    [
        (Channel.WHATSAPP, TEMPLATE),
        (Channel.MESSENGER, TAGGED),
        (Channel.LINKEDIN, None),
        (Channel.LINKEDIN, {"kind": "invitation", "note": "Hi"}),
    ],
)
def test_templates_message_tags_and_linkedin_are_never_refused(
    channel: Channel, content: dict[str, Any] | None
) -> None:
    steps = [step(channel, 1, content), step(channel, 2, content, delay=30 * 24 * HOUR)]
    assert earliest_dues(steps, NOW) == []
    assert problem(steps, None) is None


@pytest.mark.parametrize("messaging_type", ["RESPONSE", "UPDATE"])
def test_messenger_response_and_update_need_the_standard_window(messaging_type: str) -> None:
    content = {"kind": "text", "text": "x", "messaging_type": messaging_type}
    assert problem([step(Channel.MESSENGER, 1, content)], 23 * HOUR) is None
    reason = problem([step(Channel.MESSENGER, 1, content)], 24 * HOUR)
    assert reason is not None and "Messenger's 24-hour standard messaging window" in reason
    assert "use messaging_type MESSAGE_TAG" in reason
    # Plain text (no content) goes as UPDATE.
    assert problem([step(Channel.MESSENGER, 1)], None) is not None


def test_messenger_human_agent_gets_its_7_days() -> None:
    assert problem([step(Channel.MESSENGER, 1, HUMAN_AGENT)], 6 * 24 * HOUR) is None
    reason = problem([step(Channel.MESSENGER, 1, HUMAN_AGENT)], 7 * 24 * HOUR)
    assert reason is not None and "7-day human agent window" in reason


IMAGE = "https://example.com/a.png"
EVERY_KIND = [
    (Channel.WHATSAPP, None),
    (Channel.WHATSAPP, {"kind": "text", "text": "x"}),
    (Channel.WHATSAPP, {"kind": "media", "media_type": "image", "media": {"link": IMAGE}}),
    (Channel.WHATSAPP, TEMPLATE),
    (Channel.MESSENGER, None),
    (Channel.MESSENGER, {"kind": "text", "text": "x", "messaging_type": "RESPONSE"}),
    (Channel.MESSENGER, {"kind": "media", "media_type": "image", "url": IMAGE}),
    (Channel.MESSENGER, TAGGED),
    (Channel.MESSENGER, HUMAN_AGENT),
]


@pytest.mark.parametrize(("channel", "content"), EVERY_KIND)
@pytest.mark.parametrize(
    "wrote_ago", [None, HOUR, 24 * HOUR - timedelta(microseconds=1), 24 * HOUR, 7 * 24 * HOUR, 8 * 24 * HOUR]
)
def test_enqueue_refuses_a_step_due_now_exactly_when_the_dispatcher_would_hold_it(
    channel: Channel, content: dict[str, Any] | None, wrote_ago: timedelta | None
) -> None:
    """One rule, two places: for a step due now, the enqueue refusal and the send-time hold agree."""
    spec = channel_spec(channel)
    parsed = None if content is None else spec.parse_content(content)
    last = None if wrote_ago is None else NOW - wrote_ago
    message = OutboundMessage(
        queue_id=1,
        idempotency_key="idem-0123456789abcdef",
        channel=channel,
        sender_account_id=uuid.uuid4(),
        sender_provider_id="sender-1",
        recipient="15550100001" if channel is Channel.WHATSAPP else "6284930172648239",
        body="x",
        message_type="intro",
        content=content,
        last_inbound_at=last,
    )
    step_1 = WindowStep(1, "intro", spec.window_rule(parsed))
    refused = window_problem(earliest_dues([step_1], NOW), last, NOW) is not None
    assert refused == (spec.hold_reason(message, NOW) is not None)
