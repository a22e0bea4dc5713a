"""Find payment card numbers, email addresses and phone numbers in OCR text.

Card numbers are masked to their last four digits before any text leaves the
device. Emails and phone numbers are only counted: derived_info carries the
counts, never the values. The patterns are heuristics tuned for receipts and
forms, so they miss numbers in unusual layouts and can flag an invoice number
that happens to pass the Luhn check.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("boothsync.agent.privacy")

MASK_CHAR = "*"

# A run of digit groups joined by one dash or by one or two spaces. OCR often
# doubles a space, so two are accepted.
_DIGIT_RUN = re.compile(r"\d+(?:(?:-| {1,2})\d+)*")
_SEPARATOR = re.compile(r"-| {1,2}")

# Group lengths in which issuers print card numbers, longest first so that a
# 19-digit number is not cut to its first 16 digits. A single group of 13 to 19
# digits (no separators) is accepted as well.
_CARD_LAYOUTS: tuple[tuple[int, ...], ...] = (
    (4, 4, 4, 4, 3),
    (6, 13),
    (4, 4, 4, 4, 2),
    (4, 4, 4, 4, 1),
    (4, 4, 4, 4),
    (4, 6, 5),
    (4, 4, 4, 3),
    (4, 6, 4),
    (4, 4, 4, 2),
    (4, 3, 3, 3),
)
_CARD_MIN_DIGITS, _CARD_MAX_DIGITS = 13, 19
# Major industry identifiers of payment cards: 2 (Mastercard 2-series),
# 3 (Amex, Diners, JCB), 4 (Visa), 5 (Mastercard, Maestro) and 6 (Discover,
# UnionPay, Maestro). Phone numbers with a trunk prefix start with 0 and
# North American ones written with the country code start with 1.
_CARD_FIRST_DIGITS = frozenset("23456")

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b"
)

# A phone number must not be glued to a word, a decimal, a date or a time.
_PHONE_START = r"(?<![\w.,/:+*-])"
_PHONE_END = r"(?![\w*]|[.,/:-]\d)"
_PHONE_PATTERNS = (
    # International: +<country code> and 7 to 14 more digits in any grouping.
    re.compile(r"(?<![\w+*])\+\d(?:[ .()-]{0,2}\d){7,14}" + _PHONE_END),
    # National with a trunk prefix, such as 03-1234 5678, (020) 7946 0000 or
    # 012-3456789. At least one separator is required.
    re.compile(_PHONE_START + r"(?:\(0\d{1,4}\)|0\d{1,4})(?:[ -]{1,2}\d{2,8}){1,3}" + _PHONE_END),
    # North American without the country code: (555) 123-4567 or 555.123.4567.
    re.compile(_PHONE_START + r"(?:\([2-9]\d{2}\)|[2-9]\d{2})[ .-]{1,2}\d{3}[ .-]\d{4}" + _PHONE_END),
    # Digits without separators after a label, such as "Tel: 0123456789".
    re.compile(
        r"(?i)\b(?:tel|telephone|phone|fax|mobile|mob|hp|call)\b\.?(?:\s*no\.?)?\s*[:.]?\s*"
        r"(?P<number>\+?\d(?:[ ()-]{0,2}\d){7,14})" + _PHONE_END
    ),
)
_PHONE_MIN_DIGITS, _PHONE_MAX_DIGITS = 9, 15
_INTERNATIONAL_MIN_DIGITS = 8


@dataclass(frozen=True)
class PiiCounts:
    """Numbers of personal data items found in one text, without the items themselves."""

    card_numbers: int = 0
    emails: int = 0
    phones: int = 0

    def as_info(self) -> dict[str, int]:
        return asdict(self)


def luhn_valid(digits: str) -> bool:
    """Return whether a string of digits passes the Luhn (mod 10) check."""
    if not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def gs1_check_digit_valid(digits: str) -> bool:
    """Return whether digits end in a valid GS1 check digit (EAN-13, GTIN-14)."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    body, check = digits[:-1], int(digits[-1])
    weighted = sum(int(char) * (3 if index % 2 == 0 else 1) for index, char in enumerate(reversed(body)))
    return (10 - weighted % 10) % 10 == check


def _is_card_number(digits: str, grouped: bool) -> bool:
    if not _CARD_MIN_DIGITS <= len(digits) <= _CARD_MAX_DIGITS:
        return False
    if digits[0] not in _CARD_FIRST_DIGITS or len(set(digits)) == 1:
        return False
    if not luhn_valid(digits):
        return False
    # An unbroken 13- or 14-digit number with a valid GS1 check digit is far more
    # likely an EAN-13 or GTIN-14 product code printed on a receipt than a card.
    return grouped or len(digits) not in (13, 14) or not gs1_check_digit_valid(digits)


def _card_spans_in_run(run: str, offset: int) -> list[tuple[int, int]]:
    """Return the spans of card numbers inside one run of digit groups."""
    groups = [(m.start(), m.end()) for m in re.finditer(r"\d+", run)]
    separators = _SEPARATOR.findall(run)
    spans = []
    index = 0
    while index < len(groups):
        span = _card_at(run, groups, separators, index)
        if span is None:
            index += 1
            continue
        count, start, end = span
        spans.append((offset + start, offset + end))
        index += count
    return spans


