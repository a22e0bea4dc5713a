"""Make local derivatives of a stored capture: a JPEG thumbnail and OCR text.

make_thumbnail, extract_text and make_derivatives return a ``Derivative`` whose
status is "done", "failed" or "unavailable" instead of raising on a bad input file.
PDFs need the optional ``pypdfium2`` package and HEIC images need ``pillow-heif``.
Without them those derivatives are "unavailable". OCR runs the ``tesseract``
command-line program, and video posters run ``ffprobe`` and ``ffmpeg``.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import logging
import mimetypes
import os
import json
import math
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

try:
    from PIL import ImageCms
except ImportError:  # Pillow built without Little CMS
    ImageCms = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from pypdfium2 import PdfDocument

logger = logging.getLogger(__name__)

THUMBNAIL = "thumbnail"
OCR_TEXT = "ocr_text"

DONE = "done"
FAILED = "failed"
UNAVAILABLE = "unavailable"

JPEG_CONTENT_TYPE = "image/jpeg"
# Thumbnail encodings and their media types.
THUMBNAIL_FORMATS = {"jpeg": JPEG_CONTENT_TYPE, "webp": "image/webp"}
_SUFFIX = {"jpeg": "jpg", "webp": "webp"}
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"

DEFAULT_MAX_PIXELS = 50_000_000
JPEG_QUALITY = 85

# Tesseract reads text best at roughly 300 dpi. The source DPI is usually unknown,
# so these long-side bounds are an estimate: small scans are enlarged (at most 4x)
# and huge photos are reduced, which also bounds tesseract's run time.
OCR_MIN_LONG_SIDE = 1600
OCR_MAX_LONG_SIDE = 3500
OCR_MAX_UPSCALE = 4.0
PDF_OCR_DPI = 300

# The poster is the frame at POSTER_MAX_OFFSET_S or at POSTER_DURATION_FRACTION of
# the duration, whichever is earlier, so it skips a black first frame but stays
# inside short clips.
POSTER_MAX_OFFSET_S = 1.0
POSTER_DURATION_FRACTION = 0.1
VIDEO_TIMEOUT_S = 30.0

# Later frames are never used, only seeked to check their declared size. A file
# with more frames than this has only its first frames checked.
MAX_CHECKED_FRAMES = 100

SNIFF_BYTES = 8192

IMAGE_TYPES = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/tiff": "TIFF",
    "image/heic": "HEIF",
}
VIDEO_TYPES = {"video/mp4", "video/quicktime"}

_SIGNATURES = [
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"II+\x00", "image/tiff"),  # BigTIFF
    (b"MM\x00+", "image/tiff"),
]
_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"}
_MP4_BRANDS = {
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6",
    b"mp41", b"mp42", b"avc1", b"M4V ", b"M4VP", b"dash", b"mmp4", b"MSNV",
}  # fmt: skip
_NOT_VIDEO_BRANDS = _HEIC_BRANDS | {b"mif1", b"msf1", b"avif", b"avis", b"M4A ", b"M4B "}
# QuickTime files written before the ftyp box existed start with one of these atoms.
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_TEXT_CONTROL_BYTES = set(range(0x20)) - {0x09, 0x0A, 0x0C, 0x0D, 0x1B}

# PDFium is not thread-safe (pypdfium2 README, "Incompatibility with Threading"), so
# every PDFium call in this module holds this lock. Other modules that use pypdfium2
# in the same process do not take it.
_PDFIUM_LOCK = threading.Lock()
_HEIF_LOCK = threading.Lock()
_heif_registered = False
_srgb_profile = None


@dataclass(frozen=True)
class Derivative:
    """Outcome of making one derivative of a capture."""

    kind: str
    status: str
    path: Path | None
    content_type: str | None
    reason: str | None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OcrSettings:
    """Preparation of an image for tesseract, and the page segmentation mode it runs with."""

    # tesseract's --psm page segmentation mode: 3 is fully automatic, 4 is one
    # column of text of variable sizes, 6 is one uniform block of text.
    psm: int = 3
    # Images with a shorter long side are enlarged towards it (at most
    # OCR_MAX_UPSCALE times). 0 turns enlarging off.
    min_long_side: int = OCR_MIN_LONG_SIDE
    # Threshold the greyscale image to black and white with Otsu's method.
    binarize: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.psm <= 13:
            raise ValueError(f"psm must be a tesseract page segmentation mode 0-13, got {self.psm}")
        if self.min_long_side < 0:
            raise ValueError(f"min_long_side must be 0 or more, got {self.min_long_side}")


# --psm 6 found 47 of 57 dates, totals and merchants on 19 SROIE receipts vs 42 for --psm 3, at 0.68 vs 0.65 s median (docs/benchmarks.md).
# NOTE: psm 6 reads the page as one block of text, so columns side by side on a form can be interleaved.
DEFAULT_OCR_SETTINGS = OcrSettings(psm=6)


class _DerivativeError(Exception):
    """Error that stops one derivative, carrying its status and reason."""

    status = FAILED

    def __init__(self, reason: str, details: dict | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details or {}


class _Failed(_DerivativeError):
    status = FAILED


class _Unavailable(_DerivativeError):
    status = UNAVAILABLE


# --- type detection -------------------------------------------------------------


def sniff_type(path: Path) -> str:
    """Detect a file's media type from its first bytes, ignoring its name.

    Returns "application/x-empty" for a zero-byte file and "application/octet-stream"
    when no known signature matches. Raises OSError when the file cannot be read.
    """
    with open(path, "rb") as file:
        head = file.read(SNIFF_BYTES)
    if not head:
        return "application/x-empty"
    return (
        _match_signature(head)
        or _match_iso_media(head)
        or _match_pdf(head)
        or _match_text(head, complete=len(head) < SNIFF_BYTES)
        or "application/octet-stream"
    )


def _match_signature(head: bytes) -> str | None:
    for signature, media_type in _SIGNATURES:
        if head.startswith(signature):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _match_iso_media(head: bytes) -> str | None:
    """Classify an ISO base media file (HEIF, MP4, QuickTime) by its ftyp brands."""
    box_type = head[4:8]
    if box_type in _QUICKTIME_ATOMS:
        return "video/quicktime"
    if box_type != b"ftyp" or len(head) < 16:
        return None

    box_size = min(struct.unpack(">I", head[:4])[0], len(head))
    major = head[8:12]
    compatible = {head[i : i + 4] for i in range(16, box_size - 3, 4)}
    brands = compatible | {major}

    if brands & _HEIC_BRANDS:
        return "image/heic"
    if major == b"qt  ":
        return "video/quicktime"
    if brands & _MP4_BRANDS and not brands & _NOT_VIDEO_BRANDS:
        return "video/mp4"
    return None


def _match_pdf(head: bytes) -> str | None:
    # PDF readers accept the header anywhere in the first 1024 bytes, and real
    # damaged files do put bytes before it.
    return "application/pdf" if b"%PDF-" in head[:1024] else None


def _match_text(head: bytes, *, complete: bool) -> str | None:
    """Return text/plain when the bytes are UTF-8 without binary control bytes."""
    if any(byte in _TEXT_CONTROL_BYTES for byte in head):
        return None
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        # A sample cut at SNIFF_BYTES may end inside a multi-byte character.
        decoder.decode(head, final=complete)
    except UnicodeDecodeError:
        return None
    return "text/plain"


def _type_note(source: Path, media_type: str) -> str:
    """Describe a mismatch between the file name's extension and its content."""
    guessed, _ = mimetypes.guess_type(source.name)
    if guessed is None or guessed == media_type:
        return ""
    return f" (the name suggests {guessed}, but the content is {media_type})"


