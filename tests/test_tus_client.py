"""The agent's tus client against a real boothsync server: creation with and without a body."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from conftest import Server

from boothsync.tus.client import ChecksumMismatchError, TusClient

METADATA = {"filename": "form.pdf", "filetype": "application/pdf"}

T = TypeVar("T")


def filed_uploads(server: Server) -> list[Path]:
    """Return the files the server filed for plain tus uploads."""
    return sorted(p for p in (server.data / "files" / "_uploads").rglob("*") if p.is_file())


def run_client(server: Server, steps: Callable[[TusClient], Awaitable[T]]) -> T:
    """Run ``steps`` with a TusClient for the server's /files/ endpoint."""
    async def main() -> T:
        async with httpx.AsyncClient(timeout=30) as http:
            return await steps(TusClient(http, server.url + "/files/"))

    return asyncio.run(main())


def test_create_with_whole_body(server: Server) -> None:
    data = os.urandom(50_000)

    async def steps(tus: TusClient) -> tuple[str, int, int]:
        url, offset = await tus.create(len(data), METADATA, data, checksum="sha256")
        return url, offset, await tus.offset(url)

    url, offset, head = run_client(server, steps)

    assert offset == len(data)
    assert head == len(data)
    filed = filed_uploads(server)
    assert [p.name for p in filed] == [url.rsplit("/", 1)[-1]]
    assert hashlib.sha256(filed[0].read_bytes()).digest() == hashlib.sha256(data).digest()


def test_create_with_first_bytes_then_patch(server: Server) -> None:
    data = os.urandom(80_000)

    async def steps(tus: TusClient) -> tuple[int, int]:
        url, offset = await tus.create(len(data), METADATA, data[:30_000], checksum="sha256")
        final = await tus.patch(url, offset, data[offset:], checksum="sha256")
        return offset, final

    offset, final = run_client(server, steps)

    assert offset == 30_000
    assert final == len(data)
    filed = filed_uploads(server)
    assert len(filed) == 1
    assert filed[0].read_bytes() == data


def test_create_without_body(server: Server) -> None:
    async def steps(tus: TusClient) -> tuple[str, int, int]:
        url, offset = await tus.create(1000, METADATA)
        return url, offset, await tus.offset(url)

    _, offset, head = run_client(server, steps)

    assert offset == 0
    assert head == 0


def test_create_with_wrong_checksum(server: Server) -> None:
    data = os.urandom(10_000)

    async def corrupt(tus: TusClient) -> None:
        original = tus.http.send

        async def send(request: httpx.Request, **kwargs: Any) -> httpx.Response:
            # Keep the headers, Upload-Checksum included, but send other bytes.
            swapped = httpx.Request(request.method, request.url, headers=request.headers, content=os.urandom(len(data)))
            return await original(swapped, **kwargs)

        tus.http.send = send  # type: ignore[method-assign]
        await tus.create(len(data), METADATA, data, checksum="sha256")

    with pytest.raises(ChecksumMismatchError):
        run_client(server, corrupt)

    assert filed_uploads(server) == []
    assert server.metric("boothsync_server_checksum_mismatches") == 1


@pytest.mark.parametrize("block_size", [4_096, 65_536, 10_000_000])
def test_patch_with_block_checksums(server: Server, block_size: int) -> None:
    data = os.urandom(3_000_000)

    async def steps(tus: TusClient) -> int:
        url, _ = await tus.create(len(data), METADATA)
        middle = await tus.patch(url, 0, data[:1_000_000], checksum="sha256", block_size=block_size)
        assert middle == 1_000_000
        return await tus.patch(url, middle, data[middle:], checksum="sha256", block_size=block_size)

    assert run_client(server, steps) == len(data)
    filed = filed_uploads(server)
    assert hashlib.sha256(filed[0].read_bytes()).digest() == hashlib.sha256(data).digest()
