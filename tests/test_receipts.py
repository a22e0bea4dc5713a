"""Tests for receipt field extraction and for the scoring of the OCR accuracy benchmark."""

from __future__ import annotations

import datetime
import importlib.util
import json
import sys
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest

from boothsync.agent.derivatives import DONE, extract_text
from boothsync.agent.receipts import ISO_4217_CODES, extract_fields

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RECEIPTS = REPO / "src" / "boothsync" / "samples" / "receipt"

MALAYSIAN_RECEIPT = """\
tan woon yann
BOOK TA .K (TAMAN DAYA) SDN BHD
789417-W
NO.53 55,57 & 59, JALAN SAGU 18,
TAMAN DAYA,
81100 JOHOR BAHRU,
JOHOR.
Document No : TD01167104
Date: 25/12/2018 8:13:39 PM
Cashier: MANIS
CODE/DESC QTY RM PRICE RM AMOUNT
KF MODELLING CLAY KIDDY FISH 1 PC 9.00 0.00 9.00
Total : 9.00
Rounding Adjustment: 0.00
Rounded Total (RM): 9.00
Cash 10.00
CHANGE 1.00
"""

US_RECEIPT = """\
Corner Coffee LLC
123 Main Street
Springfield, IL 62701
Tel (217) 555-0188
12/24/2023 09:14
Latte 4.50
Muffin 3.25
Subtotal $7.75
Tax $0.62
TOTAL $8.37
VISA $8.37
"""

EURO_RECEIPT = """\
Bäckerei Sonnenschein GmbH
Hauptstraße 5, 10115 Berlin
Datum: 03.03.2024
Brot 3.20 EUR
Kuchen 2.80 EUR
Summe Total 6.00 EUR
Gegeben 10.00
"""


def field_value(fields: dict, name: str) -> object:
    found = fields[name]
    assert found is not None, f"{name} not found"
    return found["value"]


# --- extract_fields on synthetic texts ------------------------------------------


def test_malaysian_receipt_fields() -> None:
    fields = extract_fields(MALAYSIAN_RECEIPT)

    assert field_value(fields, "merchant") == "BOOK TA .K (TAMAN DAYA) SDN BHD"
    assert field_value(fields, "date") == "2018-12-25"
    assert fields["date"]["raw"] == "25/12/2018"
    assert field_value(fields, "total") == "9.00"
    assert field_value(fields, "currency") == "MYR"
    assert fields["currency"]["raw"] == "RM"


def test_confidences_in_range() -> None:
    for text in (MALAYSIAN_RECEIPT, US_RECEIPT, EURO_RECEIPT):
        for name, found in extract_fields(text).items():
            assert found is not None, name
            assert 0.0 <= found["confidence"] <= 1.0, (name, found)


def test_us_receipt_month_first_date() -> None:
    fields = extract_fields(US_RECEIPT)

    # 24 cannot be a month, so 12/24/2023 is read month first even with day_first.
    assert field_value(fields, "date") == "2023-12-24"
    assert field_value(fields, "total") == "8.37"
    assert field_value(fields, "merchant") == "Corner Coffee LLC"
    assert field_value(fields, "currency") == "USD"
    assert fields["currency"]["confidence"] <= 0.6, "a bare $ is ambiguous"


def test_euro_code_after_amount() -> None:
    fields = extract_fields(EURO_RECEIPT)

    assert field_value(fields, "currency") == "EUR"
    assert field_value(fields, "total") == "6.00"
    assert field_value(fields, "merchant") == "Bäckerei Sonnenschein GmbH"
    assert field_value(fields, "date") == "2024-03-03"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Date: 25/12/2018", "2018-12-25"),
        ("Date: 25-12-2018 10:02", "2018-12-25"),
        ("DATE 25.12.18", "2018-12-25"),
        ("Date : 30~04-2018 19:50:14", "2018-04-30"),
        ("Tarikh: 25 MAY 2017", "2017-05-25"),
        ("25-May-17 13:45", "2017-05-25"),
        ("May 25, 2017", "2017-05-25"),
        ("2018-01-15T10:00", "2018-01-15"),
        ("Date: 25032018", "2018-03-25"),
    ],
)
def test_date_formats(line: str, expected: str) -> None:
    assert field_value(extract_fields(line), "date") == expected


def test_ambiguous_date_uses_day_first() -> None:
    text = "Date: 04/05/2018"

    day_first = extract_fields(text)["date"]
    month_first = extract_fields(text, day_first=False)["date"]

    assert day_first["value"] == "2018-05-04"
    assert month_first["value"] == "2018-04-05"
    assert day_first["confidence"] < extract_fields("Date: 25/05/2018")["date"]["confidence"]


