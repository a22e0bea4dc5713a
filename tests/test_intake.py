"""Capture intake over HTTP on a real agent: large bodies, disconnects and guards."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import Agent, sha256_hex, wait_until

# Port 9 (discard) on 127.0.0.1: no server, so captures stay on the device.
NO_SERVER = "http://127.0.0.1:9"
# 24 full 1 MiB blocks and an unaligned tail.
LARGE_BYTES = 24 * 1024 * 1024 + 4321


def _blob_path(agent: Agent, sha256: str) -> Path:
    return agent.data / "blobs" / sha256[:2] / sha256


def _blob_files(agent: Agent) -> list[Path]:
    root = agent.data / "blobs"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp")


def _send_head(port: int, content_length: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        "POST /v1/captures?class=media&filename=cut.mp4 HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def _post_raw(agent: Agent, data: bytes, filename: str) -> httpx.Response:
    # httpx's sync client copies the rest of a bytes body after every send, so large bodies go as an iterator.
    blocks = (data[i:i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024))
    return httpx.post(agent.url + "/v1/captures", params={"class": "media", "filename": filename},
                      content=blocks, headers={"Content-Length": str(len(data))}, timeout=60)


@pytest.mark.parametrize("direct_io", ["true", "false"])
def test_large_raw_body_intact(start_agent: Callable[..., Agent], direct_io: str) -> None:
    agent = start_agent(NO_SERVER, env={"BOOTHSYNC_AGENT_DIRECT_IO": direct_io})
    data = os.urandom(LARGE_BYTES)

    response = _post_raw(agent, data, "stall.mp4")

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["size"] == len(data)
    assert body["sha256"] == sha256_hex(data)
    assert _blob_path(agent, body["sha256"]).read_bytes() == data
    assert list((agent.data / "blobs" / "tmp").iterdir()) == []


def test_large_chunked_body_intact(start_agent: Callable[..., Agent]) -> None:
    # Without Content-Length the body arrives with chunked transfer encoding.
    agent = start_agent(NO_SERVER)
    data = os.urandom(LARGE_BYTES)
    blocks = (data[i:i + 700_001] for i in range(0, len(data), 700_001))

    response = httpx.post(agent.url + "/v1/captures", params={"class": "media", "filename": "v.mp4"},
                          content=blocks, timeout=60)

    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == sha256_hex(data)
    assert _blob_path(agent, sha256_hex(data)).read_bytes() == data


def test_large_multipart_intact(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(NO_SERVER)
    data = os.urandom(LARGE_BYTES)

    response = httpx.post(agent.url + "/v1/captures", data={"class": "media"},
                          files={"file": ("stall.mp4", data, "video/mp4")}, timeout=60)

    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == sha256_hex(data)
    assert _blob_path(agent, sha256_hex(data)).read_bytes() == data


def test_small_capture_intact(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(NO_SERVER)
    data = os.urandom(150_000)

    response = agent.capture(data, "receipt.jpg", "receipt")

    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == sha256_hex(data)
    assert _blob_path(agent, sha256_hex(data)).read_bytes() == data


def test_disconnect_mid_body_leaves_nothing(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(NO_SERVER)
    sock = _send_head(agent.port, LARGE_BYTES)
    # More than a few blocks, so some are in flight in writer threads when the client goes.
    sock.sendall(os.urandom(9 * 1024 * 1024 + 17))
    time.sleep(0.5)
    sock.close()

    tmp = agent.data / "blobs" / "tmp"
    wait_until(lambda: not any(tmp.iterdir()), 10, "the temporary file of the cut capture to go")
    assert _blob_files(agent) == []
    assert httpx.get(agent.url + "/v1/captures", timeout=10).json()["captures"] == []
    # The agent still takes captures afterwards.
    data = os.urandom(3 * 1024 * 1024)
    after = _post_raw(agent, data, "after.mp4")
    assert after.status_code == 201, after.text
    assert after.json()["sha256"] == sha256_hex(data)


def _read_response(sock: socket.socket) -> bytes:
    """Read one response whose body has a Content-Length, which may arrive in several segments."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed mid-headers: {received!r}"
        received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed mid-body: {received!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_declared_size_over_free_disk_rejected(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(NO_SERVER)
    sock = _send_head(agent.port, 10**15)
    try:
        # The agent responds from the headers alone, before any of the body.
        response = _read_response(sock).decode(errors="replace")
    finally:
        sock.close()

    status_line = response.split("\r\n", 1)[0]
    assert status_line.startswith("HTTP/1.1 507"), response
    assert "disk_reserve" in response
    assert list((agent.data / "blobs" / "tmp").iterdir()) == []
    assert httpx.get(agent.url + "/v1/captures", timeout=10).json()["captures"] == []


def test_large_body_under_reserve_rejected(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(NO_SERVER, env={"BOOTHSYNC_AGENT_DISK_RESERVE_BYTES": str(10**18)})

    response = _post_raw(agent, os.urandom(LARGE_BYTES), "stall.mp4")

    assert response.status_code == 507
    assert response.json()["error"] == "disk_reserve"
    assert _blob_files(agent) == []
    assert list((agent.data / "blobs" / "tmp").iterdir()) == []
