"""The SQLite table of upload infos: rows, expiry, checkpoints, crashes and the move from info files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from boothsync.server import infos as infos_module
from boothsync.server.infos import InfoTable
from boothsync.server.storage import UploadInfo
from boothsync.server.store import FileStore


def _info(number: int, **changes: object) -> UploadInfo:
    info = UploadInfo(f"{number:032x}", 100 + number, {"filename": f"f{number}"}, created_at=1.0, expires_at=1000.0)
    for name, value in changes.items():
        setattr(info, name, value)
    return info


@pytest.fixture()
def executor() -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


def test_put_get_replace_delete(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    table = InfoTable(tmp_path / "infos.sqlite3", executor)
    info = _info(1)

    table.put(info)
    assert table.get(info.upload_id) == info
    info.final_path = "/data/files/x"
    table.put(info)
    assert table.get(info.upload_id) == info
    table.delete(info.upload_id)
    assert table.get(info.upload_id) is None
    table.close()


def test_expired_skips_final_and_future(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    table = InfoTable(tmp_path / "infos.sqlite3", executor)
    table.put(_info(1, expires_at=10.0))
    table.put(_info(2, expires_at=10.0, final_path="/data/files/two"))
    table.put(_info(3, expires_at=99.0))

    expired = table.expired(50.0)

    assert [info.upload_id for info in expired] == [_info(1).upload_id]
    table.close()


def test_concurrent_puts_all_kept(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    table = InfoTable(tmp_path / "infos.sqlite3", executor)
    with ThreadPoolExecutor(max_workers=8) as writers:
        list(writers.map(lambda n: table.put(_info(n)), range(400)))

    assert all(table.get(_info(n).upload_id) == _info(n) for n in range(400))
    table.close()


def test_checkpoint_copies_rows_into_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infos_module, "CHECKPOINT_COMMITS", 10)
    path = tmp_path / "infos.sqlite3"
    executor = ThreadPoolExecutor(max_workers=1)
    table = InfoTable(path, executor)
    for number in range(10):
        table.put(_info(number))
    executor.shutdown(wait=True)  # the one worker ran the queued checkpoint

    # The database file alone, without its log, must hold every row.
    alone = tmp_path / "copy.sqlite3"
    shutil.copyfile(path, alone)
    with closing(sqlite3.connect(alone)) as db:
        count = db.execute("SELECT count(*) FROM upload_infos").fetchone()[0]
    assert count == 10
    table.close()


def test_rows_survive_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "infos.sqlite3"
    script = textwrap.dedent(
        f"""
        import os
        from concurrent.futures import ThreadPoolExecutor
        from boothsync.server.infos import InfoTable
        from boothsync.server.storage import UploadInfo
        table = InfoTable({str(path)!r}, ThreadPoolExecutor(max_workers=1))
        for number in range(50):
            table.put(UploadInfo(f"{{number:032x}}", number, {{}}))
        os._exit(0)  # no close, no checkpoint: as if the process was killed
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)

    table = InfoTable(path, ThreadPoolExecutor(max_workers=1))
    assert table.get(f"{49:032x}") == UploadInfo(f"{49:032x}", 49, {})
    assert len(table.expired(float("inf"))) == 50
    table.close()


def test_store_moves_old_info_files(tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    old = _info(7)
    (uploads / f"{old.upload_id}.info").write_text(json.dumps(vars(old)))
    (uploads / f"{old.upload_id}.bin").write_bytes(b"x" * 40)

    store = FileStore(tmp_path)

    assert store.get(old.upload_id) == old
    assert store.offset(old) == 40
    assert not (uploads / f"{old.upload_id}.info").exists()
    store.close()
    reopened = FileStore(tmp_path)
    assert reopened.get(old.upload_id) == old, "the moved info is in the table after a restart"
    reopened.close()


def test_store_keeps_unreadable_info_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    broken = uploads / f"{_info(8).upload_id}.info"
    broken.write_text('{"upload_id": "trunc')

    with caplog.at_level(logging.ERROR, logger="boothsync.server.infos"):
        store = FileStore(tmp_path)

    assert broken.exists()
    assert store.get(_info(8).upload_id) is None
    assert "unreadable info file" in caplog.text
    assert str(broken) in caplog.text
    store.close()


def test_store_close_closes_info_table(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.create(os.urandom(16).hex(), 10, {}, ttl_s=60)
    store.close()

    with pytest.raises(sqlite3.ProgrammingError):
        store.infos.get("0" * 32)
