"""Intake: turn incoming bytes into a durable capture and a local confirmation.

A capture is acknowledged only after its blob is fsynced in the blob store
and its journal row is committed. Nothing else (derivatives, the network,
the server) happens before the acknowledgement.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boothsync.agent.blobstore import Blob, BlobStore, BlobWriter
from boothsync.agent.derivatives import sniff_type
from boothsync.agent.journal import Journal
from boothsync.classes import parse_class
from boothsync.ids import new_capture_id, short_code
from boothsync.names import sanitize_filename

log = logging.getLogger("boothsync.agent.intake")

MAX_METADATA_KEYS = 50
MAX_METADATA_VALUE_CHARS = 1000

CONFIRMATION_MESSAGE = "Safe on this device. Pending finalization at HQ."


class CaptureError(ValueError):
    """Raised when a capture request is invalid; nothing was stored."""


def clean_metadata(raw: Any) -> dict[str, str]:
    """Return capture metadata as a flat map of short strings, or raise CaptureError."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CaptureError("metadata must be a JSON object of names to values")
    if len(raw) > MAX_METADATA_KEYS:
        raise CaptureError(f"metadata has {len(raw)} keys; at most {MAX_METADATA_KEYS} are allowed")
    cleaned = {}
    for key, value in raw.items():
        if not isinstance(value, (str, int, float, bool)):
            raise CaptureError(f"metadata value of {key!r} must be a string, number or boolean")
        text = str(value)
        if len(text) > MAX_METADATA_VALUE_CHARS:
            raise CaptureError(f"metadata value of {key!r} exceeds {MAX_METADATA_VALUE_CHARS} characters")
        cleaned[sanitize_filename(str(key), fallback="key")[:64]] = text
    return cleaned


def _with_class_given(metadata: dict[str, str] | None, klass: str | None) -> dict[str, str]:
    """Record whether the capturer chose the class, so triage suggests a class only when none was chosen."""
    given = bool(klass and klass.strip())
    return {**(metadata or {}), "class_given": "true" if given else "false"}


class Intake:
    """Stores captures; calls ``on_stored(capture_id, blob)`` after each acknowledgement."""

    def __init__(self, journal: Journal, blobs: BlobStore, on_stored: Callable[[str, Blob], None],
                 *, local_only_classes: set[str] | None = None) -> None:
        self.journal = journal
        self.blobs = blobs
        self.on_stored = on_stored
        self.local_only_classes = local_only_classes or set()

    def open_writer(self, expected_size: int | None = None) -> BlobWriter:
        """Check the disk reserve and start a blob; raises DiskReserveError when full."""
        self.blobs.check_reserve(expected_size or 0)
        return self.blobs.writer(expected_size)

    def finish(
        self,
        writer: BlobWriter,
        *,
        klass: str | None,
        filename: str | None,
        content_type: str | None,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Make the blob durable, commit the journal row and return the confirmation."""
        try:
            name = parse_class(klass)
            self.blobs.check_reserve(0)
        except BaseException:
            writer.abort()
            raise
        blob = writer.commit()
        return self._record(blob, name, filename, content_type, _with_class_given(metadata, klass))

    def capture_file(self, path: Path, *, klass: str | None, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        """Capture a file from the device's own disk (the hot folder)."""
        name = parse_class(klass)
        self.blobs.check_reserve(path.stat().st_size)
        blob = self.blobs.put_file(path)
        return self._record(blob, name, path.name, None, _with_class_given(metadata, klass))

    def _record(self, blob: Blob, klass: str, filename: str | None, content_type: str | None,
                metadata: dict[str, str]) -> dict[str, Any]:
        if not content_type or content_type == "application/octet-stream":
            # Hot-folder files and raw bodies without a type: look at the bytes.
            content_type = sniff_type(blob.path)
        capture_id = new_capture_id()
        capture = {
            "capture_id": capture_id,
            "short_code": short_code(capture_id),
            "class": klass,
            "filename": sanitize_filename(filename),
            "content_type": content_type,
            "metadata": metadata,
            "captured_at": time.time(),
            "sha256": blob.sha256,
            "size": blob.size,
            "local_only": klass in self.local_only_classes,
        }
        self.journal.add_capture(capture)
        log.info(
            "capture stored capture_id=%s class=%s bytes=%d sha256=%s", capture_id, klass, blob.size, blob.sha256
        )
        self.on_stored(capture_id, blob)
        return {
            "capture_id": capture_id,
            "short_code": capture["short_code"],
            "class": klass,
            "filename": capture["filename"],
            "sha256": blob.sha256,
            "size": blob.size,
            "state": "stored",
            "message": CONFIRMATION_MESSAGE,
        }