# --- thumbnails -----------------------------------------------------------------


def make_thumbnail(
    source: Path,
    dest: Path,
    *,
    max_px: int = 320,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    ffmpeg: str = "ffmpeg",
    ffprobe: str = "ffprobe",
    video_timeout_s: float = VIDEO_TIMEOUT_S,
    image_format: str = "jpeg",
) -> Derivative:
    """Write a metadata-free thumbnail of an image, a PDF's first page or a video's poster frame.

    image_format is "jpeg" (the default) or "webp".
    The long side is at most max_px. Images and videos whose declared size exceeds
    max_pixels, or Pillow's process-wide Image.MAX_IMAGE_PIXELS if that is lower,
    fail before any pixel is decoded. Videos need ffprobe and ffmpeg, which together
    get video_timeout_s seconds. The file is written to a temporary name in dest's
    folder and renamed into place, so dest is either complete or absent.
    """
    if max_px < 1:
        raise ValueError(f"max_px must be at least 1, got {max_px}")
    if image_format not in THUMBNAIL_FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(THUMBNAIL_FORMATS)}, got {image_format!r}")
    if video_timeout_s <= 0:
        raise ValueError(f"video_timeout_s must be positive, got {video_timeout_s}")
    source, dest = Path(source), Path(dest)
    video_tools = _VideoTools(ffmpeg, ffprobe, video_timeout_s)
    media_type = None
    try:
        media_type = _sniff_for_derivative(source)
        image, details = _thumbnail_image(source, media_type, max_px, max_pixels, video_tools)
        data = _encode_clean(image, image_format)
        _write_atomically(dest, data)
    except _DerivativeError as error:
        return _log_outcome(THUMBNAIL, source, error, media_type)

    details.update(width=image.width, height=image.height, source_type=media_type)
    return Derivative(THUMBNAIL, DONE, dest, THUMBNAIL_FORMATS[image_format], None, details)


