"""The agent process: wires the journal, blob store, intake, derivatives, uploader and hot folder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from boothsync.agent.blobstore import Blob, BlobStore
from boothsync.agent.codes import SkuList, sku_file_for
from boothsync.agent.deriving import DerivativeRunner
from boothsync.agent.hotfolder import HotFolder
from boothsync.agent.intake import Intake
from boothsync.agent.journal import Journal
from boothsync.agent.power import PowerPolicy
from boothsync.agent.routes import build_routes
from boothsync.agent.status import AgentCollector
from boothsync.agent.syncstats import SyncStats
from boothsync.agent.chunking import AdaptiveChunkSize
from boothsync.agent.ratelimit import BandwidthCap
from boothsync.agent.scheduler import LOCAL_ONLY, LinkControl, Scheduler
from boothsync.agent.uploader import Uploader, UploaderOptions
from boothsync.classes import CONTENT_CLASSES
from boothsync.config import AgentSettings
from boothsync.datalock import DataDirLock

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
        self.data_lock = DataDirLock(settings.data_dir, "agent")
        self.device_id = device_id_for(settings)
        self.journal = Journal(settings.data_dir / "journal.sqlite3")
        self.blobs = BlobStore(
            settings.data_dir / "blobs", reserve_bytes=settings.disk_reserve_bytes, direct=settings.direct_io
        )
        self.stats = SyncStats(offline_after=settings.offline_after_failures)
        self.power = PowerPolicy(settings.battery_defer_percent)
        self.scheduler = Scheduler(
            {name: getattr(settings, f"policy_{name}") for name in CONTENT_CLASSES},
            settings.policy_derivatives, settings.aging_s,
        )
        self.control = self._initial_control()
        self.cap = BandwidthCap(self.control.bandwidth_cap_bytes_per_s)
        local_only = {name for name in CONTENT_CLASSES if getattr(settings, f"policy_{name}") == LOCAL_ONLY}
        self.intake = Intake(self.journal, self.blobs, self._on_stored, local_only_classes=local_only)
        self.registry = CollectorRegistry()
        self.registry.register(AgentCollector(self.journal, self.blobs, self.stats))
        self._loop: asyncio.AbstractEventLoop | None = None
        self.runner: DerivativeRunner | None = None
        self.uploader: Uploader | None = None

    def _initial_control(self) -> LinkControl:
        """Start from the settings, then apply what the operator set at run time, which a restart keeps."""
        s = self.settings
        control = LinkControl(
            metered=s.link_metered,
            bandwidth_cap_bytes_per_s=float(s.bandwidth_cap_bytes_per_s) or None,
        )
        for name, value in self.journal.load_control().items():
            if hasattr(control, name):
                setattr(control, name, value)
        return control

    def update_control(self, changes: dict[str, Any]) -> LinkControl:
        """Apply the operator's changes to the link control, keep them in the journal and wake the uploader."""
        for name, value in changes.items():
            setattr(self.control, name, value)
        self.cap.set_rate(self.control.bandwidth_cap_bytes_per_s)
        self.journal.save_control(changes)
        log.info("link control changed %s", " ".join(f"{k}={v}" for k, v in changes.items()))
        self.wake_uploader()
        return self.control

    def _capture_rejected(self, error: str | None) -> None:
        self.stats.last_capture_error = error

    def _on_stored(self, capture_id: str, blob: Blob) -> None:
        # Intake runs in worker threads; hand the news to the event loop.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._queue_new_capture, capture_id, blob.sha256)

    def _queue_new_capture(self, capture_id: str, sha256: str) -> None:
        if self.runner is not None:
            self.runner.submit(capture_id, sha256)
        self.wake_uploader()

    def wake_uploader(self) -> None:
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
                ocr_timeout_s=s.ocr_timeout_s, ocr_max_pages=s.ocr_max_pages,
                thumbnail_format=s.thumbnail_format, on_change=self.wake_uploader,
                power=self.power, sku_list=SkuList(sku_file_for(s.data_dir)),
            )
            self.uploader = Uploader(
                self.journal, self.blobs, http,
                UploaderOptions(
                    server_url=s.server_url, event=s.event, device_id=self.device_id, upstream=s.upstream,
                    upload_path=s.upload_path, streams=s.sync_streams, retry_base_s=s.retry_base_s,
                    retry_max_s=s.retry_max_s, max_rejections=s.max_rejected_attempts,
                ),
                scheduler=self.scheduler,
                chunks=AdaptiveChunkSize(s.chunk_bytes, s.chunk_min_bytes, s.chunk_max_bytes, s.chunk_target_s),
                cap=self.cap, control=self.control, stats=self.stats,
            )
            tasks = [asyncio.create_task(self.runner.run()), asyncio.create_task(self.uploader.run())]
            if s.hot_folder is not None:
                tasks.append(asyncio.create_task(HotFolder(s.hot_folder, self.intake, s.hot_folder_settle_s, self._capture_rejected).run()))
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
