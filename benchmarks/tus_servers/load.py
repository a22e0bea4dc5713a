"""Load client for the tus benchmark: uploads over raw asyncio streams.

Usage: python load.py --port PORT --case {a,b,c,d,warmup} [--host 127.0.0.1]

Each worker keeps one HTTP/1.1 keep-alive connection and runs whole uploads
on it: a POST that creates the upload (no body), then PATCH requests of at
most the case's chunk size. Every response status and every returned
``Upload-Offset`` is checked, and each mismatch or connection error counts
as an error. The request bodies are slices of one random buffer made at
start, so the client spends no CPU on data while it is timed.

The result is one JSON object on standard output. A run is valid only when
``errors`` is 0 and ``uploads_ok`` equals ``uploads``. The client uses
uvloop when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# tuspyserver 4.4 returns 400 to HEAD unless an upload has both of these.
METADATA = "filename " + base64.b64encode(b"bench.bin").decode() + ",filetype " + base64.b64encode(b"application/octet-stream").decode()

RESPONSE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Load:
    """One batch of uploads of one size, run by ``concurrency`` workers."""

    uploads: int
    size: int
    chunk: int
    concurrency: int


@dataclass(frozen=True)
class Case:
    """A named benchmark load and the unit its throughput is reported in."""

    title: str
    unit: str  # "MB/s" (10**6 bytes per second) or "uploads/s"
    loads: tuple[Load, ...]


CASES: dict[str, Case] = {
    "a": Case("1 × 1 GiB in 8 MiB PATCHes", "MB/s", (Load(uploads=1, size=GIB, chunk=8 * MIB, concurrency=1),)),
    "b": Case("1 × 1 GiB in 1 MiB PATCHes", "MB/s", (Load(uploads=1, size=GIB, chunk=1 * MIB, concurrency=1),)),
    "c": Case("32 × 32 MiB at once in 8 MiB PATCHes", "MB/s", (Load(uploads=32, size=32 * MIB, chunk=8 * MIB, concurrency=32),)),
    "d": Case("2,000 × 50 KB, 16 in flight, POST + 1 PATCH each", "uploads/s", (Load(uploads=2000, size=50_000, chunk=50_000, concurrency=16),)),
    # A few uploads of each kind after a server starts, so that imports,
    # JIT compilation and first-file costs fall outside the timed run. No
    # size matches a timed case's, so the warm-up's files can stay in the
    # store and the count of stored uploads stays exact.
    "warmup": Case(
        "warm-up",
        "uploads/s",
        (
            Load(uploads=32, size=49_999, chunk=49_999, concurrency=4),
            Load(uploads=2, size=16 * MIB, chunk=8 * MIB, concurrency=2),
            Load(uploads=1, size=4 * MIB, chunk=1 * MIB, concurrency=1),
        ),
    ),
}


class ResponseError(Exception):
    """Raised when a response has an unexpected status or header."""


@dataclass
class Response:
    """Status line and header fields of a response whose body was read and dropped."""

    status: int
    headers: dict[str, str]
    keep_alive: bool


class Connection:
    """One HTTP/1.1 keep-alive connection that sends one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.host_header = f"{host}:{port}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: list[tuple[str, str]], body: memoryview | None = None) -> Response:
        """Send one request and read its whole response, reconnecting first if the server closed the connection."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=256 * KIB)
        length = len(body) if body is not None else 0
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}", f"Content-Length: {length}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.writer.write(head)
            if body is not None:
                self.writer.write(body)
            await self.writer.drain()
            response = await asyncio.wait_for(self._read_response(method), RESPONSE_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        if not response.keep_alive:
            self.close()
        return response

    async def _read_response(self, method: str) -> Response:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = raw.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"

        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return Response(status, headers, keep_alive)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await self._skip_chunked_body()
        elif "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        else:
            # Without a length the body ends when the server closes.
            await self.reader.read()
            keep_alive = False
        return Response(status, headers, keep_alive)

    async def _skip_chunked_body(self) -> None:
        assert self.reader is not None
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Trailer fields, if any, end with an empty line.
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            await self.reader.readexactly(size + 2)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Uploader:
    """Runs the uploads of one load and counts successes, bytes and errors."""

    def __init__(self, host: str, port: int, path: str, payload: memoryview) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.payload = payload
        self.errors: Counter[str] = Counter()
        self.uploads_ok = 0
        self.bytes_ok = 0
        self.requests = 0

    async def run(self, load: Load) -> None:
        """Run ``load.uploads`` uploads with ``load.concurrency`` connections."""
        next_index = iter(range(load.uploads))
        workers = [self._worker(load, next_index) for _ in range(min(load.concurrency, load.uploads))]
        await asyncio.gather(*workers)

    async def _worker(self, load: Load, next_index: Iterator[int]) -> None:
        connection = Connection(self.host, self.port)
        try:
            for _ in next_index:
                try:
                    await self._upload(connection, load)
                except ResponseError as exc:
                    self.errors[str(exc)] += 1
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError) as exc:
                    self.errors[f"{type(exc).__name__} on {self.path}"] += 1
        finally:
            connection.close()

    async def _upload(self, connection: Connection, load: Load) -> None:
        create_headers = [
            ("Tus-Resumable", TUS_VERSION),
            ("Upload-Length", str(load.size)),
            ("Upload-Metadata", METADATA),
        ]
        self.requests += 1
        created = await connection.request("POST", self.path, create_headers)
        if created.status != 201:
            raise ResponseError(f"POST returned {created.status}, expected 201")
        location = created.headers.get("location")
        if not location:
            raise ResponseError("POST returned 201 without a Location header")
        upload_path = urlsplit(location).path

        offset = 0
        while offset < load.size:
            length = min(load.chunk, load.size - offset)
            patch_headers = [
                ("Tus-Resumable", TUS_VERSION),
                ("Upload-Offset", str(offset)),
                ("Content-Type", OFFSET_CONTENT_TYPE),
            ]
            self.requests += 1
            patched = await connection.request("PATCH", upload_path, patch_headers, self.payload[:length])
            if patched.status != 204:
                raise ResponseError(f"PATCH returned {patched.status}, expected 204")
            returned = patched.headers.get("upload-offset")
            if returned != str(offset + length):
                raise ResponseError(f"PATCH returned Upload-Offset {returned}, expected {offset + length}")
            offset += length
        self.uploads_ok += 1
        self.bytes_ok += load.size


async def run_case(host: str, port: int, path: str, loads: tuple[Load, ...]) -> dict:
    """Run the loads one after another and return the measurements as a dict."""
    payload = memoryview(os.urandom(max(load.chunk for load in loads)))
    uploader = Uploader(host, port, path, payload)
    cpu_start = _cpu_seconds()
    started = time.perf_counter()
    for load in loads:
        await uploader.run(load)
    elapsed = time.perf_counter() - started
    uploads = sum(load.uploads for load in loads)
    return {
        "uploads": uploads,
        "uploads_ok": uploader.uploads_ok,
        "bytes_ok": uploader.bytes_ok,
        "requests": uploader.requests,
        "elapsed_s": elapsed,
        "mb_per_s": uploader.bytes_ok / elapsed / 1e6,
        "uploads_per_s": uploader.uploads_ok / elapsed,
        "errors": sum(uploader.errors.values()),
        "error_kinds": dict(uploader.errors),
        "client_cpu_s": _cpu_seconds() - cpu_start,
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one benchmark case against a tus server and print the result as JSON.")
    parser.add_argument("--case", required=True, choices=sorted(CASES), help="Which load to run.")
    parser.add_argument("--port", type=int, required=True, help="Port of the tus server.")
    parser.add_argument("--host", default="127.0.0.1", help="Address of the tus server (default: 127.0.0.1).")
    parser.add_argument("--path", default="/files/", help="Path of the upload collection (default: /files/).")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds after which the run stops and fails (default: 900).")
    args = parser.parse_args()

    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run

    async def bounded() -> dict:
        return await asyncio.wait_for(run_case(args.host, args.port, args.path, CASES[args.case].loads), args.timeout)

    try:
        result = runner(bounded())
    except asyncio.TimeoutError:
        print(f"case {args.case} timed out after {args.timeout} s", file=sys.stderr)
        sys.exit(1)
    result["case"] = args.case
    print(json.dumps(result))


if __name__ == "__main__":
    main()
