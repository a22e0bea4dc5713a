"""Scheduler order, aging, policies and preemption, with a fake clock."""

from __future__ import annotations

import pytest

from boothsync.agent.chunking import DROP_EVENT_S, AdaptiveChunkSize
from boothsync.agent.journal import PartToUpload
from boothsync.agent.scheduler import LinkControl, PolicyError, Scheduler, key_of


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def part(capture_id: str, klass: str, captured_at: float, name: str = "original", size: int = 1000) -> PartToUpload:
    return PartToUpload(capture_id, name, klass, "0" * 64, size, None, None, "f.bin", captured_at)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def scheduler(clock: FakeClock, aging_s: float = 600.0, **policies: str) -> Scheduler:
    return Scheduler(policies, aging_s=aging_s, clock=clock)


def test_order_by_class(clock: FakeClock) -> None:
    now = clock.now
    parts = [part("A", "media", now), part("B", "document", now), part("C", "consent", now),
             part("D", "receipt", now), part("E", "contract", now)]
    chosen = []
    busy: set = set()
    plan = scheduler(clock)
    while (picked := plan.pick(parts, busy, LinkControl())) is not None:
        chosen.append(picked.klass)
        busy.add(key_of(picked))

    assert chosen == ["consent", "receipt", "contract", "document", "media"]


def test_same_class_oldest_first(clock: FakeClock) -> None:
    parts = [part("B", "receipt", clock.now - 5), part("A", "receipt", clock.now - 10)]

    assert scheduler(clock).pick(parts, set(), LinkControl()).capture_id == "A"


def test_derivative_before_own_class_original(clock: FakeClock) -> None:
    parts = [part("A", "media", clock.now, "original"), part("A", "media", clock.now, "thumbnail")]

    assert scheduler(clock).pick(parts, set(), LinkControl()).part == "thumbnail"


@pytest.mark.parametrize("klass", ["consent", "receipt"])
def test_urgent_original_before_own_derivatives(clock: FakeClock, klass: str) -> None:
    parts = [part("A", klass, clock.now, "thumbnail"), part("A", klass, clock.now, "ocr_text"),
             part("A", klass, clock.now, "original")]

    assert scheduler(clock).pick(parts, set(), LinkControl()).part == "original"


@pytest.mark.parametrize("klass", ["contract", "document", "media"])
def test_derivative_before_large_original(clock: FakeClock, klass: str) -> None:
    parts = [part("A", klass, clock.now, "original"), part("A", klass, clock.now, "thumbnail")]

    assert scheduler(clock).pick(parts, set(), LinkControl()).part == "thumbnail"


def test_receipt_original_before_derivative_backlog(clock: FakeClock) -> None:
    # Ten captures waited through a 30 s blackout; a receipt arrives as the link returns.
    backlog = []
    for n in range(10):
        klass = "consent" if n % 5 == 0 else "receipt"
        captured = clock.now - 40 + 3 * n
        backlog += [part(f"B{n}", klass, captured, "thumbnail"), part(f"B{n}", klass, captured, "ocr_text"),
                    part(f"B{n}", klass, captured, "original")]
    fresh = part("R", "receipt", clock.now)
    video = part("V", "media", clock.now - 90)
    parts = [*backlog, fresh, video]
    plan = scheduler(clock)
    order = []
    busy: set = set()
    while (picked := plan.pick(parts, busy, LinkControl())) is not None:
        order.append(picked)
        busy.add(key_of(picked))

    originals = [p for p in order[:12] if p.part == "original"]
    assert [p.capture_id for p in originals] == ["B0", "B5", "B1", "B2", "B3", "B4", "B6", "B7", "B8", "B9", "R"]
    assert order[11].part != "original"
    assert order[-1] is video


def test_derivative_best_rank(clock: FakeClock) -> None:
    plan = scheduler(clock)
    now = clock.now

    assert plan.score(part("A", "consent", now, "thumbnail"), now) == 1.5
    assert plan.score(part("A", "receipt", now, "ocr_text"), now) == 1.5
    assert plan.score(part("A", "contract", now, "thumbnail"), now) == 1.5
    assert plan.score(part("A", "document", now, "thumbnail"), now) == 2.5
    assert plan.score(part("A", "media", now, "thumbnail"), now) == 3.5


def test_receipt_derivative_preempts_video(clock: FakeClock) -> None:
    plan = scheduler(clock)
    video = part("V", "media", clock.now - 5, size=200_000_000)
    thumbnail = part("R", "receipt", clock.now, "thumbnail")

    assert plan.preempting(video, [video, thumbnail], {key_of(video)}, LinkControl()) is thumbnail


def test_aging_lets_low_class_overtake(clock: FakeClock) -> None:
    old_media = part("A", "media", clock.now - 4 * 600 - 1)
    new_consent = part("B", "consent", clock.now)

    assert scheduler(clock, aging_s=600).pick([new_consent, old_media], set(), LinkControl()) is old_media


def test_aging_rate_is_configurable(clock: FakeClock) -> None:
    media = part("A", "media", clock.now - 100)
    receipt = part("B", "receipt", clock.now)

    slow = scheduler(clock, aging_s=600).pick([receipt, media], set(), LinkControl())
    fast = scheduler(clock, aging_s=10).pick([receipt, media], set(), LinkControl())

    assert slow is receipt
    assert fast is media


def test_media_never_starved(clock: FakeClock) -> None:
    plan = scheduler(clock, aging_s=60)
    media = part("M", "media", clock.now)
    for minute in range(1, 30):
        clock.now += 60
        fresh_receipt = part(f"R{minute}", "receipt", clock.now)
        if plan.pick([fresh_receipt, media], set(), LinkControl()) is media:
            break
    else:
        pytest.fail("a waiting media part never overtook new receipts")

    assert minute <= 4


