"""Extract the key fields of a receipt from its OCR text: merchant, date, total and currency.

The rules are heuristics over the text alone, with no network and no model.
``extract_fields`` returns one entry per field, each either None (not found) or
a dict with ``value``, the ``raw`` text it came from and a ``confidence`` in
[0, 1]. Confidences are scores for ranking candidates and setting thresholds,
not calibrated probabilities.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

MERCHANT = "merchant"
DATE = "date"
TOTAL = "total"
CURRENCY = "currency"
FIELDS = (MERCHANT, DATE, TOTAL, CURRENCY)

# Only the first lines are searched for the merchant's name, which heads a receipt.
MERCHANT_SEARCH_LINES = 10
MIN_YEAR, MAX_YEAR = 1990, 2099


@dataclass(frozen=True)
class _Candidate:
    value: str | None
    raw: str
    confidence: float
    line: int

    def as_field(self) -> dict:
        return {"value": self.value, "raw": self.raw, "confidence": round(min(self.confidence, 1.0), 2)}


def extract_fields(text: str, *, day_first: bool = True) -> dict[str, dict | None]:
    """Return the merchant, date, total and currency found in a receipt's text.

    date's value is an ISO 8601 date (YYYY-MM-DD), or None when the raw text
    looks like a date but is not a valid one. total's value is a decimal string
    such as "9.00". currency's value is an ISO 4217 code. day_first decides how
    numeric dates that are valid both ways, such as 04/05/2018, are read. A date
    whose first or second number is above 12 is read the only valid way.
    """
    lines = [_collapse_spaces(line) for line in text.splitlines()]
    fields: dict[str, dict | None] = {}
    for name, find in (
        (MERCHANT, _find_merchant),
        (DATE, lambda found_lines: _find_date(found_lines, day_first)),
        (TOTAL, _find_total),
        (CURRENCY, _find_currency),
    ):
        candidate = find(lines)
        fields[name] = candidate.as_field() if candidate is not None else None
    return fields


def _collapse_spaces(line: str) -> str:
    return " ".join(line.split())


def _best(candidates: list[_Candidate]) -> _Candidate | None:
    """Return the most confident candidate, the later one among equals."""
    if not candidates:
        return None
    return max(candidates, key=lambda candidate: (candidate.confidence, candidate.line))


# --- date -----------------------------------------------------------------------

_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_MONTH_NAME = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"

# Digits may not touch another digit, so parts of longer numbers never match.
# "~" is how OCR often reads a "-".
_ISO_DATE = re.compile(r"(?<!\d)(\d{4})\s?([-/.~])\s?(\d{1,2})\s?[-/.~]\s?(\d{1,2})(?!\d)")
_NUMERIC_DATE = re.compile(r"(?<![\d.])(\d{1,2})\s?([-/.~])\s?(\d{1,2})\s?[-/.~]\s?(\d{4}|\d{2})(?![\d])")
_DAY_MONTH_NAME = re.compile(
    rf"(?<!\d)(\d{{1,2}})(?:st|nd|rd|th)?[\s\-/.,]*{_MONTH_NAME}[\s\-/.,]*(\d{{4}}|\d{{2}})(?!\d)",
    re.IGNORECASE,
)
_MONTH_NAME_DAY = re.compile(
    rf"\b{_MONTH_NAME}\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})(?!\d)", re.IGNORECASE
)
_COMPACT_DATE = re.compile(r"(?<!\d)(\d{2})(\d{2})(\d{4})(?!\d)")
_DATE_LABEL = re.compile(r"\b(date|dated|tarikh)\b", re.IGNORECASE)
# Card expiry and validity dates are not the date of the sale.
_OTHER_DATE_LABEL = re.compile(r"expir|\bexp\b|valid|\bbirth", re.IGNORECASE)


def _find_date(lines: list[str], day_first: bool) -> _Candidate | None:
    candidates = []
    for index, line in enumerate(lines):
        if _OTHER_DATE_LABEL.search(line):
            continue
        label_bonus = 0.0
        if _DATE_LABEL.search(line):
            label_bonus = 0.2
        elif index > 0 and _DATE_LABEL.search(lines[index - 1]):
            label_bonus = 0.1
        for raw, date, confidence in _dates_in_line(line, day_first, has_label=label_bonus > 0):
            value = date.isoformat() if date is not None else None
            candidates.append(_Candidate(value, raw, confidence + label_bonus, index))
    # A valid date is always preferred to a date-like text that is not one.
    valid = [candidate for candidate in candidates if candidate.value is not None]
    return _best(valid) or _best(candidates)


def _dates_in_line(
    line: str, day_first: bool, *, has_label: bool
) -> Iterator[tuple[str, datetime.date | None, float]]:
    """Yield (raw text, date or None when invalid, base confidence) for each date-like text."""
    claimed_spans: list[tuple[int, int]] = []

    def claim(match: re.Match) -> bool:
        """Reserve the match's characters, or return False when an earlier pattern took them."""
        span = match.span()
        if any(span[0] < end and start < span[1] for start, end in claimed_spans):
            return False
        claimed_spans.append(span)
        return True

    for match in _ISO_DATE.finditer(line):
        if claim(match):
            year, month, day = int(match[1]), int(match[3]), int(match[4])
            yield match[0], _make_date(year, month, day), 0.8

    for match in _DAY_MONTH_NAME.finditer(line):
        if claim(match):
            day, month, year = int(match[1]), _MONTHS[match[2].lower()], _full_year(match[3])
            yield match[0], _make_date(year, month, day), 0.8

    for match in _MONTH_NAME_DAY.finditer(line):
        if claim(match):
            month, day, year = _MONTHS[match[1].lower()], int(match[2]), int(match[3])
            yield match[0], _make_date(year, month, day), 0.8

    for match in _NUMERIC_DATE.finditer(line):
        if max(int(match[1]), int(match[3])) > 31:
            continue
        if claim(match):
            date, ambiguous = _numeric_date(int(match[1]), int(match[3]), match[4], day_first)
            confidence = 0.7 if len(match[4]) == 4 else 0.55
            yield match[0], date, confidence - (0.1 if ambiguous else 0.0)

    # Eight digits in a row are often a document number, so they count only as a
    # valid date in range, at a low confidence that a date label raises.
    for match in _COMPACT_DATE.finditer(line):
        if claim(match):
            date = _make_date(int(match[3]), int(match[2]), int(match[1]))
            if date is not None:
                yield match[0], date, 0.45 if has_label else 0.25


