"""Tests for thumbnails, OCR text and type sniffing of captured files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageCms

from boothsync.agent.derivatives import (
    DONE,
    FAILED,
    JPEG_CONTENT_TYPE,
    OCR_TEXT,
    TEXT_CONTENT_TYPE,
    THUMBNAIL,
    UNAVAILABLE,
    Derivative,
    OcrSettings,
    extract_text,
    make_derivatives,
    make_thumbnail,
    otsu_threshold,
    sniff_type,
)

DATA = Path(__file__).parent / "data"
RECEIPT = DATA / "receipts" / "sroie_000_X00016469612.jpg"
RECEIPT_FIELDS = DATA / "receipts" / "sroie_000_X00016469612.fields.json"
ORIENTATION_6 = DATA / "photos" / "camera_canon_sx60_orientation6.jpg"
GPS_JPEG = DATA / "photos" / "phone_samsung_galaxy_s7_gps.jpg"
GPS_HEIC = DATA / "photos" / "phone_iphone11promax_gps.heic"
ROTATED_HEIC = DATA / "photos" / "phone_iphone13promax_orientation6.heic"
CMYK_JPEG = DATA / "photos" / "cmyk.jpg"
RGB_16BIT_PNG = DATA / "photos" / "rgb_16bit.png"
ANIMATED_GIF = DATA / "photos" / "animated.gif"
BORN_DIGITAL_PDF = DATA / "pdf" / "born_digital_form_sf424_page2.pdf"
SCANNED_PDF = DATA / "pdf" / "scanned_4pages_no_text_cardinal.pdf"
MALFORMED_PDF = DATA / "pdf" / "malformed_xref_loop_qpdf_issue100.pdf"
VIDEO_MOV = DATA / "video" / "iphone4s_rotated90_gps.mov"
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
HOSTILE_FILES = [
    "decompression_bomb_65535x66601.gif",
    "decompression_bomb_frame_extents.gif",
    "phone_pixel6_ultrahdr_headers_only_no_scan_data.jpg",
    "png_huge_idat_chunk_length.png",
    "png_huge_itxt_chunk_length.png",
    "png_ztxt_decompression_bomb.png",
    "truncated_image.png",
    "truncated_jpeg.jpg",
]

GPS_IFD = ExifTags.IFD.GPSInfo
APP1, APP15, COM, SOS = 0xE1, 0xEF, 0xFE, 0xDA


def jpeg_markers(data: bytes) -> list[int]:
    """Return the marker codes of the JPEG segments before the scan data."""
    assert data[:2] == b"\xff\xd8", "not a JPEG: SOI marker missing"
    markers = []
    position = 2
    while position + 4 <= len(data):
        assert data[position] == 0xFF, f"no marker at byte {position}"
        marker = data[position + 1]
        markers.append(marker)
        if marker == SOS:
            break
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        position += 2 + length
    return markers


def assert_clean_rgb_jpeg(result: Derivative) -> Image.Image:
    """Check a thumbnail result and return the JPEG read back from disk."""
    assert result.status == DONE, result.reason
    assert result.content_type == JPEG_CONTENT_TYPE
    data = result.path.read_bytes()

    markers = jpeg_markers(data)
    assert not [m for m in markers if APP1 <= m <= APP15], f"APPn segments: {markers}"
    assert COM not in markers

    with Image.open(result.path) as image:
        assert image.format == "JPEG"
        assert image.mode == "RGB"
        assert not image.getexif()
        assert "icc_profile" not in image.info
        assert "xmp" not in image.info
        assert (image.width, image.height) == (result.details["width"], result.details["height"])
        return image.copy()


def open_image(path: Path) -> Image.Image:
    """Open an image with Pillow, registering the HEIF opener for HEIC files."""
    if path.suffix.lower() == ".heic":
        import pillow_heif

        pillow_heif.register_heif_opener()
    return Image.open(path)


def save_image(image: Image.Image, path: Path, **params: object) -> Path:
    image.save(path, **params)
    return path


# --- sniff_type -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (RECEIPT, "image/jpeg"),
        (RECEIPT_FIELDS, "text/plain"),
        (RGB_16BIT_PNG, "image/png"),
        (ANIMATED_GIF, "image/gif"),
        (GPS_HEIC, "image/heic"),
        (BORN_DIGITAL_PDF, "application/pdf"),
        # This damaged PDF has one byte before its %PDF- header.
        (MALFORMED_PDF, "application/pdf"),
        (VIDEO_MOV, "video/quicktime"),
    ],
    ids=lambda value: value.name if isinstance(value, Path) else value,
)
def test_sniff_type_sample_files(path: Path, expected: str) -> None:
    assert sniff_type(path) == expected


def test_sniff_type_ignores_file_name(tmp_path: Path) -> None:
    webp = save_image(Image.new("RGB", (8, 8)), tmp_path / "photo.jpg", format="WEBP")
    tiff = save_image(Image.new("RGB", (8, 8)), tmp_path / "scan.png", format="TIFF")
    mp4 = tmp_path / "clip.mov"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(32))
    text = tmp_path / "notes.jpg"
    text.write_text("Total: 9.00 RM\n", encoding="utf-8")
    binary = tmp_path / "blob.pdf"
    binary.write_bytes(bytes(range(256)))
    empty = tmp_path / "empty.jpg"
    empty.touch()

    assert sniff_type(webp) == "image/webp"
    assert sniff_type(tiff) == "image/tiff"
    assert sniff_type(mp4) == "video/mp4"
    assert sniff_type(text) == "text/plain"
    assert sniff_type(binary) == "application/octet-stream"
    assert sniff_type(empty) == "application/x-empty"


def test_sniff_type_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sniff_type(tmp_path / "missing.jpg")


# --- thumbnails -----------------------------------------------------------------


def test_thumbnail_applies_exif_orientation(tmp_path: Path) -> None:
    with Image.open(ORIENTATION_6) as source:
        assert source.size == (2048, 1536)
        assert source.getexif()[ExifTags.Base.Orientation] == 6

    result = make_thumbnail(ORIENTATION_6, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    assert image.size == (240, 320)


@pytest.mark.parametrize("source", [GPS_JPEG, GPS_HEIC], ids=lambda path: path.name)
def test_thumbnail_drops_gps_and_exif(tmp_path: Path, source: Path) -> None:
    with open_image(source) as original:
        assert original.getexif().get_ifd(GPS_IFD), "source should carry GPS tags"

    result = make_thumbnail(source, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    assert not image.getexif().get_ifd(GPS_IFD)
    assert max(image.size) == 320


def _tagged_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "BoothCam"
    return exif


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize(
    ("info_key", "make_value"),
    [
        ("comment", lambda: b"customer: Jane Doe"),
        ("exif", lambda: _tagged_exif().tobytes()),
        ("icc_profile", _srgb_icc),
    ],
)
def test_thumbnail_drops_jpeg_metadata(
    tmp_path: Path, info_key: str, make_value: Callable[[], bytes]
) -> None:
    value = make_value()
    source = tmp_path / "tagged.jpg"
    Image.new("RGB", (64, 48), "orange").save(source, **{info_key: value})
    with Image.open(source) as original:
        assert original.info[info_key] == value

    result = make_thumbnail(source, tmp_path / "thumb.jpg")

    assert_clean_rgb_jpeg(result)
    data = result.path.read_bytes()
    assert b"Jane Doe" not in data
    assert b"BoothCam" not in data


def test_thumbnail_heic_not_rotated_twice(tmp_path: Path) -> None:
    # pillow-heif returns this photo already upright (3024x4032) with Orientation 1.
    result = make_thumbnail(ROTATED_HEIC, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    assert image.size == (240, 320)


def test_thumbnail_heic_without_pillow_heif(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes `import pillow_heif` raise ImportError.
    monkeypatch.setitem(sys.modules, "pillow_heif", None)

    result = make_thumbnail(GPS_HEIC, tmp_path / "thumb.jpg")

    assert result.status == UNAVAILABLE
    assert "pillow-heif" in result.reason
    assert not (tmp_path / "thumb.jpg").exists()


def test_thumbnail_cmyk_jpeg_is_rgb(tmp_path: Path) -> None:
    with Image.open(CMYK_JPEG) as source:
        assert source.mode == "CMYK"

    result = make_thumbnail(CMYK_JPEG, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    assert image.size == (100, 100)


def test_thumbnail_16bit_rgb_png(tmp_path: Path) -> None:
    result = make_thumbnail(RGB_16BIT_PNG, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    assert image.size == (32, 32)


def test_thumbnail_16bit_grey_png_keeps_tones(tmp_path: Path) -> None:
    ramp = Image.new("I;16", (256, 64))
    ramp.putdata([x * 257 for _ in range(64) for x in range(256)])
    source = save_image(ramp, tmp_path / "ramp16.png")
    with Image.open(source) as reopened:
        assert reopened.mode == "I;16"

    result = make_thumbnail(source, tmp_path / "thumb.jpg", max_px=256)

    image = assert_clean_rgb_jpeg(result)
    red, green, blue = image.getpixel((128, 32))
    assert abs(red - 128) <= 6, "a mid-grey 16-bit value should stay mid-grey"
    assert red == green == blue


def test_thumbnail_float_tiff_stretches_range(tmp_path: Path) -> None:
    ramp = Image.new("F", (256, 16))
    ramp.putdata([x * 1000.0 for _ in range(16) for x in range(256)])
    source = save_image(ramp, tmp_path / "depth.tif")
    flat = save_image(Image.new("F", (16, 16), 5000.0), tmp_path / "flat.tif")

    result = make_thumbnail(source, tmp_path / "thumb.jpg", max_px=256)
    flat_result = make_thumbnail(flat, tmp_path / "flat.jpg")

    image = assert_clean_rgb_jpeg(result)
    assert image.getpixel((0, 8))[0] <= 6
    assert abs(image.getpixel((128, 8))[0] - 128) <= 6
    assert image.getpixel((255, 8))[0] >= 249
    assert_clean_rgb_jpeg(flat_result)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_thumbnail_flattens_transparency_on_white(tmp_path: Path, mode: str) -> None:
    # Every pixel is black and fully transparent. In mode P, palette index 0 is
    # black and is marked as the transparent colour.
    if mode == "P":
        source = save_image(Image.new("P", (40, 40), 0), tmp_path / "clear.png", transparency=0)
    else:
        transparent = Image.new("RGBA", (40, 40), (0, 0, 0, 0)).convert(mode)
        source = save_image(transparent, tmp_path / "clear.png")

    result = make_thumbnail(source, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    assert min(image.getpixel((20, 20))) >= 250


def test_thumbnail_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (60, 30), colour) for colour in ("red", "blue", "green")]
    source = tmp_path / "blink.gif"
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=100, loop=0)

    result = make_thumbnail(source, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    red, green, blue = image.getpixel((30, 15))
    assert red > 200
    assert blue < 60
    assert result.details["frames"] == 3


def test_thumbnail_sample_animated_gif(tmp_path: Path) -> None:
    result = make_thumbnail(ANIMATED_GIF, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    assert image.size == (245, 245)
    assert result.details["frames"] == 42


def test_thumbnail_per_call_pixel_limit(tmp_path: Path) -> None:
    global_limit = Image.MAX_IMAGE_PIXELS
    source = save_image(Image.new("RGB", (200, 200)), tmp_path / "big.png")

    result = make_thumbnail(source, tmp_path / "thumb.jpg", max_pixels=10_000)

    assert result.status == FAILED
    assert "200x200" in result.reason
    assert "10,000" in result.reason
    assert Image.MAX_IMAGE_PIXELS == global_limit
    assert make_thumbnail(source, tmp_path / "thumb.jpg").status == DONE


def test_thumbnail_born_digital_pdf(tmp_path: Path) -> None:
    result = make_thumbnail(BORN_DIGITAL_PDF, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    assert image.size == (248, 320)
    assert result.details["pages"] == 1
    assert result.details["source_type"] == "application/pdf"


def test_thumbnail_scanned_pdf_counts_pages(tmp_path: Path) -> None:
    result = make_thumbnail(SCANNED_PDF, tmp_path / "thumb.jpg")

    assert_clean_rgb_jpeg(result)
    assert result.details["pages"] == 4


def test_thumbnail_pdf_without_pypdfium2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pypdfium2", None)

    result = make_thumbnail(BORN_DIGITAL_PDF, tmp_path / "thumb.jpg")

    assert result.status == UNAVAILABLE
    assert "pypdfium2" in result.reason


# --- video posters --------------------------------------------------------------


def make_video(path: Path, segments: list[tuple[str, float]], *extra: str) -> Path:
    """Encode an H.264 MP4 of 64x36 solid colours, one (colour, seconds) per segment."""
    inputs: list[str] = []
    for colour, seconds in segments:
        inputs += ["-f", "lavfi", "-i", f"color={colour}:s=64x36:r=10:d={seconds}"]
    streams = "".join(f"[{index}]" for index in range(len(segments)))
    command = [
        FFMPEG, "-v", "error", "-y", *inputs,
        "-filter_complex", f"{streams}concat=n={len(segments)}:v=1[v]", "-map", "[v]",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10", *extra, str(path),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return path


def centre_colour(image: Image.Image) -> tuple[int, int, int]:
    return image.getpixel((image.width // 2, image.height // 2))


def test_thumbnail_video_poster_upright(tmp_path: Path) -> None:
    result = make_thumbnail(VIDEO_MOV, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    # The stream is 568x320 with a 90 degree display rotation, so it shows portrait.
    assert image.size == (180, 320)
    assert result.details["rotation"] == 90
    assert result.details["duration_s"] == pytest.approx(2.2, abs=0.01)
    assert result.details["poster_time_s"] == pytest.approx(0.22, abs=0.001)
    assert result.details["source_type"] == "video/quicktime"


def test_thumbnail_video_drops_gps(tmp_path: Path) -> None:
    assert b"+40.7248-073.9883" in VIDEO_MOV.read_bytes()

    result = make_thumbnail(VIDEO_MOV, tmp_path / "thumb.jpg")

    assert_clean_rgb_jpeg(result)
    data = result.path.read_bytes()
    assert b"+40.7248" not in data
    assert b"iPhone" not in data


def test_thumbnail_video_poster_skips_first_frame(tmp_path: Path) -> None:
    # 10% of 2 s is 0.2 s, earlier than 1 s, so the poster is green, not red.
    source = make_video(tmp_path / "short.mp4", [("red", 0.1), ("lime", 1.9)])

    result = make_thumbnail(source, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    red, green, blue = centre_colour(image)
    assert green > 200
    assert red < 60
    assert result.details["poster_time_s"] == pytest.approx(0.2, abs=0.001)
    assert result.details["source_type"] == "video/mp4"


def test_thumbnail_long_video_poster_at_one_second(tmp_path: Path) -> None:
    # 1 s is earlier than 10% of 30 s (3 s, blue), so the poster is green.
    source = make_video(tmp_path / "long.mp4", [("red", 0.5), ("lime", 1.5), ("blue", 28)])

    result = make_thumbnail(source, tmp_path / "thumb.jpg", max_px=64)

    image = assert_clean_rgb_jpeg(result)
    red, green, blue = centre_colour(image)
    assert green > 200
    assert blue < 60
    assert image.size == (64, 36)
    assert result.details["duration_s"] == pytest.approx(30.0, abs=0.05)
    assert result.details["poster_time_s"] == 1.0


def test_thumbnail_mp4_rotation_tag(tmp_path: Path) -> None:
    landscape = make_video(tmp_path / "landscape.mp4", [("lime", 1.0)])
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-i", str(landscape), "-c", "copy",
         "-metadata:s:v:0", "rotate=90", str(rotated)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip

    result = make_thumbnail(rotated, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    # Thumbnails are never enlarged, so the 64x36 frame only turns upright.
    assert image.size == (36, 64)
    assert result.details["rotation"] in (90, 270)


def test_thumbnail_video_pixel_limit(tmp_path: Path) -> None:
    source = make_video(tmp_path / "clip.mp4", [("lime", 1.0)])

    result = make_thumbnail(source, tmp_path / "thumb.jpg", max_pixels=64 * 36 - 1)

    assert result.status == FAILED
    assert "64x36" in result.reason
    assert not (tmp_path / "thumb.jpg").exists()


@pytest.mark.parametrize("tool", ["ffmpeg", "ffprobe"])
def test_thumbnail_video_tool_missing(tmp_path: Path, tool: str) -> None:
    missing = str(tmp_path / f"no-{tool}")

    result = make_thumbnail(VIDEO_MOV, tmp_path / "thumb.jpg", **{tool: missing})

    assert result.status == UNAVAILABLE
    assert f"no-{tool}" in result.reason
    assert "apt-get install ffmpeg" in result.reason
    assert result.path is None
    assert not (tmp_path / "thumb.jpg").exists()


def test_thumbnail_video_timeout(tmp_path: Path) -> None:
    result = make_thumbnail(VIDEO_MOV, tmp_path / "thumb.jpg", video_timeout_s=0.001)

    assert result.status == FAILED
    assert "timed out" in result.reason
    assert VIDEO_MOV.name in result.reason


def test_thumbnail_truncated_video_fails(tmp_path: Path) -> None:
    source = tmp_path / "cut.mov"
    source.write_bytes(VIDEO_MOV.read_bytes()[:4096])

    result = make_thumbnail(source, tmp_path / "thumb.jpg")

    assert result.status == FAILED
    assert "cut.mov" in result.reason
    assert list(tmp_path.iterdir()) == [source]


def test_thumbnail_mp4_header_only_fails(tmp_path: Path) -> None:
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(64))

    result = make_thumbnail(source, tmp_path / "thumb.jpg")

    assert result.status == FAILED
    assert "clip.mp4" in result.reason


def test_thumbnail_rejects_invalid_video_timeout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="video_timeout_s"):
        make_thumbnail(VIDEO_MOV, tmp_path / "thumb.jpg", video_timeout_s=0)


def test_thumbnail_leaves_no_temp_files(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    make_thumbnail(CMYK_JPEG, out_dir / "good.jpg")
    make_thumbnail(DATA / "hostile" / "truncated_jpeg.jpg", out_dir / "bad.jpg")

    assert [path.name for path in out_dir.iterdir()] == ["good.jpg"]


# --- OCR ------------------------------------------------------------------------


def test_ocr_receipt_contains_total(tmp_path: Path) -> None:
    total = json.loads(RECEIPT_FIELDS.read_text(encoding="utf-8"))["total"]

    result = extract_text(RECEIPT, tmp_path / "receipt.txt")

    assert result.status == DONE, result.reason
    assert result.content_type == TEXT_CONTENT_TYPE
    text = result.path.read_text(encoding="utf-8")
    assert total in text
    assert result.details["chars"] == len(text)
    assert result.details["source"] == "ocr"


@pytest.mark.parametrize(
    "settings",
    [OcrSettings(psm=3), OcrSettings(psm=6), OcrSettings(psm=4, min_long_side=0)],
    ids=repr,
)
def test_ocr_settings_read_receipt_total(tmp_path: Path, settings: OcrSettings) -> None:
    total = json.loads(RECEIPT_FIELDS.read_text(encoding="utf-8"))["total"]

    result = extract_text(RECEIPT, tmp_path / "receipt.txt", settings=settings)

    assert result.status == DONE, result.reason
    assert total in result.path.read_text(encoding="utf-8")


def test_ocr_binarized_receipt(tmp_path: Path) -> None:
    # Otsu's threshold loses some digits of this receipt, so only its labels are checked.
    result = extract_text(RECEIPT, tmp_path / "receipt.txt", settings=OcrSettings(psm=6, binarize=True))

    assert result.status == DONE, result.reason
    text = result.path.read_text(encoding="utf-8")
    assert "Total" in text
    assert "25/12/2018" in text


@pytest.mark.parametrize(
    ("field_name", "value"), [("psm", 14), ("psm", -1), ("min_long_side", -1)]
)
def test_ocr_settings_reject_invalid(field_name: str, value: int) -> None:
    with pytest.raises(ValueError, match=field_name):
        OcrSettings(**{field_name: value})


def test_otsu_threshold_splits_two_levels() -> None:
    histogram = [0] * 256
    histogram[30] = 500
    histogram[220] = 300

    threshold = otsu_threshold(histogram)

    assert 30 <= threshold < 220


def test_otsu_threshold_edge_cases() -> None:
    single = [0] * 256
    single[90] = 10

    assert otsu_threshold(single) == 90
    assert otsu_threshold([0] * 256) == 127
    with pytest.raises(ValueError, match="256-bin"):
        otsu_threshold([1] * 10)


def test_ocr_pdf_uses_text_layer(tmp_path: Path) -> None:
    # A text layer needs no tesseract, so a missing one must not matter.
    result = extract_text(
        BORN_DIGITAL_PDF, tmp_path / "form.txt", tesseract=str(tmp_path / "no-tesseract")
    )

    assert result.status == DONE, result.reason
    assert result.details["source"] == "text_layer"
    assert result.details["pages"] == 1
    text = result.path.read_text(encoding="utf-8")
    assert "Name of Federal Agency" in text
    assert "\r" not in text


def test_ocr_scanned_pdf_first_page_only(tmp_path: Path) -> None:
    result = extract_text(SCANNED_PDF, tmp_path / "scan.txt")

    assert result.status == DONE, result.reason
    assert result.details["source"] == "ocr"
    assert result.details["pages"] == 4
    assert result.details["pages_ocr"] == 1
    assert result.details["pages_left_for_hq"] == 3
    assert "LinnSequencer" in result.path.read_text(encoding="utf-8")


def test_ocr_tesseract_missing(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-tesseract")

    result = extract_text(RECEIPT, tmp_path / "receipt.txt", tesseract=missing)

    assert result.status == UNAVAILABLE
    assert "tesseract-ocr" in result.reason
    assert "no-tesseract" in result.reason
    assert not (tmp_path / "receipt.txt").exists()


def test_ocr_tesseract_timeout(tmp_path: Path) -> None:
    result = extract_text(RECEIPT, tmp_path / "receipt.txt", timeout_s=0.001)

    assert result.status == FAILED
    assert "timed out" in result.reason
    assert RECEIPT.name in result.reason


def test_ocr_language_data_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSDATA_PREFIX", str(tmp_path))

    result = extract_text(RECEIPT, tmp_path / "receipt.txt")

    assert result.status == UNAVAILABLE
    assert "tesseract-ocr-eng" in result.reason


def test_ocr_video_unavailable(tmp_path: Path) -> None:
    result = extract_text(VIDEO_MOV, tmp_path / "clip.txt")

    assert result.status == UNAVAILABLE
    assert "video/quicktime" in result.reason


# --- make_derivatives -----------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_hostile_file_fails_cleanly(tmp_path: Path, name: str) -> None:
    source = DATA / "hostile" / name

    thumbnail, text = make_derivatives(source, tmp_path)

    assert (thumbnail.kind, text.kind) == (THUMBNAIL, OCR_TEXT)
    for result in (thumbnail, text):
        assert result.status == FAILED
        assert name in result.reason
        assert "unexpected" not in result.reason
        assert result.path is None
    assert list(tmp_path.iterdir()) == []


def test_zero_byte_file_fails(tmp_path: Path) -> None:
    source = tmp_path / "capture.jpg"
    source.touch()

    results = make_derivatives(source, tmp_path / "out")

    for result in results:
        assert result.status == FAILED
        assert "empty" in result.reason


def test_text_named_jpg_unavailable(tmp_path: Path) -> None:
    source = tmp_path / "receipt.jpg"
    source.write_text("TOTAL 9.00\n", encoding="utf-8")

    results = make_derivatives(source, tmp_path / "out")

    for result in results:
        assert result.status == UNAVAILABLE
        assert "text/plain" in result.reason
        assert "image/jpeg" in result.reason


def test_malformed_pdf_fails(tmp_path: Path) -> None:
    results = make_derivatives(MALFORMED_PDF, tmp_path)

    for result in results:
        assert result.status == FAILED
        assert "failed to open PDF" in result.reason
        assert MALFORMED_PDF.name in result.reason


def test_missing_source_fails(tmp_path: Path) -> None:
    results = make_derivatives(tmp_path / "gone.jpg", tmp_path / "out")

    for result in results:
        assert result.status == FAILED
        assert "gone.jpg" in result.reason


def test_make_derivatives_writes_both_files(tmp_path: Path) -> None:
    thumbnail, text = make_derivatives(RECEIPT, tmp_path / "out", max_px=200)

    image = assert_clean_rgb_jpeg(thumbnail)
    assert max(image.size) == 200
    assert thumbnail.path == tmp_path / "out" / f"{RECEIPT.name}.thumb.jpg"
    assert text.status == DONE, text.reason
    assert text.path == tmp_path / "out" / f"{RECEIPT.name}.ocr.txt"


def test_make_derivatives_in_process_pool(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        results = pool.submit(make_derivatives, CMYK_JPEG, tmp_path).result(timeout=60)

    assert [result.kind for result in results] == [THUMBNAIL, OCR_TEXT]
    assert [result.status for result in results] == [DONE, DONE]


def test_make_derivatives_rejects_invalid_max_px(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_px"):
        make_derivatives(RECEIPT, tmp_path, max_px=0)


# Transpose that turns an upright picture into what a camera stores under each
# EXIF orientation; the viewer (and the thumbnail) must undo it.
_STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(_STORED_AS))
def test_thumbnail_all_exif_orientations(tmp_path: Path, orientation: int) -> None:
    upright = Image.new("RGB", (400, 200), "white")
    upright.paste((255, 0, 0), (0, 0, 100, 100))  # red block in the top-left corner
    transpose = _STORED_AS[orientation]
    stored = upright.transpose(transpose) if transpose is not None else upright
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    source = tmp_path / f"orientation{orientation}.jpg"
    stored.save(source, "JPEG", exif=exif.tobytes(), quality=95)

    result = make_thumbnail(source, tmp_path / "thumb.jpg")

    image = assert_clean_rgb_jpeg(result)
    assert image.size == (320, 160)
    red, green, _ = image.getpixel((20, 20))
    assert red > 200, f"top-left corner is {image.getpixel((20, 20))}, not red"
    assert green < 60, f"top-left corner is {image.getpixel((20, 20))}, not red"
    assert image.getpixel((300, 140))[1] > 200


def test_scanned_pdf_ocr_page_count(tmp_path: Path) -> None:
    source = DATA / "pdf" / "scanned_4pages_no_text_cardinal.pdf"

    one = extract_text(source, tmp_path / "one.txt")
    two = extract_text(source, tmp_path / "two.txt", max_pages=2)

    assert one.details["pages_ocr"] == 1
    assert one.details["pages_left_for_hq"] == 3
    assert two.details["pages_ocr"] == 2
    assert two.details["pages_left_for_hq"] == 2
    assert two.path.read_text().count("\f") == 1


def test_thumbnail_webp_format(tmp_path: Path) -> None:
    result = make_thumbnail(GPS_JPEG, tmp_path / "thumb.webp", image_format="webp")

    assert result.status == "done"
    assert result.content_type == "image/webp"
    with Image.open(result.path) as image:
        assert image.format == "WEBP"
        assert max(image.size) == 320
        assert not image.getexif()
        assert not image.info.get("exif")


def test_thumbnail_unknown_format_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_format"):
        make_thumbnail(GPS_JPEG, tmp_path / "thumb.bmp", image_format="bmp")
