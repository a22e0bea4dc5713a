"""Tests for card number masking and the email and phone counts of OCR text."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from boothsync.agent import deriving
from boothsync.agent.derivatives import OCR_TEXT, TEXT_CONTENT_TYPE, Derivative
from boothsync.agent.deriving import WorkerJob, derive_in_worker
from boothsync.agent.privacy import (
    count_emails,
    count_phones,
    find_card_numbers,
    gs1_check_digit_valid,
    luhn_valid,
    mask_card_numbers,
    mask_fields,
    scan_text,
)

# Published test card numbers of the card schemes, all Luhn-valid.
VISA = "4111111111111111"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"
DISCOVER = "6011111111111117"
VISA_19 = "4111111111111111110"


def test_luhn_valid_known_numbers() -> None:
    for number in (VISA, MASTERCARD, AMEX, DISCOVER, VISA_19, "79927398713"):
        assert luhn_valid(number), number


def test_luhn_valid_rejects_changed_digit() -> None:
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("4111 1111")


def test_gs1_check_digit_known_barcodes() -> None:
    assert gs1_check_digit_valid("4006381333931")
    assert gs1_check_digit_valid("5901234123457")
    assert not gs1_check_digit_valid("5901234123458")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("VISA 4111 1111 1111 1111", "VISA **** **** **** 1111"),
        ("card 4111-1111-1111-1111 ok", "card ****-****-****-1111 ok"),
        (f"MC {MASTERCARD}", "MC ************4444"),
        ("AMEX 3782 822463 10005.", "AMEX **** ****** *0005."),
        ("6011 1111 1111 1117", "**** **** **** 1117"),
        ("4111 1111 1111 1111 110", "**** **** **** ***1 110"),
        ("4111  1111  1111  1111", "****  ****  ****  1111"),
        ("Qty 2 4111 1111 1111 1111", "Qty 2 **** **** **** 1111"),
        ("4111 1111 1111 1111 exp 12/27", "**** **** **** 1111 exp 12/27"),
    ],
)
def test_mask_card_numbers_masks(text: str, expected: str) -> None:
    masked, count = mask_card_numbers(text)

    assert masked == expected
    assert count == 1
    assert len(masked) == len(text)


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # fails the Luhn check
        "Date 2018-12-25 20:13:39",
        "25/12/2018 8:13:39 PM",
        "Tel +60 12-345 6789",
        "+4111111111111111",  # a leading + makes it a phone number
        "TOTAL 1,234.56 CASH 2,000.00",
        "Total 4111 1111 1111 1111.00",  # the last group is an amount
        "EAN 5901234123457",  # Luhn-valid, but a valid EAN-13 barcode
        "0111 1111 1111 1111 1",  # cards never start with 0
        "4111-1111 1111 1111",  # mixed separators
        "INV4111111111111111",  # glued to letters
        "4444444444444444",  # one repeated digit
        "**** **** **** 1111",
    ],
)
def test_mask_card_numbers_leaves_other_numbers(text: str) -> None:
    masked, count = mask_card_numbers(text)

    assert masked == text
    assert count == 0


def test_mask_card_numbers_several_in_one_text() -> None:
    text = f"paid {VISA} and 5555 5555 5555 4444\nrefund 3782-822463-10005"

    masked, count = mask_card_numbers(text)

    assert count == 3
    assert masked == "paid ************1111 and **** **** **** 4444\nrefund ****-******-*0005"


def test_find_card_numbers_spans() -> None:
    text = "card: 4111 1111 1111 1111!"

    assert find_card_numbers(text) == [(6, 25)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("jo.tan@example.com", 1),
        ("Mail: jo+stall7@mail.example.co.uk, ops@example.org", 2),
        ("no address here @ all", 0),
        ("user@localhost", 0),
    ],
)
def test_count_emails(text: str, expected: int) -> None:
    assert count_emails(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TEL : 03-8271 9872 FAX ; 03-3271 9481", 2),
        ("TEL:012-2673122 / 010-2022293", 2),
        ("call +60 12-345 6789 now", 1),
        ("+44 20 7946 0000 or 020 7946 0000", 2),
        ("(555) 123-4567", 1),
        ("555.123.4567", 1),
        ("Tel: 0123456789", 1),
        ("Date 03-07-2018 12:30", 0),
        ("25/12/2018", 0),
        ("TOTAL 1,234.56", 0),
        ("GST REG NO: 000306020160", 0),
        ("Invoice 01-234567", 0),
        ("Receipt 2018-123-4567", 0),
        ("**** **** **** 1111", 0),
        ("mail 0123456789@example.com", 0),
    ],
)
def test_count_phones(text: str, expected: int) -> None:
    assert count_phones(text) == expected


def test_scan_text_receipt() -> None:
    text = (
        "KEDAI MAJU SDN BHD\nTEL: 03-1234 5678\nDate 25/12/2018 20:13\n"
        "TOTAL RM 1,234.50\nVISA 4111 1111 1111 1111\nAPPROVAL 123456\n"
        "Questions? help@kedai.example.com or +60 12-345 6789\n"
    )

    masked, counts = scan_text(text)

    assert counts.as_info() == {"card_numbers": 1, "emails": 1, "phones": 2}
    assert "4111 1111 1111 1111" not in masked
    assert "VISA **** **** **** 1111" in masked
    assert "TOTAL RM 1,234.50" in masked


def test_mask_fields_masks_text_values() -> None:
    fields = {"merchant": "KEDAI MAJU", "payment": "VISA 4111 1111 1111 1111", "total": 12.5}

    masked, count = mask_fields(fields)

    assert count == 1
    assert masked == {"merchant": "KEDAI MAJU", "payment": "VISA **** **** **** 1111", "total": 12.5}
    assert fields["payment"] == "VISA 4111 1111 1111 1111"


# Masking in the derivative worker


def _render_receipt(path: Path) -> None:
    lines = [
        "KEDAI RUNCIT MAJU",
        "TAX INVOICE",
        "TOTAL RM 12.50",
        "VISA 4111 1111 1111 1111",
        "Tel: 03-1234 5678",
        "jo.tan@example.com",
    ]
    font = ImageFont.load_default(size=36)
    image = Image.new("RGB", (900, 60 * len(lines) + 40), "white")
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((30, 20 + 60 * index), line, fill="black", font=font)
    image.save(path)


def test_worker_masks_ocr_text_file(tmp_path: Path) -> None:
    source = tmp_path / "receipt.png"
    _render_receipt(source)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    result = derive_in_worker(WorkerJob(source, out_dir, thumbnail_px=320, ocr_timeout_s=60.0, suggest_class=True))

    ocr = next(d for d in result.derivatives if d.kind == OCR_TEXT)
    assert ocr.status == "done", ocr.reason
    text = ocr.path.read_text(encoding="utf-8")
    assert "VISA **** **** **** 1111" in text
    assert "4111 1111" not in text
    assert result.info["pii"] == {"card_numbers": 1, "emails": 1, "phones": 1}
    assert "jo.tan" not in repr(result.info)


def test_worker_unreadable_ocr_text_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "bad.ocr.txt"
    path.write_bytes(b"VISA 4111 1111 1111 1111 \xff\xfe")
    derivative = Derivative(OCR_TEXT, "done", path, TEXT_CONTENT_TYPE, None, {})
    info: dict = {}

    derivatives, text = deriving._mask_ocr_text([derivative], info)

    assert derivatives[0].status == "failed"
    assert derivatives[0].path is None
    assert "not uploaded" in derivatives[0].reason
    assert text == ""
    assert "pii" not in info