def test_busy_parts_are_skipped(clock: FakeClock) -> None:
    first = part("A", "consent", clock.now)
    second = part("B", "media", clock.now)

    assert scheduler(clock).pick([first, second], {key_of(first)}, LinkControl()) is second


def test_unmetered_waits_for_unmetered_link(clock: FakeClock) -> None:
    plan = scheduler(clock, media="unmetered")
    video = part("V", "media", clock.now)
    thumbnail = part("V", "media", clock.now, "thumbnail")

    on_hotspot = plan.pick([video, thumbnail], set(), LinkControl(metered=True))
    at_hq = plan.pick([video], set(), LinkControl(metered=False))

    assert on_hotspot is thumbnail
    assert plan.pick([video], set(), LinkControl(metered=True)) is None
    assert at_hq is video


def test_after_event_waits_for_event_end(clock: FakeClock) -> None:
    plan = scheduler(clock, contract="after_event")
    contract = part("C", "contract", clock.now)

    assert plan.pick([contract], set(), LinkControl(event_ended=False)) is None
    assert plan.pick([contract], set(), LinkControl(event_ended=True)) is contract


def test_local_only_never_sent(clock: FakeClock) -> None:
    plan = scheduler(clock, consent="local_only")
    consent = part("C", "consent", clock.now)
    control = LinkControl(metered=False, event_ended=True)

    assert plan.pick([consent], set(), control) is None


def test_derivatives_follow_their_own_policy(clock: FakeClock) -> None:
    plan = Scheduler({"media": "local_only"}, derivative_policy="immediate", clock=clock)
    thumbnail = part("V", "media", clock.now, "thumbnail")

    assert plan.pick([thumbnail], set(), LinkControl()) is thumbnail


def test_invalid_policy_rejected(clock: FakeClock) -> None:
    with pytest.raises(PolicyError, match="'sometimes'"):
        Scheduler({"media": "sometimes"}, clock=clock)


def test_receipt_preempts_video(clock: FakeClock) -> None:
    plan = scheduler(clock)
    video = part("V", "media", clock.now - 5, size=200_000_000)
    receipt = part("R", "receipt", clock.now)

    challenger = plan.preempting(video, [video, receipt], {key_of(video)}, LinkControl())

    assert challenger is receipt


def test_same_class_does_not_preempt(clock: FakeClock) -> None:
    plan = scheduler(clock)
    video = part("V", "media", clock.now - 5)
    photo = part("P", "media", clock.now)

    assert plan.preempting(video, [video, photo], {key_of(video)}, LinkControl()) is None


def test_aged_video_not_preempted(clock: FakeClock) -> None:
    plan = scheduler(clock, aging_s=60)
    video = part("V", "media", clock.now - 180)
    receipt = part("R", "receipt", clock.now)

    assert plan.preempting(video, [video, receipt], {key_of(video)}, LinkControl()) is None


def test_policy_change_stops_current_part(clock: FakeClock) -> None:
    plan = scheduler(clock, media="unmetered")
    video = part("V", "media", clock.now)

    assert plan.preempting(video, [video], {key_of(video)}, LinkControl(metered=True)) is video
    assert plan.preempting(video, [video], {key_of(video)}, LinkControl(metered=False)) is None


def test_chunk_size_grows_on_fast_chunks() -> None:
    chunks = AdaptiveChunkSize(256 * 1024, 64 * 1024, 4 * 1024 * 1024, target_s=2.0)

    for _ in range(10):
        chunks.succeeded(chunks.size, 0.1)

    assert chunks.size == 4 * 1024 * 1024


def test_chunk_size_shrinks_on_slow_chunks_and_failures(clock: FakeClock) -> None:
    chunks = AdaptiveChunkSize(1024 * 1024, 64 * 1024, 4 * 1024 * 1024, target_s=2.0, clock=clock)

    chunks.succeeded(chunks.size, 5.0)
    assert chunks.size == 512 * 1024
    chunks.failed("connection reset")
    assert chunks.size == 256 * 1024
    for _ in range(10):
        clock.now += 5.0
        chunks.failed("connection reset")
    assert chunks.size == 64 * 1024


def test_chunk_size_halves_once_per_drop(clock: FakeClock) -> None:
    chunks = AdaptiveChunkSize(2 * 1024 * 1024, 64 * 1024, 4 * 1024 * 1024, target_s=2.0, clock=clock)

    # Both streams lose their chunk to the same reset, 30 ms apart.
    chunks.failed("ReadError")
    clock.now += 0.03
    chunks.failed("ReadError")
    assert chunks.size == 1024 * 1024

    # The next drop, seconds later, halves again.
    clock.now += 20.0
    chunks.failed("ReadError")
    assert chunks.size == 512 * 1024


def test_chunk_size_window_counts_from_halving(clock: FakeClock) -> None:
    chunks = AdaptiveChunkSize(2 * 1024 * 1024, 64 * 1024, 4 * 1024 * 1024, target_s=2.0, clock=clock)

    chunks.failed("ReadError")
    clock.now += DROP_EVENT_S * 0.9
    chunks.failed("ReadError")
    clock.now += DROP_EVENT_S * 0.2

    chunks.failed("ReadError")

    assert chunks.size == 512 * 1024


def test_chunk_size_steady_near_target() -> None:
    chunks = AdaptiveChunkSize(1024 * 1024, 64 * 1024, 4 * 1024 * 1024, target_s=2.0)

    chunks.succeeded(chunks.size, 2.0)
    chunks.succeeded(100, 0.001)

    assert chunks.size == 1024 * 1024
