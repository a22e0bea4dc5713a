"""Retry delays of one upload stream: capped exponential backoff with full jitter.

A reset connection is not congestion, so the first failure after a success
that lost the connection is retried at once. If the link is really down,
that costs one attempt more. Every further failure, and every failure that
the server reported with a status (423, 5xx), waits a random time between
zero and a ceiling that doubles from ``base_s`` up to ``max_s`` ("full
jitter"), so that many clients retrying one server spread out.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# The delay before the one retry that follows a lost connection. Not zero,
# so that a connection that fails at once on every attempt cannot spin.
RESET_RETRY_S = 0.05


class Backoff:
    """Delays of one stream's retries; ``reset`` after any request went through."""

    def __init__(self, base_s: float, max_s: float, uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.uniform = uniform
        self.failures = 0
        self._backing_off = 0

    def reset(self) -> None:
        self.failures = 0
        self._backing_off = 0

    def next_delay(self, connection_lost: bool, cap_s: float | None = None) -> float:
        """Count a failure and return the seconds to wait before the next attempt.

        ``connection_lost`` is True when the request failed on the
        connection (reset, refused, timed out) and False when the server
        responded with a status. ``cap_s`` lowers the ceiling below ``max_s``,
        for example while probing a link that is offline.
        """
        self.failures += 1
        if connection_lost and self.failures == 1:
            return RESET_RETRY_S
        self._backing_off += 1
        ceiling = min(self.max_s, self.base_s * 2 ** min(self._backing_off - 1, 30))
        if cap_s is not None:
            ceiling = min(ceiling, cap_s)
        return self.uniform(0.0, ceiling)