def _thumbnail_image(
    source: Path, media_type: str, max_px: int, max_pixels: int, video_tools: _VideoTools
) -> tuple[Image.Image, dict]:
    """Return the reduced RGB image to save as the thumbnail, and its details."""
    if media_type in IMAGE_TYPES:
        image, details = _load_image(source, media_type, (max_px, max_px), max_pixels)
    elif media_type == "application/pdf":
        image, details = _render_pdf_first_page(source, max_px)
    elif media_type in VIDEO_TYPES:
        image, details = _video_poster(source, max_px, _pixel_limit(max_pixels), video_tools)
    else:
        raise _Unavailable(
            f"no thumbnail for {source.name}: {media_type} content is not an image"
            f"{_type_note(source, media_type)}"
        )

    image = _to_rgb(image)
    image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    return image, details


def _encode_clean(image: Image.Image, image_format: str = "jpeg") -> bytes:
    """Encode an RGB image as JPEG or WebP and check that no metadata was written."""
    # Pillow's JPEG encoder copies a comment from image.info, so drop all of it.
    image.info.clear()
    buffer = io.BytesIO()
    if image_format == "webp":
        image.save(buffer, "WEBP", quality=JPEG_QUALITY)
    else:
        image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    data = buffer.getvalue()
    _check_no_metadata(data)
    return data


def _check_no_metadata(jpeg: bytes) -> None:
    with Image.open(io.BytesIO(jpeg)) as written:
        keys = ("exif", "icc_profile", "xmp", "comment", "photoshop", "mp")
        found = {key for key in keys if written.info.get(key)}
        if written.getexif():
            found.add("exif")
    if found:
        raise _Failed(f"encoded thumbnail still contains metadata: {', '.join(sorted(found))}")


# --- video posters --------------------------------------------------------------


@dataclass(frozen=True)
class _VideoTools:
    ffmpeg: str
    ffprobe: str
    timeout_s: float


@dataclass(frozen=True)
class _VideoProbe:
    """Facts that ffprobe reports about a file's first video stream."""

    width: int
    height: int
    codec: str | None
    duration_s: float | None
    rotation: int


def _video_poster(
    source: Path, max_px: int, pixel_limit: int, tools: _VideoTools
) -> tuple[Image.Image, dict]:
    """Decode one upright poster frame of a video with ffmpeg."""
    deadline = time.monotonic() + tools.timeout_s
    probe = _probe_video(source, tools, deadline)
    _check_pixels((probe.width, probe.height), pixel_limit, f"the video stream of {source.name}")

    offset_s = 0.0
    if probe.duration_s is not None:
        offset_s = min(POSTER_MAX_OFFSET_S, POSTER_DURATION_FRACTION * probe.duration_s)
    frame = _decode_video_frame(source, offset_s, max_px, tools, deadline)
    if frame is None and offset_s > 0:
        # The declared duration can be longer than the decodable stream.
        offset_s = 0.0
        frame = _decode_video_frame(source, offset_s, max_px, tools, deadline)
    if frame is None:
        raise _Failed(f"ffmpeg decoded no video frame from {source.name}")

    details = {
        "duration_s": probe.duration_s,
        "poster_time_s": round(offset_s, 3),
        "rotation": probe.rotation,
        "video_codec": probe.codec,
        "video_width": probe.width,
        "video_height": probe.height,
    }
    return frame, details


