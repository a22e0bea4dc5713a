"""Helpers that make a file's bytes and its name survive a power cut."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries, so that a rename or a new file in it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a byte range's dirty pages to disk, without waiting for it.

    A later fsync then waits only for what was written since. This calls
    sync_file_range(SYNC_FILE_RANGE_WRITE), which is Linux only. Elsewhere,
    or if the call fails, it does nothing: it is only a hint, and the fsync
    still makes the data durable.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def drop_written(fd: int, offset: int, length: int) -> None:
    """Wait until a byte range's dirty pages are on disk, then drop the range from the page cache.

    A large upload then reuses the same few megabytes of page cache. On a
    virtual machine whose host takes back free memory, each fresh page costs
    a fault on the host, and recycled pages are faster to write into. This
    does not make the data durable: sync_file_range writes no metadata.
    Outside Linux it only drops the pages.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def write_behind(fd: int, window_end: int, window: int) -> None:
    """Start writeback of the ``window`` bytes that end at ``window_end``, then wait for and drop the window before it."""
    start_writeback(fd, window_end - window, window)
    if window_end >= 2 * window:
        drop_written(fd, window_end - 2 * window, window)


_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4


def _load_sync_file_range() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def make_dirs_durable(path: Path, root: Path) -> None:
    """Create ``path`` and its missing parents below ``root``, fsyncing each parent that gained an entry."""
    missing = []
    current = path
    while not current.exists() and current != root and root in current.parents:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        fsync_dir(directory.parent)


class DirectorySyncer:
    """Shares directory fsyncs between threads that renamed files into the same directory.

    Each caller needs an fsync that started after its own rename. While one
    fsync runs, every caller that arrives waits for the next one, which then
    covers all of them: with 16 uploads completing at once, one fsync serves
    many instead of each paying for its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, _SyncState] = {}

    def sync(self, directory: Path) -> None:
        """Return once an fsync of ``directory`` that began after this call has finished."""
        key = str(directory)
        with self._lock:
            state = self._states.setdefault(key, _SyncState(self._lock))
            needed = state.started + 1
            while state.done < needed:
                if state.running:
                    state.finished.wait()
                    continue
                state.running = True
                state.started += 1
                generation = state.started
                self._lock.release()
                try:
                    fsync_dir(directory)
                finally:
                    self._lock.acquire()
                    state.running = False
                    state.done = max(state.done, generation)
                    state.finished.notify_all()


class _SyncState:
    def __init__(self, lock: threading.Lock) -> None:
        self.started = 0
        self.done = 0
        self.running = False
        self.finished = threading.Condition(lock)
