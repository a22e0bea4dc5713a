"""The baseline uploader: tuspy 1.1.0, one file at a time in capture order.

Usage (started by run.py, in its own process so that it does not share the
benchmark's GIL with the link proxy):

    .venv/bin/python benchmarks/uploader/baseline.py --endpoint URL --schedule FILE
        --link-start EPOCH_S --out FILE [--retries N] [--retry-delay S] [--chunk-bytes N]

A feeder thread queues each file at its scheduled link time. The main thread
uploads the queue in order with ``tusclient.client.TusClient(...).uploader(...,
retries=N, retry_delay=S)``: plain tus uploads with the metadata ``filename``
and ``filetype``, no manifests and no checksums. When tuspy gives up, a new
Uploader is made with the same upload URL, so it requests the offset (HEAD)
and resumes from there, as the docstring of tuspy 1.1.0's BaseUploader
describes for its ``url`` argument. A failure before the upload was created
starts a new upload.

Re-sent bytes are counted from tuspy's offsets in the way the agent counts
them: the bytes of each PATCH's range that lie below the highest range end
already put on the wire for the same file.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError
from tusclient.uploader import Uploader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan import PlannedCapture, load_schedule  # noqa: E402

log = logging.getLogger("baseline")


class PatchLedger:
    """Bytes put on the wire by PATCH requests, per file, and the part of them sent before."""

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.bytes_resent = 0
        self.patches = 0
        self._high_water: dict[int, int] = {}

    def record(self, file_number: int, offset: int, length: int) -> None:
        high = self._high_water.get(file_number, 0)
        end = offset + length
        self.patches += 1
        self.bytes_sent += length
        self.bytes_resent += max(0, min(end, high) - offset)
        self._high_water[file_number] = max(high, end)


class ObservedUploader(Uploader):
    """tuspy's Uploader with unchanged behaviour that reports the range of every PATCH it builds.

    tuspy builds each PATCH request (first tries and its own retries) from
    ``offset`` and ``get_request_length()``, so every range passes through
    this method.
    """

    def __init__(self, *args: Any, ledger: PatchLedger, file_number: int, **kwargs: Any) -> None:
        self._ledger = ledger
        self._file_number = file_number
        super().__init__(*args, **kwargs)

    def get_request_length(self) -> int:
        length = super().get_request_length()
        self._ledger.record(self._file_number, self.offset, length)
        return length


def feed(schedule: list[PlannedCapture], link_start: float, work: queue.Queue) -> None:
    """Queue each planned file at its link time, then queue None to end the uploads."""
    for capture in schedule:
        delay = link_start + capture.at_s - time.time()
        if delay > 0:
            time.sleep(delay)
        work.put((capture, time.time()))
    work.put(None)


def upload_one(client: TusClient, capture: PlannedCapture, ledger: PatchLedger, options: argparse.Namespace) -> dict:
    """Upload one file until it is complete and return its upload URL and failure count."""
    metadata = {"filename": capture.filename, "filetype": capture.content_type}
    url: str | None = None
    failures = 0
    uploads_created = 0
    while True:
        uploader: ObservedUploader | None = None
        try:
            uploader = ObservedUploader(
                file_path=capture.path, url=url, client=client, chunk_size=options.chunk_bytes,
                metadata=metadata, retries=options.retries, retry_delay=options.retry_delay,
                ledger=ledger, file_number=capture.number,
            )
            if uploader.url is None:
                uploads_created += 1
            uploader.upload()
            return {"url": uploader.url, "failures": failures, "uploads_created": uploads_created}
        except TusCommunicationError as exc:
            failures += 1
            if uploader is not None and uploader.url is not None:
                url = uploader.url
            # tuspy raises here after its own retries of a PATCH, or at once when
            # the creation POST or the HEAD of a new Uploader fails.
            log.warning(
                "upload failed, trying again with a new Uploader file=%s url=%s failures=%d: %s",
                capture.filename, url, failures, exc,
            )
            time.sleep(options.retry_delay)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="tus creation URL, e.g. http://127.0.0.1:PORT/files/")
    parser.add_argument("--schedule", type=Path, required=True, help="schedule JSON written by run.py")
    parser.add_argument("--link-start", type=float, required=True, help="wall-clock time (epoch seconds) of link time 0")
    parser.add_argument("--out", type=Path, required=True, help="result JSON to write")
    parser.add_argument("--retries", type=int, default=5, help="tuspy retries per chunk (default 5)")
    parser.add_argument("--retry-delay", type=float, default=1.0, help="tuspy delay between retries, in seconds (default 1)")
    parser.add_argument("--chunk-bytes", type=int, default=1024 * 1024, help="tuspy chunk size in bytes (default 1 MiB)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    schedule = load_schedule(options.schedule)
    client = TusClient(options.endpoint)
    ledger = PatchLedger()
    work: queue.Queue = queue.Queue()
    feeder = threading.Thread(target=feed, args=(schedule, options.link_start, work), daemon=True)
    feeder.start()

    files = []
    while (item := work.get()) is not None:
        capture, queued_at = item
        started_at = time.time()
        outcome = upload_one(client, capture, ledger, options)
        completed_at = time.time()
        log.info("upload complete file=%s bytes=%d seconds=%.2f", capture.filename, capture.size, completed_at - started_at)
        files.append({
            "number": capture.number, "klass": capture.klass, "filename": capture.filename, "size": capture.size,
            "captured_at": queued_at, "started_at": started_at, "synced_at": completed_at, **outcome,
        })

    result = {
        "files": files,
        "bytes_sent": ledger.bytes_sent,
        "bytes_resent": ledger.bytes_resent,
        "patches": ledger.patches,
        "retries": options.retries,
        "retry_delay_s": options.retry_delay,
        "chunk_bytes": options.chunk_bytes,
        "cpu_s": time.process_time(),
    }
    options.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
