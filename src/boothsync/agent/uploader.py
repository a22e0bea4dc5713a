"""The uploader: announces manifests, then sends parts over tus, most important first.

Every pending manifest goes first: manifests are small and tell HQ what
exists. Then each of ``streams`` tasks takes the part the scheduler ranks
first and sends it in chunks. After every chunk the part yields to a
waiting manifest or more important part, unless a stream is free to take
that. A part always resumes from the offset the server acknowledged last,
so acknowledged bytes are never sent twice. After a lost connection a stream retries at once, and after further failures it backs
off exponentially with full jitter (see ``backoff.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from boothsync.agent.backoff import Backoff
from boothsync.agent.blobstore import BlobStore
from boothsync.agent.chunking import AdaptiveChunkSize
from boothsync.agent.journal import Journal, PartToUpload
from boothsync.agent.ratelimit import BandwidthCap
from boothsync.agent.scheduler import LinkControl, PartKey, Scheduler, key_of
from boothsync.agent.syncstats import OFFLINE, SyncStats
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

IDLE_WAIT_S = 1.0
# File names of derivatives in upload metadata, after the original's stem.
DERIVATIVE_SUFFIXES = {"thumbnail": "thumbnail.jpg", "ocr_text": "ocr.txt"}
# Pending manifests go to the server together, up to this many and this
# many bytes of JSON in one request. The server takes up to 100 and 1 MiB.
MANIFEST_BATCH = 32
MANIFEST_BATCH_BYTES = 256 * 1024
# Statuses that no retry will change: the part is parked at once.
PERMANENT_STATUSES = (403, 413)
# Block size for the digests sent with each chunk to a boothsync server:
# about 65 ms of an 8 Mbit/s link, the most a drop can cost.
CHECKSUM_BLOCK_BYTES = 64 * 1024


@dataclass(frozen=True)
class UploaderOptions:
    """The uploader's server address, protocol and retry settings."""

    server_url: str
    event: str
    device_id: str
    upstream: str = "boothsync"  # "boothsync" (manifests, verification) or "tus" (any tus 1.0 server)
    upload_path: str = "/files/"
    streams: int = 1
    retry_base_s: float = 0.5
    retry_max_s: float = 30.0
    # Ceiling of the backoff while the link is offline. Each probe is one
    # small request, so probing often costs little and finds the link soon after it returns.
    probe_max_s: float = 1.0
    max_rejections: int = 5


