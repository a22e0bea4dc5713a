"""The uploader: announces manifests, then sends parts over tus, most important first.

Order: every pending manifest first (they are small and tell HQ what
exists), then parts by class priority and capture time. Each part resumes
from the offset the server reports, so acknowledged bytes are never sent
twice. Failures back off exponentially with full jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from typing import Any

import httpx

from boothsync.agent.blobstore import BlobStore
from boothsync.agent.journal import Journal, PartToUpload
from boothsync.agent.syncstats import SyncStats
from boothsync.tus.client import (
    ChecksumMismatchError,
    OffsetConflictError,
    RejectedError,
    TransientError,
    TusClient,
    TusError,
    UploadGoneError,
)

log = logging.getLogger("boothsync.agent.uploader")

# A part the server keeps rejecting is parked after this many attempts, so
# that it stops blocking the parts behind it.
MAX_REJECTED_ATTEMPTS = 5
IDLE_WAIT_S = 1.0


class Uploader:
    """Moves everything in the journal to the server, one request at a time."""

    def __init__(
        self,
        journal: Journal,
        blobs: BlobStore,
        http: httpx.AsyncClient,
        *,
        server_url: str,
        event: str,
        device_id: str,
        chunk_bytes: int,
        retry_base_s: float,
        retry_max_s: float,
        stats: SyncStats,
    ) -> None:
        self.journal = journal
        self.blobs = blobs
        self.http = http
        self.server_url = server_url.rstrip("/")
        self.tus = TusClient(http, self.server_url + "/files/")
        self.event = event
        self.device_id = device_id
        self.chunk_bytes = chunk_bytes
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.stats = stats
        self.wake = asyncio.Event()

    def notify(self) -> None:
        """Wake the uploader because new work arrived."""
        self.wake.set()

    async def run(self) -> None:
        """Upload for as long as the agent runs."""
        log.info("uploader started server=%s chunk_bytes=%d", self.server_url, self.chunk_bytes)
        try:
            while True:
                try:
                    worked = await self.step()
                except TransientError as exc:
                    await self._back_off(str(exc))
                    continue
                except (OSError, sqlite3.Error) as exc:
                    # A blob that cannot be read or a busy journal must not
                    # stop the uploader: log it, back off and try again.
                    log.exception("uploader step failed")
                    await self._back_off(f"{type(exc).__name__}: {exc}")
                    continue
                if not worked:
                    await self._idle()
        finally:
            log.info("uploader stopped")

    async def _idle(self) -> None:
        self.wake.clear()
        try:
            await asyncio.wait_for(self.wake.wait(), IDLE_WAIT_S)
        except TimeoutError:
            pass

    async def _back_off(self, error: str) -> None:
        self.stats.count_failure(error)
        attempt = self.stats.consecutive_failures
        ceiling = min(self.retry_max_s, self.retry_base_s * 2 ** (attempt - 1))
        delay = random.uniform(0, ceiling)
        log.warning("sync failed, retrying attempt=%d delay_s=%.2f link=%s error=%s", attempt, delay, self.stats.link_state, error)
        await asyncio.sleep(delay)

    async def step(self) -> bool:
        """Do the most important piece of work; return False when there is none."""
        pending = self.journal.manifest_to_announce()
        if pending is not None:
            await self._announce(*pending)
            return True
        part = self.journal.next_part()
        if part is not None:
            await self._upload(part)
            return True
        return False

    async def _announce(self, capture: dict[str, Any], version: int) -> None:
        manifest = {
            "capture_id": capture["capture_id"],
            "event": self.event,
            "device_id": self.device_id,
            "class": capture["class"],
            "captured_at": capture["captured_at"],
            "filename": capture["filename"],
            "metadata": {**capture["metadata"], **({"derived": capture["derived_info"]} if capture["derived_info"] else {})},
            "parts": capture["parts"],
        }
        try:
            response = await self.http.post(self.server_url + "/v1/manifests", json=manifest)
        except httpx.TransportError as exc:
            raise TransientError(f"manifest of {capture['capture_id']} failed: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code in (408, 423, 429):
            raise TransientError(f"manifest of {capture['capture_id']} returned {response.status_code}")
        if response.status_code != 200:
            # NOTE: a manifest the server rejects stays unannounced and is
            # retried after a backoff; it is logged every time.
            raise TransientError(
                f"server rejected the manifest of {capture['capture_id']}: {response.status_code} {response.text[:200]}"
            )
        self.journal.mark_announced(capture["capture_id"], version)
        self.stats.manifests_sent += 1
        self.stats.count_success()
        log.info("manifest announced capture_id=%s version=%d", capture["capture_id"], version)

    async def _upload(self, part: PartToUpload) -> None:
        try:
            url, offset = await self._open(part)
            while offset < part.size:
                offset = await self._send_chunk(part, url, offset)
        except UploadGoneError as exc:
            log.info("upload gone, creating a new one capture_id=%s part=%s: %s", part.capture_id, part.part, exc)
            self.journal.set_upload_url(part.capture_id, part.part, None)
            return
        except (OffsetConflictError, ChecksumMismatchError) as exc:
            # The next step sends HEAD and resumes from the server's offset.
            self.stats.count_failure(str(exc))
            log.warning("chunk not accepted capture_id=%s part=%s: %s", part.capture_id, part.part, exc)
            return
        except RejectedError as exc:
            await self._reject(part, exc)
            return
        self._synced(part)

    async def _open(self, part: PartToUpload) -> tuple[str, int]:
        if part.upload_url is not None:
            return part.upload_url, await self.tus.offset(part.upload_url)
        metadata = {
            "capture_id": part.capture_id,
            "part": part.part,
            "filename": part.filename if part.part == "original" else part.part,
            "sha256": part.sha256,
            "class": part.klass,
        }
        url, offset = await self.tus.create(part.size, metadata)
        self.journal.set_upload_url(part.capture_id, part.part, url)
        log.info("upload opened capture_id=%s part=%s offset=%d size=%d", part.capture_id, part.part, offset, part.size)
        return url, offset

    async def _send_chunk(self, part: PartToUpload, url: str, offset: int) -> int:
        end = min(offset + self.chunk_bytes, part.size)
        data = self._read(part.sha256, offset, end - offset)
        key = (part.capture_id, part.part)
        self.stats.count_chunk_sent(key, offset, end)
        started = time.monotonic()
        new_offset = await self.tus.patch(url, offset, data)
        self.stats.count_acked(new_offset - offset, time.monotonic() - started)
        self.journal.set_offset(part.capture_id, part.part, new_offset)
        return new_offset

    def _read(self, sha256: str, offset: int, length: int) -> bytes:
        with open(self.blobs.path_for(sha256), "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def _synced(self, part: PartToUpload) -> None:
        capture_done = self.journal.mark_part_synced(part.capture_id, part.part)
        self.stats.parts_synced += 1
        self.stats.forget_part((part.capture_id, part.part))
        self.stats.count_success()
        log.info("part synced capture_id=%s part=%s bytes=%d capture_synced=%s", part.capture_id, part.part, part.size, capture_done)

    async def _reject(self, part: PartToUpload, exc: TusError) -> None:
        attempts = self.journal.count_attempt(part.capture_id, part.part, str(exc))
        log.error("server rejected part capture_id=%s part=%s attempts=%d: %s", part.capture_id, part.part, attempts, exc)
        if attempts >= MAX_REJECTED_ATTEMPTS:
            self.journal.park(part.capture_id, part.part, str(exc))
            return
        self.journal.set_upload_url(part.capture_id, part.part, None)
        await self._back_off(str(exc))
