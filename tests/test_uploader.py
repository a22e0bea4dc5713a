"""The agent's uploader end to end: preemption, sync policies, parked parts,
expired uploads and the bandwidth cap, against real server and agent processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Agent, Server, sha256_hex, wait_until

from boothsync.flakylink import FlakyLinkThread, LinkProfile


@pytest.fixture
def slow_link(server: Server) -> Iterator[FlakyLinkThread]:
    link = FlakyLinkThread("127.0.0.1", server.port, LinkProfile(rate_bytes_per_s=1_000_000))
    link.start()
    yield link
    link.stop()


def part_state(agent: Agent, capture_id: str, name: str = "original") -> dict:
    parts = agent.local_capture(capture_id)["parts"]
    return next(p for p in parts if p["part"] == name)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "boothsync", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_receipt_preempts_video(server: Server, slow_link: FlakyLinkThread,
                                start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(f"http://127.0.0.1:{slow_link.port}", env={
        "BOOTHSYNC_AGENT_CHUNK_BYTES": str(128 * 1024), "BOOTHSYNC_AGENT_CHUNK_MAX_BYTES": str(256 * 1024)})
    video = os.urandom(8 * 1024 * 1024)
    video_id = agent.capture(video, "clip.mp4", "media").json()["capture_id"]
    wait_until(lambda: agent.status()["bytes_sent"] > 1024 * 1024, 30, "the video upload to be under way")

    receipt = os.urandom(30_000)
    captured = time.time()
    receipt_id = agent.capture(receipt, "receipt.jpg", "receipt").json()["capture_id"]
    synced = wait_until(lambda: (p := part_state(agent, receipt_id))["state"] == "synced" and p, 30, "the receipt")

    assert part_state(agent, video_id)["state"] != "synced"
    # The receipt waited for at most the chunk in flight, not for the video.
    assert synced["synced_at"] - captured < 3.0
    agent.wait_synced(video_id, 60)
    originals = [p for p in server.stored_files(video_id) if p.name.startswith("original")]
    assert sha256_hex(originals[0].read_bytes()) == sha256_hex(video)
    assert agent.status()["bytes_resent"] == 0


def test_unmetered_policy_waits_for_link(server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url, env={"BOOTHSYNC_AGENT_POLICY_MEDIA": "unmetered"})
    photo = os.urandom(200_000)
    capture_id = agent.capture(photo, "stall.jpg", "media").json()["capture_id"]
    wait_until(lambda: server.capture(capture_id) is not None, 30, "the manifest to reach the server")
    time.sleep(1.5)

    assert part_state(agent, capture_id)["state"] == "pending"
    assert server.capture(capture_id)["parts"][0]["state"] == "announced"

    result = run_cli("link", "--unmetered", "--agent", agent.url)
    assert result.returncode == 0, result.stderr
    assert "metered: False" in result.stdout
    agent.wait_synced(capture_id, 30)


def test_link_control_survives_restart(server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url)
    assert run_cli("link", "--unmetered", "--cap", "500000", "--agent", agent.url).returncode == 0
    agent.stop()
    agent.start()

    control = httpx.get(agent.url + "/v1/link").json()

    assert control["metered"] is False
    assert control["bandwidth_cap_bytes_per_s"] == 500000


@pytest.mark.parametrize("body", [{}, {"metered": "yes"}, {"bandwidth_cap_bytes_per_s": 10}, {"speed": 1}])
def test_link_control_rejects_bad_input(server: Server, start_agent: Callable[..., Agent], body: dict) -> None:
    agent = start_agent(server.url)

    response = httpx.post(agent.url + "/v1/link", json=body)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_link_control"


def test_local_only_original_stays(server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url, env={"BOOTHSYNC_AGENT_POLICY_CONSENT": "local_only"})
    capture_id = agent.capture(os.urandom(5000), "consent.pdf", "consent").json()["capture_id"]

    agent.wait_synced(capture_id, 30)

    assert part_state(agent, capture_id)["state"] == "local_only"
    remote = server.capture(capture_id)
    assert remote is not None
    assert "original" not in {p["part"] for p in remote["parts"]}
    assert server.stored_files(capture_id) == []


def test_rejected_part_is_parked(tmp_path: Path, start_agent: Callable[..., Agent]) -> None:
    server = Server(tmp_path, env={"BOOTHSYNC_SERVER_MAX_UPLOAD_BYTES": "100000"}).start()
    try:
        agent = start_agent(server.url)
        big = agent.capture(os.urandom(300_000), "big.pdf", "document").json()["capture_id"]
        small = agent.capture(os.urandom(1000), "small.pdf", "document").json()["capture_id"]

        agent.wait_synced(small, 30)
        wait_until(lambda: agent.status()["parked_parts"] == 1, 30, "the large part to be parked")
        listing = run_cli("parked", "--agent", agent.url)
        assert big in listing.stdout
        assert "413" in listing.stdout
        assert "Action needed: 1 part was rejected by HQ" in agent.status()["message"]
    finally:
        server.stop()

    bigger = Server(tmp_path).start()
    try:
        agent.server_url = bigger.url
        agent.stop()
        agent.start()
        result = run_cli("parked", "--retry", "--agent", agent.url)
        assert "1 parked parts queued again" in result.stdout
        agent.wait_synced(big, 30)
        assert agent.status()["parked_parts"] == 0
    finally:
        bigger.stop()


def test_expired_upload_is_recreated(tmp_path: Path, start_agent: Callable[..., Agent]) -> None:
    server = Server(tmp_path, env={"BOOTHSYNC_SERVER_UPLOAD_EXPIRY_S": "2"}).start()
    link = FlakyLinkThread("127.0.0.1", server.port, LinkProfile(rate_bytes_per_s=500_000))
    link.start()
    try:
        agent = start_agent(f"http://127.0.0.1:{link.port}", env={"BOOTHSYNC_AGENT_CHUNK_MAX_BYTES": str(128 * 1024)})
        data = os.urandom(1_500_000)
        capture_id = agent.capture(data, "clip.mov", "media").json()["capture_id"]
        wait_until(lambda: agent.status()["bytes_sent"] > 300_000, 30, "the upload to be under way")
        link.blackout(3.0)

        agent.wait_synced(capture_id, 60)

        originals = [p for p in server.stored_files(capture_id) if p.name.startswith("original")]
        assert len(originals) == 1
        assert sha256_hex(originals[0].read_bytes()) == sha256_hex(data)
        assert "upload gone, creating a new one" in agent.log.read_text()
    finally:
        link.stop()
        server.stop()


def test_bandwidth_cap_paces_uploads(server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url)
    assert run_cli("link", "--cap", "250000", "--agent", agent.url).returncode == 0
    data = os.urandom(1_000_000)

    started = time.monotonic()
    capture_id = agent.capture(data, "video.mp4", "media").json()["capture_id"]
    wait_until(lambda: part_state(agent, capture_id)["state"] == "synced", 60, "the capped upload")
    elapsed = time.monotonic() - started

    # 1 MB at 250 kB/s cannot take less than about 4 s; allow the bucket's small burst.
    assert elapsed > 3.5


def test_webp_thumbnails_reach_hq(server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url, env={"BOOTHSYNC_AGENT_THUMBNAIL_FORMAT": "webp"})
    photo = Path(__file__).parent / "data" / "photos" / "phone_samsung_galaxy_s7_gps.jpg"
    capture_id = agent.capture(photo.read_bytes(), photo.name, "media").json()["capture_id"]

    agent.wait_synced(capture_id, 60)

    thumbnails = [p for p in server.stored_files(capture_id) if p.name.startswith("thumbnail")]
    assert [p.name for p in thumbnails] == ["thumbnail.webp"]
    assert thumbnails[0].read_bytes()[8:12] == b"WEBP"


def test_blackout_halves_chunk_once(server: Server, start_agent: Callable[..., Agent]) -> None:
    link = FlakyLinkThread("127.0.0.1", server.port, LinkProfile(rate_bytes_per_s=500_000))
    link.start()
    try:
        agent = start_agent(f"http://127.0.0.1:{link.port}", env={
            "BOOTHSYNC_AGENT_CHUNK_BYTES": str(256 * 1024), "BOOTHSYNC_AGENT_CHUNK_MAX_BYTES": str(256 * 1024)})
        data = os.urandom(3_000_000)
        capture_id = agent.capture(data, "clip.mov", "media").json()["capture_id"]
        wait_until(lambda: agent.status()["bytes_sent"] > 600_000, 30, "the upload to be under way")
        link.blackout(4.0)

        agent.wait_synced(capture_id, 60)
    finally:
        link.stop()

    log = agent.log.read_text()
    assert re.search(r"sync failed, retrying .*attempt=2", log), \
        f"the agent never retried twice during the blackout (log: {agent.log})"
    # The cut PATCH halves the chunk size; the HEAD requests that fail
    # during the rest of the blackout carry no chunk and do not.
    assert log.count("because chunk failed") == 1
    originals = [p for p in server.stored_files(capture_id) if p.name.startswith("original")]
    assert sha256_hex(originals[0].read_bytes()) == sha256_hex(data)


def test_agent_back_online_soon_after_blackout(server: Server, start_agent: Callable[..., Agent]) -> None:
    link = FlakyLinkThread("127.0.0.1", server.port, LinkProfile(rate_bytes_per_s=500_000))
    link.start()
    try:
        # A long backoff ceiling: the probe cap, not retry_max_s, must bound the wait.
        agent = start_agent(f"http://127.0.0.1:{link.port}", env={
            "BOOTHSYNC_AGENT_CHUNK_MAX_BYTES": str(256 * 1024), "BOOTHSYNC_AGENT_RETRY_MAX_S": "30"})
        data = os.urandom(4_000_000)
        capture_id = agent.capture(data, "clip.mov", "media").json()["capture_id"]
        wait_until(lambda: agent.status()["bytes_sent"] > 600_000, 30, "the upload to be under way")
        link.blackout(8.0)
        blackout_end = time.monotonic() + 8.0
        wait_until(lambda: agent.status()["link"] == "offline", 8, "the agent to see the link offline")

        wait_until(lambda: agent.status()["link"] == "online", 30, "the agent to see the link online")
        late_s = time.monotonic() - blackout_end

        agent.wait_synced(capture_id, 60)
    finally:
        link.stop()

    # Probes go at most about 1 s apart while offline, plus a round trip and the status poll.
    assert late_s < 2.0



def test_small_part_created_with_body(server: Server, slow_link: FlakyLinkThread,
                                      start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(f"http://127.0.0.1:{slow_link.port}")
    small = os.urandom(20_000)
    large = os.urandom(200_000)
    small_id = agent.capture(small, "form.pdf", "document").json()["capture_id"]
    large_id = agent.capture(large, "scan.pdf", "document").json()["capture_id"]

    agent.wait_synced(small_id, 30)
    agent.wait_synced(large_id, 30)

    log = agent.log.read_text()
    # The agent's chunks start at 64 KiB in the tests: the small part fits in the creation request.
    assert re.search(rf"upload opened capture_id={small_id} part=original offset=20000 size=20000 with_body=True", log)
    assert re.search(rf"upload opened capture_id={large_id} part=original offset=0 size=200000 with_body=False", log)
    assert "sync failed" not in log
    for capture_id, data in ((small_id, small), (large_id, large)):
        originals = [p for p in server.stored_files(capture_id) if p.name.startswith("original")]
        assert len(originals) == 1
        assert sha256_hex(originals[0].read_bytes()) == sha256_hex(data)
    assert agent.status()["bytes_resent"] == 0


def test_free_stream_takes_receipt(server: Server, start_agent: Callable[..., Agent]) -> None:
    # With a 150 ms round trip each manifest takes the free stream that
    # long, and the video's chunks end about every 0.3 s.
    profile = LinkProfile(rate_bytes_per_s=1_000_000, latency_s=0.075)
    with FlakyLinkThread("127.0.0.1", server.port, profile) as link:
        agent = start_agent(f"http://127.0.0.1:{link.port}", env={
            "BOOTHSYNC_AGENT_SYNC_STREAMS": "2",
            "BOOTHSYNC_AGENT_CHUNK_BYTES": str(128 * 1024), "BOOTHSYNC_AGENT_CHUNK_MAX_BYTES": str(128 * 1024)})
        video_id = agent.capture(os.urandom(6 * 1024 * 1024), "clip.mp4", "media").json()["capture_id"]
        wait_until(lambda: agent.status()["bytes_sent"] > 512 * 1024, 30, "the video upload to be under way")

        for n in range(5):
            captured = time.time()
            receipt_id = agent.capture(os.urandom(30_000), f"receipt{n}.jpg", "receipt").json()["capture_id"]
            synced = wait_until(lambda: (p := part_state(agent, receipt_id))["state"] == "synced" and p, 30, "the receipt")
            assert synced["synced_at"] - captured < 3.0
        assert part_state(agent, video_id)["state"] != "synced"
        agent.wait_synced(video_id, 60)

    # The second stream announced and sent every receipt, so the video never paused.
    log = agent.log.read_text()
    assert log.count("manifest announced") == 6
    assert f"part paused for a more important one capture_id={video_id}" not in log
    assert agent.status()["bytes_resent"] == 0


def test_paused_part_resumes_without_head(server: Server, slow_link: FlakyLinkThread,
                                          start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(f"http://127.0.0.1:{slow_link.port}", env={
        "BOOTHSYNC_AGENT_SYNC_STREAMS": "1",
        "BOOTHSYNC_AGENT_CHUNK_BYTES": str(128 * 1024), "BOOTHSYNC_AGENT_CHUNK_MAX_BYTES": str(128 * 1024)})
    video = os.urandom(3 * 1024 * 1024)
    video_id = agent.capture(video, "clip.mp4", "media").json()["capture_id"]
    wait_until(lambda: agent.status()["bytes_sent"] > 512 * 1024, 30, "the video upload to be under way")

    receipt_id = agent.capture(os.urandom(30_000), "receipt.jpg", "receipt").json()["capture_id"]
    agent.wait_synced(receipt_id, 30)
    agent.wait_synced(video_id, 60)

    log = agent.log.read_text()
    # One stream: the video pauses for the receipt's manifest and original.
    assert f"part paused for a more important one capture_id={video_id}" in log
    assert re.search(rf"upload resumed capture_id={video_id} part=original offset=\d+ head=False", log)
    assert not re.search(rf"upload resumed capture_id={video_id} part=original offset=\d+ head=True", log)
    originals = [p for p in server.stored_files(video_id) if p.name.startswith("original")]
    assert sha256_hex(originals[0].read_bytes()) == sha256_hex(video)
    assert agent.status()["bytes_resent"] == 0


def test_backlog_manifests_sent_together(server: Server, slow_link: FlakyLinkThread,
                                         start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(f"http://127.0.0.1:{slow_link.port}")
    slow_link.blackout(3.0)
    captures = {}
    for n in range(6):
        data = os.urandom(5000 + n)
        captures[agent.capture(data, f"form{n}.pdf", "document").json()["capture_id"]] = data

    for capture_id in captures:
        agent.wait_synced(capture_id, 30)

    posted = [int(count) for count in re.findall(r"manifests posted count=(\d+)", agent.log.read_text())]
    # The first request after the blackout carried the whole backlog.
    assert max(posted) == 6
    assert sum(posted) >= 6
    for capture_id, data in captures.items():
        remote = server.capture(capture_id)
        assert remote is not None
        originals = [p for p in server.stored_files(capture_id) if p.name.startswith("original")]
        assert sha256_hex(originals[0].read_bytes()) == sha256_hex(data)
