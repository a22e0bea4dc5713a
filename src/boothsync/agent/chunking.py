"""Chunk size that follows the link: larger while chunks go through fast, smaller after trouble."""

from __future__ import annotations

import logging

log = logging.getLogger("boothsync.agent.chunking")


class AdaptiveChunkSize:
    """Keeps one chunk's transfer near ``target_s`` seconds, between ``min_bytes`` and ``max_bytes``.

    Small chunks lose little to a dropped connection and let a more
    important part preempt sooner; large chunks waste fewer round trips.
    Aiming at a duration, not a size, gets both on any link speed.
    """

    def __init__(self, initial: int, min_bytes: int, max_bytes: int, target_s: float) -> None:
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self.target_s = target_s
        self.size = max(min_bytes, min(initial, max_bytes))

    def succeeded(self, sent: int, seconds: float) -> None:
        """Grow after a fast full chunk, shrink after a slow one."""
        if sent < self.size:
            return  # the last chunk of a part says little about the link
        if seconds < self.target_s / 2:
            self._set(self.size * 2, f"chunk of {sent} bytes took {seconds:.2f}s, under half the {self.target_s}s target")
        elif seconds > self.target_s * 2:
            self._set(self.size // 2, f"chunk of {sent} bytes took {seconds:.2f}s, over twice the {self.target_s}s target")

    def failed(self, reason: str) -> None:
        """Halve the size after a chunk was lost."""
        self._set(self.size // 2, f"chunk failed: {reason}")

    def _set(self, size: int, reason: str) -> None:
        size = max(self.min_bytes, min(size, self.max_bytes))
        if size != self.size:
            log.debug("chunk size %d -> %d bytes because %s", self.size, size, reason)
            self.size = size