def test_invalid_date_keeps_raw_text() -> None:
    found = extract_fields("Date: 31/02/2018")["date"]

    assert found is not None
    assert found["value"] is None
    assert found["raw"] == "31/02/2018"


def test_card_expiry_is_not_the_date() -> None:
    text = "Card Expiry: 30/09/18\nDate 01/03/18 12:00\n"

    assert field_value(extract_fields(text), "date") == "2018-03-01"


def test_labelled_date_beats_unlabelled() -> None:
    text = "Printed 01/01/2019\nDate: 15/01/2018\n"

    assert field_value(extract_fields(text), "date") == "2018-01-15"


def test_phone_and_amounts_are_not_dates() -> None:
    text = "TEL: 03-2161 5678\nTotal 12.50\nInvoice 20180115999\n"

    assert extract_fields(text)["date"] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Subtotal 10.00\nGST 6% 0.60\nTotal 10.60\nCash 20.00\nChange 9.40", "10.60"),
        ("Total 30.43\nRounding Adj 0.02\nRounded Total 30.45", "30.45"),
        ("TOTAL QTY: 3\nTOTAL TAX : 3.12\nTOTAL 55.10", "55.10"),
        ("Grand Total\nRM 1,234.50\n", "1234.50"),
        ("Total Sales Inclusive GST @6% 30.45\nTotal Sales Excluding GST 28.73", "30.45"),
        ("Jumlah RM12.00", "12.00"),
        ("Total: 9. 00", "9.00"),
    ],
)
def test_total_rules(text: str, expected: str) -> None:
    assert field_value(extract_fields(text), "total") == expected


def test_total_fallback_is_largest_amount() -> None:
    text = "Nasi lemak 5.00\nTeh tarik 2.50\nCash 10.00\nChange 2.50\n"

    found = extract_fields(text)["total"]

    assert found is not None
    assert found["value"] == "5.00"
    assert found["confidence"] < 0.5


@pytest.mark.parametrize(
    ("text", "expected", "raw"),
    [
        ("Total RM9.00", "MYR", "RM"),
        ("Total (RM): 9.00", "MYR", "RM"),
        ("Total USD 12.00", "USD", "USD"),
        ("Total 12.00 GBP", "GBP", "GBP"),
        ("Total £12.00", "GBP", "£"),
        ("Total €12,00", "EUR", "€"),
        ("Total S$12.00", "SGD", "S$"),
        ("Amount (CHF) 12.00", "CHF", "CHF"),
    ],
)
def test_currency_marks(text: str, expected: str, raw: str) -> None:
    found = extract_fields(text)["currency"]

    assert found is not None
    assert found["value"] == expected
    assert found["raw"] == raw


def test_currency_code_words_need_an_amount() -> None:
    # ALL, TOP and PEN are currency codes but also words on a receipt.
    text = "ALL ITEMS FINAL\nTOP SELLER PEN 2\nTotal 4.00\n"

    assert extract_fields(text)["currency"] is None


def test_iso_codes_include_common_currencies() -> None:
    assert {"MYR", "USD", "EUR", "GBP", "SGD", "JPY"} <= ISO_4217_CODES
    assert all(len(code) == 3 and code.isupper() for code in ISO_4217_CODES)


def test_merchant_skips_headers_and_numbers() -> None:
    text = "TAX INVOICE\nTHE ROTI MAN BAKERY (0965911-P)\nTel: 03-9054 3785\n"

    assert field_value(extract_fields(text), "merchant") == "THE ROTI MAN BAKERY"


def test_merchant_joins_split_name() -> None:
    text = "PASAR RAYA MEGA MAJU\n(SEMENYIH) SDN BHD\n(767840-W)\nNO 24, JALAN PUSAT\n"

    assert field_value(extract_fields(text), "merchant") == "PASAR RAYA MEGA MAJU (SEMENYIH) SDN BHD"


def test_merchant_name_cut_after_ampersand() -> None:
    text = "HOME MASTER HARDWARE &\nELECTRICAL\n(001234567-X)\n"

    assert field_value(extract_fields(text), "merchant") == "HOME MASTER HARDWARE & ELECTRICAL"


@pytest.mark.parametrize("text", ["", "\n\n  \n", "12345\n67.89.10\n"])
def test_nothing_found(text: str) -> None:
    fields = extract_fields(text)

    assert set(fields) == {"merchant", "date", "total", "currency"}
    assert fields["merchant"] is None
    assert fields["date"] is None
    assert fields["currency"] is None


# --- extract_fields on real OCR output ------------------------------------------


