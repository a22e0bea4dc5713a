"""The file store's upload infos: kept on disk, read through a bounded in-memory copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from boothsync.server import store as store_module
from boothsync.server.store import FileStore


def new_id() -> str:
    return os.urandom(16).hex()


def test_changed_info_needs_save(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    info = store.create(new_id(), 100, {"filename": "a.jpg"}, ttl_s=60)
    loaded = store.get(info.upload_id)
    loaded.length = 5
    assert store.get(info.upload_id).length == 100, "a change that was not saved stays out of the store"
    store.declare_length(loaded, 7)
    assert store.get(info.upload_id).length == 7
    assert FileStore(tmp_path).get(info.upload_id).length == 7, "the saved change is on disk"


def test_deleted_upload_is_gone(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    info = store.create(new_id(), 100, {}, ttl_s=60)
    store.delete(info.upload_id)
    assert store.get(info.upload_id) is None
    assert not any(name.startswith(info.upload_id) for name in os.listdir(store.uploads))


def test_info_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "INFO_CACHE_ENTRIES", 10)
    store = FileStore(tmp_path)
    infos = [store.create(new_id(), n, {}, ttl_s=60) for n in range(30)]
    assert len(store._info_cache) == 10
    assert [store.get(info.upload_id).length for info in infos] == list(range(30)), "evicted infos are read from the info table"
    assert len(store._info_cache) == 10
