"""The agent process: wires the journal, blob store, intake, derivatives, uploader and hot folder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

import httpx
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from boothsync.agent.blobstore import Blob, BlobStore
from boothsync.agent.deriving import DerivativeRunner
from boothsync.agent.hotfolder import HotFolder
from boothsync.agent.intake import Intake
from boothsync.agent.journal import Journal
from boothsync.agent.routes import build_routes
from boothsync.agent.status import AgentCollector
from boothsync.agent.syncstats import SyncStats
from boothsync.agent.uploader import Uploader
from boothsync.config import AgentSettings

log = logging.getLogger("boothsync.agent")


def device_id_for(settings: AgentSettings) -> str:
    """Return the configured device id, or one made once and kept in the data directory."""
    if settings.device_id:
        return settings.device_id
    path = settings.data_dir / "device_id"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    device_id = "device-" + secrets.token_hex(4)
    path.write_text(device_id + "\n", encoding="utf-8")
    return device_id


class Agent:
    """One agent: its components and the tasks that run them."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id_for(settings)
        self.journal = Journal(settings.data_dir / "journal.sqlite3")
        self.blobs = BlobStore(settings.data_dir / "blobs", reserve_bytes=settings.disk_reserve_bytes)
        self.stats = SyncStats(offline_after=settings.offline_after_failures)
        self.intake = Intake(self.journal, self.blobs, self._on_stored)
        self.registry = CollectorRegistry()
        self.registry.register(AgentCollector(self.journal, self.blobs, self.stats))
        self._loop: asyncio.AbstractEventLoop | None = None
        self.runner: DerivativeRunner | None = None
        self.uploader: Uploader | None = None

    def _on_stored(self, capture_id: str, blob: Blob) -> None:
        # Intake runs in worker threads; hand the news to the event loop.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._queue_new_capture, capture_id, blob.sha256)

    def _queue_new_capture(self, capture_id: str, sha256: str) -> None:
        if self.runner is not None:
            self.runner.submit(capture_id, sha256)
        self._wake_uploader()

    def _wake_uploader(self) -> None:
        if self.uploader is not None:
            self.uploader.notify()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        log.info("agent started device_id=%s event=%s data_dir=%s server=%s", self.device_id, s.event, s.data_dir, s.server_url)
        timeout = httpx.Timeout(s.request_timeout_s, connect=min(10.0, s.request_timeout_s))
        async with httpx.AsyncClient(timeout=timeout) as http:
            self.runner = DerivativeRunner(
                self.journal, self.blobs, s.data_dir / "derivatives-tmp",
                workers=s.derivative_workers, thumbnail_px=s.thumbnail_px,
                ocr_timeout_s=s.ocr_timeout_s, on_change=self._wake_uploader,
            )
            self.uploader = Uploader(
                self.journal, self.blobs, http, server_url=s.server_url, event=s.event,
                device_id=self.device_id, chunk_bytes=s.chunk_bytes, retry_base_s=s.retry_base_s,
                retry_max_s=s.retry_max_s, stats=self.stats,
            )
            tasks = [asyncio.create_task(self.runner.run()), asyncio.create_task(self.uploader.run())]
            if s.hot_folder is not None:
                tasks.append(asyncio.create_task(HotFolder(s.hot_folder, self.intake, s.hot_folder_settle_s).run()))
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self.journal.close()
                log.info("agent stopped device_id=%s", self.device_id)

    def app(self) -> Starlette:
        return Starlette(routes=build_routes(self), lifespan=self.lifespan)


def build_app(settings: AgentSettings) -> Starlette:
    """Return the agent's ASGI app for ``settings``."""
    return Agent(settings).app()
