"""End-to-end fault tests: real server and agent processes, a real flaky link between them.

Each test checks the promise that matters at a stall: every capture
arrives at HQ exactly once, with the sha256 it had on the device.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import DATA, Agent, Server, sha256_hex, wait_until

from boothsync.flakylink import FlakyLinkThread, LinkProfile


@pytest.fixture
def link_to(request: pytest.FixtureRequest) -> Iterator[Callable[[Server, LinkProfile], FlakyLinkThread]]:
    links: list[FlakyLinkThread] = []

    def start(server: Server, profile: LinkProfile) -> FlakyLinkThread:
        link = FlakyLinkThread("127.0.0.1", server.port, profile)
        link.start()
        links.append(link)
        return link

    yield start
    for link in links:
        link.stop()


def assert_stored_once(server: Server, capture_id: str, data: bytes) -> None:
    """Check that HQ stores exactly one original of the capture, byte for byte."""
    originals = [p for p in server.stored_files(capture_id) if p.name.startswith("original")]
    assert len(originals) == 1, f"expected one stored original, found {originals}"
    assert sha256_hex(originals[0].read_bytes()) == sha256_hex(data)
    remote = server.capture(capture_id)
    assert remote is not None
    states = {p["part"]: p["state"] for p in remote["parts"]}
    assert states["original"] == "synced"


def test_proxy_drops_mid_patch(server: Server, start_agent: Callable[..., Agent], link_to) -> None:
    link = link_to(server, LinkProfile(rate_bytes_per_s=1_000_000, drop_every_s=0.6))
    chunk = str(256 * 1024)
    agent = start_agent(f"http://127.0.0.1:{link.port}", env={
        "BOOTHSYNC_AGENT_CHUNK_BYTES": chunk, "BOOTHSYNC_AGENT_CHUNK_MAX_BYTES": chunk})
    data = os.urandom(3 * 1024 * 1024)

    confirmation = agent.capture(data, "video.bin", "media").json()
    agent.wait_synced(confirmation["capture_id"])

    assert link.stats.drops >= 2
    assert server.metric("boothsync_server_client_disconnects") >= 1
    assert_stored_once(server, confirmation["capture_id"], data)
    status = agent.status()
    # Only the chunk in flight at each drop may be sent again.
    assert status["bytes_resent"] <= link.stats.drops * 256 * 1024


def test_server_restart_mid_upload(server: Server, start_agent: Callable[..., Agent], link_to) -> None:
    link = link_to(server, LinkProfile(rate_bytes_per_s=1_000_000))
    agent = start_agent(f"http://127.0.0.1:{link.port}")
    data = os.urandom(4 * 1024 * 1024)

    confirmation = agent.capture(data, "contract.pdf", "contract").json()
    wait_until(lambda: agent.status()["bytes_sent"] > 1024 * 1024, 30, "the upload to be under way")
    server.kill()
    wait_until(lambda: agent.status()["link"] != "online", 30, "the agent to notice the server is gone")
    server.start()
    agent.wait_synced(confirmation["capture_id"])

    assert_stored_once(server, confirmation["capture_id"], data)
    # The server kept what reached its disk, so far less than the whole file is sent again.
    assert agent.status()["bytes_resent"] < len(data) // 2


def test_agent_sigkill_mid_upload(server: Server, start_agent: Callable[..., Agent], link_to) -> None:
    link = link_to(server, LinkProfile(rate_bytes_per_s=1_000_000))
    agent = start_agent(f"http://127.0.0.1:{link.port}")
    data = os.urandom(4 * 1024 * 1024)

    confirmation = agent.capture(data, "video.mp4", "media").json()
    wait_until(lambda: agent.status()["bytes_sent"] > 1024 * 1024, 30, "the upload to be under way")
    agent.kill()
    agent.start()
    synced = agent.wait_synced(confirmation["capture_id"])

    assert_stored_once(server, confirmation["capture_id"], data)
    original = next(p for p in synced["parts"] if p["part"] == "original")
    assert original["sha256"] == sha256_hex(data)
    # The restarted agent resumed the same upload instead of creating a second one.
    assert server.metric("boothsync_server_uploads_created") == 1
    assert agent.status()["bytes_sent"] < len(data)


def test_bad_inputs_are_captured_and_synced(tmp_path: Path, server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url)
    cases = [
        (b"this is plain text, not a JPEG\n", "photo.jpg", "photo.jpg"),
        (b"", "empty.png", "empty.png"),
        (b"#!/bin/sh\necho hi\n", "../../../etc/passwd", "passwd"),
        (b"x" * 1000, "bad\x01name\nwith controls.jpg", "bad_name_with controls.jpg"),
        (b"y" * 10, "..\\..\\windows\\evil.exe", "evil.exe"),
    ]
    captured = []
    for data, filename, expected_name in cases:
        response = agent.capture(data, filename, "document")
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["filename"] == expected_name
        assert body["size"] == len(data)
        captured.append((body["capture_id"], data, expected_name))

    for capture_id, data, expected_name in captured:
        agent.wait_synced(capture_id)
        assert_stored_once(server, capture_id, data)
        assert server.capture(capture_id)["filename"] == expected_name

    # Nothing was written outside the agent's and the server's data directories.
    stray = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(agent.data)
             and not p.is_relative_to(server.data) and p.suffix != ".log"]
    assert stray == []
    names = [p.name for p in tmp_path.rglob("*")]
    assert "passwd" not in names
    assert not any(any(ord(ch) < 32 for ch in name) for name in names)


def test_non_image_gets_failed_derivatives(server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url)
    confirmation = agent.capture(b"not an image at all", "receipt.jpg", "receipt").json()

    local = agent.wait_synced(confirmation["capture_id"])

    parts = {p["part"]: p for p in local["parts"]}
    assert parts["original"]["state"] == "synced"
    assert parts["thumbnail"]["state"] in ("failed", "unavailable")
    assert parts["thumbnail"]["reason"]


def test_disk_reserve_rejects_new_captures(tmp_path: Path, start_agent: Callable[..., Agent]) -> None:
    # No server: the first capture stays pending on the device.
    agent = start_agent("http://127.0.0.1:9")
    data = os.urandom(100_000)
    first = agent.capture(data, "receipt.jpg", "receipt").json()
    agent.stop()

    agent.start(env={"BOOTHSYNC_AGENT_DISK_RESERVE_BYTES": str(10**18)})
    response = agent.capture(b"another receipt", "second.jpg", "receipt")

    assert response.status_code == 507
    body = response.json()
    assert body["error"] == "disk_reserve"
    assert "disk_reserve_bytes" in body["message"]
    local = agent.local_capture(first["capture_id"])
    assert local["state"] != "synced"
    blob = agent.data / "blobs" / first["sha256"][:2] / first["sha256"]
    assert sha256_hex(blob.read_bytes()) == first["sha256"]
    assert len(httpx.get(agent.url + "/v1/captures").json()["captures"]) == 1
    assert list((agent.data / "blobs" / "tmp").iterdir()) == []


def test_pending_capture_survives_and_syncs_later(tmp_path: Path, start_agent: Callable[..., Agent]) -> None:
    server = Server(tmp_path)
    agent = start_agent(server.url)
    data = os.urandom(300_000)
    confirmation = agent.capture(data, "consent.pdf", "consent").json()
    wait_until(lambda: agent.status()["link"] == "offline", 30, "the agent to go offline")

    server.start()
    try:
        agent.wait_synced(confirmation["capture_id"])
        assert_stored_once(server, confirmation["capture_id"], data)
    finally:
        server.stop()


def test_hot_folder_captures_settled_files(tmp_path: Path, server: Server, start_agent: Callable[..., Agent]) -> None:
    hot = tmp_path / "scanner"
    agent = start_agent(server.url, env={"BOOTHSYNC_AGENT_HOT_FOLDER_SETTLE_S": "1.0"}, extra=["--hot-folder", str(hot)])
    (hot / "receipt").mkdir(parents=True)
    target = hot / "receipt" / "scan-001.pdf"
    data = os.urandom(50_000)
    with open(target, "wb") as handle:
        handle.write(data[:20_000])
        handle.flush()
        wait_until(lambda: agent.status()["captures"] == 0, 1, "no capture of a growing file")
        handle.write(data[20_000:])

    wait_until(lambda: agent.status()["captures"] == 1, 30, "the hot folder capture")
    capture = httpx.get(agent.url + "/v1/captures").json()["captures"][0]
    assert capture["class"] == "receipt"
    assert capture["filename"] == "scan-001.pdf"
    agent.wait_synced(capture["capture_id"])
    assert_stored_once(server, capture["capture_id"], data)
    assert not target.exists()
    moved = list((hot / ".captured").iterdir())
    assert [p.name for p in moved] == [f"{capture['capture_id']}-scan-001.pdf"]


def test_agent_stops_cleanly_on_sigterm(server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url)
    assert agent.proc is not None and agent.proc.proc is not None
    agent.proc.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal, so the
    # exit status reports SIGTERM; the log shows the shutdown ran.
    assert agent.proc.proc.wait(15) in (0, -signal.SIGTERM)
    assert "agent stopped" in agent.log.read_text()


def _worker_pids(agent_pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == agent_pid:
            found.append(int(entry.name))
    return found


def test_killed_agent_leaves_no_workers(server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url)
    assert agent.proc is not None and agent.proc.proc is not None
    pid = agent.proc.proc.pid
    agent.capture((DATA / "pdf" / "scanned_4pages_no_text_cardinal.pdf").read_bytes(), "scan.pdf", "contract")
    workers = wait_until(lambda: _worker_pids(pid), 30, "the derivative workers to start")

    agent.kill()

    wait_until(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 15, "the workers to end with the agent")
