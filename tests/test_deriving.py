"""Tests for the derivative runner: queue order, battery deferral, derived_info and status."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from boothsync.agent.blobstore import BlobStore
from boothsync.agent.codes import SkuList, sku_file_for
from boothsync.agent.derivatives import JPEG_CONTENT_TYPE, OCR_TEXT, THUMBNAIL, Derivative
from boothsync.agent.deriving import (
    DerivativeRunner,
    QueuedCapture,
    WorkerResult,
    _add_key_fields,
    class_needs_suggestion,
)
from boothsync.agent.journal import Journal
from boothsync.agent.power import BatteryReading, PowerPolicy, PowerState, PsutilBatteryProbe
from boothsync.agent.status import build_status
from boothsync.agent.syncstats import SyncStats
from boothsync.config import AgentSettings, ConfigError, load_settings
from boothsync.ids import new_capture_id, short_code

DEFER_REASON_12 = "deferred: battery at 12%, left for HQ"


class FakeBatteryProbe:
    """A BatteryProbe whose reading the test sets."""

    def __init__(self, reading: BatteryReading | None) -> None:
        self.reading = reading

    def read(self) -> BatteryReading | None:
        return self.reading


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.sqlite3")
    yield journal
    journal.close()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _runner(journal: Journal, blobs: BlobStore, tmp_path: Path, **options: Any) -> DerivativeRunner:
    return DerivativeRunner(
        journal, blobs, tmp_path / "derivatives-tmp",
        workers=1, thumbnail_px=160, ocr_timeout_s=60.0, on_change=lambda: None, **options,
    )


def _capture(journal: Journal, blobs: BlobStore, source: Path, klass: str, captured_at: float,
             metadata: dict[str, str] | None = None) -> tuple[str, str]:
    """Store a file as a capture, as intake does, and return (capture_id, sha256)."""
    blob = blobs.put_file(source)
    capture_id = new_capture_id()
    journal.add_capture({
        "capture_id": capture_id,
        "short_code": short_code(capture_id),
        "class": klass,
        "filename": source.name,
        "content_type": None,
        "metadata": metadata or {},
        "captured_at": captured_at,
        "sha256": blob.sha256,
        "size": blob.size,
    })
    return capture_id, blob.sha256


def _photo(path: Path, seed: int) -> Path:
    """Write a small colourful JPEG that differs per seed."""
    image = Image.new("RGB", (160, 120))
    image.putdata([((x + seed * 40) % 256, 255 - x, (x * y + seed) % 256) for y in range(120) for x in range(160)])
    image.save(path, "JPEG")
    return path


def _receipt_with_card(path: Path) -> Path:
    lines = ["KEDAI RUNCIT MAJU", "TAX INVOICE", "TOTAL RM 12.50", "VISA 4111 1111 1111 1111", "Tel: 03-1234 5678"]
    font = ImageFont.load_default(size=36)
    image = Image.new("RGB", (900, 60 * len(lines) + 40), "white")
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((30, 20 + 60 * index), line, fill="black", font=font)
    image.save(path)
    return path


async def _wait_for(predicate: Callable[[], Any], timeout_s: float, description: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {description}")


def _derived_at(journal: Journal, capture_id: str) -> float | None:
    capture = journal.capture(capture_id)
    assert capture is not None
    return capture["derived_at"]


def _parts(journal: Journal, capture_id: str) -> dict[str, dict[str, Any]]:
    capture = journal.capture(capture_id)
    assert capture is not None
    return {part["part"]: part for part in capture["parts"]}


# Queue order


def _drain(runner: DerivativeRunner) -> list[str]:
    order = []
    while not runner.queue.empty():
        *_, item = runner.queue.get_nowait()
        order.append(item.capture_id)
    return order


def test_queue_orders_by_class_then_newest(journal: Journal, blobs: BlobStore, tmp_path: Path) -> None:
    runner = _runner(journal, blobs, tmp_path)
    submissions = [
        ("media-old", "media", 100.0),
        ("document-old", "document", 101.0),
        ("receipt-old", "receipt", 102.0),
        ("media-new", "media", 200.0),
        ("contract", "contract", 150.0),
        ("consent", "consent", 50.0),
        ("receipt-new", "receipt", 300.0),
    ]
    for capture_id, klass, captured_at in submissions:
        runner.submit(capture_id, "0" * 64, klass=klass, captured_at=captured_at)

    assert _drain(runner) == [
        "consent", "receipt-new", "receipt-old", "contract", "document-old", "media-new", "media-old",
    ]


def test_queue_same_time_last_submitted_first(journal: Journal, blobs: BlobStore, tmp_path: Path) -> None:
    runner = _runner(journal, blobs, tmp_path)
    for capture_id in ("first", "second", "third"):
        runner.submit(capture_id, "0" * 64, klass="media", captured_at=100.0)

    assert _drain(runner) == ["third", "second", "first"]


def test_queue_new_receipt_before_old_media(journal: Journal, blobs: BlobStore, tmp_path: Path) -> None:
    runner = _runner(journal, blobs, tmp_path)
    for index in range(50):
        runner.submit(f"media-{index}", "0" * 64, klass="media", captured_at=1000.0 + index)
    runner.submit("receipt", "0" * 64, klass="receipt", captured_at=2000.0)

    assert _drain(runner)[0] == "receipt"


def test_submit_reads_class_from_journal(journal: Journal, blobs: BlobStore, tmp_path: Path) -> None:
    runner = _runner(journal, blobs, tmp_path)
    media_id, media_sha = _capture(journal, blobs, _photo(tmp_path / "m.jpg", 1), "media", 500.0)
    consent_id, consent_sha = _capture(journal, blobs, _photo(tmp_path / "c.jpg", 2), "consent", 100.0)
    default_id, default_sha = _capture(journal, blobs, _photo(tmp_path / "d.jpg", 3), "document", 300.0)

    runner.submit(media_id, media_sha)
    runner.submit(consent_id, consent_sha)
    runner.submit(default_id, default_sha)
    runner.submit("01HZX3K8Q7000000000000UNKN", "0" * 64)

    items: list[QueuedCapture] = []
    while not runner.queue.empty():
        items.append(runner.queue.get_nowait()[-1])
    assert [item.capture_id for item in items] == [consent_id, default_id, media_id]
    assert [item.suggest_class for item in items] == [False, True, False]
    assert items[0].captured_at == 100.0


@pytest.mark.parametrize(
    ("klass", "metadata", "expected"),
    [
        ("document", {}, True),
        ("document", {"class_given": "true"}, False),
        ("document", {"class_given": "false"}, True),
        ("receipt", {}, False),
        ("receipt", {"class_given": "false"}, True),
    ],
)
def test_class_needs_suggestion(klass: str, metadata: dict[str, str], expected: bool) -> None:
    assert class_needs_suggestion({"class": klass, "metadata": metadata}) is expected


def test_runner_receipt_before_older_media(
    journal: Journal, blobs: BlobStore, tmp_path: Path
) -> None:
    media = [
        _capture(journal, blobs, _photo(tmp_path / f"media-{index}.jpg", index), "media", 1000.0 + index)
        for index in range(5)
    ]
    runner = _runner(journal, blobs, tmp_path)

    async def scenario() -> tuple[str, int]:
        # run() queues the five media from the journal, as after a restart.
        task = asyncio.create_task(runner.run())
        try:
            await _wait_for(
                lambda: any(_derived_at(journal, capture_id) for capture_id, _ in media), 60, "a media capture"
            )
            receipt_id, receipt_sha = _capture(
                journal, blobs, _receipt_with_card(tmp_path / "receipt.png"), "receipt", 2000.0
            )
            done_at_submit = sum(1 for capture_id, _ in media if _derived_at(journal, capture_id))
            runner.submit(receipt_id, receipt_sha)
            await _wait_for(
                lambda: all(_derived_at(journal, capture_id) for capture_id, _ in [*media, (receipt_id, "")]),
                90, "every capture to be derived",
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return receipt_id, done_at_submit

    receipt_id, done_at_submit = asyncio.run(scenario())

    receipt_at = _derived_at(journal, receipt_id)
    media_times = {capture_id: _derived_at(journal, capture_id) for capture_id, _ in media}
    before = [capture_id for capture_id, at in media_times.items() if at < receipt_at]
    # With one worker, only the media already derived and the one in the worker
    # when the receipt arrived may come before it.
    assert done_at_submit <= 2, "the media finished too fast for the test to mean anything"
    assert len(before) <= done_at_submit + 1
    assert len(media) - len(before) >= 2
    # Within a class the newest capture goes first, so media finish newest first.
    media_order = sorted(media_times, key=media_times.__getitem__)
    assert media_order == [capture_id for capture_id, _ in reversed(media)]

    parts = _parts(journal, receipt_id)
    assert parts[OCR_TEXT]["state"] == "pending"
    uploaded_text = blobs.path_for(parts[OCR_TEXT]["sha256"]).read_text(encoding="utf-8")
    assert "**** **** **** 1111" in uploaded_text
    assert "4111 1111" not in uploaded_text
    info = journal.capture(receipt_id)["derived_info"]
    assert info["pii"] == {"card_numbers": 1, "emails": 0, "phones": 1}
    assert "suggested_class" not in info


# Battery deferral


@pytest.mark.parametrize(
    ("threshold", "reading", "deferred"),
    [
        (20, None, False),
        (20, BatteryReading(12.0, False), True),
        (20, BatteryReading(12.0, None), True),
        (20, BatteryReading(12.0, True), False),
        (20, BatteryReading(20.0, False), False),
        (20, BatteryReading(19.6, False), True),
        (0, BatteryReading(1.0, False), False),
        (100, BatteryReading(99.0, False), True),
    ],
)
def test_power_policy_decision(threshold: int, reading: BatteryReading | None, deferred: bool) -> None:
    state = PowerPolicy(threshold, FakeBatteryProbe(reading)).check()

    assert state.heavy_deferred is deferred
    assert (state.defer_reason is not None) is deferred


def test_power_policy_reason_and_status() -> None:
    state = PowerPolicy(20, FakeBatteryProbe(BatteryReading(12.4, False))).check()

    assert state.defer_reason == DEFER_REASON_12
    assert state.as_status() == {"battery_percent": 12.4, "plugged": False, "heavy_derivatives_deferred": True}


def test_power_policy_rejects_bad_threshold() -> None:
    with pytest.raises(ValueError, match="0 to 100"):
        PowerPolicy(101, FakeBatteryProbe(None))


def test_psutil_probe_reads_this_machine() -> None:
    reading = PsutilBatteryProbe().read()

    # Machines without a battery, like CI's, return None.
    if reading is not None:
        assert 0.0 <= reading.percent <= 100.0
        assert reading.plugged in (True, False, None)


def test_runner_defers_ocr_on_low_battery(journal: Journal, blobs: BlobStore, tmp_path: Path) -> None:
    probe = FakeBatteryProbe(BatteryReading(12.0, False))
    runner = _runner(journal, blobs, tmp_path, power=PowerPolicy(20, probe))
    low_id, low_sha = _capture(journal, blobs, _receipt_with_card(tmp_path / "low.png"), "document", 100.0)

    async def scenario() -> str:
        task = asyncio.create_task(runner.run())
        try:
            await _wait_for(lambda: _derived_at(journal, low_id), 60, "the low-battery capture")
            probe.reading = BatteryReading(12.0, True)
            plugged_id, plugged_sha = _capture(
                journal, blobs, _photo(tmp_path / "plugged.jpg", 7), "document", 200.0
            )
            runner.submit(plugged_id, plugged_sha)
            await _wait_for(lambda: _derived_at(journal, plugged_id), 60, "the plugged-in capture")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return plugged_id

    plugged_id = asyncio.run(scenario())

    low = _parts(journal, low_id)
    assert low[THUMBNAIL]["state"] == "pending"
    assert low[OCR_TEXT]["state"] == "unavailable"
    assert low[OCR_TEXT]["reason"] == DEFER_REASON_12
    low_info = journal.capture(low_id)["derived_info"]
    assert low_info["deferred"] == DEFER_REASON_12
    assert "pii" not in low_info
    assert "codes" not in low_info
    assert low_info["suggested_class"] == "document"

    plugged = _parts(journal, plugged_id)
    assert plugged[OCR_TEXT]["state"] == "pending"
    plugged_info = journal.capture(plugged_id)["derived_info"]
    assert "deferred" not in plugged_info
    assert plugged_info["codes"] == []
    assert plugged_info["suggested_class"] == "media"


def test_status_reports_power(journal: Journal, blobs: BlobStore, tmp_path: Path) -> None:
    _capture(journal, blobs, _photo(tmp_path / "p.jpg", 1), "media", time.time())
    low = PowerPolicy(20, FakeBatteryProbe(BatteryReading(12.0, False))).check()

    status = build_status(journal, blobs, SyncStats(), event="e", device_id="d", power=low)

    assert status["power"] == {"battery_percent": 12.0, "plugged": False, "heavy_derivatives_deferred": True}
    assert "Battery at 12%" in status["message"]
    assert "left for HQ" in status["message"]


def test_status_without_battery(journal: Journal, blobs: BlobStore) -> None:
    no_battery = PowerPolicy(20, FakeBatteryProbe(None)).check()

    with_state = build_status(journal, blobs, SyncStats(), event="e", device_id="d", power=no_battery)
    without = build_status(journal, blobs, SyncStats(), event="e", device_id="d")

    for status in (with_state, without):
        assert status["power"] == {"battery_percent": None, "plugged": None, "heavy_derivatives_deferred": False}
        assert "Battery" not in status["message"]


def test_power_state_plugged_not_in_message(journal: Journal, blobs: BlobStore) -> None:
    plugged = PowerState(BatteryReading(5.0, True), heavy_deferred=False)

    status = build_status(journal, blobs, SyncStats(), event="e", device_id="d", power=plugged)

    assert status["power"]["battery_percent"] == 5.0
    assert "Battery" not in status["message"]


def test_battery_defer_percent_setting() -> None:
    assert AgentSettings().battery_defer_percent == 20
    settings = load_settings(AgentSettings, "agent", environ={"BOOTHSYNC_AGENT_BATTERY_DEFER_PERCENT": "0"})
    assert settings.battery_defer_percent == 0
    with pytest.raises(ConfigError, match="agent.battery_defer_percent"):
        load_settings(AgentSettings, "agent", environ={"BOOTHSYNC_AGENT_BATTERY_DEFER_PERCENT": "101"})


# derived_info from _record


def _thumbnail_derivative(tmp_path: Path) -> Derivative:
    path = tmp_path / "thumb.jpg"
    Image.new("RGB", (16, 16), "white").save(path, "JPEG")
    return Derivative(THUMBNAIL, "done", path, JPEG_CONTENT_TYPE, None, {})


def test_record_matches_codes_to_skus(journal: Journal, blobs: BlobStore, tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    sku_file = sku_file_for(data_dir)
    sku_file.parent.mkdir(parents=True)
    sku_file.write_text("sku,name,barcode\nKOPI-O,Kopi O,9556001234568\n", encoding="utf-8")
    runner = _runner(journal, blobs, tmp_path, sku_list=SkuList(sku_file))
    capture_id, _ = _capture(journal, blobs, _photo(tmp_path / "p.jpg", 1), "media", 100.0)
    codes = [{"format": "EAN-13", "text": "9556001234568"}, {"format": "QR Code", "text": "hello"}]

    runner._record(capture_id, WorkerResult([_thumbnail_derivative(tmp_path)], {"codes": codes}))

    info = journal.capture(capture_id)["derived_info"]
    assert info == {"codes": codes, "skus": ["KOPI-O"]}
    assert _parts(journal, capture_id)[THUMBNAIL]["state"] == "pending"


def test_record_without_sku_file_has_no_skus(journal: Journal, blobs: BlobStore, tmp_path: Path) -> None:
    runner = _runner(journal, blobs, tmp_path, sku_list=SkuList(sku_file_for(tmp_path / "agent")))
    capture_id, _ = _capture(journal, blobs, _photo(tmp_path / "p.jpg", 1), "media", 100.0)
    codes = [{"format": "EAN-13", "text": "9556001234568"}]

    runner._record(capture_id, WorkerResult([_thumbnail_derivative(tmp_path)], {"codes": codes}))

    assert journal.capture(capture_id)["derived_info"] == {"codes": codes}


def test_key_fields_masked_from_receipts_module(monkeypatch: pytest.MonkeyPatch) -> None:
    receipts = types.ModuleType("boothsync.agent.receipts")
    receipts.extract_fields = lambda text: {  # type: ignore[attr-defined]
        "merchant": "KEDAI MAJU",
        "card": "VISA 4111 1111 1111 1111",
        "total": "12.50",
        "missing": None,
    }
    monkeypatch.setitem(sys.modules, "boothsync.agent.receipts", receipts)
    info: dict[str, Any] = {}

    _add_key_fields("any text", info)

    assert info["fields"] == {"merchant": "KEDAI MAJU", "card": "VISA **** **** **** 1111", "total": "12.50"}


def test_key_fields_error_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str) -> dict[str, str]:
        raise RuntimeError("parser bug")

    receipts = types.ModuleType("boothsync.agent.receipts")
    receipts.extract_fields = broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "boothsync.agent.receipts", receipts)
    info: dict[str, Any] = {}

    _add_key_fields("any text", info)

    assert "fields" not in info


def test_submit_skips_capture_already_queued(journal: Journal, blobs: BlobStore, tmp_path: Path) -> None:
    runner = _runner(journal, blobs, tmp_path)

    runner.submit("same", "0" * 64, klass="media", captured_at=1.0)
    runner.submit("same", "0" * 64, klass="media", captured_at=1.0)

    assert _drain(runner) == ["same"]


def test_key_fields_flattened_for_manifest() -> None:
    from boothsync.agent.deriving import _flatten_fields

    flat = _flatten_fields({
        "total": {"value": "9.00", "raw": "RM9.00", "confidence": 0.912},
        "date": {"value": None, "raw": "31/02/2018", "confidence": 0.2},
        "merchant": None,
    })

    assert flat == {"total": "9.00", "total_confidence": 0.91}
