"""The file store's write path: page cache and O_DIRECT writes, cut bodies, refusals and failed writes."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from boothsync.config import ServerSettings
from boothsync.server import bodywriter
from boothsync.server.app import build_app
from boothsync.server.storage import BlockChecksums, BodyCutShortError, BodyTooLongError, Checksum, ChecksumMismatchError
from boothsync.server.store import FileStore

MIB = 1024 * 1024


def random_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


async def chunks_of(data: bytes, seed: int = 3, fail_after: int | None = None) -> AsyncIterator[bytes]:
    """Yield ``data`` in chunks of random sizes; raise ConnectionResetError after ``fail_after`` bytes."""
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        step = rng.randint(1, 200_000)
        if fail_after is not None and position + step > fail_after:
            yield data[position:fail_after]
            raise ConnectionResetError("client went away")
        yield data[position: position + step]
        position += step


def new_upload(store: FileStore, length: int):
    return store.create(os.urandom(16).hex(), length, {}, ttl_s=60)


def append(store: FileStore, info, offset: int, data: bytes, *, expected: int | None = None, **kwargs) -> int:
    body = kwargs.pop("body", None) or chunks_of(data)
    return asyncio.run(store.append(info, offset, body, info.length - offset, kwargs.pop("checksum", None),
                                    expected_bytes=len(data) if expected is None else expected, **kwargs))


def stored(store: FileStore, info) -> bytes:
    return Path(store.data_path(info)).read_bytes()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileStore:
    store = FileStore(tmp_path / "store")
    # Every large body takes the direct path, whatever this machine's disk
    # test would choose; test_writepath.py covers that choice.
    monkeypatch.setattr(store.direct.chooser, "choose", lambda: True)
    return store


def test_direct_write_at_unaligned_offsets(store: FileStore) -> None:
    data = random_bytes(5 * MIB + 12_345)
    info = new_upload(store, len(data))
    cuts = [0, 1_000, 1_000 + 3 * MIB + 7, len(data)]
    for start, end in zip(cuts, cuts[1:]):
        assert append(store, info, start, data[start:end]) == end - start
    assert store.direct.enabled
    assert stored(store, info) == data


def test_direct_write_used_for_large_bodies(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = store.direct.open
    monkeypatch.setattr(store.direct, "open", lambda path: opened.append(path) or real_open(path))
    data = random_bytes(2 * MIB)
    info = new_upload(store, len(data) + 100)
    append(store, info, 0, data[:100])
    append(store, info, 100, data[100:])
    assert len(opened) == 1, "only the body of at least DIRECT_MIN_BYTES is written with O_DIRECT"


def test_body_without_length_uses_page_cache(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.direct, "open", lambda path: pytest.fail("direct write without Content-Length"))
    data = random_bytes(3 * MIB)
    info = new_upload(store, len(data))
    assert asyncio.run(store.append(info, 0, chunks_of(data), len(data), None)) == len(data)
    assert stored(store, info) == data


def test_sha256_tracked_through_direct_writes(store: FileStore) -> None:
    data = random_bytes(3 * MIB + 5)
    info = new_upload(store, len(data))
    append(store, info, 0, data[:MIB + 1], track_sha256=True)
    append(store, info, MIB + 1, data[MIB + 1:], track_sha256=True)
    assert store.sha256(info) == hashlib.sha256(data).hexdigest()


def test_cut_body_keeps_exact_prefix(store: FileStore) -> None:
    data = random_bytes(4 * MIB)
    info = new_upload(store, len(data))
    append(store, info, 0, data[:777])
    cut_at = 2 * MIB + 4097
    with pytest.raises(BodyCutShortError) as caught:
        append(store, info, 777, data[777:], body=chunks_of(data[777:], fail_after=cut_at))
    assert caught.value.kept == cut_at
    assert store.offset(info) == 777 + cut_at
    assert stored(store, info) == data[: 777 + cut_at]


def test_body_too_long_keeps_nothing(store: FileStore) -> None:
    data = random_bytes(2 * MIB)
    info = new_upload(store, MIB + 10)
    append(store, info, 0, data[:10])
    with pytest.raises(BodyTooLongError):
        asyncio.run(store.append(info, 10, chunks_of(data), MIB, None, expected_bytes=len(data)))
    assert store.offset(info) == 10
    assert stored(store, info) == data[:10]


def test_checksummed_body_is_exact(store: FileStore) -> None:
    data = random_bytes(2 * MIB + 3)
    info = new_upload(store, len(data))
    good = Checksum("sha256", hashlib.sha256(data).digest())
    bad = Checksum("sha256", hashlib.sha256(b"other").digest())
    with pytest.raises(ChecksumMismatchError):
        append(store, info, 0, data, checksum=bad)
    assert store.offset(info) == 0
    assert append(store, info, 0, data, checksum=good) == len(data)
    assert stored(store, info) == data


def test_open_rejected_falls_back(store: FileStore, reject_o_direct: None, caplog: pytest.LogCaptureFixture) -> None:
    data = random_bytes(3 * MIB + 1)
    info = new_upload(store, len(data))
    with caplog.at_level(logging.WARNING, logger="boothsync.server.store"):
        append(store, info, 0, data)
    assert not store.direct.enabled
    assert "O_DIRECT rejected" in caplog.text
    assert stored(store, info) == data


def test_write_rejected_falls_back(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite
    direct_fds: set[int] = set()
    real_open = store.direct.open

    def remember(path):
        fd = real_open(path)
        direct_fds.add(fd)
        return fd

    def reject_direct(fd, data, offset):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(store.direct, "open", remember)
    monkeypatch.setattr(bodywriter.os, "pwrite", reject_direct)
    data = random_bytes(3 * MIB)
    info = new_upload(store, len(data))
    append(store, info, 0, data)
    assert direct_fds, "the body was large enough for a direct write"
    assert not store.direct.enabled
    assert stored(store, info) == data


def test_failed_write_leaves_no_hole(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite
    calls = 0

    def fail_second(fd, data, offset):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(bodywriter.os, "pwrite", fail_second)
    data = random_bytes(4 * MIB)
    info = new_upload(store, len(data))
    with pytest.raises(OSError) as caught:
        append(store, info, 0, data)
    assert caught.value.errno == errno.ENOSPC
    on_disk = stored(store, info)
    assert len(on_disk) == bodywriter.DIRECT_BUFFER_BYTES, "only the write before the failed one is kept"
    assert on_disk == data[: len(on_disk)]
    assert store.offset(info) == len(on_disk)


def disk_full(fd, data, offset):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_returns_507(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = build_app(ServerSettings(data_dir=tmp_path / "server"))
    tus = {"Tus-Resumable": "1.0.0"}

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server.test") as client:
            created = await client.post("/files/", headers={**tus, "Upload-Length": str(2 * MIB)})
            assert created.status_code == 201
            monkeypatch.setattr(bodywriter.os, "pwrite", disk_full)
            patched = await client.patch(
                created.headers["location"], content=random_bytes(MIB),
                headers={**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
            )
            monkeypatch.undo()
            head = await client.head(created.headers["location"], headers=tus)
            return patched, head

    patched, head = asyncio.run(scenario())
    assert patched.status_code == 507
    assert "disk is full" in patched.text
    assert head.headers["upload-offset"] == "0"


def test_full_disk_draft_returns_507(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = build_app(ServerSettings(data_dir=tmp_path / "server"))
    draft = {"Upload-Draft-Interop-Version": "8"}

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server.test") as client:
            created = await client.post("/files/", headers={**draft, "Upload-Complete": "?0"})
            assert created.status_code == 201
            monkeypatch.setattr(bodywriter.os, "pwrite", disk_full)
            appended = await client.patch(
                created.headers["location"], content=random_bytes(MIB),
                headers={**draft, "Upload-Complete": "?1", "Upload-Offset": "0",
                         "Content-Type": "application/partial-upload"},
            )
            monkeypatch.undo()
            head = await client.head(created.headers["location"], headers=draft)
            return appended, head

    appended, head = asyncio.run(scenario())
    assert appended.status_code == 507
    assert appended.headers["upload-offset"] == "0"
    assert head.headers["upload-offset"] == "0"


def blocks_of(data: bytes, size: int) -> BlockChecksums:
    digests = [hashlib.sha256(data[start: start + size]).digest() for start in range(0, len(data), size)]
    return BlockChecksums(size, digests)


@pytest.mark.parametrize("cut_at", [0, 4_095, 4_096, 150_000, 262_144])
def test_cut_body_keeps_checked_blocks(store: FileStore, cut_at: int) -> None:
    data = random_bytes(300_000)
    info = new_upload(store, len(data))
    checksum = Checksum("sha256", hashlib.sha256(data).digest())
    with pytest.raises(BodyCutShortError) as caught:
        asyncio.run(store.append(info, 0, chunks_of(data, fail_after=cut_at), len(data), checksum,
                                 track_sha256=True, blocks=blocks_of(data, 4_096)))
    kept = cut_at - cut_at % 4_096
    assert caught.value.kept == kept
    assert stored(store, info) == data[:kept]
    rest = data[kept:]
    asyncio.run(store.append(info, kept, chunks_of(rest), len(rest), Checksum("sha256", hashlib.sha256(rest).digest()),
                             track_sha256=True))
    assert store.sha256(info) == hashlib.sha256(data).hexdigest()


def test_cancelled_append_keeps_exact_prefix(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite

    def slow_pwrite(fd, data, offset):
        time.sleep(0.05)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(bodywriter.os, "pwrite", slow_pwrite)
    data = random_bytes(6 * MIB)
    info = new_upload(store, len(data))

    async def scenario() -> None:
        task = asyncio.create_task(store.append(info, 0, chunks_of(data), len(data), None, expected_bytes=len(data)))
        await asyncio.sleep(0.12)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    on_disk = stored(store, info)
    assert 0 < len(on_disk) < len(data)
    assert on_disk == data[: len(on_disk)], "no hole and no bytes from a reused buffer"
