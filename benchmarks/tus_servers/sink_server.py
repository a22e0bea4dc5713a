"""A tus 1.0 sink: accepts uploads at /files/ and discards every body byte.

Usage: python sink_server.py --port PORT [--host 127.0.0.1]

It measures the load client's ceiling: how fast load.py can send when the
server stores nothing and spends almost no CPU. It keeps each upload's
length and offset in memory. It responds to POST with 201 and a Location,
to PATCH with 204 and the new Upload-Offset (409 when the request's offset
is not the upload's), to HEAD with the offset and to OPTIONS with 204. It
speaks only the HTTP/1.1 that load.py sends: one request at a time per
connection, with a Content-Length and no chunked bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

TUS_VERSION = "1.0.0"
MAX_HEAD_BYTES = 64 * 1024

_upload_ids = itertools.count(1)
# upload id -> [length, offset]
_uploads: dict[str, list[int]] = {}


class SinkProtocol(asyncio.Protocol):
    """Parser of the requests on one connection, which responds to each once its body is dropped."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.body_left = 0
        self.pending: tuple[str, str, dict[str, str]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.pending is not None:
                # Drop body bytes without copying them.
                taken = min(self.body_left, len(view))
                self.body_left -= taken
                view = view[taken:]
                if self.body_left == 0:
                    self._respond(*self.pending)
                    self.pending = None
                continue
            self.head += view
            view = memoryview(b"")
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD_BYTES:
                    self._fail(431, "request header fields too large")
                return
            raw, rest = bytes(self.head[:end]), bytes(self.head[end + 4 :])
            self.head.clear()
            self._start_request(raw)
            view = memoryview(rest)

    def _start_request(self, raw: bytes) -> None:
        request_line, *lines = raw.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.body_left = int(headers.get("content-length", "0"))
        self.pending = (method, path, headers)
        if self.body_left == 0:
            self._respond(method, path, headers)
            self.pending = None

    def _respond(self, method: str, path: str, headers: dict[str, str]) -> None:
        upload_id = path.rstrip("/").rsplit("/", 1)[-1] if path.startswith("/files/") else None
        if method == "OPTIONS":
            self._send(204, {"Tus-Version": TUS_VERSION, "Tus-Extension": "creation"})
        elif method == "POST" and path.rstrip("/") == "/files":
            new_id = str(next(_upload_ids))
            _uploads[new_id] = [int(headers.get("upload-length", "0")), 0]
            self._send(201, {"Location": f"/files/{new_id}"})
        elif method == "PATCH" and upload_id in _uploads:
            upload = _uploads[upload_id]
            offset = int(headers.get("upload-offset", "-1"))
            if offset != upload[1]:
                self._send(409, {"Upload-Offset": str(upload[1])})
                return
            upload[1] = offset + int(headers.get("content-length", "0"))
            self._send(204, {"Upload-Offset": str(upload[1])})
            if upload[1] >= upload[0]:
                del _uploads[upload_id]
        elif method == "HEAD" and upload_id in _uploads:
            length, offset = _uploads[upload_id]
            self._send(200, {"Upload-Offset": str(offset), "Upload-Length": str(length)})
        else:
            self._send(404, {})

    def _send(self, status: int, headers: dict[str, str]) -> None:
        assert self.transport is not None
        lines = [f"HTTP/1.1 {status} -", f"Tus-Resumable: {TUS_VERSION}"]
        if status not in (204, 304):
            lines.append("Content-Length: 0")
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _fail(self, status: int, reason: str) -> None:
        assert self.transport is not None
        self.transport.write(f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".encode("latin-1"))
        self.transport.close()


async def serve(host: str, port: int) -> None:
    """Serve until the process is stopped."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, host, port)
    print(f"listening on http://{host}:{port}/files/", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a tus sink server that discards uploads.")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: 127.0.0.1).")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