def _probe_video(source: Path, tools: _VideoTools, deadline: float) -> _VideoProbe:
    command = [
        tools.ffprobe, "-v", "error", "-print_format", "json",
        "-select_streams", "v:0",
        "-show_entries", "format=duration:stream=codec_name,width,height,duration"
        ":stream_tags=rotate:stream_side_data=rotation",
        "--", str(source),
    ]  # fmt: skip
    output = _run_video_tool(command, "ffprobe", source, deadline)
    try:
        report = json.loads(output)
    except json.JSONDecodeError as exc:
        raise _Failed(f"ffprobe printed invalid JSON for {source.name}: {exc}") from exc

    streams = report.get("streams") or []
    if not streams:
        raise _Failed(f"{source.name} has no video stream")
    stream = streams[0]
    width, height = stream.get("width"), stream.get("height")
    if not isinstance(width, int) or not isinstance(height, int) or width < 1 or height < 1:
        raise _Failed(f"the video stream of {source.name} has no valid size ({width}x{height})")

    duration_s = _parse_duration(report.get("format", {}).get("duration"))
    if duration_s is None:
        duration_s = _parse_duration(stream.get("duration"))
    return _VideoProbe(width, height, stream.get("codec_name"), duration_s, _stream_rotation(stream))


def _parse_duration(value: object) -> float | None:
    """Return a duration in seconds from ffprobe's text, or None when unknown."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return round(seconds, 3)


def _stream_rotation(stream: dict) -> int:
    """Return the clockwise display rotation in degrees, 0 when there is none.

    ffprobe reports a display matrix rotation counter-clockwise, so -90 there means
    the frame is shown turned 90 degrees clockwise. Older muxers write a "rotate" tag
    that is already clockwise.
    """
    for side_data in stream.get("side_data_list") or []:
        if "rotation" in side_data:
            with contextlib.suppress(TypeError, ValueError):
                return round(-float(side_data["rotation"])) % 360
    with contextlib.suppress(TypeError, ValueError):
        return round(float(stream.get("tags", {}).get("rotate", 0))) % 360
    return 0


def _decode_video_frame(
    source: Path, offset_s: float, max_px: int, tools: _VideoTools, deadline: float
) -> Image.Image | None:
    """Return the frame at offset_s, upright, or None when ffmpeg outputs no frame.

    ffmpeg applies the display rotation itself (its default -autorotate). It also
    reduces the frame to fit 2 * max_px, so a 4K frame never crosses the pipe, and
    Pillow does the final reduction as for images.
    """
    box = 2 * max_px
    scale = (
        f"scale=w='min(iw,{box})':h='min(ih,{box})'"
        ":force_original_aspect_ratio=decrease:flags=area"
    )
    command = [
        tools.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
        "-ss", f"{offset_s:.3f}", "-i", str(source),
        "-map", "0:v:0", "-frames:v", "1", "-vf", scale, "-map_metadata", "-1",
        "-f", "image2pipe", "-c:v", "ppm", "pipe:1",
    ]  # fmt: skip
    output = _run_video_tool(command, "ffmpeg", source, deadline)
    if not output:
        return None
    with _decoding_errors(source, "video/x-ppm frame"):
        with Image.open(io.BytesIO(output), formats=["PPM"]) as frame:
            frame.load()
            return frame.copy()


def _run_video_tool(command: list[str], name: str, source: Path, deadline: float) -> bytes:
    """Run ffmpeg or ffprobe within the time left before deadline and return its stdout."""
    remaining_s = deadline - time.monotonic()
    if remaining_s <= 0:
        raise _Failed(f"{name} timed out on {source.name}: no time left in the video limit")
    try:
        completed = subprocess.run(
            command, capture_output=True, timeout=remaining_s, check=False, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        raise _Unavailable(
            f"failed to run {name} at {command[0]!r} ({exc.strerror or exc}), so {source.name} "
            f"has no poster. Install ffmpeg (Debian: apt-get install ffmpeg) or pass its path."
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise _Failed(f"{name} timed out after {remaining_s:.3g} s on {source.name}") from exc

    if completed.returncode != 0:
        stderr = completed.stderr.decode("utf-8", errors="replace").strip()
        last_line = stderr.splitlines()[-1] if stderr else "no error output"
        raise _Failed(
            f"{name} exited with status {completed.returncode} on {source.name}: {last_line}"
        )
    return completed.stdout


# --- image decoding -------------------------------------------------------------


def _load_image(
    source: Path,
    media_type: str,
    draft_box: tuple[int, int],
    max_pixels: int,
) -> tuple[Image.Image, dict]:
    """Decode the first frame of an image, upright, after size and integrity checks.

    draft_box lets the JPEG decoder scale down while decoding, never below that box.
    """
    pillow_format = _pillow_format(media_type)
    limit = _pixel_limit(max_pixels)
    with _decoding_errors(source, media_type):
        _verify_image(source, pillow_format, limit)
        with Image.open(source, formats=[pillow_format]) as image:
            first = _decode_first_frame(image, draft_box)
            frames = _check_later_frames(image, limit, source)

    details = {"frames": frames} if frames > 1 else {}
    return first, details


def _pillow_format(media_type: str) -> str:
    if media_type == "image/heic":
        _register_heif_opener()
    return IMAGE_TYPES[media_type]


def _register_heif_opener() -> None:
    global _heif_registered
    try:
        import pillow_heif
    except ImportError as exc:
        raise _Unavailable(
            "HEIC images need the pillow-heif package, which is not installed. "
            "Install it with `pip install pillow-heif`."
        ) from exc
    with _HEIF_LOCK:
        if not _heif_registered:
            pillow_heif.register_heif_opener()
            _heif_registered = True


def _pixel_limit(max_pixels: int) -> int:
    """Return the stricter of the per-call limit and Pillow's global one.

    Image.MAX_IMAGE_PIXELS is shared by every thread and library in the process,
    so it is read here but never changed. Taking the minimum turns every image
    that would make Pillow emit DecompressionBombWarning into a failure as well.
    """
    global_limit = Image.MAX_IMAGE_PIXELS
    if global_limit is None:
        return max_pixels
    return min(max_pixels, global_limit)


def _check_pixels(size: tuple[int, int], limit: int, label: str) -> None:
    width, height = size
    if width * height > limit:
        raise _Failed(
            f"{label} declares {width}x{height} = {width * height:,} pixels, above the "
            f"limit of {limit:,} pixels (possible decompression bomb)"
        )


def _verify_image(source: Path, pillow_format: str, limit: int) -> None:
    """Check the declared size and the file structure without decoding pixels."""
    with Image.open(source, formats=[pillow_format]) as image:
        _check_pixels(image.size, limit, source.name)
        # For PNG this checks every chunk's length and CRC. It catches chunks that
        # declare more data than the file holds, which load() would still accept.
        image.verify()


def _decode_first_frame(image: Image.Image, draft_box: tuple[int, int]) -> Image.Image:
    image.seek(0)
    image.draft("RGB", draft_box)
    image.load()
    # exif_transpose returns a copy even when no rotation is needed, so the result
    # stays usable after the file is closed and after seeking to later frames.
    return ImageOps.exif_transpose(image)


def _check_later_frames(image: Image.Image, limit: int, source: Path) -> int:
    """Check the declared size of later frames and return the frame count."""
    frames = getattr(image, "n_frames", 1)
    for index in range(1, min(frames, MAX_CHECKED_FRAMES)):
        frame_label = f"frame {index + 1} of {source.name}"
        try:
            image.seek(index)
        except Image.DecompressionBombError as exc:
            raise _Failed(f"{frame_label} is too large to decode safely: {exc}") from exc
        _check_pixels(image.size, limit, frame_label)
    return frames


@contextlib.contextmanager
def _decoding_errors(source: Path, media_type: str) -> Iterator[None]:
    """Turn Pillow's errors for broken or hostile files into _Failed."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _Failed(f"{source.name} is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise _Failed(
            f"Pillow failed to identify {source.name} as {media_type}: {exc}"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise _Failed(f"failed to decode {media_type} file {source.name}: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit sRGB, flattening transparency onto white."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _to_8bit_grey(image)
    image = _convert_to_srgb(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La")
    if has_alpha or (image.mode == "P" and "transparency" in image.info):
        return _flatten_on_white(image)
    return image.convert("RGB")


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):
        return image.convert("I").point(lambda value: value / 256).convert("L")

    low, high = image.getextrema()
    if low >= 0 and high <= 255:
        return image.convert("L")
    scale = 255 / (high - low) if high > low else 1.0
    return image.point(lambda value: (value - low) * scale).convert("L")


def _convert_to_srgb(image: Image.Image) -> Image.Image:
    """Apply an embedded ICC profile so colours survive dropping the profile."""
    icc = image.info.get("icc_profile")
    if not icc or ImageCms is None or image.mode not in ("RGB", "CMYK"):
        return image
    try:
        source_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(
            image, source_profile, _get_srgb_profile(), outputMode="RGB"
        )
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        logger.info("invalid ICC profile, so the image is converted without it: %s", exc)
        return image


def _get_srgb_profile() -> ImageCms.core.CmsProfile:
    global _srgb_profile
    if _srgb_profile is None:
        _srgb_profile = ImageCms.createProfile("sRGB")
    return _srgb_profile


def _flatten_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, "white")
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


