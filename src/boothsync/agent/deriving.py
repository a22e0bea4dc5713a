"""Runs derivatives (thumbnail, OCR text) in worker processes after captures are acknowledged.

Derivatives are CPU work that may hang or crash on hostile files, so they
run in a bounded process pool, never in the process that serves captures.
A derivative that fails is recorded with its reason; the original still
syncs.

The worker also analyses what it made: it masks card numbers in the OCR text
before that text can be uploaded, counts emails and phone numbers, extracts
key fields, suggests a class and decodes barcodes. The results go to the
journal as derived_info, which the next manifest carries to HQ.

Captures wait in a priority queue: consent first and media last (the order of
boothsync.classes.CONTENT_CLASSES), and the newest capture first within a class.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import itertools
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from boothsync.agent import privacy
from boothsync.agent.blobstore import BlobStore
from boothsync.agent.codes import CodesUnavailableError, SkuList, decode_file
from boothsync.agent.derivatives import (
    DONE,
    IMAGE_TYPES,
    OCR_TEXT,
    THUMBNAIL,
    Derivative,
    make_derivatives,
    make_thumbnail,
    sniff_type,
)
from boothsync.agent.derivatives import UNAVAILABLE as DERIVATIVE_UNAVAILABLE
from boothsync.agent.journal import FAILED, PENDING, UNAVAILABLE, Journal
from boothsync.agent.power import PowerPolicy
from boothsync.agent.triage import image_features_of_file, suggest_class
from boothsync.classes import DEFAULT_CLASS, PRIORITY

log = logging.getLogger("boothsync.agent.deriving")

DERIVATIVE_PARTS = (THUMBNAIL, OCR_TEXT)

# Capture metadata key that records whether the capturer chose the class. Without
# it, a capture of the default class is treated as one whose class was not given.
CLASS_GIVEN_KEY = "class_given"


@dataclass(frozen=True)
class QueuedCapture:
    """A stored capture waiting for its derivatives."""

    capture_id: str
    sha256: str
    klass: str
    captured_at: float
    suggest_class: bool


@dataclass(frozen=True)
class WorkerJob:
    """Inputs of one worker process for one capture. It must stay picklable."""

    source: Path
    out_dir: Path
    thumbnail_px: int
    ocr_timeout_s: float
    suggest_class: bool
    # When set, only the thumbnail is made, and this is the reason recorded for the rest.
    defer_reason: str | None = None
    ocr_max_pages: int = 1
    thumbnail_format: str = "jpeg"


@dataclass(frozen=True)
class WorkerResult:
    """The derivatives of one capture and what was learned from them (derived_info)."""

    derivatives: list[Derivative]
    info: dict[str, Any] = field(default_factory=dict)


def class_needs_suggestion(capture: dict[str, Any]) -> bool:
    """Return whether a capture's class was not chosen by the capturer, so triage should suggest one."""
    given = str(capture.get("metadata", {}).get(CLASS_GIVEN_KEY, "")).strip().lower()
    if given in ("true", "1", "yes"):
        return False
    if given in ("false", "0", "no"):
        return True
    return capture.get("class") == DEFAULT_CLASS


