"""Decode barcodes and QR codes in captured images and match them to the event's SKUs.

Decoding uses zxing-cpp (PyPI ``zxing-cpp``, tested with 3.1.1). The SKU list is
an optional CSV file pre-warmed onto the device at ``<data_dir>/prewarm/skus.csv``
with the columns ``sku`` and ``name`` and an optional ``barcode`` column.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from boothsync.agent.derivatives import DEFAULT_MAX_PIXELS, IMAGE_TYPES

log = logging.getLogger("boothsync.agent.codes")

# Barcodes stay readable at this size: a 13-digit EAN needs about 2 pixels per
# module (95 modules), and decoding larger images mostly costs time. This is an
# estimate, not a measured limit.
DECODE_MAX_SIDE = 2048

SKU_FILE_PARTS = ("prewarm", "skus.csv")
# A SKU shorter than this matches only a whole decoded text, never a token
# inside a URL, where short values such as "12" appear by chance.
MIN_TOKEN_SKU_CHARS = 4
_TOKEN_SPLIT = re.compile(r"[^0-9A-Za-z_.-]+")
_GTIN_LENGTHS = (8, 12, 13, 14)


class CodesUnavailableError(RuntimeError):
    """Raised when zxing-cpp is not installed, so no code can be decoded."""


@dataclass(frozen=True)
class DecodedCode:
    """One barcode or QR code found in an image."""

    format: str
    text: str

    def as_info(self) -> dict[str, str]:
        return {"format": self.format, "text": self.text}


def decode_image(image: Image.Image) -> list[DecodedCode]:
    """Decode every barcode and QR code in a Pillow image, in zxing-cpp's order.

    The format is zxing-cpp's display name, such as "QR Code" or "EAN-13".
    Raises CodesUnavailableError when zxing-cpp is not installed.
    """
    try:
        import zxingcpp
    except ImportError as exc:
        raise CodesUnavailableError(
            "barcode decoding needs the zxing-cpp package, which is not installed. "
            "Install it with `pip install zxing-cpp`."
        ) from exc
    found = []
    for barcode in zxingcpp.read_barcodes(image.convert("L")):
        code = DecodedCode(format=str(barcode.format), text=barcode.text)
        if code not in found:
            found.append(code)
    return found


def decode_file(path: Path, media_type: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[DecodedCode]:
    """Decode the codes in the first frame of an image file.

    Returns [] for types other than images. Raises ValueError when the declared
    size exceeds max_pixels, OSError when the file cannot be decoded and
    CodesUnavailableError when zxing-cpp is missing.
    """
    if media_type not in IMAGE_TYPES:
        return []
    if media_type == "image/heic":
        _register_heif_opener()
    with Image.open(path, formats=[IMAGE_TYPES[media_type]]) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ValueError(f"{path.name} declares {width}x{height} pixels, above the limit of {max_pixels:,}")
        # draft() lets the JPEG decoder scale down while decoding, never below the box.
        image.draft("L", (DECODE_MAX_SIDE, DECODE_MAX_SIDE))
        upright = ImageOps.exif_transpose(image).convert("L")
    upright.thumbnail((DECODE_MAX_SIDE, DECODE_MAX_SIDE), Image.Resampling.LANCZOS)
    return decode_image(upright)


def _register_heif_opener() -> None:
    try:
        import pillow_heif
    except ImportError as exc:
        raise OSError("HEIC images need the pillow-heif package, which is not installed") from exc
    # Registering again replaces the opener with an identical one, so repeated calls are harmless.
    pillow_heif.register_heif_opener()


def sku_file_for(data_dir: Path) -> Path:
    """Return the path of the pre-warmed SKU list in an agent data directory."""
    return data_dir.joinpath(*SKU_FILE_PARTS)


def _gtin_key(text: str) -> str | None:
    """Return a numeric barcode padded to 14 digits, so UPC-A and EAN-13 compare equal."""
    digits = text.strip()
    if digits.isdigit() and len(digits) in _GTIN_LENGTHS:
        return digits.zfill(14)
    return None


@dataclass(frozen=True)
class SkuCatalogue:
    """The event's SKU list: SKU codes by normalised text and by barcode."""

    by_text: dict[str, str]
    by_gtin: dict[str, str]

    def match(self, texts: list[str]) -> list[str]:
        """Return the SKUs that the decoded texts name, in first-seen order.

        A text matches a SKU when it equals the SKU or its barcode, ignoring case,
        surrounding spaces and the leading zeros of numeric barcodes. It also
        matches when one of its tokens, such as a URL path segment, equals a SKU
        of at least MIN_TOKEN_SKU_CHARS characters.
        """
        matched: list[str] = []
        for text in texts:
            for sku in self._skus_for(text):
                if sku not in matched:
                    matched.append(sku)
        return matched

    def _skus_for(self, text: str) -> list[str]:
        whole = text.strip().casefold()
        if whole in self.by_text:
            return [self.by_text[whole]]
        gtin = _gtin_key(text)
        if gtin is not None and gtin in self.by_gtin:
            return [self.by_gtin[gtin]]
        tokens = (token.casefold() for token in _TOKEN_SPLIT.split(text))
        return [
            self.by_text[token]
            for token in tokens
            if len(token) >= MIN_TOKEN_SKU_CHARS and token in self.by_text
        ]


def load_sku_catalogue(path: Path) -> SkuCatalogue | None:
    """Read a SKU list CSV with a header row, or return None when the file is missing.

    Rows without a SKU are skipped. Raises ValueError when the header has no
    ``sku`` column and OSError or UnicodeDecodeError when the file cannot be read.
    """
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        return None
    by_text: dict[str, str] = {}
    by_gtin: dict[str, str] = {}
    with handle:
        reader = csv.DictReader(handle)
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "sku" not in columns:
            raise ValueError(f"{path} has no 'sku' column in its header row: found {reader.fieldnames}")
        for row in reader:
            sku = (row.get(columns["sku"]) or "").strip()
            if not sku:
                continue
            by_text.setdefault(sku.casefold(), sku)
            barcode = (row.get(columns["barcode"]) or "").strip() if "barcode" in columns else ""
            if barcode:
                by_text.setdefault(barcode.casefold(), sku)
                gtin = _gtin_key(barcode)
                if gtin is not None:
                    by_gtin.setdefault(gtin, sku)
    return SkuCatalogue(by_text=by_text, by_gtin=by_gtin)


class SkuList:
    """The SKU list file of one agent, read again whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._catalogue: SkuCatalogue | None = None

    def catalogue(self) -> SkuCatalogue | None:
        """Return the current SKU list, or None when the file is missing or invalid."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._catalogue = None, None
            return None
        except OSError as exc:
            log.warning("failed to read the SKU list %s: %s", self.path, exc)
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._catalogue = load_sku_catalogue(self.path)
            except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
                log.warning("invalid SKU list %s, so no SKUs are matched until it is fixed: %s", self.path, exc)
                self._catalogue = None
            else:
                size = len(self._catalogue.by_text) if self._catalogue else 0
                log.info("loaded the SKU list %s (%d keys)", self.path, size)
        return self._catalogue

    def match(self, texts: list[str]) -> list[str]:
        """Return the SKUs named by decoded texts, or [] when there is no SKU list."""
        catalogue = self.catalogue()
        if catalogue is None or not texts:
            return []
        return catalogue.match(texts)
