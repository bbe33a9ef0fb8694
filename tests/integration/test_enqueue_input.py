"""Enqueue on a real Postgres with hostile and ambiguous input: recipient identity (seed 003),
the sender's default region, refused addresses, and conflicts that must write nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared.addresses import AddressProblem
from shared.enqueue import MAX_INVALID_EXAMPLES, CampaignSenderConflictError, enqueue_campaign
from shared.events import EnqueueRequest
from shared.storage.db import Database

pytestmark = pytest.mark.integration

SEED_003_TRIO = ["+44 7700 900123", "0044 7700 900123", "07700 900123"]
LINKEDIN_ID = "ACoAAAcDMMQBODyLwZrRcgYhrkCafURGqva0U4E"


def request(
    addresses: list[str],
    *,
    channel: str = "whatsapp",
    sender: str = "106540352242922",
    region: str | None = None,
    campaign_id: uuid.UUID | None = None,
) -> EnqueueRequest:
    event: dict[str, Any] = {
        "source": "sendonce.manual",
        "campaign_id": str(campaign_id or uuid.uuid4()),
        "campaign_name": "input",
        "channel": channel,
        "sender_provider_id": sender,
        "contacts": [{"address": a} for a in addresses],
        "steps": [{"message_type": "intro", "body": "hello"}],
    }
    if region is not None:
        event["sender_default_region"] = region
    return EnqueueRequest.model_validate(event)


def contacts(database: Database) -> list[str]:
    return [r["address"] for r in database.fetch_all("SELECT address FROM contacts ORDER BY address")]


def count(database: Database, table: str) -> int:
    row = database.fetch_one(f"SELECT count(*) AS n FROM {table}")
    assert row is not None
    return int(row["n"])


def everything(database: Database) -> dict[str, Any]:
    return {
        table: count(database, table)
        for table in ("sender_accounts", "campaigns", "contacts", "campaign_contacts", "send_queue")
    } | {
        "regions": [
            dict(r)
            for r in database.fetch_all(
                "SELECT provider_account_id, default_region, updated_at FROM sender_accounts ORDER BY 1"
            )
        ]
    }


# --- identity -------------------------------------------------------------------------------


def test_seed_003_trio_is_one_contact_and_one_queue_row(database: Database) -> None:
    report = enqueue_campaign(database, request(SEED_003_TRIO, region="GB"))
    assert (report.rows_enqueued, report.duplicate_contacts_dropped, report.invalid_contacts) == (1, 2, 0)
    assert contacts(database) == ["447700900123"]
    assert count(database, "send_queue") == 1


def test_the_sender_region_is_stored_and_reads_later_requests(database: Database) -> None:
    first = enqueue_campaign(database, request(["+44 7700 900123"], region="GB"))
    assert first.sender_default_region == "GB"
    # A later request from the same sender, without the region, reads a national number by it.
    later = enqueue_campaign(database, request(["07700 900123", "07700 900456"]))
    assert later.sender_default_region == "GB"
    assert later.invalid_contacts == 0
    assert contacts(database) == ["447700900123", "447700900456"]
    row = database.fetch_one("SELECT default_region FROM sender_accounts")
    assert row is not None and row["default_region"] == "GB"


def test_a_national_number_without_a_region_is_refused_with_the_fix(database: Database) -> None:
    report = enqueue_campaign(database, request(["07700 900123", "+44 7700 900999"]))
    assert report.invalid_by_reason == {AddressProblem.NATIONAL_NUMBER_WITHOUT_REGION.value: 1}
    [example] = report.invalid_examples
    assert example.index == 0
    assert "sender_default_region" in example.detail
    assert contacts(database) == ["447700900999"]


def test_full_width_and_arabic_indic_digits_are_one_ascii_contact(database: Database) -> None:
    report = enqueue_campaign(
        database,
        request(
            [
                "+44 7700 900123",
                "+\uff14\uff14 \uff17\uff17\uff10\uff10 \uff19\uff10\uff10\uff11\uff12\uff13",
                "+\u0664\u0664 \u0667\u0667\u0660\u0660 \u0669\u0660\u0660\u0661\u0662\u0663",
            ]
        ),
    )
    assert (report.rows_enqueued, report.duplicate_contacts_dropped) == (1, 2)
    assert contacts(database) == ["447700900123"]


def test_a_linkedin_id_with_a_zero_width_space_is_refused(database: Database) -> None:
    hidden = LINKEDIN_ID[:8] + "\u200b" + LINKEDIN_ID[8:]
    report = enqueue_campaign(
        database, request([LINKEDIN_ID, hidden], channel="linkedin", sender="t5XY4yQzR9WVrlNFyyx1DA")
    )
    assert report.rows_enqueued == 1
    assert report.invalid_by_reason == {AddressProblem.INVISIBLE_CHARACTER.value: 1}
    assert "U+200B" in report.invalid_examples[0].detail
    assert contacts(database) == [LINKEDIN_ID]


# --- conflicts write nothing --------------------------------------------------------------------


def test_a_campaign_id_reused_with_another_sender_is_a_clear_error_and_writes_nothing(
    database: Database,
) -> None:
    campaign = uuid.uuid4()
    enqueue_campaign(database, request(["+44 7700 900123"], campaign_id=campaign, sender="first-sender"))
    before = everything(database)
    with pytest.raises(CampaignSenderConflictError) as caught:
        # A new sender, a region and new contacts: the sender row, its region and the contacts
        # would all be written before the conflict is seen, in the same transaction.
        enqueue_campaign(
            database,
            request(["07700 900777"], campaign_id=campaign, sender="second-sender", region="GB"),
        )
    message = str(caught.value)
    assert str(campaign) in message
    assert "'first-sender'" in message and "'second-sender'" in message
    assert "Nothing was enqueued" in message
    assert everything(database) == before


# --- the report stays small ---------------------------------------------------------------------


def test_fifty_thousand_refused_addresses_give_a_small_masked_report(database: Database) -> None:
    kinds = [
        lambda i: f"07700 9{i:05d}",  # national, no region
        lambda i: f"+44 7700 9{i:05d} ext {i % 10}",  # an extension
        lambda i: f"+44 77\u200b00 9{i:05d}",  # an invisible character
        lambda i: f"{i % 1000}",  # too short
    ]
    addresses = [kinds[i % len(kinds)](i) for i in range(50_000)]
    report = enqueue_campaign(database, request(addresses))
    body = json.dumps(report.model_dump(mode="json")).encode()

    assert len(body) < 64 * 1024, f"{len(body)} bytes"
    assert report.invalid_contacts == 50_000
    assert report.invalid_by_reason == {
        AddressProblem.NATIONAL_NUMBER_WITHOUT_REGION.value: 12_500,
        AddressProblem.UNEXPECTED_CHARACTER.value: 12_500,
        AddressProblem.INVISIBLE_CHARACTER.value: 12_500,
        AddressProblem.NOT_A_POSSIBLE_NUMBER.value: 12_500,
    }
    assert len(report.invalid_examples) == MAX_INVALID_EXAMPLES
    assert [e.index for e in report.invalid_examples] == list(range(MAX_INVALID_EXAMPLES))
    for example in report.invalid_examples:
        raw = addresses[example.index]
        digits = "".join(ch for ch in raw if ch.isdigit())
        if len(digits) >= 8:
            assert digits not in example.address.replace(" ", ""), "the middle digits are masked"
            assert digits[4:-2] not in "".join(ch for ch in example.address if ch.isdigit())
    assert count(database, "send_queue") == 0