def test_real_receipt_ocr_fields(tmp_path: Path) -> None:
    image = SAMPLE_RECEIPTS / "sroie_616_X51008164525.jpg"
    truth = json.loads(image.with_name("sroie_616_X51008164525.fields.json").read_text(encoding="utf-8"))

    result = extract_text(image, tmp_path / "receipt.txt")
    assert result.status == DONE, result.reason
    fields = extract_fields(result.path.read_text(encoding="utf-8"))

    assert field_value(fields, "date") == "2018-07-03"
    assert fields["date"]["raw"] == truth["date"]
    assert Decimal(field_value(fields, "total")) == Decimal(truth["total"])
    assert field_value(fields, "merchant") == truth["company"]
    assert field_value(fields, "currency") == "MYR"


# --- the benchmark's scoring functions ------------------------------------------


@pytest.fixture(scope="module")
def accuracy() -> ModuleType:
    """Import benchmarks/derivatives/accuracy.py, which is not part of the package."""
    path = REPO / "benchmarks" / "derivatives" / "accuracy.py"
    spec = importlib.util.spec_from_file_location("derivatives_accuracy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("25/12/2018", datetime.date(2018, 12, 25)),
        ("25-12-2018", datetime.date(2018, 12, 25)),
        ("25032018", datetime.date(2018, 3, 25)),
        ("25 MAY 2017", datetime.date(2017, 5, 25)),
        ("21-11-16", datetime.date(2016, 11, 21)),
        ("01/03/18", datetime.date(2018, 3, 1)),
        ("2018-01-15", datetime.date(2018, 1, 15)),
        ("31/02/2018", None),
        ("", None),
    ],
)
def test_accuracy_parses_truth_dates(accuracy: ModuleType, text: str, expected: datetime.date | None) -> None:
    assert accuracy.parse_truth_date(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("RM4.00", Decimal("4.00")), ("$8.70", Decimal("8.70")), ("1,234.50", Decimal("1234.50")), ("RM", None)],
)
def test_accuracy_parses_amounts(accuracy: ModuleType, text: str, expected: Decimal | None) -> None:
    assert accuracy.parse_amount(text) == expected


def test_accuracy_company_rule(accuracy: ModuleType) -> None:
    assert accuracy.company_matches("book ta k (taman daya) sdn bhd", "BOOK TA .K (TAMAN DAYA) SDN BHD")
    assert accuracy.company_matches("99 SPEED MART 5/B", "99 SPEED MART S/B")
    assert not accuracy.company_matches("SPEED MART", "99 SPEED MART S/B")
    assert not accuracy.company_matches(None, "99 SPEED MART S/B")


def test_accuracy_scores_matching_case(accuracy: ModuleType) -> None:
    truth = {"company": "SUN VICTORY SDN BHD", "date": "14/01/2018", "total": "RM4.00", "currency": "MYR"}
    fields = {
        "merchant": {"value": "Sun Victory Sdn. Bhd.", "raw": "", "confidence": 0.9},
        "date": {"value": "2018-01-14", "raw": "14-01-18", "confidence": 0.8},
        "total": {"value": "4.00", "raw": "", "confidence": 0.9},
        "currency": {"value": "MYR", "raw": "RM", "confidence": 0.9},
    }

    scores = accuracy.score_fields(fields, truth)

    assert scores == {"date": True, "total": True, "company": True, "currency": True}


def test_accuracy_scores_missing_and_wrong(accuracy: ModuleType) -> None:
    truth = {"company": "99 SPEED MART S/B", "date": "21-11-16", "total": "31.80", "currency": "MYR"}
    fields = {
        "merchant": {"value": "TAMAN BERKELEY", "raw": "", "confidence": 0.4},
        "date": {"value": "2016-11-12", "raw": "12/11/16", "confidence": 0.5},
        "total": None,
        "currency": {"value": "USD", "raw": "$", "confidence": 0.5},
    }

    scores = accuracy.score_fields(fields, truth)

    assert scores == {"date": False, "total": False, "company": False, "currency": False}


def test_accuracy_scores_text_ceiling(accuracy: ModuleType) -> None:
    truth = {"company": "99 SPEED MART S/B", "date": "21-11-16", "total": "31.80", "currency": "MYR"}
    text = "99 SPEED\nMART S/B\n21 - 11 - 16 12:00\nTotal RM 31.80\n"

    found = accuracy.score_text(text, truth)
    missing = accuracy.score_text("nothing here", truth)

    assert found == {"date": True, "total": True, "company": True, "currency": True}
    assert missing == {"date": False, "total": False, "company": False, "currency": False}


def test_accuracy_percentile(accuracy: ModuleType) -> None:
    values = [float(value) for value in range(1, 101)]

    assert accuracy.percentile(values, 0.5) == 50.0
    assert accuracy.percentile(values, 0.95) == 95.0
    assert accuracy.percentile(values, 0.99) == 99.0
    assert accuracy.percentile([3.0], 0.95) == 3.0
