"""The uploader's stream loop, in process, with the work step replaced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from boothsync.agent.blobstore import BlobStore
from boothsync.agent.chunking import AdaptiveChunkSize
from boothsync.agent.journal import Journal
from boothsync.agent.ratelimit import BandwidthCap
from boothsync.agent.scheduler import LinkControl, Scheduler
from boothsync.agent.syncstats import SyncStats
from boothsync.agent.uploader import Uploader, UploaderOptions


def test_stream_survives_unexpected_error(tmp_path: Path) -> None:
    stats = SyncStats()
    calls: list[int] = []

    async def main() -> None:
        journal = Journal(tmp_path / "journal.sqlite3")
        try:
            async with httpx.AsyncClient() as http:
                options = UploaderOptions("http://127.0.0.1:9", "test-event", "test-device",
                                          retry_base_s=0.01, retry_max_s=0.01)
                uploader = Uploader(
                    journal, BlobStore(tmp_path / "blobs"), http, options,
                    scheduler=Scheduler({}), chunks=AdaptiveChunkSize(1024, 1024, 4096, 1.0),
                    cap=BandwidthCap(), control=LinkControl(), stats=stats,
                )

                async def step() -> bool:
                    await asyncio.sleep(0)
                    calls.append(len(calls))
                    if len(calls) == 1:
                        raise AttributeError("'NoneType' object has no attribute 'getpeername'")
                    return True

                uploader.step = step  # type: ignore[method-assign]
                stream = asyncio.create_task(uploader._stream(0))
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    if len(calls) >= 3:
                        break
                stream.cancel()
                await asyncio.gather(stream, return_exceptions=True)
        finally:
            journal.close()

    asyncio.run(main())

    # The stream backed off after the error and went on with the next steps.
    assert len(calls) >= 3
    assert stats.consecutive_failures == 1
    assert "AttributeError" in (stats.last_error or "")
