"""Runs derivatives (thumbnail, OCR text) in worker processes after captures are acknowledged.

Derivatives are CPU work that may hang or crash on hostile files, so they
run in a bounded process pool, never in the process that serves captures.
A derivative that fails is recorded with its reason; the original still
syncs.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from boothsync.agent.blobstore import BlobStore
from boothsync.agent.derivatives import Derivative, make_derivatives
from boothsync.agent.journal import FAILED, PENDING, UNAVAILABLE, Journal

log = logging.getLogger("boothsync.agent.deriving")

DERIVATIVE_PARTS = ("thumbnail", "ocr_text")


class DerivativeRunner:
    """Takes stored captures from a queue and records their derivatives in the journal.

    ``workers`` captures are derived at once, each in its own worker process.
    """

    def __init__(
        self,
        journal: Journal,
        blobs: BlobStore,
        work_dir: Path,
        *,
        workers: int,
        thumbnail_px: int,
        ocr_timeout_s: float,
        on_change: Callable[[], None],
    ) -> None:
        self.journal = journal
        self.blobs = blobs
        self.work_dir = work_dir
        self.workers = workers
        self.thumbnail_px = thumbnail_px
        self.ocr_timeout_s = ocr_timeout_s
        self.on_change = on_change
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._pool: ProcessPoolExecutor | None = None
        work_dir.mkdir(parents=True, exist_ok=True)

    def submit(self, capture_id: str, sha256: str) -> None:
        self.queue.put_nowait((capture_id, sha256))

    def _new_pool(self) -> ProcessPoolExecutor:
        # "spawn" because forking a process that runs threads and an event
        # loop can copy a held lock into the child.
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))

    async def run(self) -> None:
        """Derive queued captures one at a time, for as long as the agent runs."""
        for capture_id, sha256 in self.journal.captures_to_derive():
            self.submit(capture_id, sha256)
        self._pool = self._new_pool()
        consumers = [asyncio.create_task(self._consume()) for _ in range(self.workers)]
        try:
            await asyncio.gather(*consumers)
        finally:
            for consumer in consumers:
                consumer.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _consume(self) -> None:
        while True:
            capture_id, sha256 = await self.queue.get()
            try:
                await self._derive(capture_id, sha256)
            except Exception as exc:
                # Record the failure so the capture can still be synced
                # without its derivatives, then go on with the next capture.
                log.exception("derivation failed capture_id=%s", capture_id)
                reason = f"derivation failed: {type(exc).__name__}: {exc}"
                failed = [Derivative(kind, "failed", None, None, reason, {}) for kind in DERIVATIVE_PARTS]
                await asyncio.to_thread(self._record, capture_id, failed)
                self.on_change()

    async def _derive(self, capture_id: str, sha256: str) -> None:
        out_dir = Path(tempfile.mkdtemp(prefix=f"{capture_id}-", dir=self.work_dir))
        try:
            derivatives = await self._run_in_pool(capture_id, self.blobs.path_for(sha256), out_dir)
            await asyncio.to_thread(self._record, capture_id, derivatives)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        self.on_change()

    async def _run_in_pool(self, capture_id: str, source: Path, out_dir: Path) -> list[Derivative]:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._pool, _derive_in_worker, source, out_dir, self.thumbnail_px, self.ocr_timeout_s
            )
        except BrokenProcessPool:
            log.error("derivative worker died capture_id=%s: restarting the pool", capture_id)
            self._pool = self._new_pool()
            reason = "the derivative worker process died on this file"
            return [Derivative(kind, "failed", None, None, reason, {}) for kind in DERIVATIVE_PARTS]

    def _record(self, capture_id: str, derivatives: list[Derivative]) -> None:
        for derivative in derivatives:
            if derivative.status == "done" and derivative.path is not None:
                blob = self.blobs.put_file(derivative.path)
                self.journal.add_derivative(
                    capture_id, derivative.kind, PENDING,
                    sha256=blob.sha256, size=blob.size, content_type=derivative.content_type,
                )
                continue
            state = FAILED if derivative.status == "failed" else UNAVAILABLE
            log.info("derivative %s capture_id=%s part=%s reason=%s", state, capture_id, derivative.kind, derivative.reason)
            self.journal.add_derivative(capture_id, derivative.kind, state, reason=derivative.reason)
        self.journal.mark_derived(capture_id)
        self.journal.settle(capture_id)


def _derive_in_worker(source: Path, out_dir: Path, thumbnail_px: int, ocr_timeout_s: float) -> list[Derivative]:
    return make_derivatives(source, out_dir, max_px=thumbnail_px, ocr_timeout_s=ocr_timeout_s)
