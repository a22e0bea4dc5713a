"""Simulate a bad pop-up network with an asyncio TCP proxy.

A FlakyLink listens on a local port and forwards every connection to one target.
On the way it applies a LinkProfile: a bandwidth cap, one-way latency, connection
drops and blackout windows. It does in user space what the kernel's netem would do,
so the tests and ``boothsync demo`` need no root privileges.

Each direction of a connection runs as two tasks. The read task takes a chunk from
the source, waits for the shared token bucket and puts the chunk with its delivery
time into a bounded queue. The write task waits until that time, writes the chunk
and awaits ``drain()``. Latency therefore delays data without limiting throughput,
and a receiver that stops reading stalls the sender through the full queue.

Drops reset both sockets (SO_LINGER 0, then ``transport.abort()``), so each peer
gets a TCP RST, even in the middle of a request body.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

logger = logging.getLogger("boothsync.flakylink")

_T = TypeVar("_T")

READ_CHUNK_BYTES = 64 * 1024
# Bytes that one direction of one connection may hold between its read and write
# tasks. The queue accepts a chunk while it holds less, so it may exceed this by
# one READ_CHUNK_BYTES chunk.
# NOTE: this caps one connection's throughput at about QUEUE_MAX_BYTES / latency_s
# per direction, for example 8 MiB/s at 0.5 s latency.
QUEUE_MAX_BYTES = 4 * 1024 * 1024
# Budget that an idle direction may save up and then send at full speed.
BURST_SECONDS = 0.05
# A rate-limited chunk is split into pieces of about this much send time, so a low
# rate yields a steady trickle instead of rare 64 KiB bursts.
PIECE_SECONDS = 0.01
MIN_PIECE_BYTES = 1024
CONNECT_TIMEOUT_S = 5.0
THREAD_CALL_TIMEOUT_S = 10.0


@dataclass
class LinkProfile:
    """Network conditions that a FlakyLink applies. Times are in seconds."""

    rate_bytes_per_s: float | None = None
    """Bandwidth cap per direction, shared by all connections. None means unlimited."""
    latency_s: float = 0.0
    """One-way delay added to the data of each direction."""
    drop_every_s: float | None = None
    """Period in link time at which every open connection is reset. None means never."""
    drop_after_bytes: int | None = None
    """Upstream (client to target) bytes after which a connection is reset. None means never."""
    blackouts: list[tuple[float, float]] = field(default_factory=list)
    """Windows of (start_s, end_s) in link time during which connections are reset."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError if a field is out of range."""
        rate = self.rate_bytes_per_s
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate_bytes_per_s must be a positive number or None, got {rate!r}")
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise ValueError(f"latency_s must be a finite number >= 0, got {self.latency_s!r}")
        every = self.drop_every_s
        if every is not None and not (every > 0 and math.isfinite(every)):
            raise ValueError(f"drop_every_s must be a positive number or None, got {every!r}")
        limit = self.drop_after_bytes
        if limit is not None and not limit > 0:
            raise ValueError(f"drop_after_bytes must be a positive integer or None, got {limit!r}")
        for window in self.blackouts:
            _validate_window(window)


def _validate_window(window: tuple[float, float]) -> None:
    try:
        start, end = window
    except (TypeError, ValueError):
        raise ValueError(f"blackout window must be a (start_s, end_s) pair, got {window!r}") from None
    if not (0 <= start < end):
        raise ValueError(f"blackout window must satisfy 0 <= start_s < end_s, got {window!r}")


def _copy_profile(profile: LinkProfile) -> LinkProfile:
    """Return a copy whose blackout list the caller cannot change behind the link's back."""
    return replace(profile, blackouts=list(profile.blackouts))


@dataclass
class LinkStats:
    """Live counters of a FlakyLink since start()."""

    connections: int = 0
    """Connections accepted and forwarded to the target."""
    drops: int = 0
    """Connections reset by drop_every_s, drop_after_bytes or a blackout. stop() does not count."""
    refused: int = 0
    """Connections reset at once because they arrived during a blackout."""
    bytes_up: int = 0
    """Bytes delivered from clients to the target."""
    bytes_down: int = 0
    """Bytes delivered from the target to clients."""
    target_errors: int = 0
    """Connections reset because the target could not be reached."""


