"""Tests for barcode and QR code decoding with zxing-cpp and SKU matching."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image

from boothsync.agent.codes import (
    DecodedCode,
    SkuList,
    decode_file,
    decode_image,
    load_sku_catalogue,
    sku_file_for,
)
from boothsync.agent.deriving import WorkerJob, derive_in_worker

DATA = Path(__file__).parent / "data"
PHOTO = DATA / "photos" / "orientation3_landscape.jpg"
ROTATED_PHOTO = DATA / "photos" / "camera_canon_sx60_orientation6.jpg"

QR_TEXT = "https://shop.example/p/TEH-TARIK-500?src=stall7"
EAN_TEXT = "9556001234568"


def _barcode_image(text: str, barcode_format: zxingcpp.BarcodeFormat, scale: int) -> Image.Image:
    """Render a code with zxing-cpp's own writer."""
    barcode = zxingcpp.create_barcode(text, barcode_format)
    return Image.fromarray(barcode.to_image(scale=scale))


def _on_photo(code: Image.Image, path: Path) -> Path:
    """Paste a code onto a real photo and save it as a JPEG, as a phone would."""
    with Image.open(PHOTO) as photo:
        canvas = photo.convert("RGB")
    canvas.paste(code.convert("RGB"), (canvas.width // 3, canvas.height // 4))
    canvas.save(path, "JPEG", quality=90)
    return path


def test_decode_qr_code(tmp_path: Path) -> None:
    path = tmp_path / "qr.png"
    _barcode_image(QR_TEXT, zxingcpp.BarcodeFormat.QRCode, scale=6).save(path)

    assert decode_file(path, "image/png") == [DecodedCode("QR Code", QR_TEXT)]


def test_decode_ean13(tmp_path: Path) -> None:
    path = tmp_path / "ean.png"
    _barcode_image(EAN_TEXT, zxingcpp.BarcodeFormat.EAN13, scale=4).save(path)

    assert decode_file(path, "image/png") == [DecodedCode("EAN-13", EAN_TEXT)]


def test_decode_both_codes_on_photo(tmp_path: Path) -> None:
    with Image.open(PHOTO) as photo:
        canvas = photo.convert("RGB")
    canvas.paste(_barcode_image(QR_TEXT, zxingcpp.BarcodeFormat.QRCode, scale=5).convert("RGB"), (40, 40))
    canvas.paste(_barcode_image(EAN_TEXT, zxingcpp.BarcodeFormat.EAN13, scale=3).convert("RGB"), (600, 300))
    path = tmp_path / "both.jpg"
    canvas.save(path, "JPEG", quality=90)

    codes = decode_file(path, "image/jpeg")

    assert sorted(codes, key=lambda code: code.format) == [
        DecodedCode("EAN-13", EAN_TEXT),
        DecodedCode("QR Code", QR_TEXT),
    ]


def test_decode_photo_without_codes() -> None:
    assert decode_file(PHOTO, "image/jpeg") == []
    assert decode_file(ROTATED_PHOTO, "image/jpeg") == []


def test_decode_file_ignores_non_images(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("9556001234568\n", encoding="utf-8")

    assert decode_file(path, "text/plain") == []


def test_decode_file_rejects_huge_declared_size(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("L", (4000, 3000), 255).save(path)

    with pytest.raises(ValueError, match="above the limit"):
        decode_file(path, "image/png", max_pixels=1_000_000)


def test_decode_image_reports_each_code_once() -> None:
    qr = _barcode_image(QR_TEXT, zxingcpp.BarcodeFormat.QRCode, scale=4)
    canvas = Image.new("L", (qr.width * 2 + 40, qr.height + 20), 255)
    canvas.paste(qr, (0, 10))
    canvas.paste(qr, (qr.width + 40, 10))

    assert decode_image(canvas) == [DecodedCode("QR Code", QR_TEXT)]


# SKU list


def _write_skus(data_dir: Path, text: str) -> Path:
    path = sku_file_for(data_dir)
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_sku_file_for_data_dir(tmp_path: Path) -> None:
    assert sku_file_for(tmp_path) == tmp_path / "prewarm" / "skus.csv"


def test_sku_catalogue_matches(tmp_path: Path) -> None:
    path = _write_skus(
        tmp_path,
        "sku,name,barcode\n"
        "TEH-TARIK-500,Teh tarik 500 ml,\n"
        "KOPI-O,Kopi O,9556001234568\n"
        "MILO-1,Milo can,036000291452\n"
        "AB,Short code,\n",
    )
    catalogue = load_sku_catalogue(path)
    assert catalogue is not None

    assert catalogue.match([QR_TEXT]) == ["TEH-TARIK-500"]
    assert catalogue.match([EAN_TEXT]) == ["KOPI-O"]
    assert catalogue.match(["kopi-o"]) == ["KOPI-O"]
    # A UPC-A barcode read as EAN-13 has one more leading zero.
    assert catalogue.match(["0036000291452"]) == ["MILO-1"]
    assert catalogue.match(["AB"]) == ["AB"]
    assert catalogue.match(["https://shop.example/p/AB"]) == []
    assert catalogue.match(["4006381333931", "nothing"]) == []
    assert catalogue.match([EAN_TEXT, QR_TEXT, EAN_TEXT]) == ["KOPI-O", "TEH-TARIK-500"]


def test_sku_catalogue_without_barcode_column(tmp_path: Path) -> None:
    path = _write_skus(tmp_path, "\ufeffSKU,Name\nKOPI-O,Kopi O\n,no sku\n")
    catalogue = load_sku_catalogue(path)

    assert catalogue is not None
    assert catalogue.match(["KOPI-O"]) == ["KOPI-O"]
    assert len(catalogue.by_text) == 1


def test_sku_catalogue_missing_file(tmp_path: Path) -> None:
    assert load_sku_catalogue(sku_file_for(tmp_path)) is None
    assert SkuList(sku_file_for(tmp_path)).match([EAN_TEXT]) == []


def test_sku_catalogue_rejects_header_without_sku(tmp_path: Path) -> None:
    path = _write_skus(tmp_path, "code,name\nKOPI-O,Kopi O\n")

    with pytest.raises(ValueError, match="no 'sku' column"):
        load_sku_catalogue(path)


def test_sku_list_invalid_file_matches_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write_skus(tmp_path, "code,name\nKOPI-O,Kopi O\n")
    skus = SkuList(path)

    with caplog.at_level(logging.WARNING, logger="boothsync.agent.codes"):
        assert skus.catalogue() is None
    assert "invalid SKU list" in caplog.text
    assert skus.match(["KOPI-O"]) == []


def test_sku_list_reloads_changed_file(tmp_path: Path) -> None:
    path = _write_skus(tmp_path, "sku,name\nKOPI-O,Kopi O\n")
    skus = SkuList(path)
    assert skus.match(["TEH-1"]) == []

    path.write_text("sku,name\nKOPI-O,Kopi O\nTEH-1,Teh\n", encoding="utf-8")

    assert skus.match(["TEH-1"]) == ["TEH-1"]


# Decoding in the derivative worker


def test_worker_adds_codes_to_info(tmp_path: Path) -> None:
    source = _on_photo(_barcode_image(EAN_TEXT, zxingcpp.BarcodeFormat.EAN13, scale=3), tmp_path / "ean.jpg")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    result = derive_in_worker(WorkerJob(source, out_dir, thumbnail_px=320, ocr_timeout_s=60.0, suggest_class=False))

    assert result.info["codes"] == [{"format": "EAN-13", "text": EAN_TEXT}]
    assert "suggested_class" not in result.info


def test_worker_skips_codes_when_deferred(tmp_path: Path) -> None:
    source = _on_photo(_barcode_image(EAN_TEXT, zxingcpp.BarcodeFormat.EAN13, scale=3), tmp_path / "ean.jpg")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    job = WorkerJob(
        source, out_dir, thumbnail_px=320, ocr_timeout_s=60.0, suggest_class=False,
        defer_reason="deferred: battery at 9%, left for HQ",
    )

    result = derive_in_worker(job)

    assert "codes" not in result.info
    assert result.info["deferred"] == "deferred: battery at 9%, left for HQ"
