"""Writes one request body into an upload file, from worker threads, in order.

The server stack hands a body over in chunks of a few dozen kilobytes, and
one system call per chunk costs more than the copy itself. So chunks are
collected and written a megabyte at a time, while the event loop receives
the next megabyte.

Large bodies can skip the page cache: their block-aligned middle is copied
into page-aligned buffers and written with O_DIRECT. Whether that is faster
depends on the machine, so writepath.py measures both ways. Writes of one
body never overlap and go out in file order, so the file never has a hole:
its size is always a prefix of the body that was received.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from boothsync.durable import write_behind
from boothsync.server.storage import BodyTooLongError

if TYPE_CHECKING:
    from boothsync.server.writepath import WritePathChooser

log = logging.getLogger("boothsync.server.store")

FLUSH_BYTES = 1024 * 1024
# O_DIRECT needs the memory address, file offset and length of each write
# aligned to the device's logical block size; 4096 covers the usual 512 and
# 4096 byte blocks.
ALIGNMENT = 4096
DIRECT_BUFFER_BYTES = 512 * 1024
# Bodies smaller than this go through the page cache: one direct write of a
# few kilobytes waits for the device and saves nothing.
DIRECT_MIN_BYTES = 512 * 1024
# The page cache writes of a large upload go in windows of this many bytes
# of the file. When a write fills a window, writeback of it starts, and the
# window before it is waited for and dropped from the page cache. So the
# fsync at completion waits only for the tail, and an upload keeps at most
# two windows of pages.
WRITEBACK_BYTES = 8 * 1024 * 1024


class AlignedBufferPool:
    """Page-aligned buffers for direct writes, reused so that their pages stay mapped."""

    def __init__(self, size: int = DIRECT_BUFFER_BYTES, keep: int = 32) -> None:
        self.size = size
        self.keep = keep
        self._free: list[mmap.mmap] = []

    def take(self) -> mmap.mmap:
        # Anonymous mmap memory starts at a page boundary, which satisfies ALIGNMENT.
        return self._free.pop() if self._free else mmap.mmap(-1, self.size)

    def give(self, buffer: mmap.mmap) -> None:
        if len(self._free) < self.keep:
            self._free.append(buffer)
        else:
            buffer.close()


class DirectIO:
    """Whether large bodies are written with O_DIRECT.

    Never when the setting or the file system rules it out (the first
    rejection switches it off), else as a test of the disk decides.
    """

    def __init__(self, enabled: bool, chooser: WritePathChooser) -> None:
        self.enabled = enabled and hasattr(os, "O_DIRECT")
        self.pool = AlignedBufferPool()
        self.chooser = chooser

    def choose(self) -> bool:
        """Return True when the next large body should be written with O_DIRECT."""
        return self.enabled and self.chooser.choose()

    def open(self, path: str) -> int | None:
        """Open ``path`` for direct writes, or return None when direct I/O is off or rejected."""
        if not self.enabled:
            return None
        try:
            return os.open(path, os.O_WRONLY | os.O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.rejected(path, exc)
            return None

    def rejected(self, path: str, exc: OSError) -> None:
        if self.enabled:
            log.warning("O_DIRECT rejected by the file system on %s (%s): writing through the page cache from now on", path, exc)
        self.enabled = False


class BodyWriter:
    """Writes a body received in chunks at ``offset`` of the open file ``fd``.

    ``direct_fd``, when given, is the same file opened with O_DIRECT.
    At most one write is in flight and one buffer fills meanwhile, which
    bounds the memory of each body to about two megabytes (one megabyte
    for direct writes).
    """

    def __init__(self, fd: int, offset: int, executor: ThreadPoolExecutor, *,
                 direct_fd: int | None = None, direct: DirectIO | None = None) -> None:
        self.fd = fd
        self.received = 0
        self._offset = offset  # file offset of the next byte not yet handed to a write
        self._executor = executor
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._in_flight: asyncio.Future[None] | None = None
        # The next write, waiting for the one in flight: (job, callback when done).
        self._queued: tuple[Callable[[], None], Callable[[], None] | None] | None = None
        self._direct_fd = direct_fd
        self._direct = direct
        self._buffer: mmap.mmap | None = None
        self._fill = 0
        # Bytes to write through the page cache before the file offset is aligned.
        self._head = (-offset) % ALIGNMENT
        # After a failed write nothing more is written, so the file keeps no hole.
        self.failed = False

    async def consume(self, body: AsyncIterator[bytes], limit: int, *digests: Any) -> None:
        """Write the whole body, updating each digest that is not None; raise BodyTooLongError past ``limit``."""
        active = [digest for digest in digests if digest is not None]
        async for chunk in body:
            if self.received + len(chunk) > limit:
                raise BodyTooLongError()
            self.received += len(chunk)
            for digest in active:
                digest.update(chunk)
            if self._direct_fd is None:
                self._pending.append(chunk)
                self._pending_bytes += len(chunk)
                if self._pending_bytes >= FLUSH_BYTES:
                    await self._flush_pending()
            else:
                await self._add_direct(chunk)

    async def drain(self, *, sync: bool = False) -> None:
        """Write everything received and wait until every write has finished; with ``sync``, fdatasync the file too."""
        if self.failed:
            await self.abandon()
            return
        # A write queued by a request cancelled mid-body goes first.
        await self._wait_all()
        if self._buffer is not None:
            await self._flush_buffer(last=True)
        if self._pending:
            if self._in_flight is None and self._direct_fd is None and not sync:
                # A small body in one piece: the hand-off to a thread would
                # cost more than the write.
                buffers, size = self._take_pending()
                try:
                    _pwrite_all(self.fd, buffers, self._offset - size, self._filled_window(size))
                except OSError:
                    self.failed = True
                    raise
            else:
                # The flush rides in the same thread job as the last write.
                await self._flush_pending(sync=sync)
                sync = False
        if sync:
            fd = self.fd
            await self._submit(lambda: os.fdatasync(fd))
        await self._wait_all()

    async def abandon(self) -> None:
        """Drop what is not yet written and wait for the write under way, ignoring its error."""
        self._pending, self._pending_bytes = [], 0
        if self._buffer is not None and self._direct is not None:
            self._direct.pool.give(self._buffer)
        self._buffer = None
        if self._queued is not None:
            _, done = self._queued
            self._queued = None
            if done is not None:
                done()
        try:
            await self._wait()
        except OSError:
            pass

    # Page cache writes

    def _take_pending(self) -> tuple[list[bytes], int]:
        buffers, size = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        self._offset += size
        return buffers, size

    def _filled_window(self, size: int) -> int | None:
        """Return the end offset of the WRITEBACK_BYTES window that the write of ``size`` bytes just taken fills, if any."""
        # Counted in file offsets, not per request: an upload sent in 1 MiB
        # PATCH requests fills a window every eighth request.
        window_end = self._offset - self._offset % WRITEBACK_BYTES
        return window_end if window_end > self._offset - size else None

    async def _flush_pending(self, *, sync: bool = False) -> None:
        buffers, size = self._take_pending()
        offset = self._offset - size
        window_end = None if sync else self._filled_window(size)
        fd = self.fd
        await self._submit(lambda: _pwrite_all(fd, buffers, offset, window_end, sync))

    # Direct writes

    async def _add_direct(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        if self._head:
            head = view[: self._head]
            self._pending.append(head.tobytes())
            self._pending_bytes += len(head)
            self._head -= len(head)
            view = view[len(head):]
            if self._head:
                return
            # The head must reach the file before the aligned writes after it.
            await self._flush_pending()
        while view:
            if self._buffer is None:
                assert self._direct is not None
                self._buffer = self._direct.pool.take()
                self._fill = 0
            step = min(len(self._buffer) - self._fill, len(view))
            self._buffer[self._fill: self._fill + step] = view[:step]
            self._fill += step
            view = view[step:]
            if self._fill == len(self._buffer):
                await self._flush_buffer(last=False)

    async def _flush_buffer(self, *, last: bool) -> None:
        """Hand the filled buffer to a direct write; on ``last``, the unaligned tail goes through the page cache."""
        assert self._buffer is not None and self._direct is not None
        buffer, fill = self._buffer, self._fill
        self._buffer, self._fill = None, 0
        aligned = fill - fill % ALIGNMENT
        if fill > aligned:
            self._pending.append(buffer[aligned:fill])
            self._pending_bytes += fill - aligned
        offset = self._offset
        self._offset += aligned
        if aligned:
            direct = self._direct
            fd, direct_fd = self.fd, self._direct_fd
            await self._submit(lambda: _pwrite_direct(direct_fd, fd, buffer, aligned, offset, direct),
                               done=lambda: direct.pool.give(buffer))
        else:
            self._direct.pool.give(buffer)
        if last and self._pending:
            # The tail's file offset follows the aligned part just handed over.
            await self._flush_pending()

    # Ordering

    async def _submit(self, job: Callable[[], None], done: Callable[[], None] | None = None) -> None:
        """Run ``job`` in a thread after the write before it has finished, so writes stay in file order.

        The job is queued before the wait, so a request cancelled meanwhile
        loses no bytes: ``drain`` still writes it.
        """
        self._queued = (job, done)
        await self._wait()
        self._start_queued()

    def _start_queued(self) -> None:
        if self._queued is None:
            return
        job, done = self._queued
        self._queued = None
        future = asyncio.get_running_loop().run_in_executor(self._executor, job)
        if done is not None:
            future.add_done_callback(lambda _: done())
        self._in_flight = future

    async def _wait_all(self) -> None:
        """Wait for the write in flight, then run and wait for the queued one."""
        await self._wait()
        if self._queued is not None:
            self._start_queued()
            await self._wait()

    async def _wait(self) -> None:
        future = self._in_flight
        if future is None:
            return
        try:
            # Shielded: a cancelled request must not end the wait while the
            # thread still writes from a buffer that would go back to the pool.
            # The write stays in flight, so the next drain waits for it.
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done():
                raise
            self._in_flight = None
            self.failed = True
            raise
        except BaseException:
            self._in_flight = None
            self.failed = True
            raise
        self._in_flight = None


def _pwrite_all(fd: int, buffers: list[bytes], offset: int, window_end: int | None, sync: bool = False) -> None:
    written = os.pwritev(fd, buffers, offset)
    total = sum(len(b) for b in buffers)
    if written < total:
        rest = b"".join(buffers)[written:]
        while rest:
            step = os.pwrite(fd, rest, offset + written)
            written += step
            rest = rest[step:]
    if window_end is not None:
        write_behind(fd, window_end, WRITEBACK_BYTES)
    if sync:
        os.fdatasync(fd)


def _pwrite_direct(direct_fd: int | None, fd: int, buffer: mmap.mmap, length: int, offset: int,
                   direct: DirectIO) -> None:
    """Write ``buffer[:length]`` at ``offset``: with O_DIRECT while the file system accepts it, else buffered."""
    view = memoryview(buffer)[:length]
    written = 0
    try:
        if direct_fd is not None and direct.enabled:
            try:
                while written < length:
                    step = os.pwrite(direct_fd, view[written:], offset + written)
                    written += step
                    if step == 0 or step % ALIGNMENT:
                        break  # the rest is no longer aligned
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                direct.rejected("a direct write", exc)
        while written < length:
            written += os.pwrite(fd, view[written:], offset + written)
    finally:
        view.release()