def _full_year(digits: str) -> int:
    year = int(digits)
    if len(digits) == 2:
        # NOTE: two-digit years are taken as 19xx from 80 on, else 20xx.
        return 1900 + year if year >= 80 else 2000 + year
    return year


def _numeric_date(
    first: int, second: int, year_digits: str, day_first: bool
) -> tuple[datetime.date | None, bool]:
    """Read d/m/y or m/d/y, returning the date and whether both orders were valid."""
    year = _full_year(year_digits)
    day_month = _make_date(year, second, first)
    month_day = _make_date(year, first, second)
    if day_month is not None and month_day is not None:
        return (day_month if day_first else month_day), first != second
    return day_month or month_day, False


def _make_date(year: int, month: int, day: int) -> datetime.date | None:
    if not MIN_YEAR <= year <= MAX_YEAR:
        return None
    try:
        return datetime.date(year, month, day)
    except ValueError:
        return None


# --- total ----------------------------------------------------------------------

# An amount has exactly two decimals after a point, with optional thousands commas.
# OCR sometimes puts a space before the decimals ("9. 00"). NOTE: decimal commas
# ("12,50 €") are not read as amounts, because "55,57" in an address would be.
_AMOUNT = re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d+)\s?\.\s?(\d{2})(?![\d%])")
_STRONG_TOTAL = re.compile(
    r"round(?:ed|ing)?\s*(?:d\s*)?total|grand\s*total|total\s*amount|amount\s*due|total\s*due"
    r"|total\s*payable|net+\s*total|total\s*(?:sales\s*)?\(?incl|total\s*\(?rm\)?|jumlah|balance\s*due",
    re.IGNORECASE,
)
# OCR often reads the "l" of "total" as "1" or "!".
_TOTAL = re.compile(r"t[o0]ta[l1!]", re.IGNORECASE)
_NOT_TOTAL = re.compile(
    r"sub\s*-?\s*total|total\s*(?:qty|quantity|items?|disc|discount|saving|savings|excl)"
    r"|\bexcl|qty|quantity|change|tender|cash\b|rounding\s*adj|point",
    re.IGNORECASE,
)
# A line about tax ("TOTAL TAX", "GST TOTAL") is not the total, unless the total
# includes the tax ("Total incl. GST").
_TAX = re.compile(r"tax|gst|sst|vat", re.IGNORECASE)
_INCLUDES_TAX = re.compile(r"incl|inclusive|payable|amount\s*due", re.IGNORECASE)
_PAYMENT = re.compile(r"cash|change|tender|paid|card|visa|master|balance\b(?!\s*due)", re.IGNORECASE)


def _amounts(line: str) -> list[tuple[str, Decimal]]:
    """Return (raw, value) for each amount on a line."""
    found = []
    for match in _AMOUNT.finditer(line):
        digits = match[1].replace(",", "")
        try:
            found.append((match[0], Decimal(f"{digits}.{match[2]}")))
        except InvalidOperation:
            continue
    return found


