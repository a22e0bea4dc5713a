"""Filesystem store for uploads in progress.

Each upload is two files in ``uploads/``: ``<id>.bin`` with the bytes
received so far and ``<id>.info`` with its length, metadata and state. The
offset reported to clients is always the size of ``<id>.bin`` on disk,
never a counter, so after a crash the client re-sends whatever was lost.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from boothsync.durable import fsync_dir, write_atomic


@dataclass
class UploadInfo:
    """The store's record of one upload, apart from its bytes."""

    upload_id: str
    length: int
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    expires_at: float = 0.0
    final_path: str | None = None  # set once the upload has been finalized and moved

    @property
    def is_final(self) -> bool:
        return self.final_path is not None


class FileStore:
    """Stores upload bytes and info files below ``root``."""

    def __init__(self, root: Path, *, fsync_every_append: bool = False) -> None:
        self.root = root
        self.uploads = root / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.fsync_every_append = fsync_every_append

    def _bin(self, upload_id: str) -> Path:
        return self.uploads / f"{upload_id}.bin"

    def _info(self, upload_id: str) -> Path:
        return self.uploads / f"{upload_id}.info"

    def create(self, upload_id: str, length: int, metadata: dict[str, str], ttl_s: float) -> UploadInfo:
        """Create an empty upload of ``length`` bytes that expires ``ttl_s`` from now."""
        now = time.time()
        info = UploadInfo(upload_id, length, metadata, created_at=now, expires_at=now + ttl_s)
        self._bin(upload_id).touch(exist_ok=False)
        self._save(info)
        return info

    def _save(self, info: UploadInfo) -> None:
        write_atomic(self._info(info.upload_id), json.dumps(asdict(info)).encode())

    def get(self, upload_id: str) -> UploadInfo | None:
        """Return the info of ``upload_id``, or None when there is no such upload."""
        try:
            raw = self._info(upload_id).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return UploadInfo(**json.loads(raw))

    def offset(self, info: UploadInfo) -> int:
        """Return how many bytes of the upload are on disk."""
        if info.is_final:
            return info.length
        try:
            return self._bin(info.upload_id).stat().st_size
        except FileNotFoundError:
            return 0

    def open_append(self, info: UploadInfo) -> BinaryIO:
        """Open the upload's bytes for appending at the current offset."""
        return open(self._bin(info.upload_id), "ab")

    def sync_append(self, handle: BinaryIO) -> None:
        """Flush an append handle, with an fsync when the store is set to fsync every append."""
        handle.flush()
        if self.fsync_every_append:
            os.fsync(handle.fileno())

    def truncate(self, info: UploadInfo, offset: int) -> None:
        """Cut the upload back to ``offset`` bytes, dropping a rejected request's body."""
        os.truncate(self._bin(info.upload_id), offset)

    def data_path(self, info: UploadInfo) -> Path:
        """Return where the upload's bytes are now: the upload file, or its final place."""
        return Path(info.final_path) if info.final_path else self._bin(info.upload_id)

    def finalize(self, info: UploadInfo, dest: Path) -> UploadInfo:
        """Make a complete upload durable and move it to ``dest``.

        The data and both directories are fsynced before the info file
        records the new place, so a part the server reported as complete
        survives a power cut.
        """
        source = self._bin(info.upload_id)
        with open(source, "rb+") as handle:
            os.fsync(handle.fileno())
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)
        fsync_dir(dest.parent)
        fsync_dir(self.uploads)
        info.final_path = str(dest)
        self._save(info)
        return info

    def delete(self, upload_id: str) -> None:
        """Remove an upload's bytes and info; a finalized part at its final place stays."""
        self._bin(upload_id).unlink(missing_ok=True)
        self._info(upload_id).unlink(missing_ok=True)

    def expired(self, now: float) -> list[UploadInfo]:
        """Return the incomplete uploads whose expiry time has passed."""
        found = []
        for path in self.uploads.glob("*.info"):
            info = self.get(path.stem)
            if info is not None and not info.is_final and info.expires_at < now:
                found.append(info)
        return found
