"""Content-addressed blob store on the device.

A blob lives at ``blobs/<first two hex digits>/<sha256>``. It is written to
a temporary file, fsynced, renamed into place and its directory fsynced, so
after a power cut a blob is either whole or absent. The same bytes captured
twice are stored once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import logging
import mmap
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from boothsync.agent.blockfile import ALIGNMENT, BlockFile
from boothsync.durable import fsync_dir

log = logging.getLogger("boothsync.agent.blobs")

# Bytes hashed and written per system call. A multiple of ALIGNMENT, so that
# every full block can go to disk with O_DIRECT.
BLOCK_BYTES = 1024 * 1024
# Blocks of one writer that writer threads hash or write at once.
MAX_BLOCKS_IN_FLIGHT = 2
# A body that runs past its declared size (or has none) checks the disk reserve again after this many bytes.
RESERVE_CHECK_BYTES = 16 * 1024 * 1024

assert BLOCK_BYTES % ALIGNMENT == 0


class DiskReserveError(Exception):
    """Raised when a write would leave less free disk than the configured reserve."""


@dataclass(frozen=True)
class Blob:
    """A stored blob: its sha256, size in bytes and path."""

    sha256: str
    size: int
    path: Path


class BlobWriter:
    """Writes one blob incrementally; ``commit`` makes it durable, ``abort`` drops it.

    Incoming chunks are kept as they are until they add up to BLOCK_BYTES.
    A full block is copied into a page-aligned buffer, hashed while the
    copy is still in the CPU cache, and written in one system call (see
    BlockFile). From the event loop, ``write_async`` hands full blocks to
    the store's writer threads, so the loop only receives while threads
    copy, hash and write. Up to MAX_BLOCKS_IN_FLIGHT blocks are in flight,
    so one block's write to disk overlaps the next one's hashing, and the
    digest takes the blocks strictly in file order. ``write`` does a full
    block's work in the calling thread. The bytes after the last full
    block, and a whole body smaller than one block, are hashed and written
    by ``commit``, which the caller runs in a thread.

    Memory per writer: at most MAX_BLOCKS_IN_FLIGHT aligned buffers, and
    the chunks of the blocks in flight and of the block being collected.
    Call ``write`` or ``write_async`` while no other call on the same
    writer runs, then ``commit`` or ``abort`` once.
    """

    def __init__(self, store: BlobStore, expected_size: int | None = None, *, direct: bool = True) -> None:
        self._store = store
        self._tmp = store.tmp_dir / uuid.uuid4().hex
        self._file = BlockFile(self._tmp, direct=direct, on_direct_rejected=store.direct_rejected)
        self._digest = hashlib.sha256()
        self._pending: collections.deque[memoryview] = collections.deque()
        self._pending_bytes = 0
        # File offset of the first pending byte.
        self._offset = 0
        self._blocks = 0
        self._buffers: list[mmap.mmap] = []
        self._in_flight: collections.deque[tuple[concurrent.futures.Future[None], mmap.mmap]] = collections.deque()
        # Blocks hashed so far; a writer thread waits until its block's index comes up.
        self._hashed = 0
        self._hash_turn = threading.Condition()
        # Past the declared size (or without one), the reserve is checked again every RESERVE_CHECK_BYTES.
        self._next_reserve_check = (expected_size or 0) + RESERVE_CHECK_BYTES
        self.size = 0

    @property
    def direct(self) -> bool:
        """Whether full blocks go to disk with O_DIRECT: false before the first full block and after commit."""
        return self._file.direct

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data``, copying, hashing and writing each full block in the calling thread."""
        self._add(data)
        while self._pending_bytes >= BLOCK_BYTES:
            self._wait_all()
            buffer = self._buffer()
            self._write_block(self._take_block(), buffer, self._offset, self._next_index())
            self._buffers.append(buffer)
            self._advance()

    async def write_async(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` on the event loop, handing each full block to a writer thread.

        Raises the error of an earlier block's write, and DiskReserveError
        when a body longer than its declared size cuts into the reserve.
        """
        self._add(data)
        while self._pending_bytes >= BLOCK_BYTES:
            while len(self._in_flight) >= MAX_BLOCKS_IN_FLIGHT:
                future, buffer = self._in_flight[0]
                await asyncio.wrap_future(future)
                self._in_flight.popleft()
                self._buffers.append(buffer)
            buffer = self._buffer()
            future = self._store.write_pool.submit(
                self._write_block, self._take_block(), buffer, self._offset, self._next_index()
            )
            self._in_flight.append((future, buffer))
            self._advance()

    def commit(self) -> Blob:
        """Write the rest, fsync the data, rename it into place and fsync the directory.

        Blocks until the blocks in flight are written, so call it from a
        thread rather than the event loop.
        """
        try:
            self._wait_all()
            if self._pending:
                tail = b"".join(self._pending)
                self._pending.clear()
                self._digest.update(tail)
                self._file.write_tail(memoryview(tail), self._offset)
            self._file.sync()
        except BaseException:
            self.abort()
            raise
        self._release()
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
        """Drop the blob: wait for the blocks in flight, then close and remove the temporary file.

        On the event loop this blocks for at most the blocks in flight.
        """
        concurrent.futures.wait([future for future, _ in self._in_flight])
        self._buffers += [buffer for _, buffer in self._in_flight]
        self._in_flight.clear()
        self._pending.clear()
        self._release()
        self._tmp.unlink(missing_ok=True)

    def _add(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        # Chunks are kept until their block is written, so keep only bytes that cannot change.
        chunk = data if isinstance(data, bytes) else bytes(data)
        self._pending.append(memoryview(chunk))
        self._pending_bytes += len(chunk)
        self.size += len(chunk)

    def _take_block(self) -> list[memoryview]:
        """Remove and return the pending pieces that make up the next BLOCK_BYTES bytes."""
        pieces = []
        needed = BLOCK_BYTES
        while needed:
            first = self._pending[0]
            if len(first) <= needed:
                pieces.append(self._pending.popleft())
                needed -= len(first)
            else:
                pieces.append(first[:needed])
                self._pending[0] = first[needed:]
                needed = 0
        self._pending_bytes -= BLOCK_BYTES
        return pieces

    def _next_index(self) -> int:
        self._blocks += 1
        return self._blocks - 1

    def _buffer(self) -> mmap.mmap:
        return self._buffers.pop() if self._buffers else mmap.mmap(-1, BLOCK_BYTES)

    def _advance(self) -> None:
        """Move past the block just handed over, checking the reserve once the body runs long."""
        self._offset += BLOCK_BYTES
        if self._offset >= self._next_reserve_check:
            self._next_reserve_check = self._offset + RESERVE_CHECK_BYTES
            self._store.check_reserve(0)

    def _write_block(self, pieces: list[memoryview], buffer: mmap.mmap, offset: int, index: int) -> None:
        with memoryview(buffer) as view:
            position = 0
            for piece in pieces:
                view[position:position + len(piece)] = piece
                position += len(piece)
            with self._hash_turn:
                self._hash_turn.wait_for(lambda: self._hashed == index)
            try:
                self._digest.update(view)
            finally:
                with self._hash_turn:
                    self._hashed += 1
                    self._hash_turn.notify_all()
            self._file.write_block(view, offset)

    def _wait_all(self) -> None:
        """Wait for every block in flight, in order; raise the first write error."""
        while self._in_flight:
            future, buffer = self._in_flight[0]
            future.result()
            self._in_flight.popleft()
            self._buffers.append(buffer)

    def _release(self) -> None:
        self._file.close()
        for buffer in self._buffers:
            buffer.close()
        self._buffers = []


class BlobStore:
    """Stores blobs below ``root`` and guards the disk reserve."""

    def __init__(self, root: Path, reserve_bytes: int = 0, *, direct: bool = True) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.reserve_bytes = reserve_bytes
        # Whether new writers try O_DIRECT for full blocks. Turned off when the file system rejects it.
        self.direct = direct
        # Threads that hash and write the blocks of writers fed from the event loop.
        self.write_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="blob-write")
        # Temporary files left by a crash belong to captures that were never
        # acknowledged, so nothing of value is lost by removing them.
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)

    def direct_rejected(self, exc: OSError) -> None:
        """Stop trying O_DIRECT for new blobs, because the file system rejected it."""
        if self.direct:
            self.direct = False
            log.warning("O_DIRECT rejected in %s (%s): writing blobs through the page cache from now on", self.root, exc)

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

    def writer(self, expected_size: int | None = None) -> BlobWriter:
        return BlobWriter(self, expected_size, direct=self.direct)

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
