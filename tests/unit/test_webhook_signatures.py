"""Webhook authentication, body decoding and parsing, without Postgres."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.channels.auth import meta_signature, verify_meta_signature
from shared.channels.unipile.webhook import verify_unipile_secret
from shared.providers.outcome import Channel
from shared.storage.db import DatabaseUnavailableError
from shared.webhooks import (
    UNRECOGNISED_PAYLOAD_MAX_BYTES,
    MalformedBodyError,
    ProviderEvent,
    StoreReport,
    WebhookDeps,
    WebhookSecretMissingError,
    WebhookSecrets,
    decode_body,
    handle_request,
    handle_webhook,
    load_json,
    parse_events,
    verify_subscription,
)

META_SECRET = "test-meta-app-secret"
UNIPILE_SECRET = "test-unipile-webhook-secret"
VERIFY_TOKEN = "test-meta-verify-token"
SECRETS = WebhookSecrets(META_SECRET, UNIPILE_SECRET, VERIFY_TOKEN)


def sign(body: bytes, secret: str = META_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class RecordingStore:
    """Stands in for Postgres: remembers what it was asked to store."""

    def __init__(self) -> None:
        self.saved: list[tuple[Channel, list[ProviderEvent]]] = []

    def save(self, channel: Channel, events: Sequence[ProviderEvent]) -> StoreReport:
        self.saved.append((channel, list(events)))
        return StoreReport(stored=len(events), duplicates=0, ledger_updates=0)


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture
def deps(store: RecordingStore) -> WebhookDeps:
    return WebhookDeps(store=store, secrets=SECRETS)


def whatsapp_body(*statuses: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "1065"},
                            "statuses": list(statuses),
                        },
                    }
                ],
            }
        ],
    }


def wa_status(wamid: str, status: str, ts: str = "1763924700", **extra: Any) -> dict[str, Any]:
    return {"id": wamid, "status": status, "timestamp": ts, "recipient_id": "15551230001", **extra}


BODY = json.dumps(whatsapp_body(wa_status("wamid.A", "delivered"))).encode()


# --- Meta signature ---------------------------------------------------------------------------


def test_meta_signature_matches_an_independent_hmac() -> None:
    assert meta_signature(META_SECRET, BODY) == sign(BODY)


def test_valid_meta_signature_is_accepted() -> None:
    assert verify_meta_signature(META_SECRET, {"x-hub-signature-256": sign(BODY)}, BODY)


def test_meta_signature_with_another_secret_is_rejected() -> None:
    assert not verify_meta_signature(META_SECRET, {"x-hub-signature-256": sign(BODY, "other")}, BODY)


def test_missing_meta_signature_is_rejected() -> None:
    assert not verify_meta_signature(META_SECRET, {"content-type": "application/json"}, BODY)
    assert not verify_meta_signature(META_SECRET, {"x-hub-signature-256": ""}, BODY)


@pytest.mark.parametrize("prefix", ["sha1=", "", "sha512=", "SHA256:", "sha256 "])
def test_meta_signature_with_a_wrong_prefix_is_rejected(prefix: str) -> None:
    digest = sign(BODY).removeprefix("sha256=")
    assert not verify_meta_signature(META_SECRET, {"x-hub-signature-256": prefix + digest}, BODY)


def test_meta_signature_over_a_tampered_body_is_rejected() -> None:
    tampered = BODY.replace(b"delivered", b"read")
    assert tampered != BODY
    assert not verify_meta_signature(META_SECRET, {"x-hub-signature-256": sign(BODY)}, tampered)


def test_meta_sha1_header_alone_is_not_enough() -> None:
    sha1 = "sha1=" + hmac.new(META_SECRET.encode(), BODY, hashlib.sha1).hexdigest()
    assert not verify_meta_signature(META_SECRET, {"x-hub-signature": sha1}, BODY)


@pytest.mark.parametrize("name", ["X-Hub-Signature-256", "x-hub-signature-256", "X-HUB-SIGNATURE-256"])
def test_meta_header_name_is_case_insensitive(name: str) -> None:
    assert verify_meta_signature(META_SECRET, {name: sign(BODY)}, BODY)


def test_meta_hex_digest_is_case_insensitive() -> None:
    upper = "sha256=" + sign(BODY).removeprefix("sha256=").upper()
    assert verify_meta_signature(META_SECRET, {"x-hub-signature-256": upper}, BODY)


def test_non_ascii_signature_header_is_rejected_not_an_error() -> None:
    assert not verify_meta_signature(META_SECRET, {"x-hub-signature-256": "sha256=é" * 8}, BODY)


def test_empty_meta_secret_fails_closed() -> None:
    with pytest.raises(WebhookSecretMissingError):
        verify_meta_signature("", {"x-hub-signature-256": sign(BODY, "")}, BODY)


# --- Unipile shared secret -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unipile-auth", "Unipile-Auth", "UNIPILE-AUTH"])
def test_unipile_secret_header_is_case_insensitive(name: str) -> None:
    assert verify_unipile_secret(UNIPILE_SECRET, {name: UNIPILE_SECRET})


@pytest.mark.parametrize(
    "headers",
    [{}, {"unipile-auth": ""}, {"unipile-auth": "wrong"}, {"unipile-auth": UNIPILE_SECRET + "x"}],
)
def test_unipile_wrong_or_missing_secret_is_rejected(headers: dict[str, str]) -> None:
    assert not verify_unipile_secret(UNIPILE_SECRET, headers)


def test_empty_unipile_secret_fails_closed() -> None:
    with pytest.raises(WebhookSecretMissingError):
        verify_unipile_secret("", {"unipile-auth": ""})


# --- body decoding --------------------------------------------------------------------------------


def test_base64_body_is_decoded_to_the_signed_bytes() -> None:
    raw = '{"text":"caf\u00e9 \u2603"}'.encode()
    assert decode_body(base64.b64encode(raw).decode(), True) == raw
    assert decode_body(raw.decode("utf-8"), False) == raw
    assert decode_body(None, False) == b""


def test_invalid_base64_is_malformed() -> None:
    with pytest.raises(MalformedBodyError):
        decode_body("not base64!!", True)


def test_base64_request_is_verified_on_the_decoded_bytes(deps: WebhookDeps, store: RecordingStore) -> None:
    encoded = base64.b64encode(BODY).decode()
    result = handle_request(deps, Channel.WHATSAPP, {"X-Hub-Signature-256": sign(BODY)}, encoded, True)
    assert result.status_code == 200, result.body
    assert [e.dedupe_key for e in store.saved[0][1]] == ["wamid.A:delivered"]
    # Signing the base64 text instead of the bytes must not pass.
    wrong = handle_request(
        deps, Channel.WHATSAPP, {"x-hub-signature-256": sign(encoded.encode())}, encoded, True
    )
    assert wrong.status_code == 401


@pytest.mark.parametrize("body", [b"NaN", b'{"a": Infinity}', b"\xff\xfe", b"{", b"[" * 100_000])
def test_non_json_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedBodyError):
        load_json(body)


def test_nul_and_lone_surrogates_are_replaced_not_fatal() -> None:
    assert load_json(b'{"t": "a\\u0000b", "s": "\\ud800"}') == {"t": "a\ufffdb", "s": "?"}


# --- handle_webhook: nothing is stored unless authentic and JSON -----------------------------------


def test_bad_signature_is_401_and_nothing_stored(deps: WebhookDeps, store: RecordingStore) -> None:
    result = handle_webhook(deps, Channel.WHATSAPP, {"x-hub-signature-256": sign(BODY, "x")}, BODY)
    assert result.status_code == 401
    assert store.saved == []


def test_missing_signature_is_401_and_nothing_stored(deps: WebhookDeps, store: RecordingStore) -> None:
    assert handle_webhook(deps, Channel.MESSENGER, {}, BODY).status_code == 401
    assert (
        handle_webhook(deps, Channel.LINKEDIN, {"x-hub-signature-256": sign(BODY)}, BODY).status_code == 401
    )
    assert store.saved == []


def test_signed_non_json_is_400_and_nothing_stored(deps: WebhookDeps, store: RecordingStore) -> None:
    body = b"<xml/>"
    result = handle_webhook(deps, Channel.WHATSAPP, {"x-hub-signature-256": sign(body)}, body)
    assert result.status_code == 400
    assert store.saved == []


def test_signed_unknown_shape_is_200_and_stored_as_unrecognised(
    deps: WebhookDeps, store: RecordingStore
) -> None:
    body = b'{"object":"instagram","something":[1,2,3]}'
    result = handle_webhook(deps, Channel.MESSENGER, {"x-hub-signature-256": sign(body)}, body)
    assert result.status_code == 200
    assert result.json() == {"stored": 1, "duplicates": 0}
    [(channel, [event])] = store.saved
    assert channel is Channel.MESSENGER
    assert event.event_type == "unrecognised"
    assert event.payload == {"object": "instagram", "something": [1, 2, 3]}
    assert event.status is None and event.provider_message_id is None


class UnavailableStore:
    def save(self, channel: Channel, events: Sequence[ProviderEvent]) -> StoreReport:
        raise DatabaseUnavailableError("Postgres at test is unreachable")


def test_database_unavailable_is_503_so_the_provider_retries() -> None:
    deps = WebhookDeps(store=UnavailableStore(), secrets=SECRETS)
    result = handle_webhook(deps, Channel.WHATSAPP, {"x-hub-signature-256": sign(BODY)}, BODY)
    assert result.status_code == 503


def test_unipile_with_the_right_secret_is_stored(deps: WebhookDeps, store: RecordingStore) -> None:
    body = json.dumps(unipile_event()).encode()
    result = handle_webhook(deps, Channel.LINKEDIN, {"Unipile-Auth": UNIPILE_SECRET}, body)
    assert result.status_code == 200
    assert store.saved[0][1][0].provider_message_id == "msg-1"


# --- Meta subscription check ----------------------------------------------------------------------


def test_subscription_challenge_is_echoed_for_our_token() -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    result = verify_subscription(SECRETS, query)
    assert (result.status_code, result.body, result.content_type) == (200, "1158201444", "text/plain")


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"},
        # The app secret is not the verify token: it must never be accepted in a URL.
        {"hub.mode": "subscribe", "hub.verify_token": META_SECRET, "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN},
        {},
    ],
    ids=["guess", "app-secret", "unsubscribe", "no-token", "no-challenge", "empty"],
)
def test_subscription_check_is_refused_otherwise(query: dict[str, str]) -> None:
    result = verify_subscription(SECRETS, query)
    assert result.status_code == 403
    assert "1" not in result.body


def test_empty_verify_token_fails_closed() -> None:
    secrets = WebhookSecrets(META_SECRET, UNIPILE_SECRET, "")
    with pytest.raises(WebhookSecretMissingError):
        verify_subscription(secrets, {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"})


# --- parsing: WhatsApp ----------------------------------------------------------------------------


def test_whatsapp_statuses_become_one_row_each() -> None:
    errors = [{"code": 131026, "title": "Message undeliverable"}]
    doc = whatsapp_body(
        wa_status("wamid.A", "sent", biz_opaque_callback_data="so1-key-a"),
        wa_status("wamid.A", "delivered", "1763924701", biz_opaque_callback_data="so1-key-a"),
        wa_status("wamid.B", "failed", errors=errors),
    )
    events = parse_events(Channel.WHATSAPP, doc)
    assert [(e.dedupe_key, e.status, e.provider_message_id) for e in events] == [
        ("wamid.A:sent", "sent", "wamid.A"),
        ("wamid.A:delivered", "delivered", "wamid.A"),
        ("wamid.B:failed", "failed", "wamid.B"),
    ]
    assert all(e.event_type == "status" and e.recipient == "15551230001" for e in events)
    assert [e.idempotency_key for e in events] == ["so1-key-a", "so1-key-a", None]
    assert events[1].occurred_at == datetime(2025, 11, 23, 19, 5, 1, tzinfo=UTC)
    assert events[2].payload["errors"] == errors


def test_whatsapp_statuses_across_entries_and_changes() -> None:
    doc = whatsapp_body(wa_status("wamid.A", "read"))
    doc["entry"].append(
        whatsapp_body(wa_status("wamid.C", "delivered"), wa_status("wamid.D", "read"))["entry"][0]
    )
    keys = [e.dedupe_key for e in parse_events(Channel.WHATSAPP, doc)]
    assert keys == ["wamid.A:read", "wamid.C:delivered", "wamid.D:read"]


INBOUND_TEXT = {
    "from": "15551230001",
    "id": "wamid.IN",
    "timestamp": "1763924700",
    "type": "text",
    "text": {"body": "yes please"},
}


def test_whatsapp_inbound_message_is_a_reply_from_the_contact() -> None:
    doc = whatsapp_body()
    value = doc["entry"][0]["changes"][0]["value"]
    value.pop("statuses")
    value["contacts"] = [{"profile": {"name": "Ada"}, "wa_id": "15551230001"}]
    value["messages"] = [INBOUND_TEXT]
    [event] = parse_events(Channel.WHATSAPP, doc)
    assert (event.event_type, event.dedupe_key, event.status) == ("message", "inbound:wamid.IN", "received")
    assert (event.contact, event.provider_message_id) == ("15551230001", "wamid.IN")
    assert event.is_reply
    assert event.payload == INBOUND_TEXT
    assert event.occurred_at == datetime(2025, 11, 23, 19, 5, tzinfo=UTC)


@pytest.mark.parametrize("kind", ["reaction", "system"])
def test_whatsapp_reactions_and_system_notices_are_not_replies(kind: str) -> None:
    doc = whatsapp_body()
    doc["entry"][0]["changes"][0]["value"]["messages"] = [{**INBOUND_TEXT, "type": kind}]
    doc["entry"][0]["changes"][0]["value"].pop("statuses")
    [event] = parse_events(Channel.WHATSAPP, doc)
    assert (event.event_type, event.contact, event.is_reply) == (kind, "15551230001", False)
    assert event.stop_names == (kind, f"{kind}:received")


def test_whatsapp_value_with_statuses_and_messages_keeps_both() -> None:
    doc = whatsapp_body(wa_status("wamid.A", "read"))
    doc["entry"][0]["changes"][0]["value"]["messages"] = [INBOUND_TEXT, {"type": "text"}]
    events = parse_events(Channel.WHATSAPP, doc)
    assert [e.event_type for e in events] == ["status", "message", "unrecognised"]
    assert events[0].contact == events[0].recipient
    assert events[2].payload == {"type": "text"}, "an inbound item without id or sender is kept whole"


def test_whatsapp_status_without_id_is_unrecognised_but_others_parse() -> None:
    doc = whatsapp_body({"status": "read"}, wa_status("wamid.A", "read"))
    events = parse_events(Channel.WHATSAPP, doc)
    assert [e.event_type for e in events] == ["unrecognised", "status"]


def test_unrecognised_dedupe_key_depends_on_content_only() -> None:
    a = parse_events(Channel.WHATSAPP, {"x": 1, "y": [1]})
    b = parse_events(Channel.WHATSAPP, {"y": [1], "x": 1})
    c = parse_events(Channel.WHATSAPP, {"x": 2, "y": [1]})
    assert a[0].dedupe_key == b[0].dedupe_key != c[0].dedupe_key


@pytest.mark.parametrize(
    "doc", [None, 3, "text", [], {"entry": "x"}, {"entry": [None]}, {"entry": [{"changes": [5]}]}]
)
def test_any_json_parses_to_at_least_one_row(doc: Any) -> None:
    for channel in Channel:
        events = parse_events(channel, doc)
        assert events and all(e.event_type == "unrecognised" for e in events)


# --- parsing: Messenger ---------------------------------------------------------------------------


def messenger_body(*items: dict[str, Any]) -> dict[str, Any]:
    return {"object": "page", "entry": [{"id": "PAGE", "time": 1763924701123, "messaging": list(items)}]}


ECHO = {
    "sender": {"id": "PAGE"},
    "recipient": {"id": "PSID1"},
    "timestamp": 1763924701000,
    "message": {"is_echo": True, "app_id": 1517, "metadata": "so1-key", "mid": "m_1", "text": "hi"},
}


def test_messenger_echo() -> None:
    [event] = parse_events(Channel.MESSENGER, messenger_body(ECHO))
    assert (event.event_type, event.dedupe_key, event.status) == ("message_echo", "echo:m_1", "sent")
    assert (event.provider_message_id, event.idempotency_key, event.recipient) == ("m_1", "so1-key", "PSID1")
    assert event.occurred_at == datetime(2025, 11, 23, 19, 5, 1, tzinfo=UTC)


def test_messenger_delivery_is_one_row_per_mid_with_the_watermark() -> None:
    delivery = {
        "sender": {"id": "PSID1"},
        "recipient": {"id": "PAGE"},
        "timestamp": 1763924702000,
        "delivery": {"mids": ["m_1", "m_2"], "watermark": 1763924701500},
    }
    events = parse_events(Channel.MESSENGER, messenger_body(delivery))
    assert [(e.dedupe_key, e.provider_message_id, e.status) for e in events] == [
        ("delivery:m_1", "m_1", "delivered"),
        ("delivery:m_2", "m_2", "delivered"),
    ]
    assert all(e.recipient == "PSID1" for e in events)
    assert events[0].watermark == datetime(2025, 11, 23, 19, 5, 1, 500000, tzinfo=UTC)


def test_messenger_read_has_a_watermark_and_no_mid() -> None:
    read = {
        "sender": {"id": "PSID1"},
        "recipient": {"id": "PAGE"},
        "timestamp": 1,
        "read": {"watermark": 1763924703000},
    }
    [event] = parse_events(Channel.MESSENGER, messenger_body(read))
    assert (event.event_type, event.dedupe_key, event.status) == ("read", "read:PSID1:1763924703000", "read")
    assert event.provider_message_id is None
    assert (event.recipient, event.watermark) == ("PSID1", datetime(2025, 11, 23, 19, 5, 3, tzinfo=UTC))


def test_messenger_delivery_without_mids_is_a_watermark_for_the_person() -> None:
    delivery = {"sender": {"id": "PSID1"}, "timestamp": 1, "delivery": {"watermark": 1763924701500}}
    [event] = parse_events(Channel.MESSENGER, messenger_body(delivery))
    assert (event.event_type, event.dedupe_key, event.status) == (
        "delivery",
        "delivery:PSID1:1763924701500",
        "delivered",
    )
    assert (event.provider_message_id, event.recipient) == (None, "PSID1")
    assert event.watermark == datetime(2025, 11, 23, 19, 5, 1, 500000, tzinfo=UTC)


def test_messenger_mixed_delivery() -> None:
    inbound = {
        "sender": {"id": "PSID2"},
        "recipient": {"id": "PAGE"},
        "message": {"mid": "m_in", "text": "yo"},
    }
    read = {"sender": {"id": "PSID1"}, "read": {"watermark": 5}}
    events = parse_events(Channel.MESSENGER, messenger_body(ECHO, inbound, read))
    assert [e.event_type for e in events] == ["message_echo", "message", "read"]
    assert (events[1].contact, events[1].dedupe_key, events[1].is_reply) == ("PSID2", "message:m_in", True)
    assert events[1].payload == inbound
    assert (events[0].contact, events[2].contact) == ("PSID1", "PSID1")


def test_messenger_reaction_is_an_event_of_the_person_not_a_reply() -> None:
    reaction = {
        "sender": {"id": "PSID2"},
        "recipient": {"id": "PAGE"},
        "timestamp": 1458668856463,
        "reaction": {"reaction": "love", "emoji": "\u2764", "action": "react", "mid": "m_1"},
    }
    [event] = parse_events(Channel.MESSENGER, messenger_body(reaction))
    assert (event.event_type, event.status, event.contact, event.is_reply) == (
        "reaction",
        "received",
        "PSID2",
        False,
    )


# --- parsing: Unipile -----------------------------------------------------------------------------


def unipile_event(**overrides: Any) -> dict[str, Any]:
    event = {
        "event": "message_received",
        "account_id": "acc-1",
        "account_type": "LINKEDIN",
        "account_info": {"type": "LINKEDIN", "user_id": "ME"},
        "chat_id": "chat-1",
        "timestamp": "2025-11-23T19:05:02.000Z",
        "message_id": "msg-1",
        "message": "Great to connect",
        "sender": {"attendee_provider_id": "ME"},
        "attendees": [{"attendee_provider_id": "THEM"}],
        "is_sender": True,
    }
    return {**event, **overrides}


def test_unipile_message_sent_by_our_account() -> None:
    [event] = parse_events(Channel.LINKEDIN, unipile_event())
    assert (event.event_type, event.dedupe_key, event.status) == (
        "message_received",
        "message_received:msg-1",
        "sent",
    )
    assert (event.provider_message_id, event.provider_thread_id, event.recipient) == (
        "msg-1",
        "chat-1",
        "THEM",
    )
    assert event.occurred_at == datetime(2025, 11, 23, 19, 5, 2, tzinfo=UTC)
    # Reconciliation reads payload->>'text'.
    assert event.payload["text"] == "Great to connect"


def test_unipile_message_from_the_contact_is_received() -> None:
    doc = unipile_event(is_sender=False, sender={"attendee_provider_id": "THEM"})
    [event] = parse_events(Channel.LINKEDIN, doc)
    assert event.status == "received"
    assert event.recipient == "ME"
    assert (event.contact, event.is_reply) == ("THEM", True)
    ours = parse_events(Channel.LINKEDIN, unipile_event())[0]
    assert (ours.contact, ours.is_reply) == ("THEM", False)


def test_unipile_without_is_sender_compares_the_sender_with_the_account() -> None:
    doc = unipile_event()
    doc.pop("is_sender")
    assert parse_events(Channel.LINKEDIN, doc)[0].status == "sent"
    doc["sender"] = {"attendee_provider_id": "THEM"}
    assert parse_events(Channel.LINKEDIN, doc)[0].status == "received"


def test_unipile_read_of_our_message() -> None:
    [event] = parse_events(Channel.LINKEDIN, unipile_event(event="message_read"))
    assert (event.status, event.dedupe_key) == ("read", "message_read:msg-1")


@pytest.mark.parametrize(
    "doc",
    [
        unipile_event(event="account_status"),
        unipile_event(message_id=None),
        unipile_event(account_type="WHATSAPP"),
        {"AccountStatus": {"account_id": "x", "message": "OK"}},
    ],
)
def test_unipile_other_events_are_unrecognised(doc: dict[str, Any]) -> None:
    [event] = parse_events(Channel.LINKEDIN, doc)
    assert event.event_type == "unrecognised"
    assert event.status is None


# --- hostile requests -----------------------------------------------------------------------------

LONE_SURROGATE = "\udc80"


@pytest.mark.parametrize(
    ("channel", "headers"),
    [
        (Channel.WHATSAPP, {"x-hub-signature-256": "sha256=" + LONE_SURROGATE * 64}),
        (Channel.MESSENGER, {"x-hub-signature-256": sign(BODY)[:-1] + LONE_SURROGATE}),
        (Channel.LINKEDIN, {"unipile-auth": UNIPILE_SECRET + LONE_SURROGATE}),
        (Channel.LINKEDIN, {"unipile-auth": LONE_SURROGATE}),
    ],
    ids=["meta-all", "meta-last-char", "unipile-suffix", "unipile-only"],
)
def test_a_lone_surrogate_in_an_auth_header_is_401_not_a_crash(
    deps: WebhookDeps, store: RecordingStore, channel: Channel, headers: dict[str, str]
) -> None:
    result = handle_request(deps, channel, headers, BODY.decode(), False)
    assert result.status_code == 401
    assert store.saved == []


def test_signature_checks_answer_false_for_a_lone_surrogate() -> None:
    assert not verify_meta_signature(META_SECRET, {"x-hub-signature-256": "sha256=" + LONE_SURROGATE}, BODY)
    assert not verify_unipile_secret(UNIPILE_SECRET, {"unipile-auth": LONE_SURROGATE})


@pytest.mark.parametrize("field", ["hub.verify_token", "hub.challenge"])
def test_a_lone_surrogate_in_the_subscription_check_is_403(field: str) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    query[field] = query[field] + LONE_SURROGATE
    assert verify_subscription(SECRETS, query).status_code == 403


def test_a_text_body_with_a_lone_surrogate_is_400(deps: WebhookDeps, store: RecordingStore) -> None:
    body = '{"object":"x","t":"' + LONE_SURROGATE + '"}'
    result = handle_request(deps, Channel.WHATSAPP, {"x-hub-signature-256": sign(BODY)}, body, False)
    assert result.status_code == 400
    assert store.saved == []


def test_an_oversized_unrecognised_payload_is_stored_as_a_summary(
    deps: WebhookDeps, store: RecordingStore
) -> None:
    # 6 MB of a shape nothing reads, correctly signed: Lambda's request limit.
    body = json.dumps({"object": "page", "entry": [{"blob": "x" * 6_000_000}]}).encode()
    result = handle_webhook(deps, Channel.MESSENGER, {"x-hub-signature-256": sign(body)}, body)
    assert result.status_code == 200
    [(_, [event])] = store.saved
    item = json.loads(body)["entry"][0]
    whole = json.dumps(item, sort_keys=True, separators=(",", ":")).encode()
    assert event.event_type == "unrecognised"
    assert event.dedupe_key == "unrecognised:" + hashlib.sha256(whole).hexdigest(), "keyed on the whole item"
    stored = json.dumps(event.payload).encode()
    assert len(stored) < UNRECOGNISED_PAYLOAD_MAX_BYTES
    assert event.payload["sendonce_truncated"] is True
    assert event.payload["bytes"] == len(whole)
    assert event.payload["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert event.payload["body_bytes"] == len(body)
    assert event.payload["top_level_keys"] == ["blob"]
    assert event.payload["head"].startswith('{"blob":"xxx')


def test_an_unrecognised_payload_at_the_limit_is_kept_whole(deps: WebhookDeps, store: RecordingStore) -> None:
    overhead = len(json.dumps({"blob": ""}, separators=(",", ":")))
    item = {"blob": "x" * (UNRECOGNISED_PAYLOAD_MAX_BYTES - overhead)}
    body = json.dumps({"object": "page", "entry": [item]}).encode()
    handle_webhook(deps, Channel.MESSENGER, {"x-hub-signature-256": sign(body)}, body)
    [(_, [event])] = store.saved
    assert event.payload == item
