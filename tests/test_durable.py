"""DirectorySyncer: concurrent callers share directory fsyncs, and none returns before its own."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from boothsync import durable


def test_concurrent_syncs_are_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    gate = threading.Event()

    def slow_fsync_dir(path: Path) -> None:
        calls.append(path)
        gate.wait(2)

    monkeypatch.setattr(durable, "fsync_dir", slow_fsync_dir)
    syncer = durable.DirectorySyncer()
    threads = [threading.Thread(target=syncer.sync, args=(tmp_path,)) for _ in range(8)]
    threads[0].start()
    while not calls:
        pass
    for thread in threads[1:]:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(5)

    assert not any(thread.is_alive() for thread in threads)
    # The first fsync was under way before the others arrived, so they need
    # one more, and that one serves all seven.
    assert len(calls) == 2


def test_sync_really_fsyncs(tmp_path: Path) -> None:
    syncer = durable.DirectorySyncer()
    (tmp_path / "a").write_bytes(b"x")

    syncer.sync(tmp_path)
    syncer.sync(tmp_path)

    assert syncer._states[str(tmp_path)].done == 2
