"""The manifest: the small JSON record of a capture that the server receives first.

The agent builds it. The server validates it with ``parse_manifest`` before
it stores anything of the capture, and later checks each uploaded part
against the sha256 and size the manifest lists.
"""

from __future__ import annotations

import math
import re
from typing import Any

from boothsync.classes import PRIORITY
from boothsync.names import sanitize_filename

PART_NAMES = ("original", "thumbnail", "ocr_text")
MAX_METADATA_BYTES = 8 * 1024
# 9999-12-31T23:59:59Z: later times cannot be turned into a storage date.
MAX_TIMESTAMP = 253_402_300_799
# SQLite integers are signed 64-bit.
MAX_PART_SIZE = 2**63 - 1

_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """Raised when a manifest is missing a field or has an invalid value."""


def is_capture_id(value: str) -> bool:
    """Return True when ``value`` is a ULID in canonical upper-case form."""
    return bool(_ULID.match(value))


def parse_manifest(data: Any) -> dict[str, Any]:
    """Validate a decoded manifest and return it in canonical form."""
    if not isinstance(data, dict):
        raise ManifestError("a manifest must be a JSON object")
    capture_id = _text(data, "capture_id")
    if not is_capture_id(capture_id):
        raise ManifestError(f"capture_id {capture_id!r} is not a ULID")
    klass = _text(data, "class")
    if klass not in PRIORITY:
        raise ManifestError(f"class {klass!r} is not one of {', '.join(PRIORITY)}")
    manifest = {
        "capture_id": capture_id,
        "event": _slug(data, "event"),
        "device_id": _slug(data, "device_id"),
        "class": klass,
        "captured_at": _timestamp(data, "captured_at"),
        "filename": _filename(data.get("filename")),
        "metadata": _metadata(data.get("metadata", {})),
        "parts": _parts(data.get("parts")),
    }
    return manifest


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"manifest field {key!r} is missing or not a string")
    return value


def _slug(data: dict[str, Any], key: str) -> str:
    value = _text(data, key)
    if not _SLUG.match(value):
        raise ManifestError(f"{key} {value[:80]!r} is invalid: use 1 to 64 letters, digits, '.', '_' or '-'")
    return value


def _filename(value: Any) -> str:
    if value is not None and not isinstance(value, str):
        raise ManifestError(f"manifest field 'filename' must be a string, got {type(value).__name__}")
    return sanitize_filename(value)


def _timestamp(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError(f"manifest field {key!r} must be a number of Unix seconds, got {value!r}")
    if not 0 <= value <= MAX_TIMESTAMP:
        raise ManifestError(f"manifest field {key!r} must be between 0 and {MAX_TIMESTAMP}, got {value!r}")
    return float(value)


def _metadata(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError("manifest field 'metadata' must be an object")
    if len(repr(value).encode()) > MAX_METADATA_BYTES:
        raise ManifestError(f"manifest metadata exceeds {MAX_METADATA_BYTES} bytes")
    return value


def _parts(value: Any) -> list[dict[str, Any]]:
    # An empty list is valid: a capture kept on the device by policy is still announced.
    if not isinstance(value, list):
        raise ManifestError("manifest field 'parts' must be a list")
    parts = []
    seen = set()
    for item in value:
        if not isinstance(item, dict):
            raise ManifestError("each manifest part must be an object")
        name = item.get("part")
        if name not in PART_NAMES:
            raise ManifestError(f"part {name!r} is not one of {', '.join(PART_NAMES)}")
        if name in seen:
            raise ManifestError(f"part {name!r} is listed twice")
        seen.add(name)
        sha256 = item.get("sha256")
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise ManifestError(f"part {name!r} needs a lower-case hex sha256")
        size = item.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_PART_SIZE:
            raise ManifestError(f"part {name!r} needs an integer size from 0 to {MAX_PART_SIZE}, got {size!r}")
        content_type = item.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise ManifestError(f"part {name!r} content_type must be a string")
        parts.append({"part": name, "sha256": sha256, "size": size, "content_type": content_type})
    return parts
