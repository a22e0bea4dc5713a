"""Fixtures that run real servers, agents and flaky links on 127.0.0.1."""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from boothsync.processes import ChildProcess, agent_process, free_port, server_process

DATA = Path(__file__).parent / "data"

# The venv's bin comes first on PATH, so the tests find the Node.js that
# scripts/setup put there (20.19 or newer) before an older system one.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

# Small chunks and short backoffs make faults happen mid-upload and keep the tests quick.
TEST_AGENT_ENV = {
    "BOOTHSYNC_AGENT_CHUNK_BYTES": str(64 * 1024),
    "BOOTHSYNC_AGENT_RETRY_BASE_S": "0.05",
    "BOOTHSYNC_AGENT_RETRY_MAX_S": "0.5",
    "BOOTHSYNC_AGENT_DISK_RESERVE_BYTES": "0",
    "BOOTHSYNC_AGENT_EVENT": "test-event",
    "BOOTHSYNC_AGENT_DEVICE_ID": "test-device",
    "BOOTHSYNC_LOG_LEVEL": "DEBUG",
}


def wait_until(predicate: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """A real ``boothsync server run`` process that can be killed and restarted on its port."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.data = root / "server"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log = root / "server.log"
        self.proc: ChildProcess | None = None

    def start(self) -> Server:
        self.proc = server_process(self.data, self.port, self.log, self.env).start()
        self.proc.wait_ready(self.url + "/v1/health")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def capture(self, capture_id: str) -> dict[str, Any] | None:
        response = httpx.get(f"{self.url}/v1/captures/{capture_id}", timeout=10)
        return response.json() if response.status_code == 200 else None

    def stored_files(self, capture_id: str) -> list[Path]:
        """Return every file the server stored for a capture, wherever it is below its data dir."""
        return sorted(p for p in (self.data / "files").rglob("*") if p.is_file() and capture_id in p.parts)

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "_total "):
                return float(line.split()[-1])
        raise AssertionError(f"metric {name} not found in /metrics")


class Agent:
    """A real ``boothsync agent run`` process on a fixed port and data dir."""

    def __init__(self, root: Path, server_url: str, env: dict[str, str] | None = None,
                 extra: list[str] | None = None) -> None:
        self.data = root / "agent"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server_url = server_url
        self.env = {**TEST_AGENT_ENV, **(env or {})}
        self.extra = extra
        self.log = root / "agent.log"
        self.proc: ChildProcess | None = None

    def start(self, env: dict[str, str] | None = None) -> Agent:
        self.proc = agent_process(
            self.data, self.port, self.server_url, self.log, {**self.env, **(env or {})}, self.extra
        ).start()
        self.proc.wait_ready(self.url + "/v1/status")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def capture(self, data: bytes, filename: str, klass: str | None = None) -> httpx.Response:
        """Capture raw bytes through ``POST /v1/captures`` with the raw-body form."""
        params = {"filename": filename}
        if klass:
            params["class"] = klass
        return httpx.post(self.url + "/v1/captures", content=data, params=params, timeout=60)

    def status(self) -> dict[str, Any]:
        return httpx.get(self.url + "/v1/status", timeout=10).json()

    def local_capture(self, capture_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.url}/v1/captures/{capture_id}", timeout=10).json()

    def wait_synced(self, capture_id: str, timeout_s: float = 90.0) -> dict[str, Any]:
        return wait_until(
            lambda: (c := self.local_capture(capture_id))["state"] == "synced" and c,
            timeout_s, f"capture {capture_id} to sync (log: {self.log})",
        )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path).start()
    yield running
    running.stop()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(server_url: str, env: dict[str, str] | None = None, extra: list[str] | None = None) -> Agent:
        agent = Agent(tmp_path, server_url, env, extra).start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def reject_o_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make os.open fail with EINVAL for O_DIRECT, as file systems without direct I/O do."""
    real_open = os.open

    def open_without_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_without_direct)


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Test traffic goes to 127.0.0.1 only; a proxy set in the environment must not reroute it.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


__all__ = ["DATA", "Agent", "Server", "sha256_hex", "wait_until"]
