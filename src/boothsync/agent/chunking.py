"""Chunk size that follows the link: larger while chunks go through fast, smaller after trouble."""

from __future__ import annotations

import logging

log = logging.getLogger("boothsync.agent.chunking")

# A full chunk faster than this share of the target doubles the size; one
# slower than SHRINK_ABOVE times the target halves it. Doubling a chunk at
# 0.75 of the target lands it at 1.5, inside the band, so the size settles.
GROW_BELOW = 0.75
SHRINK_ABOVE = 2.0


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
            return  # the last chunk of a part is shorter, so its time tells little about the link
        if seconds < self.target_s * GROW_BELOW:
            self._set(self.size * 2, f"chunk of {sent} bytes took {seconds:.2f}s, well under the {self.target_s}s target")
        elif seconds > self.target_s * SHRINK_ABOVE:
            self._set(self.size // 2, f"chunk of {sent} bytes took {seconds:.2f}s, over {SHRINK_ABOVE:g} times the {self.target_s}s target")

    def failed(self, reason: str) -> None:
        """Halve the size after a chunk was lost."""
        self._set(self.size // 2, f"chunk failed: {reason}")

    def _set(self, size: int, reason: str) -> None:
        size = max(self.min_bytes, min(size, self.max_bytes))
        if size != self.size:
            log.debug("chunk size %d -> %d bytes because %s", self.size, size, reason)
            self.size = size
