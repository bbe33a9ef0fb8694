"""Recipient identity: one person, one stored address, however the request spelled it.

Seed 003 sent twice to people whose number arrived in two spellings. Here every address is
reduced to the one form a provider takes before it reaches the ``contacts`` table, whose
unique (channel, address) constraint then does the de-duplication.

* WhatsApp: the E.164 number from Google's libphonenumber (``phonenumbers``), stored as its
  digits without the ``+``: what the Cloud API's ``to`` field takes. "+44 7700 900123",
  "0044 7700 900123" and (for a sender whose default region is GB) "07700 900123" are one
  contact. Digits of any script (full-width, Arabic-Indic, ...) are read as the digits they
  are, so the stored form is always ASCII.
* Messenger PSIDs and Unipile (LinkedIn) provider ids: kept as given, but only printable
  ASCII without spaces. Both providers' ids are ASCII (numeric PSIDs; LinkedIn internal ids
  such as ``ACoAAAcDMMQBODyLwZrRcgYhrkCafURGqva0U4E``, per Unipile's "Users overview"), so an
  invisible or non-ASCII character can only make a second contact for the same person.

Numbers must be *possible* (right length for their country code), not *valid* in
libphonenumber's sense. Validity depends on the allocation tables of the pinned release:
Ofcom's drama range of seed 003 (07700 900xxx) and NANP 555 test numbers are not valid, and
a range allocated after the release would be refused until an upgrade. A possible but
unallocated number costs one permanent provider error; refusing a real customer loses the
message.

Bare digits are ambiguous: "2025550123" is a US number in national form or an Egyptian one
in international form. With a default region the national reading wins when it is possible
(as when dialling in that country), then the international one; without a region only the
international one exists. A '+' or "00" settles it.
"""

from __future__ import annotations

import unicodedata
from enum import StrEnum

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, ValidationResult

from shared.providers.outcome import Channel

# Visual separators people type inside phone numbers; dashes (Pd) and spaces (Zs) too.
_PHONE_SEPARATORS = frozenset("().-/\uff08\uff09\uff0e\uff0f")
_PLUS_SIGNS = frozenset("+\uff0b")
# Characters that render as nothing (or as a gap) and so cannot be checked by eye.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp", "Zs"})
_POSSIBLE_PROBLEMS = {
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "of a length no number of that country has",
    ValidationResult.INVALID_COUNTRY_CODE: "under no country code",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "missing its area code",
}


class AddressProblem(StrEnum):
    """Why an address was refused. A closed set, so counts by reason stay small."""

    EMPTY = "empty"
    INVISIBLE_CHARACTER = "invisible_character"
    NON_ASCII_CHARACTER = "non_ascii_character"
    UNEXPECTED_CHARACTER = "unexpected_character"
    NATIONAL_NUMBER_WITHOUT_REGION = "national_number_without_region"
    NOT_A_POSSIBLE_NUMBER = "not_a_possible_number"


class InvalidAddressError(ValueError):
    """``detail`` never repeats the address: it is logged and returned to the caller."""

    def __init__(self, problem: AddressProblem, detail: str) -> None:
        super().__init__(f"{problem.value}: {detail}")
        self.problem = problem
        self.detail = detail


def describe_character(ch: str) -> str:
    name = unicodedata.name(ch, "unnamed character")
    return f"U+{ord(ch):04X} {name} ({unicodedata.category(ch)})"


def is_invisible(ch: str) -> bool:
    return unicodedata.category(ch) in _INVISIBLE_CATEGORIES or not ch.isprintable()


def normalise_address(channel: Channel, raw: str, default_region: str | None = None) -> str:
    """The stored form of ``raw``, or :class:`InvalidAddressError` saying why there is none.

    ``default_region`` (ISO 3166-1 alpha-2, the sender account's) reads national-format
    phone numbers; other channels ignore it."""
    address = raw.strip()
    if not address:
        raise InvalidAddressError(AddressProblem.EMPTY, "the address is blank")
    if channel is Channel.WHATSAPP:
        return normalise_phone_number(address, default_region)
    return normalise_provider_id(address)


def normalise_provider_id(address: str) -> str:
    for position, ch in enumerate(address):
        if is_invisible(ch):
            raise InvalidAddressError(
                AddressProblem.INVISIBLE_CHARACTER, f"{describe_character(ch)} at position {position}"
            )
        if not ch.isascii():
            raise InvalidAddressError(
                AddressProblem.NON_ASCII_CHARACTER,
                f"{describe_character(ch)} at position {position}; provider ids are ASCII",
            )
    return address


