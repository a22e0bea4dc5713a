"""Per-upload locks, so that two requests never write one upload at the same time.

The locks live in the server's memory. That is enough because one server
process at a time owns a data directory (see boothsync.datalock), and it
costs no system call: on some virtual machines creating a lock file took
longer than storing a 50 KB upload.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class LockBusyError(Exception):
    """Raised when another request holds the upload's lock."""


class UploadLocks:
    """Hands out exclusive, non-blocking locks named by upload id."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    @contextmanager
    def hold(self, upload_id: str) -> Iterator[None]:
        """Hold the lock of ``upload_id`` for the ``with`` block, or raise LockBusyError at once."""
        if upload_id in self._held:
            raise LockBusyError(upload_id)
        self._held.add(upload_id)
        try:
            yield
        finally:
            self._held.discard(upload_id)
