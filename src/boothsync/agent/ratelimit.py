"""A shared bandwidth cap for all upload streams (token bucket)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

PIECE_BYTES = 16 * 1024


class BandwidthCap:
    """Paces bytes so that all streams together stay under ``rate`` bytes per second.

    ``rate`` None means no cap. The bucket contains at most a quarter of a
    second of tokens, so an idle link cannot burst far above the cap.
    """

    def __init__(self, rate: float | None = None) -> None:
        self.rate = rate
        self._tokens = 0.0
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    def set_rate(self, rate: float | None) -> None:
        self.rate = rate

    async def take(self, count: int) -> None:
        """Wait until ``count`` bytes may be sent."""
        if self.rate is None:
            return
        async with self._lock:
            while True:
                rate = self.rate
                if rate is None:
                    return
                now = time.monotonic()
                self._tokens = min(rate / 4, self._tokens + (now - self._updated) * rate)
                self._updated = now
                if self._tokens >= count or self._tokens >= rate / 4:
                    self._tokens -= count
                    return
                await asyncio.sleep((count - self._tokens) / rate)

    async def paced(self, data: bytes) -> AsyncIterator[bytes]:
        """Yield ``data`` in pieces, each after its share of the cap is available."""
        view = memoryview(data)
        for start in range(0, len(data), PIECE_BYTES):
            piece = view[start:start + PIECE_BYTES]
            await self.take(len(piece))
            yield bytes(piece)
