"""Per-upload locks, so that two requests never write one upload at the same time.

The lock is an ``flock`` on a small file per upload. The kernel releases it
when the holding process dies, so a crashed server never leaves an upload
locked, and it holds across worker processes on one machine.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockBusyError(Exception):
    """Raised when another request holds the upload's lock."""


class FileLocker:
    """Hands out exclusive, non-blocking locks named by upload id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = str(directory)

    @contextmanager
    def hold(self, upload_id: str) -> Iterator[None]:
        """Hold the lock of ``upload_id`` for the ``with`` block, or raise LockBusyError at once."""
        fd = os.open(f"{self._dir}/{upload_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockBusyError(upload_id) from None
            yield
        finally:
            os.close(fd)

    def forget(self, upload_id: str) -> None:
        """Remove the lock file of a finished or deleted upload."""
        try:
            os.unlink(f"{self._dir}/{upload_id}.lock")
        except FileNotFoundError:
            pass
