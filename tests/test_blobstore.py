"""Tests for the device's content-addressed blob store, on real files."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from boothsync.agent import blockfile
from boothsync.agent.blobstore import (
    BLOCK_BYTES,
    RESERVE_CHECK_BYTES,
    Blob,
    BlobStore,
    BlobWriter,
    DiskReserveError,
)


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


# Streaming writes: blocks of BLOCK_BYTES, O_DIRECT, writer threads.


def _chunks(data: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    """Cut ``data`` into chunks whose sizes cycle through ``sizes``, so block edges fall inside chunks."""
    chunks = []
    position = 0
    index = 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        chunks.append(data[position:position + size])
        position += size
        index += 1
    return chunks


def _write_async(writer: BlobWriter, chunks: list[bytes]) -> None:
    async def feed() -> None:
        for chunk in chunks:
            await writer.write_async(chunk)

    asyncio.run(feed())


def _large_body() -> bytes:
    # Five full blocks and an unaligned tail.
    return os.urandom(5 * BLOCK_BYTES + 12_345)


def _store_large_body(store: BlobStore) -> tuple[bytes, bool, Blob]:
    """Store a large body through write_async; return it, whether O_DIRECT was in use, and the blob."""
    data = _large_body()
    writer = store.writer(len(data))
    _write_async(writer, _chunks(data, (65_536,)))
    used_direct = writer.direct
    return data, used_direct, writer.commit()


@pytest.mark.parametrize("direct", [True, False])
def test_write_async_large_body_intact(tmp_path: Path, direct: bool) -> None:
    data = _large_body()
    store = BlobStore(tmp_path / "blobs", direct=direct)
    writer = store.writer(len(data))

    _write_async(writer, _chunks(data, (65_536, 1, 100_003, 4096)))
    used_direct = writer.direct
    blob = writer.commit()

    assert used_direct is direct
    assert blob.size == len(data)
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert blob.path.read_bytes() == data
    assert list(store.tmp_dir.iterdir()) == []


def test_write_large_body_in_calling_thread(tmp_path: Path) -> None:
    data = _large_body()
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer()

    for chunk in _chunks(data, (300_000,)):
        writer.write(chunk)
    blob = writer.commit()

    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert blob.path.read_bytes() == data


def test_write_one_chunk_of_many_blocks(tmp_path: Path) -> None:
    data = _large_body()
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer()

    _write_async(writer, [data])
    blob = writer.commit()

    assert blob.path.read_bytes() == data


def test_write_async_small_body_stays_in_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A body under one block is written by commit alone: no writer thread, no O_DIRECT descriptor.
    data = b"receipt " * 10_000
    store = BlobStore(tmp_path / "blobs")

    def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("a small body must not be handed to a writer thread")

    monkeypatch.setattr(store.write_pool, "submit", no_thread)
    writer = store.writer(len(data))
    _write_async(writer, _chunks(data, (65_536,)))
    used_direct = writer.direct
    blob = writer.commit()

    assert used_direct is False
    assert blob.path.read_bytes() == data


def test_write_copies_changing_buffer(tmp_path: Path) -> None:
    # A caller may reuse its buffer after write returns.
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer()
    buffer = bytearray(b"a" * 1000)
    writer.write(buffer)
    buffer[:] = b"b" * 1000
    writer.write(buffer)

    blob = writer.commit()

    assert blob.path.read_bytes() == b"a" * 1000 + b"b" * 1000


def test_direct_open_rejected_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def open_without_direct(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(blockfile.os, "open", open_without_direct)
    store = BlobStore(tmp_path / "blobs")

    data, used_direct, blob = _store_large_body(store)

    assert used_direct is False
    assert blob.path.read_bytes() == data
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert store.direct is False


def test_direct_write_rejected_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Some file systems accept O_DIRECT at open and reject the write itself.
    real_open, real_pwrite = os.open, os.pwrite
    direct_fds: set[int] = set()

    def open_tracking(path: object, flags: int, *args: object) -> int:
        fd = real_open(path, flags, *args)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def pwrite_without_direct(fd: int, data: object, offset: int) -> int:
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(blockfile.os, "open", open_tracking)
    monkeypatch.setattr(blockfile.os, "pwrite", pwrite_without_direct)
    store = BlobStore(tmp_path / "blobs")

    data, used_direct, blob = _store_large_body(store)

    assert direct_fds, "the writer never tried O_DIRECT"
    assert used_direct is False
    assert blob.path.read_bytes() == data
    assert store.direct is False


def test_write_async_on_tmpfs(monkeypatch: pytest.MonkeyPatch) -> None:
    # Some kernels' tmpfs rejects O_DIRECT and others accept it. Either way the blob must be intact.
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm on this machine")
    root = Path(tempfile.mkdtemp(prefix="blobstore-test-", dir=shm))
    try:
        data = _large_body()
        store = BlobStore(root / "blobs")
        writer = store.writer(len(data))
        _write_async(writer, _chunks(data, (65_536, 7)))
        blob = writer.commit()

        assert blob.path.read_bytes() == data
        assert blob.sha256 == hashlib.sha256(data).hexdigest()
    finally:
        shutil.rmtree(root)


def test_abort_with_blocks_in_flight(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer()
    _write_async(writer, _chunks(os.urandom(3 * BLOCK_BYTES + 5), (65_536,)))

    writer.abort()

    assert list(store.tmp_dir.iterdir()) == []
    assert _blob_files(tmp_path / "blobs") == []


def test_failed_block_write_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(self: blockfile.BlockFile, view: memoryview, offset: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blockfile.BlockFile, "write_block", disk_full)
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer()

    with pytest.raises(OSError) as info:
        _write_async(writer, _chunks(os.urandom(4 * BLOCK_BYTES), (65_536,)))
        writer.commit()

    assert info.value.errno == errno.ENOSPC
    writer.abort()
    assert list(store.tmp_dir.iterdir()) == []
    assert _blob_files(tmp_path / "blobs") == []


def test_body_past_declared_size_checks_reserve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "blobs", reserve_bytes=1000)
    writer = store.writer(expected_size=None)
    monkeypatch.setattr(store, "free_bytes", lambda: 10)

    with pytest.raises(DiskReserveError):
        _write_async(writer, _chunks(bytes(RESERVE_CHECK_BYTES + BLOCK_BYTES), (65_536,)))

    writer.abort()
    assert list(store.tmp_dir.iterdir()) == []


def test_body_within_declared_size_skips_reserve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The reserve was checked for the declared size before the body started.
    data = os.urandom(3 * BLOCK_BYTES)
    store = BlobStore(tmp_path / "blobs", reserve_bytes=1000)
    writer = store.writer(expected_size=len(data))
    monkeypatch.setattr(store, "free_bytes", lambda: 10)

    _write_async(writer, _chunks(data, (65_536,)))
    blob = writer.commit()

    assert blob.path.read_bytes() == data
