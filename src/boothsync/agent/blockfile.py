"""A new file written in page-aligned blocks, with O_DIRECT where the file system accepts it.

Buffered writes copy every byte into the page cache, and that copy costs
more CPU than receiving the bytes. O_DIRECT writes go from the caller's
page-aligned buffer to the device, so a large capture is written at the
device's speed and the final fsync only has the metadata and the tail
left. When O_DIRECT is off, or the file system rejects it with EINVAL,
blocks go through the page cache. Then writeback is started every few
megabytes, so that the final fsync waits only for the tail.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path

from boothsync.durable import start_writeback

log = logging.getLogger("boothsync.agent.blobs")

# O_DIRECT needs the buffer address, the file offset and the length to be
# multiples of the device's logical block size. That is 512 or 4096 bytes on
# common disks, so a page covers both.
ALIGNMENT = mmap.PAGESIZE
# Buffered blocks: start writeback after this many bytes.
WRITEBACK_BYTES = 8 * 1024 * 1024


class BlockFile:
    """Writes a new file at ``path``: aligned blocks with ``write_block``, the rest with ``write_tail``.

    Writes to distinct ranges may run in several threads at once.
    """

    def __init__(self, path: Path, *, direct: bool,
                 on_direct_rejected: Callable[[OSError], None] | None = None) -> None:
        self.path = path
        self._on_direct_rejected = on_direct_rejected
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        self._lock = threading.Lock()
        # The O_DIRECT descriptor is opened at the first aligned block, so a
        # small capture never pays for it.
        self._try_direct = direct and hasattr(os, "O_DIRECT")
        self._direct_fd: int | None = None
        self._direct_ok = False
        # Range of bytes written through the page cache since writeback was last started.
        self._dirty_start = 0
        self._dirty_end = 0

    @property
    def direct(self) -> bool:
        """Whether aligned blocks are written with O_DIRECT: false until the first block, or once rejected."""
        return self._direct_ok

    def write_block(self, view: memoryview, offset: int) -> None:
        """Write ``view`` at ``offset``; both must be page-aligned in address, offset and length."""
        fd = self._block_fd()
        if fd is not None:
            try:
                _pwrite_all(fd, view, offset)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Some file systems accept O_DIRECT at open and reject the write.
                self._drop_direct(exc)
        self._write_buffered(view, offset)

    def write_tail(self, view: memoryview, offset: int) -> None:
        """Write bytes that need not be aligned, through the page cache."""
        self._write_buffered(view, offset)

    def sync(self) -> None:
        """Fsync the file's data and metadata, whichever descriptor wrote them."""
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the descriptors; call it once no write runs."""
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None
            self._direct_ok = False
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _block_fd(self) -> int | None:
        with self._lock:
            if self._try_direct:
                self._try_direct = False
                try:
                    self._direct_fd = os.open(self.path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
                    self._direct_ok = True
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._rejected(exc)
            return self._direct_fd if self._direct_ok else None

    def _drop_direct(self, exc: OSError) -> None:
        # The descriptor stays open until close(), because another thread may be writing through it.
        with self._lock:
            if self._direct_ok:
                self._direct_ok = False
                self._rejected(exc)

    def _rejected(self, exc: OSError) -> None:
        log.debug("O_DIRECT rejected, writing through the page cache path=%s: %s", self.path, exc)
        if self._on_direct_rejected is not None:
            self._on_direct_rejected(exc)

    def _write_buffered(self, view: memoryview, offset: int) -> None:
        _pwrite_all(self.fd, view, offset)
        with self._lock:
            if self._dirty_start == self._dirty_end:
                self._dirty_start, self._dirty_end = offset, offset + len(view)
            else:
                self._dirty_start = min(self._dirty_start, offset)
                self._dirty_end = max(self._dirty_end, offset + len(view))
            if self._dirty_end - self._dirty_start < WRITEBACK_BYTES:
                return
            start, end = self._dirty_start, self._dirty_end
            self._dirty_start = self._dirty_end = 0
        start_writeback(self.fd, start, end - start)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
