"""Content-addressed blob store on the device.

A blob lives at ``blobs/<first two hex digits>/<sha256>``. It is written to
a temporary file, fsynced, renamed into place and its directory fsynced, so
after a power cut a blob is either whole or absent. The same bytes captured
twice are stored once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from boothsync.durable import fsync_dir


class DiskReserveError(Exception):
    """Raised when a write would leave less free disk than the configured reserve."""


@dataclass(frozen=True)
class Blob:
    """A stored blob: its sha256, size in bytes and path."""

    sha256: str
    size: int
    path: Path


class BlobWriter:
    """Writes one blob incrementally; ``commit`` makes it durable, ``abort`` drops it."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._tmp = store.tmp_dir / uuid.uuid4().hex
        self._handle: BinaryIO = open(self._tmp, "wb")
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._handle.write(data)
        self._digest.update(data)
        self.size += len(data)

    def commit(self) -> Blob:
        """Fsync the data, rename it into place and fsync the directory."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        sha256 = self._digest.hexdigest()
        path = self._store.path_for(sha256)
        if not path.parent.exists():
            path.parent.mkdir(exist_ok=True)
            fsync_dir(path.parent.parent)
        if path.exists():
            os.unlink(self._tmp)
        else:
            os.replace(self._tmp, path)
            fsync_dir(path.parent)
        return Blob(sha256, self.size, path)

    def abort(self) -> None:
        self._handle.close()
        self._tmp.unlink(missing_ok=True)


class BlobStore:
    """Stores blobs below ``root`` and guards the disk reserve."""

    def __init__(self, root: Path, reserve_bytes: int = 0) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.reserve_bytes = reserve_bytes
        # Temporary files left by a crash belong to captures that were never
        # acknowledged, so nothing of value is lost by removing them.
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_reserve(self, incoming: int = 0) -> None:
        """Raise DiskReserveError when ``incoming`` more bytes would cut into the reserve."""
        free = self.free_bytes()
        if free - incoming < self.reserve_bytes:
            raise DiskReserveError(
                f"only {free} bytes free on the device and {incoming} bytes incoming, but"
                f" {self.reserve_bytes} must stay free: sync or purge captures, or lower disk_reserve_bytes"
            )

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put_file(self, source: Path) -> Blob:
        """Copy a file into the store."""
        writer = self.writer()
        try:
            with open(source, "rb") as handle:
                while block := handle.read(1024 * 1024):
                    writer.write(block)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise
