"""Personalised content (shared.content): the template grammar, fallbacks, deterministic
variants and per-channel limits, as pure functions."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping
from types import SimpleNamespace

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
from shared.suppression import OptOutRules, find_opt_outs

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


def _event(payload: Mapping[str, object], *, contact: str | None, status: str | None) -> SimpleNamespace:
    return SimpleNamespace(payload=payload, contact=contact, status=status)


def test_provider_opt_out_shapes_are_recognised() -> None:
    rules = OptOutRules()
    # WhatsApp: user_preferences webhook (Meta, "user_preferences webhook reference"), stored as an
    # unrecognised change; a template's quick-reply button; an interactive reply button.
    preference = {
        "field": "user_preferences",
        "value": {
            "user_preferences": [
                {
                    "wa_id": "16505551234",
                    "category": "marketing_messages",
                    "value": "stop",
                    "timestamp": 1731705721,
                },
                {
                    "wa_id": "16505550000",
                    "category": "marketing_messages",
                    "value": "resume",
                    "timestamp": 1731705721,
                },
            ]
        },
    }
    button = {"from": "15550000001", "type": "button", "button": {"payload": "OPT_OUT", "text": "No thanks"}}
    reply_button = {
        "from": "15550000002",
        "type": "interactive",
        "interactive": {"type": "button_reply", "button_reply": {"id": "x1", "title": "Stop"}},
    }
    found = find_opt_outs(
        Channel.WHATSAPP,
        [
            _event(preference, contact=None, status=None),
            _event(button, contact="15550000001", status="received"),
            _event(reply_button, contact="15550000002", status="received"),
            _event({"type": "text", "text": {"body": "STOP"}}, contact="15550000003", status="sent"),
        ],
        rules,
    )
    assert {(o.contact, o.source.value) for o in found} == {
        ("16505551234", "provider_preference"),
        ("15550000001", "button"),
        ("15550000002", "button"),
    }, "a resume is not an opt-out, and only what the contact sent counts"

    # Messenger: messaging_optins STOP_NOTIFICATIONS, a quick reply payload, a postback, a keyword;
    # the Page's own echo never counts.
    def item(psid: str, **extra: object) -> dict[str, object]:
        return {"sender": {"id": psid}, "recipient": {"id": "PAGE"}, "timestamp": 1, **extra}

    messenger = [
        item(
            "p1",
            optin={"type": "notification_messages", "notification_messages_status": "STOP_NOTIFICATIONS"},
        ),
        item("p2", message={"mid": "m2", "text": "ok", "quick_reply": {"payload": "UNSUBSCRIBE"}}),
        item("p3", postback={"title": "Unsubscribe", "payload": "MENU_3"}),
        item("p4", message={"mid": "m4", "text": "arrêt"}),
        item("p5", message={"mid": "m5", "text": "STOP", "is_echo": True}),
        item(
            "p6",
            optin={"type": "notification_messages", "notification_messages_status": "RESUME_NOTIFICATIONS"},
        ),
    ]
    found = find_opt_outs(Channel.MESSENGER, [_event(m, contact=None, status=None) for m in messenger], rules)
    assert [(o.contact, o.source.value) for o in found] == [
        ("p1", "provider_preference"),
        ("p2", "button"),
        ("p3", "button"),
        ("p4", "keyword"),
    ]
    unipile = _event({"text": "Unsubscribe"}, contact="ACoAAB", status="received")
    assert [o.contact for o in find_opt_outs(Channel.LINKEDIN, [unipile], rules)] == ["ACoAAB"]