# --- PDF ------------------------------------------------------------------------


def _import_pdfium() -> ModuleType:
    try:
        import pypdfium2
    except ImportError as exc:
        raise _Unavailable(
            "PDF files need the pypdfium2 package, which is not installed. "
            "Install it with `pip install pypdfium2`."
        ) from exc
    return pypdfium2


@contextlib.contextmanager
def _open_pdf(source: Path) -> Iterator[PdfDocument]:
    """Open a PDF with PDFium under the module lock, turning its errors into _Failed."""
    pdfium = _import_pdfium()
    with _PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(source)
        except pdfium.PdfiumError as exc:
            raise _Failed(f"failed to open PDF {source.name}: {exc}") from exc
        try:
            if len(document) == 0:
                raise _Failed(f"PDF {source.name} has no pages")
            yield document
        except pdfium.PdfiumError as exc:
            raise _Failed(f"failed to read PDF {source.name}: {exc}") from exc
        finally:
            document.close()


def _render_page(
    document: PdfDocument, index: int, source: Path, long_side_px: int, max_scale: float
) -> Image.Image:
    """Render page ``index`` (from 0) so its long side is long_side_px, or less when max_scale is lower."""
    page = document[index]
    width, height = page.get_size()
    if width <= 0 or height <= 0:
        raise _Failed(f"page {index + 1} of PDF {source.name} has an invalid size {width}x{height} pt")
    scale = min(long_side_px / max(width, height), max_scale)
    bitmap = page.render(scale=scale)
    # convert() copies, so the image no longer shares the bitmap's buffer once
    # the document is closed.
    return bitmap.to_pil().convert("RGB")


