"""Filesystem store for uploads in progress.

Each upload's bytes received so far are in ``uploads/<id>.bin``, and its
length, metadata and state are a row in ``uploads/infos.sqlite3``. The
offset reported to clients is always the size of ``<id>.bin`` on disk,
never a counter, so after a crash the client re-sends whatever was lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boothsync.durable import DirectorySyncer, make_dirs_durable
from boothsync.server.bodywriter import DIRECT_MIN_BYTES, BodyWriter, DirectIO
from boothsync.server.infos import InfoTable
from boothsync.server.spares import SpareFiles
from boothsync.server.storage import (
    BlockChecksums,
    BodyCutShortError,
    BodyTooLongError,
    Checksum,
    ChecksumMismatchError,
    UploadInfo,
)
from boothsync.server.writepath import WritePathChooser
from boothsync.tus.protocol import BlockVerifier, new_digest

log = logging.getLogger("boothsync.server.store")

_READ_BYTES = 1024 * 1024
SYNC_THREADS = 16
INFO_CACHE_ENTRIES = 4096


class FileStore:
    """Stores upload bytes and infos below ``root``.

    Data is fsynced when an upload is finalized, not after every append,
    unless ``fsync_every_append`` is set. Infos are not fsynced on every
    change: after a power cut a lost info means the client creates the
    upload again, which costs bytes, never correctness.
    """

    def __init__(self, root: Path, *, fsync_every_append: bool = False, direct_io: bool = True) -> None:
        self.root = root
        self.uploads = root / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        # Paths as plain strings: pathlib objects cost more than the
        # system calls on the hot path of a small upload.
        self._dir = str(self.uploads)
        self.fsync_every_append = fsync_every_append
        # Running sha256 of uploads appended in order by this process, so a
        # large part need not be read back at completion. It is only a
        # cache: without an entry, sha256() reads the file.
        self._sha256: dict[str, tuple[int, hashlib._Hash]] = {}
        # Uploads whose complete data this process has already fdatasynced.
        self._data_synced: set[str] = set()
        self._directories = DirectorySyncer()
        self.spares = SpareFiles(self._dir)
        # Infos this process has read or written, newest last. One server
        # process owns the data directory, so the files change only through
        # this store, and a request need not read its upload's info file.
        self._info_cache: dict[str, UploadInfo] = {}
        # fsync blocks for milliseconds, so it runs in threads, enough of
        # them that concurrent completions flush together.
        self.sync_pool = ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="boothsync-fsync")
        self.direct = DirectIO(direct_io, WritePathChooser(self._dir, self.sync_pool))
        self.infos = InfoTable(self.uploads / "infos.sqlite3", self.sync_pool)
        self.infos.import_files(self.uploads)

    def _bin(self, upload_id: str) -> str:
        return f"{self._dir}/{upload_id}.bin"

    def create(self, upload_id: str, length: int | None, metadata: dict[str, str], ttl_s: float,
               *, partial: bool = False) -> UploadInfo:
        now = time.time()
        info = UploadInfo(upload_id, length, metadata, created_at=now, expires_at=now + ttl_s, partial=partial)
        # Upload ids are 128 random bits, so the name is new.
        try:
            os.rename(self.spares.take(), self._bin(upload_id))
        except FileNotFoundError:
            # Someone deleted the spare files, so make this one here.
            os.close(os.open(self._bin(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._save(info)
        return info

    def _save(self, info: UploadInfo) -> None:
        self.infos.put(info)
        self._remember(info)

    def _remember(self, info: UploadInfo) -> None:
        # A copy, so that a caller changing its info without saving it
        # changes nothing here.
        self._info_cache.pop(info.upload_id, None)
        self._info_cache[info.upload_id] = dataclasses.replace(info)
        if len(self._info_cache) > INFO_CACHE_ENTRIES:
            del self._info_cache[next(iter(self._info_cache))]

    def close(self) -> None:
        """Stop the store's threads, delete its unused spare files and close the info table."""
        self.spares.close()
        self.sync_pool.shutdown(wait=True)
        self.infos.close()

    def get(self, upload_id: str) -> UploadInfo | None:
        cached = self._info_cache.get(upload_id)
        if cached is not None:
            return dataclasses.replace(cached)
        info = self.infos.get(upload_id)
        if info is None:
            return None
        self._remember(info)
        return info

    def offset(self, info: UploadInfo) -> int:
        if info.is_final:
            return info.length or 0
        try:
            return os.stat(self._bin(info.upload_id)).st_size
        except FileNotFoundError:
            return 0

    async def append(self, info: UploadInfo, offset: int, body: AsyncIterator[bytes], limit: int,
                     checksum: Checksum | None, *, track_sha256: bool = False,
                     expected_bytes: int | None = None, blocks: BlockChecksums | None = None) -> int:
        if checksum is not None:
            return await self._append_checked(info, offset, body, limit, checksum, track_sha256, blocks)
        running = self._running_sha256(info, offset) if track_sha256 else None
        path = self._bin(info.upload_id)
        fd = os.open(path, os.O_WRONLY)
        direct_fd = None
        try:
            if expected_bytes is not None and expected_bytes >= DIRECT_MIN_BYTES and self.direct.choose():
                direct_fd = self.direct.open(path)
        except BaseException:
            os.close(fd)
            raise
        batch = BodyWriter(fd, offset, self.sync_pool, direct_fd=direct_fd, direct=self.direct)
        try:
            try:
                await batch.consume(body, limit, running)
                # The last bytes of an upload are flushed here, in the same
                # thread job as their write, so finalize need not open the
                # file again.
                flush = self.fsync_every_append or offset + batch.received == info.length
                await batch.drain(sync=flush)
            except BodyTooLongError:
                await batch.abandon()
                self._cut(batch.fd, info, offset)
                raise
            except BaseException as exc:
                if batch.failed:
                    # A write failed (for example on a full disk): the file contains the
                    # bytes written before it, and the error goes up as it is.
                    await asyncio.shield(batch.abandon())
                    self._sha256.pop(info.upload_id, None)
                    raise
                # The body ended early (a disconnect, or the request was
                # cancelled): keep what arrived, as the protocol allows.
                if isinstance(exc, Exception):
                    await batch.drain()
                else:
                    await asyncio.shield(batch.drain())
                self._remember_sha256(info, offset + batch.received, running)
                if not isinstance(exc, Exception):
                    raise
                raise BodyCutShortError(batch.received) from exc
            if flush:
                self._data_synced.add(info.upload_id)
        finally:
            os.close(batch.fd)
            if direct_fd is not None:
                os.close(direct_fd)
        self._remember_sha256(info, offset + batch.received, running)
        return batch.received

    async def _append_checked(self, info: UploadInfo, offset: int, body: AsyncIterator[bytes], limit: int,
                              checksum: Checksum, track_sha256: bool, blocks: BlockChecksums | None) -> int:
        """Append a body with a checksum: it goes to a side file first and joins the upload only if it matches.

        So neither a crash mid-body nor a concurrent HEAD can ever see bytes
        that were not checked. A body that ends early is dropped, unless
        ``blocks`` gives the digests of its blocks: then the whole blocks
        that match join the upload.
        """
        pending = f"{self._dir}/{info.upload_id}.pending"
        digest = new_digest(checksum.algorithm)
        verifier = BlockVerifier(checksum.algorithm, blocks.size, blocks.digests) if blocks is not None else None
        running = self._running_sha256(info, offset) if track_sha256 else None
        batch = BodyWriter(os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 0, self.sync_pool)
        try:
            try:
                await batch.consume(body, limit, running, digest, verifier)
                await batch.drain()
            except BaseException as exc:
                cut_short = isinstance(exc, Exception) and not isinstance(exc, (BodyTooLongError, BodyCutShortError))
                if cut_short and verifier is not None and verifier.verified_bytes and not batch.failed:
                    kept = await self._keep_checked_blocks(batch, pending, info, verifier.verified_bytes)
                    if kept == batch.received:
                        self._remember_sha256(info, offset + kept, running)
                    raise BodyCutShortError(kept) from exc
                await asyncio.shield(batch.abandon())
                if batch.failed or not cut_short:
                    raise
                # A partial body cannot be checked against its checksum.
                raise BodyCutShortError(0) from exc
            if digest.digest() != checksum.digest:
                raise ChecksumMismatchError()
            self._join(pending, info, batch.received)
        finally:
            os.close(batch.fd)
            _unlink(pending)
        self._remember_sha256(info, offset + batch.received, running)
        return batch.received

    async def _keep_checked_blocks(self, batch: BodyWriter, pending: str, info: UploadInfo, verified: int) -> int:
        """Join the first ``verified`` bytes of a cut body, whose blocks matched their digests, and return that count."""
        await asyncio.shield(batch.drain())
        if batch.failed:
            return 0
        self._join(pending, info, verified)
        log.info("kept the checked blocks of a cut body upload_id=%s kept=%d received=%d",
                 info.upload_id, verified, batch.received)
        return verified

    def _join(self, pending: str, info: UploadInfo, size: int) -> None:
        """Append the checked side file to the upload inside the kernel."""
        # copy_file_range rejects a target opened with O_APPEND, so the
        # target offset is given explicitly: the end of the upload's bytes.
        with open(pending, "rb") as source, open(self._bin(info.upload_id), "r+b") as target:
            source_offset = 0
            target_offset = os.fstat(target.fileno()).st_size
            while source_offset < size:
                copied = os.copy_file_range(
                    source.fileno(), target.fileno(), size - source_offset, source_offset, target_offset
                )
                if copied == 0:
                    raise OSError(f"copy of {pending} stopped with {size - source_offset} bytes left")
                source_offset += copied
                target_offset += copied
            if self.fsync_every_append:
                os.fsync(target.fileno())

    def _cut(self, fd: int, info: UploadInfo, offset: int) -> None:
        os.ftruncate(fd, offset)
        self._sha256.pop(info.upload_id, None)

    def _running_sha256(self, info: UploadInfo, offset: int) -> hashlib._Hash | None:
        if offset == 0:
            return hashlib.sha256()
        entry = self._sha256.pop(info.upload_id, None)
        if entry is not None and entry[0] == offset:
            return entry[1]
        return None

    def _remember_sha256(self, info: UploadInfo, offset: int, running: hashlib._Hash | None) -> None:
        if running is not None:
            self._sha256[info.upload_id] = (offset, running)

    def touch(self, info: UploadInfo, ttl_s: float) -> UploadInfo:
        """Push the expiry of an upload that is still receiving bytes ``ttl_s`` into the future."""
        info.expires_at = time.time() + ttl_s
        self._save(info)
        return info

    def declare_length(self, info: UploadInfo, length: int) -> UploadInfo:
        info.length = length
        self._save(info)
        return info

    def concatenate(self, final: UploadInfo, partials: list[UploadInfo]) -> None:
        """Copy the partial uploads into ``final`` inside the kernel, without passing bytes through Python."""
        with open(self._bin(final.upload_id), "wb") as out:
            for partial in partials:
                with open(self._bin(partial.upload_id), "rb") as source:
                    remaining = os.fstat(source.fileno()).st_size
                    while remaining > 0:
                        copied = os.copy_file_range(source.fileno(), out.fileno(), remaining)
                        if copied == 0:
                            break
                        remaining -= copied

    def sha256(self, info: UploadInfo) -> str:
        entry = self._sha256.get(info.upload_id)
        if entry is not None and entry[0] == self.offset(info):
            return entry[1].hexdigest()
        digest = hashlib.sha256()
        with open(self.data_path(info), "rb") as handle:
            while block := handle.read(_READ_BYTES):
                digest.update(block)
        return digest.hexdigest()

    def data_path(self, info: UploadInfo) -> Path:
        """Return where the upload's bytes are now: the upload file, or its final place."""
        return Path(info.final_path) if info.final_path else Path(self._bin(info.upload_id))

    def finalize(self, info: UploadInfo, dest: Path) -> UploadInfo:
        """Make a complete upload durable and move it to ``dest``.

        The data and the destination directory are fsynced before the
        server reports the upload complete, so a part the client counts as
        stored survives a power cut.
        """
        source = self._bin(info.upload_id)
        if info.upload_id not in self._data_synced:
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        self._data_synced.discard(info.upload_id)
        if not os.path.isdir(dest.parent):
            make_dirs_durable(dest.parent, self.root)
        os.replace(source, dest)
        self._directories.sync(dest.parent)
        info.final_path = str(dest)
        self._save(info)
        self._sha256.pop(info.upload_id, None)
        return info

    def delete(self, upload_id: str) -> None:
        """Remove an upload's bytes and info; a finalized part at its final place stays."""
        for path in (self._bin(upload_id), f"{self._dir}/{upload_id}.pending"):
            _unlink(path)
        self.infos.delete(upload_id)
        self._sha256.pop(upload_id, None)
        self._info_cache.pop(upload_id, None)

    def expired(self, now: float) -> list[UploadInfo]:
        return self.infos.expired(now)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

