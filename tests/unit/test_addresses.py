"""Recipient identity without Postgres: one person, one stored address (seed 003)."""

from __future__ import annotations

import pytest

from shared.addresses import (
    AddressProblem,
    InvalidAddressError,
    mask_address,
    normalise_address,
    validate_region,
)
from shared.providers.outcome import Channel

SEED_003_TRIO = ["+44 7700 900123", "0044 7700 900123", "07700 900123"]


def refusal(channel: Channel, raw: str, region: str | None = None) -> InvalidAddressError:
    with pytest.raises(InvalidAddressError) as caught:
        normalise_address(channel, raw, region)
    return caught.value


# --- WhatsApp numbers -------------------------------------------------------------------------


def test_seed_003_trio_is_one_number_for_a_gb_sender() -> None:
    assert {normalise_address(Channel.WHATSAPP, raw, "GB") for raw in SEED_003_TRIO} == {"447700900123"}


@pytest.mark.parametrize("raw", ["+44 7700 900123", "0044 7700 900123", "+44 (0)7700-900.123"])
def test_international_forms_need_no_region(raw: str) -> None:
    assert normalise_address(Channel.WHATSAPP, raw) == "447700900123"


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("2025550123", "US", "12025550123"),  # national, no trunk prefix
        ("1 202 555 0123", "US", "12025550123"),  # NANP trunk prefix 1
        ("011 44 7700 900123", "US", "447700900123"),  # the US international prefix
        ("0011 44 7700 900123", "AU", "447700900123"),  # the Australian one
        ("0044 7700 900123", "US", "447700900123"),  # ITU's 00 where the region's is 011
        ("447700900123", "GB", "447700900123"),  # the stored form, read back
        ("15551230001", "GB", "15551230001"),  # not a GB number: the international reading
    ],
)
def test_the_region_reads_national_and_prefixed_forms(raw: str, region: str, expected: str) -> None:
    assert normalise_address(Channel.WHATSAPP, raw, region) == expected


def test_a_national_number_without_a_region_is_refused_naming_the_fix() -> None:
    error = refusal(Channel.WHATSAPP, "07700 900123")
    assert error.problem is AddressProblem.NATIONAL_NUMBER_WITHOUT_REGION
    assert "sender_default_region" in error.detail
    assert "7700" not in str(error), "the reason never repeats the number"


@pytest.mark.parametrize(
    "raw",
    [
        "+\uff14\uff14 \uff17\uff17\uff10\uff10 \uff19\uff10\uff10\uff11\uff12\uff13",  # full-width
        "+\u0664\u0664 \u0667\u0667\u0660\u0660 \u0669\u0660\u0660\u0661\u0662\u0663",  # Arabic-Indic
        "\uff0b\u06f4\u06f4 \u06f7\u06f7\u06f0\u06f0 \u06f9\u06f0\u06f0\u06f1\u06f2\u06f3",  # Persian
        "+44 \u096d\u096d\u0966\u0966 \u096f\u0966\u0966\u0967\u0968\u0969",  # Devanagari after ASCII
    ],
)
def test_digits_of_any_script_are_stored_as_ascii_e164(raw: str) -> None:
    stored = normalise_address(Channel.WHATSAPP, raw)
    assert stored == "447700900123"
    assert stored.isascii()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("+44 77\u200b00 900123", AddressProblem.INVISIBLE_CHARACTER),  # zero-width space
        ("+44 7700\u2060900123", AddressProblem.INVISIBLE_CHARACTER),  # word joiner
        ("+44 7700 900123\u202e", AddressProblem.INVISIBLE_CHARACTER),  # right-to-left override
        ("+44 7700\n900123", AddressProblem.INVISIBLE_CHARACTER),
        ("+44 20 7946 0958 ext 2", AddressProblem.UNEXPECTED_CHARACTER),
        ("1-800-FLOWERS", AddressProblem.UNEXPECTED_CHARACTER),  # libphonenumber would dial it
        ("+44+7700900123", AddressProblem.UNEXPECTED_CHARACTER),
        ("\u00b2\u00b3", AddressProblem.UNEXPECTED_CHARACTER),  # superscripts pass isdigit()
        ("123", AddressProblem.NOT_A_POSSIBLE_NUMBER),
        ("1" * 16, AddressProblem.NOT_A_POSSIBLE_NUMBER),
        ("+999 1234567", AddressProblem.NOT_A_POSSIBLE_NUMBER),  # no such country code
        ("+44 7700 9001", AddressProblem.NOT_A_POSSIBLE_NUMBER),
        ("07700 9001", AddressProblem.NATIONAL_NUMBER_WITHOUT_REGION),
        ("+-()", AddressProblem.NOT_A_POSSIBLE_NUMBER),
    ],
)
def test_numbers_that_do_not_parse_are_refused_with_a_reason(raw: str, problem: AddressProblem) -> None:
    assert refusal(Channel.WHATSAPP, raw).problem is problem


