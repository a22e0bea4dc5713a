"""Chunk size that follows the link: larger while chunks go through fast, smaller after trouble."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("boothsync.agent.chunking")

# A full chunk faster than this share of the target doubles the size; one
# slower than SHRINK_ABOVE times the target halves it. Doubling a chunk at
# 0.75 of the target lands it at 1.5, inside the band, so the size settles.
GROW_BELOW = 0.75
SHRINK_ABOVE = 2.0
# Failures within this many seconds of the last halving belong to the same
# drop event. A link that resets its connections fails the chunk of every
# stream at about the same moment, and that is one event, not one per stream.
DROP_EVENT_S = 1.0


class AdaptiveChunkSize:
    """Keeps one chunk's transfer near ``target_s`` seconds, between ``min_bytes`` and ``max_bytes``.

    Small chunks lose little to a dropped connection and let a more
    important part preempt sooner; large chunks waste fewer round trips.
    Aiming at a duration, not a size, gets both on any link speed.
    """

    def __init__(self, initial: int, min_bytes: int, max_bytes: int, target_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self.target_s = target_s
        self.size = max(min_bytes, min(initial, max_bytes))
        self.clock = clock
        self._halved_at: float | None = None

    def succeeded(self, sent: int, seconds: float) -> None:
        """Grow after a fast full chunk, shrink after a slow one."""
        if sent < self.size:
            return  # the last chunk of a part is shorter, so its time tells little about the link
        if seconds < self.target_s * GROW_BELOW:
            self._set(self.size * 2, f"chunk of {sent} bytes took {seconds:.2f}s, well under the {self.target_s}s target")
        elif seconds > self.target_s * SHRINK_ABOVE:
            self._set(self.size // 2, f"chunk of {sent} bytes took {seconds:.2f}s, over {SHRINK_ABOVE:g} times the {self.target_s}s target")

    def failed(self, reason: str) -> None:
        """Halve the size after a request that carried a chunk failed, once per drop event.

        Callers report only failures of requests with a chunk in the body: a
        failed HEAD or bodiless creation tells nothing about the chunk size.
        """
        now = self.clock()
        if self._halved_at is not None and now - self._halved_at < DROP_EVENT_S:
            log.debug("chunk size stays %d bytes: %s within %.1fs of the last halving", self.size, reason, DROP_EVENT_S)
            return
        self._halved_at = now
        self._set(self.size // 2, f"chunk failed: {reason}")

    def _set(self, size: int, reason: str) -> None:
        size = max(self.min_bytes, min(size, self.max_bytes))
        if size != self.size:
            log.debug("chunk size %d -> %d bytes because %s", self.size, size, reason)
            self.size = size