def _find_total(lines: list[str]) -> _Candidate | None:
    candidates = []
    for index, line in enumerate(lines):
        strong = _STRONG_TOTAL.search(line) is not None
        if not strong and (not _TOTAL.search(line) or _NOT_TOTAL.search(line)):
            continue
        if _TAX.search(line) and not _INCLUDES_TAX.search(line):
            continue
        confidence = 0.9 if strong else 0.75
        amounts = _amounts(line)
        raw_line = line
        if not amounts and index + 1 < len(lines):
            # The amount is often printed on the next line, under the label.
            amounts = _amounts(lines[index + 1])
            raw_line = f"{line} {lines[index + 1]}"
            confidence -= 0.15
        if amounts:
            # Totals are right-aligned, so the last amount on the line is the total.
            _, value = amounts[-1]
            candidates.append(_Candidate(str(value), raw_line, confidence, index))

    if candidates:
        # Among equally sure candidates the largest wins: a total is not smaller
        # than the subtotals and tax summaries that are also labelled "total".
        return max(candidates, key=lambda candidate: (candidate.confidence, Decimal(candidate.value or 0)))
    return _largest_amount(lines)


def _largest_amount(lines: list[str]) -> _Candidate | None:
    """Fall back on the largest amount outside payment lines (cash paid, change)."""
    best: _Candidate | None = None
    best_value = Decimal(-1)
    for index, line in enumerate(lines):
        if _PAYMENT.search(line):
            continue
        for _, value in _amounts(line):
            if value > best_value:
                best, best_value = _Candidate(str(value), line, 0.3, index), value
    return best


# --- currency -------------------------------------------------------------------