class DerivativeRunner:
    """Takes stored captures from a priority queue and records their derivatives in the journal.

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
        ocr_max_pages: int = 1,
        thumbnail_format: str = "jpeg",
        on_change: Callable[[], None],
        power: PowerPolicy | None = None,
        sku_list: SkuList | None = None,
    ) -> None:
        self.journal = journal
        self.blobs = blobs
        self.work_dir = work_dir
        self.workers = workers
        self.thumbnail_px = thumbnail_px
        self.ocr_timeout_s = ocr_timeout_s
        self.ocr_max_pages = ocr_max_pages
        self.thumbnail_format = thumbnail_format
        self.on_change = on_change
        self.power = power
        self.sku_list = sku_list
        # Items sort by (class rank, newest first, last submitted first); the
        # counter keeps keys unique, so QueuedCapture objects are never compared.
        self.queue: asyncio.PriorityQueue[tuple[int, float, int, QueuedCapture]] = asyncio.PriorityQueue()
        self._submitted = itertools.count()
        # Ids queued or being derived. A capture stored while run() reads the
        # journal at start-up would otherwise be queued twice.
        self._active: set[str] = set()
        self._pool: ProcessPoolExecutor | None = None
        work_dir.mkdir(parents=True, exist_ok=True)

    def submit(
        self,
        capture_id: str,
        sha256: str,
        klass: str | None = None,
        captured_at: float | None = None,
        suggest: bool | None = None,
    ) -> None:
        """Queue a capture for derivation.

        Without klass, the class, capture time and whether to suggest a class
        are read from the journal (one short query). Without captured_at, the
        capture counts as captured now. A capture that is already queued or
        being derived is skipped.
        """
        if capture_id in self._active:
            log.debug("capture_id=%s is already queued for derivation", capture_id)
            return
        if klass is None:
            capture = self.journal.capture(capture_id)
            if capture is None:
                log.error("capture_id=%s is not in the journal, so it is not derived", capture_id)
                return
            klass, captured_at = capture["class"], capture["captured_at"]
            suggest = class_needs_suggestion(capture)
        item = QueuedCapture(
            capture_id=capture_id,
            sha256=sha256,
            klass=klass,
            captured_at=time.time() if captured_at is None else captured_at,
            suggest_class=klass == DEFAULT_CLASS if suggest is None else suggest,
        )
        rank = PRIORITY.get(klass, len(PRIORITY))
        self._active.add(capture_id)
        self.queue.put_nowait((rank, -item.captured_at, -next(self._submitted), item))

    def _new_pool(self) -> ProcessPoolExecutor:
        # "spawn" because forking a process that runs threads and an event
        # loop can copy a held lock into the child.
        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
        )

    async def run(self) -> None:
        """Derive queued captures, ``workers`` at a time, for as long as the agent runs."""
        for capture_id, sha256 in self.journal.captures_to_derive():
            self.submit(capture_id, sha256)
        self._pool = self._new_pool()
        consumers = [asyncio.create_task(self._consume()) for _ in range(self.workers)]
        try:
            await asyncio.gather(*consumers)
        finally:
            for consumer in consumers:
                consumer.cancel()
            _stop_pool(self._pool)

    async def _consume(self) -> None:
        while True:
            *_, item = await self.queue.get()
            try:
                await self._derive(item)
            except Exception as exc:
                # Record the failure so the capture can still be synced
                # without its derivatives, then go on with the next capture.
                log.exception("derivation failed capture_id=%s", item.capture_id)
                reason = f"derivation failed: {type(exc).__name__}: {exc}"
                failed = [Derivative(kind, "failed", None, None, reason, {}) for kind in DERIVATIVE_PARTS]
                await asyncio.to_thread(self._record, item.capture_id, WorkerResult(failed))
                self.on_change()
            finally:
                self._active.discard(item.capture_id)

    async def _derive(self, item: QueuedCapture) -> None:
        defer_reason = None
        if self.power is not None:
            defer_reason = (await asyncio.to_thread(self.power.check)).defer_reason
        out_dir = Path(tempfile.mkdtemp(prefix=f"{item.capture_id}-", dir=self.work_dir))
        job = WorkerJob(
            source=self.blobs.path_for(item.sha256),
            out_dir=out_dir,
            thumbnail_px=self.thumbnail_px,
            ocr_timeout_s=self.ocr_timeout_s,
            ocr_max_pages=self.ocr_max_pages,
            thumbnail_format=self.thumbnail_format,
            suggest_class=item.suggest_class,
            defer_reason=defer_reason,
        )
        try:
            result = await self._run_in_pool(item.capture_id, job)
            await asyncio.to_thread(self._record, item.capture_id, result)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        self.on_change()

    async def _run_in_pool(self, capture_id: str, job: WorkerJob) -> WorkerResult:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, derive_in_worker, job)
        except BrokenProcessPool:
            log.error("derivative worker died capture_id=%s: restarting the pool", capture_id)
            self._pool = self._new_pool()
            reason = "the derivative worker process died on this file"
            return WorkerResult([Derivative(kind, "failed", None, None, reason, {}) for kind in DERIVATIVE_PARTS])

    def _record(self, capture_id: str, result: WorkerResult) -> None:
        for derivative in result.derivatives:
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
        info = dict(result.info)
        if "codes" in info and self.sku_list is not None and self.sku_list.catalogue() is not None:
            info["skus"] = self.sku_list.match([code["text"] for code in info["codes"]])
        self.journal.mark_derived(capture_id, info or None)
        self.journal.settle(capture_id)


# --- worker process -------------------------------------------------------------


def derive_in_worker(job: WorkerJob) -> WorkerResult:
    """Make a capture's derivatives and analyse them, in a worker process.

    The OCR text file is masked in place before this returns, so the file that
    the runner stores and uploads never contains a full card number. When the
    masking step fails, the OCR text is reported as failed instead.
    """
    if job.defer_reason is None:
        derivatives = make_derivatives(
            job.source, job.out_dir, max_px=job.thumbnail_px, ocr_timeout_s=job.ocr_timeout_s,
            ocr_max_pages=job.ocr_max_pages, thumbnail_format=job.thumbnail_format,
        )
    else:
        derivatives = _thumbnail_only(job)

    info: dict[str, Any] = {}
    if job.defer_reason is not None:
        info["deferred"] = job.defer_reason
    derivatives, text = _mask_ocr_text(derivatives, info)
    if text:
        _add_key_fields(text, info)

    thumbnail = _find(derivatives, THUMBNAIL)
    media_type = _sniff(job.source)
    if job.suggest_class:
        _add_suggestion(media_type, text, thumbnail, info)
    if job.defer_reason is None and thumbnail is not None and thumbnail.status == DONE:
        _add_codes(job.source, media_type, info)
    return WorkerResult(derivatives, info)


def _thumbnail_only(job: WorkerJob) -> list[Derivative]:
    """Make the thumbnail and record the OCR text as deferred."""
    # NOTE: this calls make_thumbnail directly, so a derivative that
    # make_derivatives makes besides the thumbnail and the OCR text is skipped.
    thumbnail_path = job.out_dir / f"{job.source.name}.thumb.{'webp' if job.thumbnail_format == 'webp' else 'jpg'}"
    try:
        thumbnail = make_thumbnail(
            job.source, thumbnail_path, max_px=job.thumbnail_px, image_format=job.thumbnail_format
        )
    except Exception as exc:
        # Same rule as make_derivatives: one bad capture must not stop the queue.
        log.exception("thumbnail failed for %s with an unexpected error", job.source)
        thumbnail = Derivative(THUMBNAIL, "failed", None, None, f"unexpected {type(exc).__name__}: {exc}", {})
    ocr = Derivative(OCR_TEXT, DERIVATIVE_UNAVAILABLE, None, None, job.defer_reason, {})
    return [thumbnail, ocr]


def _find(derivatives: list[Derivative], kind: str) -> Derivative | None:
    return next((derivative for derivative in derivatives if derivative.kind == kind), None)


def _sniff(source: Path) -> str | None:
    try:
        return sniff_type(source)
    except OSError as exc:
        log.warning("failed to read %s for triage: %s", source, exc)
        return None


def _mask_ocr_text(derivatives: list[Derivative], info: dict[str, Any]) -> tuple[list[Derivative], str]:
    """Mask card numbers in the OCR text file, count PII, and return the masked text."""
    result = []
    masked = ""
    for derivative in derivatives:
        if derivative.kind == OCR_TEXT and derivative.status == DONE and derivative.path is not None:
            try:
                text = derivative.path.read_text(encoding="utf-8")
                masked, counts = privacy.scan_text(text)
                if masked != text:
                    derivative.path.write_text(masked, encoding="utf-8")
            except Exception as exc:
                # Fail closed: text whose card numbers could not be masked must not leave the device.
                log.exception("failed to mask card numbers in %s", derivative.path)
                reason = f"failed to check the OCR text for card numbers ({type(exc).__name__}: {exc}), so it is not uploaded"
                derivative = replace(derivative, status="failed", path=None, content_type=None, reason=reason)
                masked = ""
            else:
                info["pii"] = counts.as_info()
        result.append(derivative)
    return result, masked


def _add_key_fields(text: str, info: dict[str, Any]) -> None:
    """Add the key fields that boothsync.agent.receipts finds in the text, with card numbers masked."""
    try:
        from boothsync.agent.receipts import extract_fields
    except ModuleNotFoundError as exc:
        if exc.name != "boothsync.agent.receipts":
            raise
        return
    try:
        fields = extract_fields(text)
    except Exception:
        log.exception("extract_fields failed, so the capture has no key fields")
        return
    if not isinstance(fields, dict):
        log.warning("extract_fields returned %s instead of a dict, so it is ignored", type(fields).__name__)
        return
    masked, _ = privacy.mask_fields(_flatten_fields(fields))
    if masked:
        info["fields"] = masked


def _flatten_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Turn ``{"total": {"value": "9.00", "confidence": 0.9, ...}}`` into ``{"total": "9.00", "total_confidence": 0.9}``."""
    flat: dict[str, Any] = {}
    for name, entry in fields.items():
        if isinstance(entry, dict):
            if entry.get("value") is None:
                continue
            flat[str(name)] = str(entry["value"])
            if isinstance(entry.get("confidence"), (int, float)):
                flat[f"{name}_confidence"] = round(float(entry["confidence"]), 2)
        elif isinstance(entry, (str, int, float, bool)):
            flat[str(name)] = entry
    return flat