def _render_pdf_first_page(source: Path, max_px: int) -> tuple[Image.Image, dict]:
    with _open_pdf(source) as document:
        image = _render_page(document, 0, source, max_px, max_scale=float("inf"))
        return image, {"pages": len(document)}


def _read_pdf_text_layer(document: PdfDocument) -> str:
    """Return the text layer of all pages, pages separated by form feeds."""
    page_texts = []
    for index in range(len(document)):
        text_page = document[index].get_textpage()
        page_texts.append(text_page.get_text_range().replace("\r\n", "\n"))
    return "\f".join(page_texts)


def _pdf_text(
    source: Path, timeout_s: float, tesseract: str, settings: OcrSettings, max_pages: int = 1
) -> tuple[str, dict]:
    """Take a PDF's text layer, or OCR its first ``max_pages`` pages when it has none."""
    with _open_pdf(source) as document:
        pages = len(document)
        text = _read_pdf_text_layer(document)
        if text.strip():
            return text, {"source": "text_layer", "pages": pages}
        # NOTE: when only later pages have a text layer, that text is returned and
        # the scanned pages without one are not OCRed.
        page_images = [
            _render_page(document, index, source, OCR_MAX_LONG_SIDE, max_scale=PDF_OCR_DPI / 72)
            for index in range(min(max_pages, pages))
        ]

    # timeout_s bounds each page's tesseract run, so a long document cannot
    # hold the worker for more than max_pages times the limit.
    texts = [
        _run_tesseract(_encode_ocr_png(image, settings), source, timeout_s, tesseract, settings.psm)
        for image in page_images
    ]
    details = {
        "source": "ocr",
        "pages": pages,
        "pages_ocr": len(page_images),
        "pages_left_for_hq": pages - len(page_images),
    }
    return "\f".join(texts), details


# --- OCR ------------------------------------------------------------------------