def _ascii_digits(address: str) -> tuple[bool, str]:
    """(whether it starts with a plus sign, its digits in ASCII). Anything but digits,
    one leading plus and separators is refused: letters would be read as a vanity number
    or an extension, and an invisible character hides what was really sent."""
    plus = False
    digits: list[str] = []
    for position, ch in enumerate(address):
        category = unicodedata.category(ch)
        if category == "Nd":
            digits.append(str(unicodedata.decimal(ch)))
        elif ch in _PLUS_SIGNS and not digits and not plus:
            plus = True
        elif ch in _PHONE_SEPARATORS or category in {"Pd", "Zs"}:
            continue
        elif is_invisible(ch):
            raise InvalidAddressError(
                AddressProblem.INVISIBLE_CHARACTER, f"{describe_character(ch)} at position {position}"
            )
        else:
            raise InvalidAddressError(
                AddressProblem.UNEXPECTED_CHARACTER,
                f"{describe_character(ch)} at position {position}; a phone number is digits, "
                "one leading '+' and separators (no extensions or letters)",
            )
    if not digits:
        raise InvalidAddressError(AddressProblem.NOT_A_POSSIBLE_NUMBER, "the address has no digits")
    return plus, "".join(digits)


def _parse(number: str, region: str | None) -> PhoneNumber | None:
    try:
        return phonenumbers.parse(number, region)
    except NumberParseException:
        return None


def _possibility(parsed: PhoneNumber | None) -> int:
    if parsed is None:
        return ValidationResult.INVALID_COUNTRY_CODE
    return int(phonenumbers.is_possible_number_with_reason(parsed))


def normalise_phone_number(address: str, default_region: str | None) -> str:
    plus, digits = _ascii_digits(address)
    # Readings of the digits, most likely first. A '+' leaves one. Otherwise a leading "00"
    # is ITU's international prefix, a leading single "0" a national trunk prefix (no
    # country code starts with 0), and other bare digits are the international form without
    # the '+' that WhatsApp's `to` and this table use.
    readings: list[tuple[str, str | None]] = []  # (text, region) for phonenumbers.parse
    if plus:
        readings.append(("+" + digits, None))
    else:
        if default_region is not None:
            # libphonenumber applies the region's own international prefix (00, 011, 0011...),
            # trunk prefix, and a leading country code ("447911123456" for GB).
            readings.append((digits, default_region))
        if digits.startswith("00"):
            readings.append(("+" + digits[2:], None))
        elif not digits.startswith("0"):
            readings.append(("+" + digits, None))
        elif default_region is None:
            raise InvalidAddressError(
                AddressProblem.NATIONAL_NUMBER_WITHOUT_REGION,
                "a national-format number (leading 0) and the sender account has no default region: "
                'set sender_default_region on the enqueue event (for example "GB"), '
                "or give the number in international form (+44...)",
            )

    first_problem: int | None = None
    for text, region in readings:  # parsed lazily: most numbers settle on the first reading
        parsed = _parse(text, region)
        possibility = _possibility(parsed)
        if parsed is not None and possibility == ValidationResult.IS_POSSIBLE:
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164).removeprefix("+")
        first_problem = possibility if first_problem is None else first_problem
    reason = _POSSIBLE_PROBLEMS.get(first_problem or 0, "not a phone number")
    where = f" for region {default_region}" if default_region and not plus else ""
    raise InvalidAddressError(AddressProblem.NOT_A_POSSIBLE_NUMBER, f"{len(digits)} digits, {reason}{where}")


def mask_address(channel: Channel, raw: str, *, limit: int = 64) -> str:
    """What an operator needs to find a refused address in their source list, and no more:
    a phone number keeps its first three and last two digits, an id its first four and last
    two characters. Invisible characters are shown as ``<U+XXXX>`` wherever they are, since
    they are usually the reason it was refused."""
    text = raw.strip()
    if channel is Channel.WHATSAPP:
        secret = [i for i, ch in enumerate(text) if unicodedata.category(ch) == "Nd"]
        head, tail = min(3, len(secret) // 3), min(2, len(secret) // 4)
        hidden = set(secret[head : len(secret) - tail])
    else:
        head, tail = min(4, len(text) // 3), min(2, len(text) // 4)
        hidden = set(range(head, len(text) - tail))
    shown: list[str] = []
    for position, ch in enumerate(text):
        # Non-ASCII is what refuses an id, so it is shown; in a phone number it is a digit.
        suspicious = channel is not Channel.WHATSAPP and not ch.isascii()
        if (is_invisible(ch) and ch != " ") or suspicious:
            shown.append(f"<U+{ord(ch):04X}>")
        elif position in hidden:
            shown.append("\u2022")
        else:
            shown.append(ch)
    masked = "".join(shown)
    return masked if len(masked) <= limit else masked[: limit - 1] + "\u2026"


def validate_region(value: str) -> str:
    """An ISO 3166-1 alpha-2 code libphonenumber has numbering data for."""
    region = value.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        hint = ' (the United Kingdom is "GB")' if region == "UK" else ""
        shown = repr(value) if len(value) <= 8 else f"a {len(value)}-character value"
        raise ValueError(f"{shown} is not an ISO 3166-1 alpha-2 region code with a numbering plan{hint}")
    return region