def _add_suggestion(media_type: str | None, text: str, thumbnail: Derivative | None, info: dict[str, Any]) -> None:
    features = None
    if thumbnail is not None and thumbnail.status == DONE and thumbnail.path is not None:
        try:
            features = image_features_of_file(thumbnail.path)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            log.warning("failed to measure the thumbnail %s: %s", thumbnail.path, exc)
    info.update(suggest_class(media_type, text, features).as_info())


def _add_codes(source: Path, media_type: str | None, info: dict[str, Any]) -> None:
    """Decode barcodes of an image whose thumbnail was made, so its size and structure were checked."""
    if media_type not in IMAGE_TYPES:
        return
    try:
        codes = decode_file(source, media_type)
    except CodesUnavailableError as exc:
        log.warning("%s", exc)
        return
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        log.warning("failed to decode barcodes in %s: %s", source, exc)
        return
    except Exception:
        # zxing-cpp and the decoders may raise other types on hostile input, and
        # one bad capture must not stop the queue.
        log.exception("barcode decoding failed for %s with an unexpected error", source)
        return
    info["codes"] = [code.as_info() for code in codes]


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop the pool without waiting for a long OCR run: its workers are killed.

    ProcessPoolExecutor has no public way to end running workers before
    Python 3.14, so this reaches into ``_processes``.
    """
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=5)


def _init_worker() -> None:
    """Lower the worker's CPU priority, so captures and uploads stay quick while OCR runs, and tie it to the agent."""
    os.nice(WORKER_NICENESS)
    _die_with_parent()


# tesseract and ffmpeg inherit it from the worker.
WORKER_NICENESS = 10


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the agent dies, even by SIGKILL, so no worker is orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        # Not Linux or no glibc: workers still end when the agent stops normally.
        pass


_PR_SET_PDEATHSIG = 1