def test_a_number_too_short_for_the_region_names_the_region() -> None:
    error = refusal(Channel.WHATSAPP, "07700 9", "GB")
    assert error.problem is AddressProblem.NOT_A_POSSIBLE_NUMBER
    assert "GB" in error.detail


def test_possible_but_unallocated_numbers_are_accepted() -> None:
    # Ofcom's drama range and NANP 555: not "valid" to libphonenumber, but well-formed.
    assert normalise_address(Channel.WHATSAPP, "+44 7700 900123") == "447700900123"
    assert normalise_address(Channel.WHATSAPP, "+1 555 000 1111") == "15550001111"


# --- provider ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("channel", [Channel.LINKEDIN, Channel.MESSENGER])
@pytest.mark.parametrize(
    "invisible", ["\u200b", "\u200c", "\u200d", "\ufeff", "\u00ad", "\u00a0", "\u2028", "\u2029", "\x07", " "]
)
def test_provider_ids_with_invisible_characters_are_refused(channel: Channel, invisible: str) -> None:
    error = refusal(channel, f"ACoAAAcD{invisible}MMQBODyLwZrRcgYhrkCafURGqva0U4E")
    assert error.problem is AddressProblem.INVISIBLE_CHARACTER
    assert f"U+{ord(invisible):04X}" in error.detail
    assert "position 8" in error.detail


@pytest.mark.parametrize(
    "raw",
    [
        "\uff16\uff12\uff18\uff14\uff19\uff13\uff10\uff11\uff17\uff12",  # full-width PSID
        "62849\u0663\u0660172",  # Arabic-Indic digits inside a PSID
        "ACoAAAcD\u041cMQBODy",  # Cyrillic capital em, looks like M
    ],
)
def test_provider_ids_with_non_ascii_characters_are_refused(raw: str) -> None:
    assert refusal(Channel.MESSENGER, raw).problem is AddressProblem.NON_ASCII_CHARACTER


def test_ascii_provider_ids_are_kept_as_given() -> None:
    linkedin = "ACoAAAcDMMQBODyLwZrRcgYhrkCafURGqva0U4E"
    assert normalise_address(Channel.LINKEDIN, f" {linkedin} ") == linkedin
    assert normalise_address(Channel.MESSENGER, "6284930172648239") == "6284930172648239"


# --- masks ----------------------------------------------------------------------------------


def test_a_masked_phone_number_keeps_country_code_and_last_digits() -> None:
    assert (
        mask_address(Channel.WHATSAPP, "+44 7700 900123")
        == "+44 7\u2022\u2022\u2022 \u2022\u2022\u2022\u202223"
    )
    assert "900" not in mask_address(Channel.WHATSAPP, "07700 900123")


def test_a_masked_id_shows_the_invisible_character_that_refused_it() -> None:
    masked = mask_address(Channel.LINKEDIN, "ACoAAAcD\u200bMMQBODyLwZrRcgYhrkCafURGqva0U4E")
    assert masked.startswith("ACoA")
    assert "<U+200B>" in masked
    assert "MMQBODy" not in masked
    assert masked.endswith("4E")


def test_a_mask_is_bounded() -> None:
    assert len(mask_address(Channel.MESSENGER, "\uff11" * 256)) <= 64


# --- regions --------------------------------------------------------------------------------


def test_regions_are_iso_codes_with_a_numbering_plan() -> None:
    assert validate_region("gb") == "GB"
    for bad in ("UK", "G", "GBR", "ZZ", "x" * 40):
        with pytest.raises(ValueError, match="ISO 3166-1 alpha-2"):
            validate_region(bad)