class Uploader:
    """Moves everything in the journal to the server."""

    def __init__(
        self,
        journal: Journal,
        blobs: BlobStore,
        http: httpx.AsyncClient,
        options: UploaderOptions,
        *,
        scheduler: Scheduler,
        chunks: AdaptiveChunkSize,
        cap: BandwidthCap,
        control: LinkControl,
        stats: SyncStats,
    ) -> None:
        self.journal = journal
        self.blobs = blobs
        self.http = http
        self.options = options
        self.server_url = options.server_url.rstrip("/")
        self.tus = TusClient(http, self.server_url + options.upload_path)
        self.scheduler = scheduler
        self.chunks = chunks
        self.cap = cap
        self.control = control
        self.stats = stats
        self.wake = asyncio.Event()
        self.online = asyncio.Event()
        self.busy: set[PartKey] = set()
        # Upload URL and offset of each part that a stream paused after an
        # acknowledged chunk, so that resuming it needs no HEAD.
        self._paused: dict[PartKey, tuple[str, int]] = {}
        self._backoffs = [Backoff(options.retry_base_s, options.retry_max_s) for _ in range(options.streams)]
        self._announcing = asyncio.Lock()
        self._checksum: str | None = "sha256" if options.upstream == "boothsync" else None
        # A boothsync server keeps the checked blocks of a chunk that a drop
        # cuts short, so a drop costs at most one block instead of the chunk.
        self._block_size = CHECKSUM_BLOCK_BYTES if options.upstream == "boothsync" else None
        # boothsync's server supports creation-with-upload. A plain tus server is asked with OPTIONS.
        self._creation_with_upload = options.upstream == "boothsync"
        self._capabilities_known = options.upstream == "boothsync"

    def notify(self) -> None:
        """Wake the streams because new work arrived or the operator changed something."""
        self.wake.set()

    async def run(self) -> None:
        """Upload for as long as the agent runs."""
        log.info(
            "uploader started server=%s upstream=%s streams=%d chunk_bytes=%d",
            self.server_url, self.options.upstream, self.options.streams, self.chunks.size,
        )
        tasks = [asyncio.create_task(self._stream(n)) for n in range(self.options.streams)]
        tasks.append(asyncio.create_task(self._measure_goodput()))
        try:
            await asyncio.gather(*tasks)
        except Exception:
            # The agent keeps serving captures, so an uploader that stops must log why.
            log.exception("uploader failed and stopped syncing")
            raise
        finally:
            for task in tasks:
                task.cancel()
            log.info("uploader stopped")

    async def _stream(self, number: int) -> None:
        while True:
            if number > 0 and self.stats.link_state == OFFLINE:
                # One stream probes an offline link; the others wait for it.
                await self._wait(self.online, self.options.retry_max_s)
                continue
            # Cleared before looking for work, so that a notify() during step() is not lost.
            self.wake.clear()
            try:
                worked = await self.step()
            except TransientError as exc:
                await self._back_off(number, str(exc), connection_lost=exc.status is None)
                continue
            except Exception as exc:
                # Nothing may stop the stream: not a blob that cannot be read,
                # not a busy journal, and not a bug in a library. A connection
                # reset just after connect has raised AttributeError from
                # anyio 4.16.0 under httpcore 1.0.9. Log it, back off and try again.
                log.exception("uploader step failed stream=%d", number)
                await self._back_off(number, f"{type(exc).__name__}: {exc}", connection_lost=False)
                continue
            if not worked:
                await self._wait(self.wake, IDLE_WAIT_S)

    @staticmethod
    async def _wait(event: asyncio.Event, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass

    async def _back_off(self, stream: int, error: str, *, connection_lost: bool) -> None:
        """Wait before stream ``stream`` retries, after a lost connection only until another request succeeds."""
        self.stats.count_failure(error)
        self.online.clear()
        offline = self.stats.link_state == OFFLINE
        backoff = self._backoffs[stream]
        delay = backoff.next_delay(connection_lost, self.options.probe_max_s if offline else None)
        log.warning("sync failed, retrying stream=%d attempt=%d delay_s=%.2f link=%s error=%s",
                    stream, backoff.failures, delay, self.stats.link_state, error)
        if connection_lost:
            # The link is back as soon as any stream gets through, so stop waiting then.
            await self._wait(self.online, delay)
        else:
            # A status such as 423 or 5xx comes from the server or one upload, so the link returning does not change it.
            await asyncio.sleep(delay)

    def _succeeded(self) -> None:
        was_offline = self.stats.link_state == OFFLINE
        self.stats.count_success()
        for backoff in self._backoffs:
            backoff.reset()
        self.online.set()
        if was_offline:
            log.info("link back online")
            self.wake.set()

    async def step(self) -> bool:
        """Do the most important piece of work; return False when there is none."""
        if await self._announce_next():
            return True
        part = self.scheduler.pick(self.journal.pending_parts(), self.busy, self.control)
        if part is None:
            return False
        self.busy.add(key_of(part))
        try:
            await self._upload(part)
        finally:
            self.busy.discard(key_of(part))
        return True

    # Manifests

    async def _announce_next(self) -> bool:
        if self._announcing.locked():
            return False
        async with self._announcing:
            pending = self.journal.manifests_to_announce(MANIFEST_BATCH)
            if not pending:
                return False
            if self.options.upstream == "boothsync":
                pending = await self._post_manifests(pending)
            self.journal.mark_all_announced([(capture["capture_id"], version) for capture, version in pending])
            self.stats.manifests_sent += len(pending)
            for capture, version in pending:
                log.info("manifest announced capture_id=%s version=%d", capture["capture_id"], version)
            return True

    async def _post_manifests(self, pending: list[tuple[dict[str, Any], int]]) -> list[tuple[dict[str, Any], int]]:
        """Post the oldest pending manifests in one request and return those that were sent.

        One manifest goes as a JSON object, several as a JSON list, which
        the server stores in one transaction.
        """
        encoded: list[str] = []
        size = 0
        for capture, _ in pending:
            text = json.dumps(self._manifest_of(capture))
            if encoded and size + len(text) > MANIFEST_BATCH_BYTES:
                break
            encoded.append(text)
            size += len(text)
        sent = pending[:len(encoded)]
        body = encoded[0] if len(encoded) == 1 else "[" + ",".join(encoded) + "]"
        first_id = sent[0][0]["capture_id"]
        label = f"manifest of {first_id}" if len(sent) == 1 else f"{len(sent)} manifests from {first_id}"
        try:
            response = await self.http.post(self.server_url + "/v1/manifests", content=body.encode(),
                                            headers={"Content-Type": "application/json"})
        except httpx.TransportError as exc:
            raise TransientError(f"{label} failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            # NOTE: the manifests of a request the server rejects stay
            # unannounced and are retried after a backoff, so one manifest
            # the server keeps rejecting holds back the ones after it.
            raise TransientError(f"{label} returned {response.status_code}: {response.text[:200]}", response.status_code)
        self._succeeded()
        log.debug("manifests posted count=%d bytes=%d", len(sent), len(body))
        return sent

    def _manifest_of(self, capture: dict[str, Any]) -> dict[str, Any]:
        metadata = dict(capture["metadata"])
        if capture["derived_info"]:
            metadata["derived"] = capture["derived_info"]
        return {
            "capture_id": capture["capture_id"],
            "event": self.options.event,
            "device_id": self.options.device_id,
            "class": capture["class"],
            "captured_at": capture["captured_at"],
            "filename": capture["filename"],
            "metadata": metadata,
            "parts": capture["parts"],
        }

    # Parts

    async def _upload(self, part: PartToUpload) -> None:
        try:
            url, offset = await self._open(part)
            while offset < part.size:
                offset = await self._send_chunk(part, url, offset)
                if offset < part.size and self._should_yield(part):
                    log.info("part paused for a more important one capture_id=%s part=%s offset=%d", part.capture_id, part.part, offset)
                    self._paused[key_of(part)] = (url, offset)
                    return
        except UploadGoneError as exc:
            log.info("upload gone, creating a new one capture_id=%s part=%s: %s", part.capture_id, part.part, exc)
            self.journal.set_upload_url(part.capture_id, part.part, None)
            return
        except (OffsetConflictError, ChecksumMismatchError) as exc:
            # The next attempt sends HEAD and resumes from the server's offset.
            self.stats.count_failure(str(exc))
            log.warning("chunk not accepted capture_id=%s part=%s: %s", part.capture_id, part.part, exc)
            return
        except RejectedError as exc:
            self._reject(part, exc)
            return
        self._synced(part)

    def _should_yield(self, part: PartToUpload) -> bool:
        if len(self.busy) < self.options.streams:
            # A stream that sends no part takes the waiting manifest or part itself.
            return False
        if self.journal.has_unannounced():
            # Manifests go first: they are tiny and tell HQ what exists.
            return True
        challenger = self.scheduler.preempting(part, self.journal.pending_parts(), self.busy, self.control)
        return challenger is not None

    async def _open(self, part: PartToUpload) -> tuple[str, int]:
        paused = self._paused.pop(key_of(part), None)
        if paused is not None and paused[0] == part.upload_url:
            # Only this agent writes to the upload. Should the server have
            # lost bytes meanwhile, the PATCH gets 409 and the next attempt sends HEAD.
            log.debug("upload resumed capture_id=%s part=%s offset=%d head=False", part.capture_id, part.part, paused[1])
            return paused
        if part.upload_url is not None:
            offset = await self.tus.offset(part.upload_url)
            self._succeeded()
            log.debug("upload resumed capture_id=%s part=%s offset=%d head=True", part.capture_id, part.part, offset)
            return part.upload_url, offset
        await self._learn_capabilities()
        filename = part.filename
        if part.part != "original":
            stem = part.filename.rsplit(".", 1)[0]
            suffix = DERIVATIVE_SUFFIXES.get(part.part, part.part)
            if part.content_type == "image/webp":
                suffix = "thumbnail.webp"
            filename = f"{stem}.{suffix}"
        metadata = {
            "capture_id": part.capture_id,
            "part": part.part,
            "filename": filename,
            "filetype": part.content_type or "application/octet-stream",
            "sha256": part.sha256,
            "class": part.klass,
        }
        # A part that fits in one chunk goes in the creation request itself,
        # one round trip instead of two. A probe of an offline link carries no body.
        with_body = (self._creation_with_upload and 0 < part.size <= self.chunks.size
                     and self.stats.link_state != OFFLINE)
        if with_body:
            url, offset = await self._create_with_body(part, metadata)
        else:
            url, offset = await self.tus.create(part.size, metadata)
        self.journal.set_upload_url(part.capture_id, part.part, url)
        self._succeeded()
        if 0 < offset < part.size:
            self.journal.set_offset(part.capture_id, part.part, offset)
        log.info("upload opened capture_id=%s part=%s offset=%d size=%d with_body=%s",
                 part.capture_id, part.part, offset, part.size, with_body)
        return url, offset

    async def _create_with_body(self, part: PartToUpload, metadata: dict[str, str]) -> tuple[str, int]:
        data = self._read(part.sha256, 0, part.size)
        self.stats.count_chunk_sent(key_of(part), 0, part.size)
        started = time.monotonic()
        body = self.cap.paced(data) if self.cap.rate is not None else None
        try:
            url, offset = await self.tus.create(part.size, metadata, data, checksum=self._checksum, body=body)
        except (TransientError, ChecksumMismatchError) as exc:
            self._chunk_failed(exc)
            raise
        self.stats.count_acked(offset, time.monotonic() - started)
        return url, offset

    async def _learn_capabilities(self) -> None:
        """Ask a plain tus server once whether it checks sha256 chunk checksums and takes creation-with-upload."""
        if self._capabilities_known:
            return
        capabilities = await self.tus.options()
        extensions = [name.strip() for name in capabilities.get("tus-extension", "").split(",")]
        algorithms = [name.strip() for name in capabilities.get("tus-checksum-algorithm", "").split(",")]
        self._checksum = "sha256" if "checksum" in extensions and "sha256" in algorithms else None
        self._creation_with_upload = "creation-with-upload" in extensions
        self._capabilities_known = True
        log.info("upstream capabilities extensions=%s checksum=%s creation_with_upload=%s",
                 ",".join(extensions), self._checksum, self._creation_with_upload)

    async def _send_chunk(self, part: PartToUpload, url: str, offset: int) -> int:
        end = min(offset + self.chunks.size, part.size)
        data = self._read(part.sha256, offset, end - offset)
        self.stats.count_chunk_sent(key_of(part), offset, end)
        started = time.monotonic()
        body = self.cap.paced(data) if self.cap.rate is not None else None
        try:
            new_offset = await self.tus.patch(url, offset, data, checksum=self._checksum, body=body, block_size=self._block_size)
        except (TransientError, ChecksumMismatchError) as exc:
            self._chunk_failed(exc)
            raise
        elapsed = time.monotonic() - started
        self.chunks.succeeded(end - offset, elapsed)
        self.stats.count_acked(new_offset - offset, elapsed)
        self._succeeded()
        self.journal.set_offset(part.capture_id, part.part, new_offset)
        return new_offset

    def _chunk_failed(self, exc: TusError) -> None:
        """Shrink the chunk size after a request that carried a chunk failed."""
        self.chunks.failed("connection lost" if exc.status is None else f"status {exc.status}")

    def _read(self, sha256: str, offset: int, length: int) -> bytes:
        with open(self.blobs.path_for(sha256), "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def _synced(self, part: PartToUpload) -> None:
        capture_done = self.journal.mark_part_synced(part.capture_id, part.part)
        self.stats.parts_synced += 1
        self.stats.forget_part(key_of(part))
        log.info("part synced capture_id=%s part=%s bytes=%d capture_synced=%s", part.capture_id, part.part, part.size, capture_done)

    def _reject(self, part: PartToUpload, exc: TusError) -> None:
        attempts = self.journal.count_attempt(part.capture_id, part.part, str(exc))
        log.error("server rejected part capture_id=%s part=%s attempts=%d: %s", part.capture_id, part.part, attempts, exc)
        if exc.status in PERMANENT_STATUSES or attempts >= self.options.max_rejections:
            self.journal.park(part.capture_id, part.part, str(exc))
            self.stats.parts_parked += 1
            return
        self.journal.set_upload_url(part.capture_id, part.part, None)
        # The stream backs off as after a status from the server, then creates a new upload.
        raise TransientError(str(exc), exc.status) from exc

    async def _measure_goodput(self) -> None:
        """Sample acknowledged bytes per second while parts are being sent."""
        last_bytes, last_time = self.stats.bytes_acked, time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self.busy:
                self.stats.sample_goodput(self.stats.bytes_acked - last_bytes, now - last_time)
            last_bytes, last_time = self.stats.bytes_acked, now
