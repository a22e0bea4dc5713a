"""Spare files: the reserve that lets a request rename a file instead of creating one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from boothsync.server.spares import PREFIX, SpareFiles
from boothsync.server.store import FileStore


def wait_for(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def spare_names(directory: Path) -> set[str]:
    return {name for name in os.listdir(directory) if name.startswith(PREFIX)}


def test_take_returns_new_empty_files(tmp_path: Path) -> None:
    spares = SpareFiles(str(tmp_path), reserve=8)
    taken = [spares.take() for _ in range(20)]
    assert len(set(taken)) == 20
    for path in taken:
        assert os.path.getsize(path) == 0
    spares.close()


def test_reserve_refills_in_background(tmp_path: Path) -> None:
    spares = SpareFiles(str(tmp_path), reserve=16)
    spares.take()
    assert wait_for(lambda: len(spare_names(tmp_path)) >= 17), "the reserve plus the taken file"
    spares.close()


def test_close_deletes_unused_spares(tmp_path: Path) -> None:
    spares = SpareFiles(str(tmp_path), reserve=16)
    kept = spares.take()
    assert wait_for(lambda: len(spare_names(tmp_path)) >= 17)
    spares.close()
    assert spare_names(tmp_path) == {os.path.basename(kept)}


def test_leftovers_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / f"{PREFIX}0123456789abcdef").write_bytes(b"")
    (tmp_path / "abc.info").write_bytes(b"{}")
    SpareFiles(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["abc.info"]


def test_take_fails_when_directory_gone(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    spares = SpareFiles(str(directory), reserve=4)
    directory.rmdir()
    with pytest.raises(FileNotFoundError):
        spares.take()
    spares.close()


def test_store_uses_spares(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "server")
    infos = [store.create(os.urandom(16).hex(), 10, {"filename": "a"}, ttl_s=60) for _ in range(50)]
    for info in infos:
        assert store.get(info.upload_id) == info
        assert store.offset(info) == 0
    uploads = store.uploads
    names = os.listdir(uploads)
    assert sum(name.endswith(".bin") for name in names) == 50
    store.close()
    assert not spare_names(uploads), "close() deletes the unused spares"
    restarted = FileStore(tmp_path / "server")
    assert all(restarted.get(info.upload_id) == info for info in infos)
    restarted.close()


def test_store_survives_deleted_spares(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "server")
    store.create(new_upload_id(), 10, {}, ttl_s=60)
    assert wait_for(lambda: len(spare_names(store.uploads)) > 0)
    for name in spare_names(store.uploads):
        os.unlink(store.uploads / name)
    info = store.create(new_upload_id(), 10, {"filename": "b"}, ttl_s=60)
    assert FileStore(tmp_path / "server").get(info.upload_id) == info
    store.close()


def new_upload_id() -> str:
    return os.urandom(16).hex()
