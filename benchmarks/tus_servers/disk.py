"""Physical limits of the file system the benchmark's stores live on."""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path


def sequential_write(directory: Path, total: int, block: int, payload: memoryview) -> tuple[float, float]:
    """Write ``total`` bytes into one new file in ``block``-byte writes, then fsync it once.

    Returns the seconds the writes took (into the page cache) and the seconds
    the final fsync took. The file is removed afterwards.
    """
    path = directory / f"seq-write-{block}.bin"
    chunk = payload[:block]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        started = time.perf_counter()
        written = 0
        while written < total:
            written += _write_all(fd, chunk[: total - written])
        wrote = time.perf_counter()
        os.fsync(fd)
        synced = time.perf_counter()
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return wrote - started, synced - wrote


def sequential_direct_write(directory: Path, total: int, block: int, payload: memoryview) -> float | None:
    """Write ``total`` bytes with O_DIRECT in ``block``-byte writes, fsync once, and return the seconds taken.

    Returns None when the file system rejects O_DIRECT. The file is removed afterwards.
    """
    if not hasattr(os, "O_DIRECT"):
        return None
    path = directory / f"seq-direct-{block}.bin"
    # O_DIRECT needs a page-aligned buffer, which anonymous mmap memory is.
    buffer = mmap.mmap(-1, block)
    buffer[:] = payload[:block]
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError:
        buffer.close()
        return None
    try:
        started = time.perf_counter()
        written = 0
        with memoryview(buffer) as view:
            while written < total:
                written += os.write(fd, view)
        os.fsync(fd)
        return time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
        buffer.close()


def small_files_fsync(folder: Path, count: int, size: int, payload: memoryview) -> float:
    """Create ``count`` files of ``size`` bytes in the new directory ``folder``, each fsynced before the next.

    Return the seconds taken. The directory itself is not fsynced. The
    files stay, because deleting thousands of files slows the file
    creations that follow on an ext4 without a journal.
    """
    folder.mkdir()
    body = payload[:size]
    started = time.perf_counter()
    for index in range(count):
        fd = os.open(folder / f"{index}.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - started


def _write_all(fd: int, data: memoryview) -> int:
    done = 0
    while done < len(data):
        done += os.write(fd, data[done:])
    return done
