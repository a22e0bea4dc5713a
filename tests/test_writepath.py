"""The choice between O_DIRECT and the page cache: the disk test, when it runs, and bodies that change ways."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from boothsync.server import writepath
from boothsync.server.store import FileStore
from boothsync.server.writepath import WritePathChooser, measure

MIB = 1024 * 1024


def test_measure_reports_both_speeds(tmp_path: Path) -> None:
    direct_mb_s, cached_mb_s = measure(str(tmp_path), nbytes=4 * MIB, rounds=1)

    assert direct_mb_s is not None and direct_mb_s > 0
    assert cached_mb_s > 0
    assert os.listdir(tmp_path) == [], "the scratch files are removed"


def test_measure_without_direct_support(tmp_path: Path, reject_o_direct: None) -> None:
    direct_mb_s, cached_mb_s = measure(str(tmp_path), nbytes=2 * MIB, rounds=2)

    assert direct_mb_s is None
    assert cached_mb_s > 0


def test_chooser_follows_faster_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    results = iter([(300.0, 900.0), (2000.0, 400.0), (800.0, 700.0)])
    monkeypatch.setattr(writepath, "measure", lambda directory: next(results))
    clock = [1000.0]
    monkeypatch.setattr(writepath.time, "monotonic", lambda: clock[0])
    executor = ThreadPoolExecutor(max_workers=1)
    chooser = WritePathChooser(str(tmp_path), executor)

    with caplog.at_level(logging.INFO, logger="boothsync.server.store"):
        assert chooser.choose() is True, "O_DIRECT until the first test has finished"
        executor.submit(lambda: None).result()
        assert chooser.choose() is False
        assert chooser.choose() is False, "no second test before REPROBE_S"
        clock[0] += writepath.REPROBE_S + 1
        assert chooser.choose() is False, "the new test runs in the background"
        executor.submit(lambda: None).result()
        assert chooser.choose() is True
        clock[0] += writepath.REPROBE_S + 1
        chooser.choose()
        executor.submit(lambda: None).result()
        assert chooser.choose() is False, "O_DIRECT must win by DIRECT_MARGIN"
    executor.shutdown()

    assert chooser.last_result == (800.0, 700.0)
    assert "through the page cache direct_mb_s=300 page_cache_mb_s=900" in caplog.text
    assert "past the page cache (O_DIRECT) direct_mb_s=2000" in caplog.text


def test_chooser_survives_failed_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def full_disk(directory: str) -> tuple[float | None, float]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writepath, "measure", full_disk)
    executor = ThreadPoolExecutor(max_workers=1)
    chooser = WritePathChooser(str(tmp_path), executor)

    with caplog.at_level(logging.ERROR, logger="boothsync.server.store"):
        chooser.choose()
        executor.submit(lambda: None).result()
    executor.shutdown()

    assert chooser.choose() is True, "the default stays"
    assert chooser.last_result is None
    assert "write path test failed" in caplog.text
    assert "No space left on device" in caplog.text


def test_upload_changing_ways_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path / "store")
    ways = iter([True, False, True, False, False, True])
    monkeypatch.setattr(store.direct.chooser, "choose", lambda: next(ways))
    data = random.Random(5).randbytes(6 * MIB + 4321)
    info = store.create(os.urandom(16).hex(), len(data), {}, ttl_s=60)
    cuts = [0, MIB + 17, 2 * MIB, 3 * MIB + 999, 4 * MIB + 1, 5 * MIB, len(data)]

    async def send(start: int, end: int) -> int:
        async def body():
            for position in range(start, end, 65_536):
                yield data[position:min(end, position + 65_536)]

        return await store.append(info, start, body(), len(data) - start, None, expected_bytes=end - start)

    for start, end in zip(cuts, cuts[1:]):
        assert asyncio.run(send(start, end)) == end - start

    assert Path(store.data_path(info)).read_bytes() == data
    store.close()
