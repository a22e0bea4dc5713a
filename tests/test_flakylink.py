"""Tests for the FlakyLink proxy against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from boothsync.flakylink import FlakyLink, FlakyLinkThread, LinkProfile

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
CHUNK = 64 * 1024
MIB = 1024 * 1024


def _payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


# Servers used as proxy targets


async def _start_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send back every byte, then close after the client's EOF."""
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@dataclass
class SinkRecord:
    """Byte count, digest and error of one connection to the sink server."""

    received: int = 0
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    error: BaseException | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class Sink:
    """Target server that reads everything and closes after EOF."""

    def __init__(self) -> None:
        self.records: list[SinkRecord] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = SinkRecord()
        self.records.append(record)
        try:
            while chunk := await reader.read(CHUNK):
                record.received += len(chunk)
                record.sha256.update(chunk)
        except ConnectionError as error:
            record.error = error
        finally:
            record.finished.set()
            writer.close()


def _source(size: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Return a handler that sends ``size`` bytes and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = _payload(size)
        for offset in range(0, size, CHUNK):
            writer.write(data[offset : offset + CHUNK])
            await writer.drain()
        writer.close()

    return handle


# Clients


async def _upload(port: int, data: bytes) -> float:
    """Send ``data``, half-close, wait for the server's EOF and return the elapsed seconds."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for offset in range(0, len(data), CHUNK):
            writer.write(data[offset : offset + CHUNK])
            await writer.drain()
        writer.write_eof()
        assert await reader.read() == b""
    finally:
        writer.close()
    return time.monotonic() - started


async def _echo_round_trip(port: int, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` while reading the echo and return the echo and the elapsed seconds."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)

    async def send() -> None:
        for offset in range(0, len(data), CHUNK):
            writer.write(data[offset : offset + CHUNK])
            await writer.drain()
        writer.write_eof()

    try:
        sender = asyncio.create_task(send())
        echoed = await reader.read()
        await sender
    finally:
        writer.close()
    return echoed, time.monotonic() - started


async def _ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"ping")
    await writer.drain()
    return await reader.readexactly(4)


# Pass-through and shaping


def test_passthrough_preserves_bytes() -> None:
    async def scenario() -> None:
        server, port = await _start_server(_echo)
        data = _payload(4 * MIB)
        async with server, FlakyLink(HOST, port, LinkProfile()) as link:
            echoed, _ = await _echo_round_trip(link.port, data)

        assert len(echoed) == len(data)
        assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(data).hexdigest()
        assert link.stats.connections == 1
        assert link.stats.bytes_up == len(data)
        assert link.stats.bytes_down == len(data)
        assert link.stats.drops == 0

    asyncio.run(scenario())


def test_rate_cap_upstream() -> None:
    async def scenario() -> None:
        sink = Sink()
        server, port = await _start_server(sink.handle)
        data = _payload(2 * MIB)
        async with server, FlakyLink(HOST, port, LinkProfile(rate_bytes_per_s=MIB)) as link:
            elapsed = await _upload(link.port, data)

        assert sink.records[0].received == len(data)
        assert sink.records[0].sha256.hexdigest() == hashlib.sha256(data).hexdigest()
        # 2 MiB at 1 MiB/s takes 2 s.
        assert 1.8 <= elapsed <= 2.5

    asyncio.run(scenario())


def test_rate_cap_shared_by_connections() -> None:
    async def scenario() -> None:
        sink = Sink()
        server, port = await _start_server(sink.handle)
        data = _payload(MIB)
        async with server, FlakyLink(HOST, port, LinkProfile(rate_bytes_per_s=2 * MIB)) as link:
            elapsed = await asyncio.gather(_upload(link.port, data), _upload(link.port, data))

        # Together 2 MiB at 2 MiB/s take 1 s. Each upload alone would take 0.5 s.
        assert min(elapsed) >= 0.75
        assert 0.85 <= max(elapsed) <= 1.35
        assert [record.received for record in sink.records] == [MIB, MIB]

    asyncio.run(scenario())


def test_rate_cap_downstream() -> None:
    async def scenario() -> None:
        server, port = await _start_server(_source(MIB))
        async with server, FlakyLink(HOST, port, LinkProfile(rate_bytes_per_s=2 * MIB)) as link:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection(HOST, link.port)
            received = await reader.read()
            elapsed = time.monotonic() - started
            writer.close()

        assert received == _payload(MIB)
        # 1 MiB at 2 MiB/s takes 0.5 s.
        assert 0.42 <= elapsed <= 0.75

    asyncio.run(scenario())


def test_latency_added_each_direction() -> None:
    async def scenario() -> None:
        server, port = await _start_server(_echo)
        async with server, FlakyLink(HOST, port, LinkProfile(latency_s=0.15)) as link:
            reader, writer = await asyncio.open_connection(HOST, link.port)
            started = time.monotonic()
            reply = await _ping(reader, writer)
            round_trip = time.monotonic() - started
            writer.close()

        assert reply == b"ping"
        assert 0.3 <= round_trip < 0.6

    asyncio.run(scenario())


def test_latency_keeps_throughput() -> None:
    async def scenario() -> None:
        server, port = await _start_server(_echo)
        data = _payload(2 * MIB)
        async with server, FlakyLink(HOST, port, LinkProfile(latency_s=0.15)) as link:
            echoed, elapsed = await _echo_round_trip(link.port, data)

        assert echoed == data
        # 32 chunks of 64 KiB, each delayed 0.3 s in turn, would take about 10 s.
        assert 0.3 <= elapsed < 1.0

    asyncio.run(scenario())


def test_slow_receiver_bounds_buffering() -> None:
    async def scenario() -> None:
        target_connected = asyncio.Event()
        release_target = asyncio.Event()

        async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            target_connected.set()
            await release_target.wait()
            writer.close()

        server, port = await _start_server(never_read)
        async with server, FlakyLink(HOST, port, LinkProfile()) as link:
            reader, writer = await asyncio.open_connection(HOST, link.port)
            await target_connected.wait()
            written = 0
            block = b"x" * MIB
            while written < 128 * MIB:
                writer.write(block)
                try:
                    await asyncio.wait_for(writer.drain(), 0.5)
                except TimeoutError:
                    break
                written += len(block)
            writer.transport.abort()
            release_target.set()

        # Socket buffers on both hops plus the proxy queue hold some MiB, depending on
        # the kernel's TCP buffer limits. An unbounded proxy would take all 128 MiB
        # in well under a second.
        assert written < 48 * MIB

    asyncio.run(scenario())


# Drops and blackouts


def test_drop_every_s_aborts_transfer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="boothsync.flakylink")

    async def scenario() -> None:
        sink = Sink()
        server, port = await _start_server(sink.handle)
        data = _payload(5 * MIB)
        profile = LinkProfile(rate_bytes_per_s=MIB, drop_every_s=0.5)
        async with server, FlakyLink(HOST, port, profile) as link:
            started = time.monotonic()
            with pytest.raises(ConnectionError):
                await _upload(link.port, data)
            elapsed = time.monotonic() - started
            await asyncio.wait_for(sink.records[0].finished.wait(), 2)

        assert 0.3 <= elapsed <= 1.0
        assert link.stats.drops == 1
        assert isinstance(sink.records[0].error, ConnectionResetError)
        assert 0 < sink.records[0].received < len(data)
        assert link.stats.bytes_up == sink.records[0].received

    asyncio.run(scenario())
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert any(message.startswith("Dropped connection 1 (drop_every_s)") for message in messages)


def test_drop_after_bytes_aborts_mid_stream(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="boothsync.flakylink")
    limit = 300_000

    async def scenario() -> None:
        sink = Sink()
        server, port = await _start_server(sink.handle)
        data = _payload(2 * MIB)
        async with server, FlakyLink(HOST, port, LinkProfile(drop_after_bytes=limit)) as link:
            with pytest.raises(ConnectionError):
                await _upload(link.port, data)
            await asyncio.wait_for(sink.records[0].finished.wait(), 2)

        assert link.stats.drops == 1
        assert link.stats.bytes_up == limit
        assert isinstance(sink.records[0].error, ConnectionResetError)
        # The RST may discard bytes still in the proxy's send buffer.
        assert 0 < sink.records[0].received <= limit
        assert sink.records[0].received < len(data)

    asyncio.run(scenario())
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert any(message.startswith("Dropped connection 1 (drop_after_bytes)") for message in messages)


def test_blackout_window_refuses_then_recovers() -> None:
    async def scenario() -> None:
        server, port = await _start_server(_echo)
        async with server, FlakyLink(HOST, port, LinkProfile(blackouts=[(0.0, 0.4)])) as link:
            reader, writer = await asyncio.open_connection(HOST, link.port)
            with pytest.raises(ConnectionResetError):
                await _ping(reader, writer)
            writer.close()
            assert link.stats.refused == 1
            assert link.stats.connections == 0

            await asyncio.sleep(0.5)
            reader, writer = await asyncio.open_connection(HOST, link.port)
            assert await _ping(reader, writer) == b"ping"
            writer.close()

        assert link.stats.connections == 1
        assert link.stats.refused == 1

    asyncio.run(scenario())


def test_adhoc_blackout_drops_open_connections() -> None:
    async def scenario() -> None:
        server, port = await _start_server(_echo)
        async with server, FlakyLink(HOST, port, LinkProfile()) as link:
            open_reader, open_writer = await asyncio.open_connection(HOST, link.port)
            assert await _ping(open_reader, open_writer) == b"ping"

            link.blackout(0.3)
            with pytest.raises(ConnectionResetError):
                await _ping(open_reader, open_writer)
            assert link.stats.drops == 1

            reader, writer = await asyncio.open_connection(HOST, link.port)
            with pytest.raises(ConnectionResetError):
                await _ping(reader, writer)
            writer.close()
            assert link.stats.refused == 1

            await asyncio.sleep(0.4)
            reader, writer = await asyncio.open_connection(HOST, link.port)
            assert await _ping(reader, writer) == b"ping"
            writer.close()
            open_writer.close()

        assert link.stats.connections == 2

    asyncio.run(scenario())


def test_stop_idempotent_and_resets_connections() -> None:
    async def scenario() -> None:
        server, port = await _start_server(_echo)
        async with server:
            link = FlakyLink(HOST, port, LinkProfile())
            await link.start()
            reader, writer = await asyncio.open_connection(HOST, link.port)
            assert await _ping(reader, writer) == b"ping"

            await link.stop()
            with pytest.raises(ConnectionResetError):
                await _ping(reader, writer)
            await link.stop()

            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(HOST, link.port)
            with pytest.raises(RuntimeError, match="already started"):
                await link.start()

        assert link.stats.drops == 0
        assert link.stats.connections == 1

    asyncio.run(scenario())


def test_unreachable_target_resets_client() -> None:
    async def scenario() -> None:
        # Bind and close a server so that its port is very likely unused.
        server, port = await _start_server(_echo)
        server.close()
        await server.wait_closed()
        async with FlakyLink(HOST, port, LinkProfile()) as link:
            reader, writer = await asyncio.open_connection(HOST, link.port)
            with pytest.raises(ConnectionResetError):
                await _ping(reader, writer)
            writer.close()

        assert link.stats.target_errors == 1
        assert link.stats.connections == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rate_bytes_per_s": 0}, "rate_bytes_per_s"),
        ({"latency_s": -0.1}, "latency_s"),
        ({"drop_every_s": float("nan")}, "drop_every_s"),
        ({"drop_after_bytes": 0}, "drop_after_bytes"),
        ({"blackouts": [(2.0, 1.0)]}, "start_s < end_s"),
        ({"blackouts": [(1.0,)]}, "pair"),
    ],
)
def test_profile_rejects_invalid_values(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinkProfile(**fields)  # type: ignore[arg-type]


# Background thread, driven from synchronous code against a real HTTP server


class PatchRecorder(BaseHTTPRequestHandler):
    """Respond to PATCH with 204 and record how many body bytes arrived."""

    bodies: list[int] = []

    def do_PATCH(self) -> None:
        length = int(self.headers["Content-Length"])
        received = self._read_body(length)
        self.bodies.append(received)
        if received == length:
            self.send_response(204)
            self.end_headers()

    def _read_body(self, length: int) -> int:
        """Read up to ``length`` body bytes and return how many arrived before EOF or a reset."""
        received = 0
        try:
            while received < length:
                chunk = self.rfile.read1(min(CHUNK, length - received))
                if not chunk:
                    break
                received += len(chunk)
        except ConnectionError:
            pass
        return received

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[int, list[int]]]:
    bodies: list[int] = []
    handler = type("Handler", (PatchRecorder,), {"bodies": bodies})
    server = ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1], bodies
    server.shutdown()
    server.server_close()
    thread.join()


def _patch(port: int, body: bytes) -> int:
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("PATCH", "/files/1", body=body)
        return connection.getresponse().status
    finally:
        connection.close()


def _wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met within timeout"
        time.sleep(0.01)


def test_thread_drops_mid_patch(http_server: tuple[int, list[int]]) -> None:
    server_port, bodies = http_server
    with FlakyLinkThread(HOST, server_port, LinkProfile()) as link:
        assert link.port != 0
        assert _patch(link.port, _payload(100_000)) == 204
        _wait_for(lambda: len(bodies) == 1)
        assert bodies == [100_000]

        link.set_profile(LinkProfile(drop_after_bytes=64 * 1024))
        with pytest.raises(ConnectionError):
            _patch(link.port, _payload(MIB))
        _wait_for(lambda: len(bodies) == 2)

        assert 0 < bodies[1] < MIB
        assert link.stats.drops == 1
        assert link.stats.connections == 2
    link.stop()


def test_thread_blackout_then_recovers(http_server: tuple[int, list[int]]) -> None:
    server_port, bodies = http_server
    link = FlakyLinkThread(HOST, server_port, LinkProfile())
    link.start()
    try:
        link.blackout(0.3)
        with pytest.raises(ConnectionError):
            _patch(link.port, b"during blackout")
        assert link.stats.refused == 1

        time.sleep(0.4)
        assert _patch(link.port, b"after blackout") == 204
        assert bodies == [len(b"after blackout")]
    finally:
        link.stop()
    link.stop()

    with pytest.raises(RuntimeError, match="FlakyLink is stopped"):
        link.blackout(1.0)
