"""Personalised content (shared.content): the template grammar, fallbacks, deterministic
variants and per-channel limits, as pure functions."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from shared.content import (
    ContentProblem,
    ContentRejected,
    StepTemplate,
    TemplateError,
    parse_template,
    render_steps,
    text_length,
)
from shared.pacing import Action
from shared.providers.outcome import Channel
from shared.suppression import OptOutRules

CAMPAIGN = uuid.UUID("00000000-0000-0000-0000-000000000001")


def one(
    body: str, *, name: str = "", fields: dict[str, str] | None = None, channel: Channel = Channel.WHATSAPP
) -> str:
    [text] = render_steps(
        CAMPAIGN, channel, "15550000001", name, fields or {}, [StepTemplate(body, Action.MESSAGE)]
    )
    return text


def test_fields_fallbacks_and_literal_braces() -> None:
    assert one(
        "Hi {first_name}, {Company|your team} {{ok}}", fields={"company": "ACME"}, name="Ada Lovelace"
    ) == ("Hi Ada, ACME {ok}")
    assert one("Hi {first_name|there}!") == "Hi there!"
    assert one("Hi {first_name|there}!", fields={"First Name": "  "}) == "Hi there!", (
        "a blank field is absent"
    )
    assert one("{last_name}", name="Ada King Lovelace") == "King Lovelace"


def test_a_missing_variable_without_fallback_rejects_the_contact_with_the_reason() -> None:
    with pytest.raises(ContentRejected) as caught:
        one("Hi {first_name}, about {company}", name="Ada")
    assert caught.value.problem is ContentProblem.MISSING_VARIABLE
    assert caught.value.step == 1
    assert "{company}" in caught.value.detail


@pytest.mark.parametrize("body", ["Hi {first name}", "Hi {", "Hi }", "{~only}", "{a.b}", "{x|{y}}", "{0}"])
def test_malformed_templates_are_refused_when_defined(body: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(body)


def test_a_variant_is_stable_per_contact_and_spread_across_contacts() -> None:
    steps = [StepTemplate("{~Hi|Hello|Hey} {first_name|there}", Action.MESSAGE)]
    first = render_steps(CAMPAIGN, Channel.WHATSAPP, "15550000001", "Ada", {}, steps)
    again = [render_steps(CAMPAIGN, Channel.WHATSAPP, "15550000001", "Ada", {}, steps) for _ in range(20)]
    assert all(a == first for a in again)
    greetings = Counter(
        render_steps(CAMPAIGN, Channel.WHATSAPP, f"1555000{n:04d}", "", {}, steps)[0].split()[0]
        for n in range(600)
    )
    assert set(greetings) == {"Hi", "Hello", "Hey"}
    assert min(greetings.values()) > 120, greetings


@pytest.mark.parametrize(
    ("channel", "action", "limit"),
    [
        (Channel.WHATSAPP, Action.MESSAGE, 4096),
        (Channel.MESSENGER, Action.MESSAGE, 2000),
        (Channel.LINKEDIN, Action.MESSAGE, 3000),
        (Channel.LINKEDIN, Action.INVITATION, 300),
    ],
)
def test_rendered_text_over_the_channel_limit_is_rejected(
    channel: Channel, action: Action, limit: int
) -> None:
    at = [StepTemplate("{note}", action)]
    render_steps(CAMPAIGN, channel, "x", "", {"note": "a" * limit}, at)
    with pytest.raises(ContentRejected) as caught:
        render_steps(CAMPAIGN, channel, "x", "", {"note": "a" * (limit + 1)}, at)
    assert caught.value.problem is ContentProblem.TOO_LONG
    # Counted in UTF-16 units: an emoji outside the BMP counts two.
    assert text_length("\U0001f600") == 2


def test_an_empty_rendered_text_is_rejected() -> None:
    with pytest.raises(ContentRejected) as caught:
        one("{first_name|}  ")
    assert caught.value.problem is ContentProblem.EMPTY_BODY


def test_opt_out_keywords_match_whole_messages_only() -> None:
    rules = OptOutRules()
    for text in ("STOP", " stop. ", "Unsubscribe!", "Arrêt", "stop promotions", "STOPP"):
        assert rules.is_keyword(text), text
    for text in ("don't stop", "stop by tomorrow?", "", "STOP" * 30):
        assert not rules.is_keyword(text), text
