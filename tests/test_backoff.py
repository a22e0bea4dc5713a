"""Retry delays of one upload stream, with the random draw replaced by its ceiling."""

from __future__ import annotations

from boothsync.agent.backoff import RESET_RETRY_S, Backoff


def ceiling_of(low: float, high: float) -> float:
    assert low == 0.0
    return high


def test_lost_connection_retried_at_once() -> None:
    backoff = Backoff(0.5, 5.0, uniform=ceiling_of)

    assert backoff.next_delay(connection_lost=True) == RESET_RETRY_S


def test_repeated_failures_back_off_exponentially() -> None:
    backoff = Backoff(0.5, 5.0, uniform=ceiling_of)

    delays = [backoff.next_delay(connection_lost=True) for _ in range(7)]

    assert delays == [RESET_RETRY_S, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_status_failure_gets_no_free_retry() -> None:
    backoff = Backoff(0.5, 5.0, uniform=ceiling_of)

    delays = [backoff.next_delay(connection_lost=False) for _ in range(3)]

    assert delays == [0.5, 1.0, 2.0]


def test_reset_gives_next_loss_free_retry() -> None:
    backoff = Backoff(0.5, 5.0, uniform=ceiling_of)
    for _ in range(4):
        backoff.next_delay(connection_lost=True)

    backoff.reset()

    assert backoff.failures == 0
    assert backoff.next_delay(connection_lost=True) == RESET_RETRY_S
    assert backoff.next_delay(connection_lost=True) == 0.5


def test_probe_cap_lowers_ceiling() -> None:
    backoff = Backoff(0.5, 30.0, uniform=ceiling_of)
    for _ in range(8):
        backoff.next_delay(connection_lost=True)

    assert backoff.next_delay(connection_lost=True) == 30.0
    assert backoff.next_delay(connection_lost=True, cap_s=1.0) == 1.0


def test_delay_is_full_jitter() -> None:
    draws: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        draws.append((low, high))
        return (low + high) / 2

    backoff = Backoff(0.5, 5.0, uniform=record)
    backoff.next_delay(connection_lost=False)
    delay = backoff.next_delay(connection_lost=False)

    assert draws == [(0.0, 0.5), (0.0, 1.0)]
    assert delay == 0.5