def extract_text(
    source: Path,
    dest: Path,
    *,
    timeout_s: float = 60.0,
    tesseract: str = "tesseract",
    settings: OcrSettings = DEFAULT_OCR_SETTINGS,
    max_pages: int = 1,
) -> Derivative:
    """Write the text of an image or PDF to dest as UTF-8.

    Images go through tesseract, prepared and segmented as settings sets. A PDF's
    text layer is used when it has one, and otherwise its first max_pages pages
    are rendered and OCRed; the rest are left for HQ. timeout_s bounds one
    tesseract run (one page), in seconds.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    source, dest = Path(source), Path(dest)
    media_type = None
    try:
        media_type = _sniff_for_derivative(source)
        text, details = _text_of(source, media_type, timeout_s, tesseract, settings, max_pages)
        _write_atomically(dest, text.encode("utf-8"))
    except _DerivativeError as error:
        return _log_outcome(OCR_TEXT, source, error, media_type)

    details.update(chars=len(text), source_type=media_type)
    return Derivative(OCR_TEXT, DONE, dest, TEXT_CONTENT_TYPE, None, details)


def _text_of(
    source: Path, media_type: str, timeout_s: float, tesseract: str, settings: OcrSettings, max_pages: int = 1
) -> tuple[str, dict]:
    if media_type == "application/pdf":
        text, details = _pdf_text(source, timeout_s, tesseract, settings, max_pages)
    elif media_type in IMAGE_TYPES:
        box = (OCR_MAX_LONG_SIDE, OCR_MAX_LONG_SIDE)
        image, details = _load_image(source, media_type, box, DEFAULT_MAX_PIXELS)
        png = _encode_ocr_png(image, settings)
        text = _run_tesseract(png, source, timeout_s, tesseract, settings.psm)
        details["source"] = "ocr"
    else:
        raise _Unavailable(
            f"no OCR for {source.name}: {media_type} content is not an image or PDF"
            f"{_type_note(source, media_type)}"
        )
    return _normalise_text(text), details


def _normalise_text(text: str) -> str:
    # tesseract ends each page with a form feed, which a plain-text file does not need.
    text = text.rstrip()
    return text + "\n" if text else ""


def _encode_ocr_png(image: Image.Image, settings: OcrSettings) -> bytes:
    """Return a greyscale (or, with settings.binarize, black and white) PNG sized for tesseract."""
    grey = _to_rgb(image).convert("L")
    long_side = max(grey.size)
    if long_side < settings.min_long_side:
        factor = min(settings.min_long_side / long_side, OCR_MAX_UPSCALE)
        size = (round(grey.width * factor), round(grey.height * factor))
        grey = grey.resize(size, Image.Resampling.LANCZOS)
    elif long_side > OCR_MAX_LONG_SIDE:
        grey.thumbnail((OCR_MAX_LONG_SIDE, OCR_MAX_LONG_SIDE), Image.Resampling.LANCZOS)

    if settings.binarize:
        threshold = otsu_threshold(grey.histogram())
        grey = grey.point(lambda value: 255 if value > threshold else 0)

    buffer = io.BytesIO()
    grey.save(buffer, "PNG")
    return buffer.getvalue()


def otsu_threshold(histogram: list[int]) -> int:
    """Return the grey level that best splits a 256-bin histogram into dark and light.

    Otsu's method: the threshold t maximises the between-class variance of the
    levels <= t and the levels > t. A histogram with a single level returns that
    level, and an empty one returns 127.
    """
    if len(histogram) != 256:
        raise ValueError(f"expected a 256-bin greyscale histogram, got {len(histogram)} bins")
    total = sum(histogram)
    if total == 0:
        return 127
    level_sum = sum(level * count for level, count in enumerate(histogram))

    best_level, best_variance = 0, -1.0
    dark_count, dark_sum = 0, 0
    for level, count in enumerate(histogram):
        dark_count += count
        dark_sum += level * count
        light_count = total - dark_count
        if dark_count == 0:
            continue
        if light_count == 0:
            break
        dark_mean = dark_sum / dark_count
        light_mean = (level_sum - dark_sum) / light_count
        variance = dark_count * light_count * (dark_mean - light_mean) ** 2
        if variance > best_variance:
            best_level, best_variance = level, variance
    if best_variance < 0:
        # All pixels share one level, so there is nothing to split.
        return max(range(256), key=histogram.__getitem__)
    return best_level


def _tesseract_env() -> dict[str, str]:
    # With its default OpenMP threads, Debian's tesseract 5.3.0 took 15.9 s instead
    # of 2.6 s for one 2550x3301 page on a 2-core machine, so use one thread unless
    # the caller's environment sets the limit.
    env = dict(os.environ)
    env.setdefault("OMP_THREAD_LIMIT", "1")
    return env


def _run_tesseract(png: bytes, source: Path, timeout_s: float, tesseract: str, psm: int) -> str:
    """Run tesseract on a PNG passed through stdin and return the text it prints."""
    try:
        completed = subprocess.run(
            [tesseract, "stdin", "stdout", "--psm", str(psm)],
            input=png,
            capture_output=True,
            timeout=timeout_s,
            env=_tesseract_env(),
            check=False,
        )
    except OSError as exc:
        raise _Unavailable(
            f"failed to run tesseract at {tesseract!r} ({exc.strerror or exc}). Install "
            "tesseract-ocr (Debian: apt-get install tesseract-ocr) or pass its path."
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise _Failed(f"tesseract timed out after {timeout_s:g} s on {source.name}") from exc

    if completed.returncode != 0:
        _raise_tesseract_error(completed, source)
    return completed.stdout.decode("utf-8", errors="replace")


def _raise_tesseract_error(completed: subprocess.CompletedProcess, source: Path) -> None:
    stderr = completed.stderr.decode("utf-8", errors="replace").strip()
    if "Failed loading language" in stderr:
        raise _Unavailable(
            "tesseract failed to load its English language data. Install "
            "tesseract-ocr-eng or point TESSDATA_PREFIX at its tessdata folder."
        )
    last_line = stderr.splitlines()[-1] if stderr else "no error output"
    raise _Failed(
        f"tesseract exited with status {completed.returncode} on {source.name}: {last_line}"
    )


# --- shared helpers -------------------------------------------------------------


def _sniff_for_derivative(source: Path) -> str:
    """Return the media type of a readable, non-empty source file."""
    try:
        media_type = sniff_type(source)
    except OSError as exc:
        raise _Failed(f"failed to read {source}: {exc.strerror or exc}") from exc
    if media_type == "application/x-empty":
        raise _Failed(f"{source.name} is empty (0 bytes)")
    return media_type


def _write_atomically(dest: Path, data: bytes) -> None:
    """Write data to a temporary file next to dest, fsync it and rename it to dest.

    The folder is not fsynced, so after a power loss dest may be missing, but it is
    never partly written.
    """
    temp_name = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, dest)
    except OSError as exc:
        if temp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
        raise _Failed(f"failed to write {dest}: {exc.strerror or exc}") from exc


def _log_outcome(
    kind: str, source: Path, error: _DerivativeError, media_type: str | None
) -> Derivative:
    """Log a derivative that was not made and return it as a Derivative."""
    level = logging.WARNING if error.status == FAILED else logging.INFO
    logger.log(level, "%s %s for %s: %s", kind, error.status, source, error.reason)
    details = dict(error.details)
    if media_type is not None:
        details.setdefault("source_type", media_type)
    return Derivative(kind, error.status, None, None, error.reason, details)


# --- both derivatives -----------------------------------------------------------


def make_derivatives(
    source: Path,
    out_dir: Path,
    *,
    max_px: int = 320,
    ocr_timeout_s: float = 60.0,
    ocr_max_pages: int = 1,
    thumbnail_format: str = "jpeg",
) -> list[Derivative]:
    """Make the thumbnail and the OCR text of one capture in out_dir.

    The files are named after the source: ``<name>.thumb.jpg`` and ``<name>.ocr.txt``.
    A bad input file, or an unexpected error in a decoder, gives a "failed"
    Derivative instead of an exception. Invalid max_px or ocr_timeout_s values
    raise ValueError. The function is defined at module level so that a
    ProcessPoolExecutor can pickle it.
    """
    if max_px < 1:
        raise ValueError(f"max_px must be at least 1, got {max_px}")
    if ocr_timeout_s <= 0:
        raise ValueError(f"ocr_timeout_s must be positive, got {ocr_timeout_s}")
    source, out_dir = Path(source), Path(out_dir)

    thumbnail = _guarded(
        THUMBNAIL, source,
        lambda: make_thumbnail(
            source, out_dir / f"{source.name}.thumb.{_SUFFIX[thumbnail_format]}", max_px=max_px,
            image_format=thumbnail_format,
        ),
    )  # fmt: skip
    text = _guarded(
        OCR_TEXT, source,
        lambda: extract_text(
            source, out_dir / f"{source.name}.ocr.txt", timeout_s=ocr_timeout_s, max_pages=ocr_max_pages
        ),
    )  # fmt: skip
    return [thumbnail, text]


def _guarded(kind: str, source: Path, make: Callable[[], Derivative]) -> Derivative:
    """Call make(), turning any exception it raises into a failed Derivative."""
    try:
        return make()
    except Exception as exc:
        # Decoders can raise exception types outside the ones handled above on
        # hostile input, and one bad capture must not stop the caller's queue.
        logger.exception("%s failed for %s with an unexpected error", kind, source)
        reason = f"unexpected {type(exc).__name__} while making the {kind} of {source.name}: {exc}"
        return Derivative(kind, FAILED, None, None, reason, {})
