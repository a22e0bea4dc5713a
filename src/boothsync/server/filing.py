"""Verification of a complete part and its move to the final place in storage."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from boothsync.names import sanitize_filename
from boothsync.server.index import Index
from boothsync.server.storage import UploadInfo, UploadStore
from boothsync.server.tus_endpoint import PartRejectedError

_READ_BYTES = 1024 * 1024
_PART_SUFFIX = {"thumbnail": ".jpg", "ocr_text": ".txt"}


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


class PartFiler:
    """Checks a complete upload against its manifest, then files it.

    Captures go to ``files/<event>/<class>/<YYYY-MM-DD>/<capture_id>/<part>``;
    uploads from plain tus clients that name no capture go to
    ``files/_uploads/<YYYY-MM-DD>/<upload_id>``. No part of a client's file
    name becomes a path, only a sanitised suffix.
    """

    def __init__(self, store: UploadStore, index: Index, files_dir: Path) -> None:
        self.store = store
        self.index = index
        self.files_dir = files_dir

    def file(self, info: UploadInfo) -> UploadInfo:
        """Verify and move a complete upload; raise PartRejectedError when it does not match."""
        capture_id = info.metadata.get("capture_id")
        part = info.metadata.get("part")
        if not capture_id or not part:
            day = time.strftime("%Y-%m-%d", time.gmtime(info.created_at))
            return self.store.finalize(info, self.files_dir / "_uploads" / day / info.upload_id)

        expected = self.index.expected_part(capture_id, part)
        if expected is None:
            raise PartRejectedError(f"capture {capture_id} part {part} is not in any manifest")
        actual = self.store.sha256(info)
        if actual != expected["sha256"] or info.length != expected["size"]:
            raise PartRejectedError(
                f"capture {capture_id} part {part}: sha256 {actual} and size {info.length} do not match"
                f" the manifest's {expected['sha256']} and {expected['size']}"
            )
        dest = self._destination(expected, capture_id, part)
        final = self.store.finalize(info, dest)
        self.index.mark_synced(capture_id, part, str(dest.relative_to(self.files_dir)))
        return final

    def _destination(self, expected: dict, capture_id: str, part: str) -> Path:
        day = time.strftime("%Y-%m-%d", time.gmtime(expected["captured_at"]))
        suffix = _PART_SUFFIX.get(part, "")
        if part == "thumbnail" and expected.get("content_type") == "image/webp":
            suffix = ".webp"
        if part == "original":
            suffix = Path(sanitize_filename(expected.get("filename"))).suffix.lower()[:10]
        folder = self.files_dir / expected["event"] / expected["class"] / day / capture_id
        return folder / f"{part}{suffix}"
