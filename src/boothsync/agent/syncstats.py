"""Live numbers of the uploader: bytes sent and re-sent, goodput and link state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

ONLINE, DEGRADED, OFFLINE = "online", "degraded", "offline"

# Weight of the newest one-second sample in the goodput average: about the last ten seconds count.
_GOODPUT_WEIGHT = 0.2


@dataclass
class SyncStats:
    """Counters since the agent started. What must survive a restart is in the journal."""

    bytes_sent: int = 0
    bytes_resent: int = 0
    bytes_acked: int = 0
    chunks_failed: int = 0
    parts_synced: int = 0
    parts_parked: int = 0
    manifests_sent: int = 0
    consecutive_failures: int = 0
    offline_after: int = 3
    goodput_bps: float = 0.0
    last_error: str | None = None
    # The latest capture the device itself rejected (a full disk); None after a capture succeeds.
    last_capture_error: str | None = None
    started_at: float = field(default_factory=time.time)
    _high_water: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def link_state(self) -> str:
        if self.consecutive_failures == 0:
            return ONLINE
        if self.consecutive_failures < self.offline_after:
            return DEGRADED
        return OFFLINE

    def count_chunk_sent(self, key: tuple[str, str], start: int, end: int) -> None:
        """Count a chunk put on the wire; the bytes below this process's high-water mark are re-sent."""
        high = self._high_water.get(key, 0)
        self.bytes_sent += end - start
        self.bytes_resent += max(0, min(end, high) - start)
        self._high_water[key] = max(high, end)

    def count_acked(self, acked_bytes: int, seconds: float) -> None:
        self.bytes_acked += acked_bytes

    def sample_goodput(self, acked_bytes: int, seconds: float) -> None:
        """Fold one interval's acknowledged bytes into the smoothed goodput, all streams together."""
        if seconds <= 0:
            return
        sample = acked_bytes / seconds
        if self.goodput_bps == 0:
            self.goodput_bps = sample
        else:
            self.goodput_bps += _GOODPUT_WEIGHT * (sample - self.goodput_bps)

    def count_success(self) -> None:
        self.consecutive_failures = 0
        self.last_error = None

    def count_failure(self, error: str) -> None:
        self.consecutive_failures += 1
        self.last_error = error

    def forget_part(self, key: tuple[str, str]) -> None:
        self._high_water.pop(key, None)
