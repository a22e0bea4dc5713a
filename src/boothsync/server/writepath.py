"""Choosing between O_DIRECT and the page cache for large bodies, by measuring the disk.

Which way is faster depends on the machine, and the difference is large
both ways. On one virtual machine, 1 GiB went to disk at about 2 GB/s with
O_DIRECT and at 320 to 400 MB/s through the page cache. On another, O_DIRECT
managed 400 to 700 MB/s, and the page cache with early writeback about
1 GB/s. So when the first large body arrives, a worker thread writes a
scratch file both ways, as large bodies are written, and the faster way
is used from then on. The test runs again after REPROBE_S, at the next
large body.

One upload's bodies can then change ways once, which is safe: each write
still lands in file order.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import time
from concurrent.futures import Executor

from boothsync.durable import write_behind
from boothsync.server.bodywriter import DIRECT_BUFFER_BYTES, FLUSH_BYTES, WRITEBACK_BYTES

log = logging.getLogger("boothsync.server.store")

# Bytes written each way per round. Large enough that the flush at the end
# weighs as it does for a large upload, small enough to take well under a
# second on a disk of a few hundred MB/s.
PROBE_BYTES = 32 * 1024 * 1024
# Rounds of each way, alternating, of which the fastest counts: one round can
# hit a burst of other I/O.
PROBE_ROUNDS = 2
REPROBE_S = 3600.0
# O_DIRECT must be this much faster to be chosen, because the event loop
# also copies each of its bytes into an aligned buffer, which the page cache
# way does not.
DIRECT_MARGIN = 1.25


class WritePathChooser:
    """The write path of large bodies: O_DIRECT or not, as the last disk test in ``directory`` found.

    Until the first test has finished, large bodies go with O_DIRECT.
    """

    def __init__(self, directory: str, executor: Executor) -> None:
        self.directory = directory
        self._executor = executor
        self._direct = True
        self._tested_at: float | None = None
        self._lock = threading.Lock()
        # Speeds of the last test in MB/s: (O_DIRECT or None, page cache).
        self.last_result: tuple[float | None, float] | None = None

    def choose(self) -> bool:
        """Return True when the next large body should be written with O_DIRECT; start a disk test when one is due."""
        with self._lock:
            now = time.monotonic()
            if self._tested_at is None or now - self._tested_at > REPROBE_S:
                self._tested_at = now
                self._executor.submit(self._test)
            return self._direct

    def _test(self) -> None:
        try:
            direct_mb_s, cached_mb_s = measure(self.directory)
        except OSError as exc:
            log.error("write path test failed directory=%s error=%s", self.directory, exc)
            return
        direct = direct_mb_s is not None and direct_mb_s >= cached_mb_s * DIRECT_MARGIN
        with self._lock:
            self._direct = direct
            self.last_result = (direct_mb_s, cached_mb_s)
        log.info(
            "large bodies go %s direct_mb_s=%s page_cache_mb_s=%.0f",
            "past the page cache (O_DIRECT)" if direct else "through the page cache",
            "rejected" if direct_mb_s is None else f"{direct_mb_s:.0f}",
            cached_mb_s,
        )


def measure(directory: str, nbytes: int = PROBE_BYTES, rounds: int = PROBE_ROUNDS) -> tuple[float | None, float]:
    """Write ``nbytes`` into a scratch file in ``directory`` each way, ``rounds`` times, and return the best MB/s of each.

    The O_DIRECT speed is None when the file system rejects O_DIRECT.
    Each way ends with an fdatasync, as a completed upload does.
    """
    direct_best: float | None = 0.0
    cached_best = 0.0
    buffer = mmap.mmap(-1, FLUSH_BYTES)
    buffer.write(os.urandom(FLUSH_BYTES))
    try:
        for _ in range(rounds):
            if direct_best is not None:
                seconds = _write_direct(directory, buffer, nbytes)
                direct_best = None if seconds is None else max(direct_best, nbytes / seconds / 1e6)
            cached_best = max(cached_best, nbytes / _write_cached(directory, buffer, nbytes) / 1e6)
    finally:
        buffer.close()
    return direct_best, cached_best


def _write_direct(directory: str, buffer: mmap.mmap, nbytes: int) -> float | None:
    """Return the seconds that writing ``nbytes`` with O_DIRECT took, one block at a time, or None when rejected."""
    path = f"{directory}/.write-test-direct"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise
    view = memoryview(buffer)[:DIRECT_BUFFER_BYTES]
    try:
        started = time.perf_counter()
        for offset in range(0, nbytes, DIRECT_BUFFER_BYTES):
            os.pwrite(fd, view, offset)
        os.fdatasync(fd)
        return time.perf_counter() - started
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise
    finally:
        view.release()
        os.close(fd)
        os.unlink(path)


def _write_cached(directory: str, buffer: mmap.mmap, nbytes: int) -> float:
    """Return the seconds that writing ``nbytes`` through the page cache took, in windows as the store writes, with one fdatasync."""
    path = f"{directory}/.write-test-cached"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        started = time.perf_counter()
        for offset in range(0, nbytes, FLUSH_BYTES):
            os.pwrite(fd, buffer, offset)
            if (offset + FLUSH_BYTES) % WRITEBACK_BYTES == 0:
                write_behind(fd, offset + FLUSH_BYTES, WRITEBACK_BYTES)
        os.fdatasync(fd)
        return time.perf_counter() - started
    finally:
        os.close(fd)
        os.unlink(path)