# Active ISO 4217 alphabetic codes. NOTE: typed from the 2024 list without a
# machine check, and a code missing here is not recognised.
ISO_4217_CODES = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL
    BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP
    ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR
    IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL
    LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR
    NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD
    SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX
    USD UYU UZS VED VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWG
    """.split()
)

# Symbols, longest first so that "S$" is not read as "$". A bare "$" is used by many
# currencies, so it maps to USD at a low confidence.
_SYMBOLS = [
    ("US$", "USD", 0.9), ("S$", "SGD", 0.9), ("A$", "AUD", 0.9), ("NZ$", "NZD", 0.9),
    ("HK$", "HKD", 0.9), ("CA$", "CAD", 0.9), ("C$", "CAD", 0.8), ("€", "EUR", 0.9),
    ("£", "GBP", 0.8), ("₹", "INR", 0.9), ("₩", "KRW", 0.9), ("฿", "THB", 0.9),
    ("₱", "PHP", 0.9), ("¥", "JPY", 0.5), ("$", "USD", 0.5),
]  # fmt: skip
_RINGGIT = re.compile(r"(?<![A-Za-z])RM(?=\s?\d|\b)")
_CODE_BEFORE_AMOUNT = re.compile(r"\b([A-Z]{3})\s?(?=\d[\d,]*[.,]\d{2}(?!\d))")
_CODE_AFTER_AMOUNT = re.compile(r"\d[.,]\d{2}\s?([A-Z]{3})\b")
_CODE_IN_LABEL = re.compile(r"\(([A-Z]{3})\)")


def _find_currency(lines: list[str]) -> _Candidate | None:
    """Vote over every currency mark in the text and return the most supported code."""
    votes: dict[str, list[_Candidate]] = {}
    for index, line in enumerate(lines):
        for candidate in _currency_marks(line, index):
            votes.setdefault(candidate.value or "", []).append(candidate)
    if not votes:
        return None

    def support(code: str) -> float:
        return sum(candidate.confidence for candidate in votes[code])

    code = max(votes, key=support)
    marks = votes[code]
    # Repeats add a little, at most 0.1, so that many bare "$" stay ambiguous.
    confidence = max(candidate.confidence for candidate in marks) + min(0.1, 0.05 * (len(marks) - 1))
    if len(votes) > 1:
        confidence -= 0.2
    first = marks[0]
    return _Candidate(code, first.raw, max(0.05, min(confidence, 0.95)), first.line)


def _currency_marks(line: str, index: int) -> Iterator[_Candidate]:
    for match in _RINGGIT.finditer(line):
        next_to_amount = bool(re.match(r"\s?\d", line[match.end() :]))
        yield _Candidate("MYR", match[0], 0.9 if next_to_amount else 0.7, index)

    # An ISO code counts only next to an amount or as a bracketed label, because
    # some codes are also words (ALL, TOP, PEN, CUP).
    for pattern in (_CODE_BEFORE_AMOUNT, _CODE_AFTER_AMOUNT, _CODE_IN_LABEL):
        for match in pattern.finditer(line):
            if match[1] in ISO_4217_CODES:
                yield _Candidate(match[1], match[1], 0.9, index)

    # A symbol counts only next to a number, because OCR turns stray marks into "$".
    rest = line
    for symbol, code, confidence in _SYMBOLS:
        escaped = re.escape(symbol)
        pattern = rf"{escaped}(?=\s?\d)|(?<=\d){escaped}|(?<=\d\s){escaped}"
        count = len(re.findall(pattern, rest))
        rest = rest.replace(symbol, " ")
        for _ in range(count):
            yield _Candidate(code, symbol, confidence, index)


# --- merchant -------------------------------------------------------------------

_BUSINESS_SUFFIX = re.compile(
    r"\b(sdn|[b8]hd|s/b|berhad|enterprise|trading|restaurant|restoran|store|stores|mart"
    r"|supermarket|hypermarket|market|bakery|cafe|café|hardware|stationery|pharmacy|kedai"
    r"|ltd|limited|llc|inc|corp|corporation|company|gmbh|plc|pty|pte|co\.)(?![a-z])",
    re.IGNORECASE,
)
_NOT_MERCHANT = re.compile(
    r"tax\s*invoice|invoice|receipt|cash\s*bill|welcome|thank|\btel\b|\bfax\b|phone|gst|\bsst\b"
    r"|reg\.?\s*no|company\s*no|co\.?\s*no|www\.|http|@|\bdate\b|\btime\b|cashier|\btable\b",
    re.IGNORECASE,
)
# Address lines, skipped unless they also carry a business suffix, as in
# "BOOK TA .K (TAMAN DAYA) SDN BHD". NOTE: the words cover Malaysian and English
# addresses only.
_ADDRESS = re.compile(
    r"jalan|\bjln\b|taman|lorong|persiaran|selangor|johor|kuala\s*lumpur|darul|wilayah|pulau\s*pinang"
    r"|perak|kedah|melaka|pahang|sabah|sarawak|\bstreet\b|\broad\b|\bavenue\b|(?<!\d)\d{5}(?!\d)"
    r"|^no\.?\s*\d",
    re.IGNORECASE,
)
# A word with four or more digits is a registration, phone or document number,
# as in "(0965911-P)".
_NUMBER_WORD = re.compile(r"\S*\d\S*\d\S*\d\S*\d\S*|\(\s*\)")


def _find_merchant(lines: list[str]) -> _Candidate | None:
    heads = [(index, line) for index, line in enumerate(lines) if line][:MERCHANT_SEARCH_LINES]
    candidates = []
    for position, (index, line) in enumerate(heads):
        name = _clean_name(line)
        letters = sum(character.isalpha() for character in name)
        if letters < 3 or _NOT_MERCHANT.search(line):
            continue
        has_suffix = _BUSINESS_SUFFIX.search(name) is not None
        if not has_suffix and _ADDRESS.search(line):
            continue
        visible = sum(not character.isspace() for character in name)
        letter_share = letters / visible
        if has_suffix and position > 0:
            name = _join_previous_line(name, heads[position - 1][1])
        if name.endswith(("&", "-")) and position + 1 < len(heads):
            # A name cut after "&" goes on in the next line ("HARDWARE &" / "ELECTRICAL").
            name = f"{name} {_clean_name(heads[position + 1][1])}"
        upper_share = sum(character.isupper() for character in name) / max(letters, 1)
        confidence = 0.85 if has_suffix else 0.35
        confidence += 0.1 * (1 - position / MERCHANT_SEARCH_LINES) + (0.05 if upper_share > 0.8 else 0.0)
        confidence *= min(1.0, letter_share / 0.7)
        candidates.append(_Candidate(name, line, confidence, -index))
    # line is negated so that among equal confidences the earlier line wins.
    found = _best(candidates)
    if found is None:
        return None
    return _Candidate(found.value, found.raw, found.confidence, -found.line)


def _clean_name(line: str) -> str:
    name = _NUMBER_WORD.sub(" ", line)
    return _collapse_spaces(name).strip(" .,:;-_|*~=")


def _join_previous_line(name: str, previous: str) -> str:
    """Prepend the line above when the name starts there, as in "MEGA MAJU" / "(SEMENYIH) SDN BHD"."""
    rest = _BUSINESS_SUFFIX.sub(" ", name).strip(" ()&.,")
    starts_in_brackets = name.startswith("(")
    if len(rest.split()) > 1 and not starts_in_brackets:
        return name
    previous_name = _clean_name(previous)
    if not previous_name or _NOT_MERCHANT.search(previous) or _ADDRESS.search(previous) or not previous_name.isupper():
        return name
    return f"{previous_name} {name}"
