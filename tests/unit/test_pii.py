"""Contact data stays out of logs and dead-letter records."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from datetime import UTC, datetime

import pytest

from shared.observability import PiiScrubbingFormatter, logger, scrub
from shared.sweeper import dead_letter_record


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Key (channel, address)=(whatsapp, 15551234567) exists",
            "Key (channel, address)=(whatsapp, 155***67) exists",
        ),
        ("to +447700900123", "to 447***23"),
        ("psid 7654321098765432", "psid 765***32"),
        ("ACoAA00012345 and ACwAAB_xyz-123", "ACoAA*** and ACwAA***"),
    ],
)
def test_recipient_identifiers_are_masked(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "so1-8e6f1234567890abcdef12345678",  # an idempotency key
        "2026-12-02 21:40:00,123",
        "6f1c9a8e-0000-4000-8000-000000000001",
        "queue 123 took 12345678.5 ms",
        "wamid.HBgLMTU1NTAwMDAwMDEVAgARGBI1",
    ],
)
def test_ids_and_times_are_left_alone(text: str) -> None:
    assert scrub(text) == text


def test_a_logged_error_that_quotes_an_address_is_masked() -> None:
    formatter = logger.registered_formatter
    assert isinstance(formatter, PiiScrubbingFormatter), "the logger scrubs every line"
    try:
        raise ValueError("duplicate key value violates unique constraint: Key (address)=(15551234567)")
    except ValueError:
        record = logging.LogRecord(
            "sendonce", logging.ERROR, __file__, 1, "settle failed", None, sys.exc_info()
        )
    record.detail = "recipient 447700900123"
    line = formatter.format(record)
    assert "15551234567" not in line and "447700900123" not in line
    logged = json.loads(line)
    assert "155***67" in logged["exception"] and logged["detail"] == "recipient 447***23"


def test_dead_letter_records_carry_ids_not_addresses() -> None:
    contact = uuid.uuid4()
    record = dead_letter_record(
        {
            "queue_id": 7,
            "idempotency_key": "so1-abc",
            "campaign_id": uuid.uuid4(),
            "channel": "whatsapp",
            "contact_id": contact,
            "message_type": "intro",
            "attempts": 5,
            "failure_reason": "whatsapp:131026",
            "last_error": "permanent: whatsapp:131026",
            "failed_at": datetime(2026, 12, 2, tzinfo=UTC),
        }
    )
    assert record["contact_id"] == str(contact)
    assert "recipient" not in record and "body" not in record