def _card_at(
    run: str, groups: list[tuple[int, int]], separators: list[str], index: int
) -> tuple[int, int, int] | None:
    """Return (groups used, start, end) of a card number starting at groups[index]."""
    first_start, first_end = groups[index]
    if _CARD_MIN_DIGITS <= first_end - first_start <= _CARD_MAX_DIGITS:
        if _is_card_number(run[first_start:first_end], grouped=False):
            return 1, first_start, first_end
    for layout in _CARD_LAYOUTS:
        window = groups[index : index + len(layout)]
        if len(window) != len(layout):
            continue
        if any(end - start != length for (start, end), length in zip(window, layout, strict=True)):
            continue
        # Mixed separators ("4111-1111 1111 1111") are how unrelated numbers sit
        # next to each other, not how a card number is printed.
        used = {"-" if sep == "-" else " " for sep in separators[index : index + len(layout) - 1]}
        if len(used) != 1:
            continue
        digits = "".join(run[start:end] for start, end in window)
        if _is_card_number(digits, grouped=True):
            return len(layout), window[0][0], window[-1][1]
    return None


def find_card_numbers(text: str) -> list[tuple[int, int]]:
    """Return the (start, end) spans of payment card numbers in text.

    A card number has 13 to 19 digits, printed unbroken or in an issuer's
    grouping with spaces or dashes, starts with 2 to 6 and passes the Luhn check.
    Digits glued to letters, to a leading "+" or to a decimal point are skipped,
    so product codes, phone numbers and amounts do not match. A card layout
    inside a longer run of digit groups ("Qty 2 4111 1111 1111 1111") matches,
    because missing a card number costs more than masking another number.
    """
    spans = []
    for match in _DIGIT_RUN.finditer(text):
        start, end = match.start(), match.end()
        before = text[start - 1 : start]
        if before and (before.isalpha() or before in "+*"):
            continue
        if before and before in ".," and text[start - 2 : start - 1].isdigit():
            continue
        run = match.group()
        # A run that ends in the integer part of an amount ("1111 12.50") must
        # not give its last group to a card number.
        if text[end : end + 1] in (".", ",") and text[end + 1 : end + 2].isdigit():
            cut = max(run.rfind("-"), run.rfind(" "))
            if cut <= 0:
                continue
            run = run[:cut].rstrip(" -")
        elif text[end : end + 1].isalpha():
            continue
        spans.extend(_card_spans_in_run(run, start))
    return spans


def mask_card_numbers(text: str) -> tuple[str, int]:
    """Replace every digit of each card number but the last four with "*".

    Separators are kept, so "4111 1111 1111 1111" becomes "**** **** **** 1111"
    and the text keeps its length. Returns the masked text and the count masked.
    """
    spans = find_card_numbers(text)
    if not spans:
        return text, 0
    chars = list(text)
    for start, end in spans:
        digit_positions = [i for i in range(start, end) if chars[i].isdigit()]
        for position in digit_positions[:-4]:
            chars[position] = MASK_CHAR
    return "".join(chars), len(spans)


def count_emails(text: str) -> int:
    """Return the number of email addresses in text."""
    return sum(1 for _ in _EMAIL.finditer(text))


def _phone_digits_ok(number: str) -> bool:
    digits = sum(char.isdigit() for char in number)
    if number.startswith("+"):
        return _INTERNATIONAL_MIN_DIGITS <= digits <= _PHONE_MAX_DIGITS
    return _PHONE_MIN_DIGITS <= digits <= _PHONE_MAX_DIGITS


def count_phones(text: str) -> int:
    """Return the number of phone numbers in text, in international or national formats.

    Email addresses are blanked first, so their digits never count. Masked card
    numbers contain "*" and never match.
    """
    text = _EMAIL.sub(lambda match: " " * len(match.group()), text)
    spans: list[tuple[int, int]] = []
    for pattern in _PHONE_PATTERNS:
        for match in pattern.finditer(text):
            group = "number" if "number" in pattern.groupindex else 0
            number = match.group(group)
            if not _phone_digits_ok(number):
                continue
            span = match.span(group)
            if not any(start < span[1] and span[0] < end for start, end in spans):
                spans.append(span)
    return len(spans)


def scan_text(text: str) -> tuple[str, PiiCounts]:
    """Mask card numbers in text and count the card numbers, emails and phones in it."""
    masked, cards = mask_card_numbers(text)
    return masked, PiiCounts(card_numbers=cards, emails=count_emails(masked), phones=count_phones(masked))


def mask_fields(fields: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Mask card numbers in the text values of a flat dict of key fields.

    Returns the new dict and the number of card numbers masked. Values other
    than text are kept unchanged.
    """
    masked_fields: dict[str, Any] = {}
    total = 0
    for key, value in fields.items():
        if isinstance(value, str):
            value, count = mask_card_numbers(value)
            total += count
        masked_fields[key] = value
    if total:
        log.info("masked %d card number(s) in key fields", total)
    return masked_fields, total
