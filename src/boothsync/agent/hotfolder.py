"""The hot folder: files a scanner writes into are captured once they stop changing.

A file counts as finished when its size and modification time have not
changed for ``settle_s`` seconds. After the capture is durable, the file is
moved to ``.captured/`` inside the folder, so it is not captured again and
nothing is deleted that the operator might still want.
NOTE: an agent stopped between the capture and the move captures the file
a second time after it restarts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from boothsync.agent.blobstore import DiskReserveError
from boothsync.agent.intake import Intake
from boothsync.classes import PRIORITY

log = logging.getLogger("boothsync.agent.hotfolder")

POLL_S = 0.5
DONE_DIR = ".captured"
# Scanners and copy tools write under these names and rename when done.
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")


class HotFolder:
    """Polls ``folder`` and its class-named sub-folders (``receipt/``, ``consent/``, ...)."""

    def __init__(self, folder: Path, intake: Intake, settle_s: float,
                 on_rejected: Callable[[str | None], None] | None = None) -> None:
        self.folder = folder
        self.intake = intake
        self.settle_s = settle_s
        self.on_rejected = on_rejected
        self._seen: dict[Path, tuple[int, int, float]] = {}
        self._rejected: set[Path] = set()
        self._warned_folders: set[str] = set()

    async def run(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        log.info("hot folder watching folder=%s settle_s=%.1f", self.folder, self.settle_s)
        try:
            while True:
                await self.scan_once()
                await asyncio.sleep(POLL_S)
        finally:
            log.info("hot folder stopped folder=%s", self.folder)

    async def scan_once(self) -> int:
        """Capture every file that has settled; return how many were captured."""
        now = time.monotonic()
        captured = 0
        present = set()
        for path in self._candidates():
            present.add(path)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            previous = self._seen.get(path)
            if previous is None or previous[:2] != signature:
                self._seen[path] = (*signature, now)
                continue
            if now - previous[2] >= self.settle_s and await self._capture(path):
                captured += 1
                present.discard(path)
        self._seen = {p: v for p, v in self._seen.items() if p in present}
        return captured

    def _candidates(self) -> list[Path]:
        found = []
        for root, dirs, files in os.walk(self.folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES):
                    continue
                found.append(Path(root) / name)
        return sorted(found)

    def _class_for(self, path: Path) -> str | None:
        if path.parent == self.folder:
            return None
        name = path.parent.name
        if name in PRIORITY:
            return name
        if name not in self._warned_folders:
            self._warned_folders.add(name)
            log.warning(
                "hot folder sub-folder %r is not a content class, so its files get the default class:"
                " name it one of %s", name, ", ".join(PRIORITY),
            )
        return None

    async def _capture(self, path: Path) -> bool:
        klass = self._class_for(path)
        try:
            confirmation = await asyncio.to_thread(self.intake.capture_file, path, klass=klass)
        except DiskReserveError as exc:
            # Logged once per file: the folder is polled twice a second.
            if path not in self._rejected:
                log.error("hot folder capture rejected path=%s: %s", path.name, exc)
                self._rejected.add(path)
            if self.on_rejected is not None:
                self.on_rejected(str(exc))
            return False
        except OSError as exc:
            log.error("hot folder capture failed path=%s error=%s", path.name, exc)
            return False
        self._rejected.discard(path)
        if self.on_rejected is not None:
            self.on_rejected(None)
        done = self.folder / DONE_DIR
        done.mkdir(exist_ok=True)
        os.replace(path, done / f"{confirmation['capture_id']}-{path.name}")
        log.info("hot folder captured path=%s class=%s capture_id=%s", path.relative_to(self.folder), confirmation["class"], confirmation["capture_id"])
        return True