class _Signal(enum.Enum):
    EOF = "eof"
    DROP = "drop"


class _TokenBucket:
    """Bandwidth budget of one direction, shared by all connections of a link.

    A caller takes its bytes at once and then sleeps off any debt. Concurrent callers
    pile up debt in arrival order, so together they never exceed the rate.
    """

    def __init__(self) -> None:
        self._tokens = 0.0
        self._updated_at: float | None = None

    async def take(self, count: int, rate: float | None) -> None:
        """Wait until ``count`` bytes fit into the budget at ``rate`` bytes per second."""
        now = asyncio.get_running_loop().time()
        if rate is None:
            self._tokens = 0.0
            self._updated_at = now
            return

        if self._updated_at is not None:
            refilled = self._tokens + (now - self._updated_at) * rate
            self._tokens = min(rate * BURST_SECONDS, refilled)
        self._updated_at = now
        self._tokens -= count
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / rate)


def _piece_size(rate: float | None) -> int:
    if rate is None:
        return READ_CHUNK_BYTES
    return int(min(READ_CHUNK_BYTES, max(MIN_PIECE_BYTES, rate * PIECE_SECONDS)))


def _split(data: bytes, size: int) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def _reset_stream(writer: asyncio.StreamWriter) -> None:
    """Close the socket with a TCP RST, so the peer gets ECONNRESET instead of EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            # The socket is already closed. abort() below still releases the transport.
            pass
    writer.transport.abort()


_QueueItem = tuple[float, "bytes | _Signal"]


class _DelayQueue:
    """FIFO of (delivery time, chunk or signal) items, bounded by the bytes it holds.

    A byte bound, unlike an item bound, keeps the buffered time independent of the
    piece size that the rate limit picks.
    """

    def __init__(self, max_bytes: int) -> None:
        self._items: deque[_QueueItem] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._changed = asyncio.Condition()

    async def put(self, item: _QueueItem) -> None:
        """Append ``item``, waiting while the queue contains ``max_bytes`` or more."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._bytes < self._max_bytes)
            self._items.append(item)
            self._bytes += _item_size(item)
            self._changed.notify_all()

    async def get(self) -> _QueueItem:
        """Remove and return the oldest item, waiting while the queue is empty."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            item = self._items.popleft()
            self._bytes -= _item_size(item)
            self._changed.notify_all()
            return item


def _item_size(item: _QueueItem) -> int:
    payload = item[1]
    return len(payload) if isinstance(payload, bytes) else 0


@dataclass
class _Direction:
    """One direction of a proxied connection: source, destination, queue and bytes delivered."""

    name: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    bucket: _TokenBucket
    queue: _DelayQueue = field(default_factory=lambda: _DelayQueue(QUEUE_MAX_BYTES))
    delivered: int = 0


class _Connection:
    """A client connection and its connection to the target, forwarded both ways."""

    def __init__(
        self,
        link: FlakyLink,
        number: int,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.number = number
        self.closed = False
        self._link = link
        self._up = _Direction("up", client[0], target[1], link._up_bucket)
        self._down = _Direction("down", target[0], client[1], link._down_bucket)
        self._tasks: list[asyncio.Task[None]] = []
        self._upstream_scheduled = 0

    @property
    def bytes_up(self) -> int:
        return self._up.delivered

    @property
    def bytes_down(self) -> int:
        return self._down.delivered

    async def run(self) -> None:
        """Forward both directions until both reach EOF, a peer fails or the link resets them."""
        self._tasks = [
            asyncio.create_task(self._read_loop(self._up)),
            asyncio.create_task(self._write_loop(self._up)),
            asyncio.create_task(self._read_loop(self._down)),
            asyncio.create_task(self._write_loop(self._down)),
        ]
        try:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            self.abort()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            raise

        error = self._first_error()
        if error is not None:
            logger.info("Connection %d failed and was reset: %r", self.number, error)
            self.abort()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        else:
            self.close()

    def abort(self) -> None:
        """Stop forwarding and reset both sockets. Data not yet delivered is lost."""
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        _reset_stream(self._up.writer)
        _reset_stream(self._down.writer)

    def close(self) -> None:
        """Close both sockets after they flush what was already written."""
        if self.closed:
            return
        self.closed = True
        self._up.writer.close()
        self._down.writer.close()

    def _first_error(self) -> BaseException | None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None

    async def _read_loop(self, direction: _Direction) -> None:
        while True:
            chunk = await direction.reader.read(READ_CHUNK_BYTES)
            if not chunk:
                await self._schedule(direction, _Signal.EOF)
                return

            limit_reached = False
            if direction is self._up:
                chunk, limit_reached = self._apply_byte_limit(chunk)
            await self._forward_chunk(direction, chunk)
            if limit_reached:
                await self._schedule(direction, _Signal.DROP)
                return

    def _apply_byte_limit(self, chunk: bytes) -> tuple[bytes, bool]:
        """Cut ``chunk`` at drop_after_bytes and return it with whether the limit is reached."""
        limit = self._link.profile.drop_after_bytes
        if limit is None:
            self._upstream_scheduled += len(chunk)
            return chunk, False

        remaining = max(0, limit - self._upstream_scheduled)
        chunk = chunk[:remaining]
        self._upstream_scheduled += len(chunk)
        return chunk, self._upstream_scheduled >= limit

    async def _forward_chunk(self, direction: _Direction, chunk: bytes) -> None:
        for piece in _split(chunk, _piece_size(self._link.profile.rate_bytes_per_s)):
            # Read the rate for every piece, so set_profile() applies mid-transfer.
            await direction.bucket.take(len(piece), self._link.profile.rate_bytes_per_s)
            await self._schedule(direction, piece)

    async def _schedule(self, direction: _Direction, item: bytes | _Signal) -> None:
        deliver_at = asyncio.get_running_loop().time() + self._link.profile.latency_s
        await direction.queue.put((deliver_at, item))

    async def _write_loop(self, direction: _Direction) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deliver_at, item = await direction.queue.get()
            delay = deliver_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

            if item is _Signal.EOF:
                if direction.writer.can_write_eof():
                    direction.writer.write_eof()
                return
            if item is _Signal.DROP:
                self._link._drop(self, "drop_after_bytes")
                return

            direction.writer.write(item)
            self._count_delivered(direction, len(item))
            await direction.writer.drain()

    def _count_delivered(self, direction: _Direction, count: int) -> None:
        direction.delivered += count
        if direction is self._up:
            self._link.stats.bytes_up += count
        else:
            self._link.stats.bytes_down += count


class FlakyLink:
    """TCP proxy from a local port to one target that degrades traffic by a LinkProfile.

    Link time starts at start(). Blackout windows and drop_every_s ticks are measured
    in link time. Once started, the link must be used only from the event loop that
    ran start(). FlakyLinkThread serves other threads.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        profile: LinkProfile,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        profile.validate()
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = listen_port
        self.stats = LinkStats()
        self._profile = _copy_profile(profile)
        self._state = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._started_at = 0.0
        self._next_number = 1
        self._connections: dict[int, _Connection] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._adhoc_blackouts: list[tuple[float, float]] = []
        self._next_drop_at: float | None = None
        self._wakeup = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._up_bucket = _TokenBucket()
        self._down_bucket = _TokenBucket()

    @property
    def profile(self) -> LinkProfile:
        """Profile in effect. Change it with set_profile(), not by mutating it."""
        return self._profile

    async def start(self) -> None:
        """Bind the listening socket and start forwarding. Afterwards ``port`` is the bound port."""
        if self._state != "new":
            raise RuntimeError(
                f"FlakyLink for {self.target_host}:{self.target_port} was already started "
                f"(state {self._state}); create a new FlakyLink instead"
            )
        self._loop = asyncio.get_running_loop()
        self._started_at = self._loop.time()
        self._server = await asyncio.start_server(self._handle_client, self.listen_host, self.port)
        # NOTE: a host name that resolves to several addresses binds several sockets,
        # each with its own port when listen_port is 0. Pass an IP address.
        self.port = self._server.sockets[0].getsockname()[1]
        self._state = "running"
        self._next_drop_at = self._compute_next_drop(0.0)
        self._supervisor = asyncio.create_task(self._supervise())
        logger.info(
            "FlakyLink listening on %s:%d, forwarding to %s:%d with %s",
            self.listen_host,
            self.port,
            self.target_host,
            self.target_port,
            self._profile,
        )

    async def stop(self) -> None:
        """Close the listener and reset every open connection. Calling it again does nothing."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        assert self._server is not None and self._supervisor is not None

        self._server.close()
        self._supervisor.cancel()
        for connection in list(self._connections.values()):
            connection.abort()
        handlers = list(self._handlers)
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(self._supervisor, *handlers, return_exceptions=True)
        await self._server.wait_closed()
        logger.info("FlakyLink on port %d stopped: %s", self.port, self.stats)

    def set_profile(self, profile: LinkProfile) -> None:
        """Replace the profile. Open connections follow the new one from their next chunk."""
        profile.validate()
        self._profile = _copy_profile(profile)
        logger.info("FlakyLink on port %d changed profile to %s", self.port, self._profile)
        if self._state != "running":
            return
        now = self._link_time()
        self._next_drop_at = self._compute_next_drop(now)
        self._apply_schedule(now)
        self._wakeup.set()

    def blackout(self, seconds: float) -> None:
        """Start a blackout now: reset open connections and reject new ones for ``seconds``."""
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"blackout seconds must be a positive number, got {seconds!r}")
        if self._state != "running":
            raise RuntimeError(f"cannot start a blackout: FlakyLink is {self._state}; call start() first")
        now = self._link_time()
        self._adhoc_blackouts.append((now, now + seconds))
        logger.info("FlakyLink on port %d starts a blackout of %.3f s", self.port, seconds)
        self._apply_schedule(now)
        self._wakeup.set()

    async def __aenter__(self) -> FlakyLink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _link_time(self) -> float:
        assert self._loop is not None
        return self._loop.time() - self._started_at

    def _blackout_windows(self) -> list[tuple[float, float]]:
        return self._profile.blackouts + self._adhoc_blackouts

    def _in_blackout(self, now: float) -> bool:
        return any(start <= now < end for start, end in self._blackout_windows())

    def _compute_next_drop(self, now: float) -> float | None:
        every = self._profile.drop_every_s
        if every is None:
            return None
        return (math.floor(now / every) + 1) * every

    def _seconds_until_next_event(self, now: float) -> float | None:
        candidates = [start for start, _ in self._blackout_windows() if start > now]
        if self._next_drop_at is not None:
            candidates.append(self._next_drop_at)
        if not candidates:
            return None
        return max(0.0, min(candidates) - now)

    def _apply_schedule(self, now: float) -> None:
        """Reset connections if a blackout is active or a drop_every_s tick has passed."""
        if self._in_blackout(now):
            self._drop_all("blackout")
        if self._next_drop_at is not None and now >= self._next_drop_at:
            self._drop_all("drop_every_s")
            self._next_drop_at = self._compute_next_drop(now)
        self._adhoc_blackouts = [window for window in self._adhoc_blackouts if window[1] > now]

    async def _supervise(self) -> None:
        """Sleep until the next blackout start or drop tick, or until the schedule changes."""
        while True:
            timeout = self._seconds_until_next_event(self._link_time())
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass
            self._apply_schedule(self._link_time())

    def _drop_all(self, reason: str) -> None:
        for connection in list(self._connections.values()):
            self._drop(connection, reason)

    def _drop(self, connection: _Connection, reason: str) -> None:
        if connection.closed:
            return
        connection.abort()
        self.stats.drops += 1
        logger.info(
            "Dropped connection %d (%s) after %d bytes up and %d bytes down",
            connection.number,
            reason,
            connection.bytes_up,
            connection.bytes_down,
        )

    async def _handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self._next_number
        self._next_number += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._serve(number, reader, writer)
        except asyncio.CancelledError:
            # Only stop() cancels handlers, maybe before a _Connection owned the socket.
            # The handler returns instead of re-raising because asyncio.streams in
            # Python 3.11.7 calls task.exception() on it, which raises for a cancelled
            # task and logs a spurious error.
            _reset_stream(writer)
        finally:
            self._handlers.discard(handler)
            self._connections.pop(number, None)

    async def _serve(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._in_blackout(self._link_time()):
            self._reject(number, writer)
            return
        target = await self._connect_target(number)
        if target is None:
            _reset_stream(writer)
            return
        if self._in_blackout(self._link_time()):
            # A blackout began while the target connection was being opened.
            _reset_stream(target[1])
            self._reject(number, writer)
            return

        connection = _Connection(self, number, (reader, writer), target)
        self._connections[number] = connection
        self.stats.connections += 1
        logger.debug("Connection %d opened from %s", number, writer.get_extra_info("peername"))
        await connection.run()
        logger.debug(
            "Connection %d closed after %d bytes up and %d bytes down",
            number,
            connection.bytes_up,
            connection.bytes_down,
        )

    def _reject(self, number: int, writer: asyncio.StreamWriter) -> None:
        self.stats.refused += 1
        logger.info("Rejected connection %d with a reset because a blackout is active", number)
        _reset_stream(writer)

    async def _connect_target(
        self, number: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as error:
            self.stats.target_errors += 1
            logger.warning(
                "Connection %d reset: connecting to target %s:%d failed: %r. "
                "Check that the target server is running.",
                number,
                self.target_host,
                self.target_port,
                error,
            )
            return None


class FlakyLinkThread:
    """FlakyLink on its own event loop in a daemon thread, for synchronous callers.

    start(), stop(), set_profile() and blackout() may be called from any thread, and
    each returns after the link has applied the call.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        profile: LinkProfile,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._link = FlakyLink(
            target_host, target_port, profile, listen_host=listen_host, listen_port=listen_port
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """Listening port. It is the bound port once start() has returned."""
        return self._link.port

    @property
    def stats(self) -> LinkStats:
        """Live counters. The link thread updates them while the caller reads."""
        return self._link.stats

    def start(self) -> None:
        """Start the loop thread and return once the link is listening."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"FlakyLinkThread on port {self.port} is already running; call stop() first")
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_run_loop_forever, args=(loop,), name=f"flakylink-{self._link.target_port}", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
            try:
                self._run(self._link.start())
            except BaseException:
                self._shut_down_loop()
                raise

    def stop(self) -> None:
        """Stop the link and its loop thread. Calling it again does nothing."""
        with self._lock:
            if self._loop is None:
                return
            try:
                self._run(self._link.stop())
            finally:
                self._shut_down_loop()

    def set_profile(self, profile: LinkProfile) -> None:
        """Replace the profile, as FlakyLink.set_profile() does."""
        self._call(self._link.set_profile, profile)

    def blackout(self, seconds: float) -> None:
        """Start a blackout now, as FlakyLink.blackout() does."""
        self._call(self._link.blackout, seconds)

    def __enter__(self) -> FlakyLinkThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        loop = self._loop
        if loop is None:
            coroutine.close()
            raise RuntimeError("FlakyLinkThread is not running; call start() first")
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(THREAD_CALL_TIMEOUT_S)

    def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        """Call ``function`` on the loop thread and return its result, or call it here before start()."""
        if self._loop is None:
            return function(*args)

        async def call() -> _T:
            return function(*args)

        return self._run(call())

    def _shut_down_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop, self._thread = None, None
        assert loop is not None and thread is not None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(THREAD_CALL_TIMEOUT_S)
        if thread.is_alive():
            logger.warning(
                "FlakyLink loop thread %s did not stop within %.0f s; leaving its event loop open",
                thread.name,
                THREAD_CALL_TIMEOUT_S,
            )
            return
        loop.close()


def _run_loop_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()
