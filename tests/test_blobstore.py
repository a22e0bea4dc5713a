"""Tests for the device's content-addressed blob store, on real files."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from boothsync.agent.blobstore import BlobStore, DiskReserveError


def _source(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "incoming" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _blob_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp")


def test_put_file_content_address(tmp_path: Path) -> None:
    data = b"receipt bytes\n" * 1000
    sha256 = hashlib.sha256(data).hexdigest()
    store = BlobStore(tmp_path / "blobs")

    blob = store.put_file(_source(tmp_path, "r.jpg", data))

    assert blob.sha256 == sha256
    assert blob.size == len(data)
    assert blob.path == tmp_path / "blobs" / sha256[:2] / sha256
    assert blob.path.read_bytes() == data


def test_put_file_larger_than_one_block(tmp_path: Path) -> None:
    # put_file copies in 1 MiB blocks, so 2.5 MiB crosses two block edges.
    data = bytes(range(256)) * (10 * 1024)
    store = BlobStore(tmp_path / "blobs")

    blob = store.put_file(_source(tmp_path, "video.mov", data))

    assert blob.size == len(data)
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert blob.path.read_bytes() == data


def test_put_file_empty(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")

    blob = store.put_file(_source(tmp_path, "empty.txt", b""))

    assert blob.size == 0
    assert blob.sha256 == hashlib.sha256(b"").hexdigest()
    assert blob.path.is_file()


def test_put_file_same_bytes_stored_once(tmp_path: Path) -> None:
    data = b"the same consent form"
    store = BlobStore(tmp_path / "blobs")

    first = store.put_file(_source(tmp_path, "a.pdf", data))
    second = store.put_file(_source(tmp_path, "b.pdf", data))

    assert first.path == second.path
    assert _blob_files(tmp_path / "blobs") == [first.path]


def test_put_file_leaves_no_temp_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    store.put_file(_source(tmp_path, "a.pdf", b"one"))
    store.put_file(_source(tmp_path, "b.pdf", b"one"))

    assert list(store.tmp_dir.iterdir()) == []


def test_put_file_missing_source(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")

    with pytest.raises(FileNotFoundError):
        store.put_file(tmp_path / "absent.jpg")

    assert list(store.tmp_dir.iterdir()) == []


def test_path_for_layout(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha256 = "ab" + "0" * 62

    assert store.path_for(sha256) == tmp_path / "blobs" / "ab" / sha256


def test_writer_commit(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer()
    writer.write(b"part one, ")
    writer.write(b"part two")

    blob = writer.commit()

    assert blob.size == 18
    assert blob.path.read_bytes() == b"part one, part two"
    assert blob.sha256 == hashlib.sha256(b"part one, part two").hexdigest()


def test_writer_abort_removes_temp(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer()
    writer.write(b"half a capture")

    writer.abort()

    assert list(store.tmp_dir.iterdir()) == []
    assert _blob_files(tmp_path / "blobs") == []


def test_open_removes_leftover_temp(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    (root / "tmp").mkdir(parents=True)
    (root / "tmp" / "0f1e2d3c").write_bytes(b"from a crash")
    (root / "tmp" / "4b5a6978").write_bytes(b"")

    store = BlobStore(root)

    assert list(store.tmp_dir.iterdir()) == []


def test_open_keeps_committed_blobs(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    blob = BlobStore(root).put_file(_source(tmp_path, "r.jpg", b"kept"))

    BlobStore(root)

    assert blob.path.read_bytes() == b"kept"


def test_check_reserve_huge_raises(tmp_path: Path) -> None:
    reserve = 10**18
    store = BlobStore(tmp_path / "blobs", reserve_bytes=reserve)
    free = shutil.disk_usage(tmp_path).free

    with pytest.raises(DiskReserveError) as info:
        store.check_reserve()

    message = str(info.value)
    assert f"{reserve} must stay free" in message
    match = re.search(r"only (\d+) bytes free", message)
    assert match is not None, message
    # Free space may change a little between the two readings.
    assert abs(int(match.group(1)) - free) < 64 * 1024 * 1024


def test_check_reserve_zero_passes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", reserve_bytes=0)

    store.check_reserve()
    store.check_reserve(1024)


def test_check_reserve_counts_incoming(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", reserve_bytes=0)
    incoming = store.free_bytes() + 10**15

    with pytest.raises(DiskReserveError) as info:
        store.check_reserve(incoming)

    assert f"{incoming} bytes incoming" in str(info.value)


def test_free_bytes_matches_disk_usage(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")

    assert abs(store.free_bytes() - shutil.disk_usage(tmp_path).free) < 64 * 1024 * 1024
