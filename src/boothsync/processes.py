"""Starting and stopping boothsync programs as child processes (demo and tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChildProcess:
    """A ``boothsync`` sub-command running in its own process, with its log in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "boothsync", *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
        )
        log.close()
        return self

    def wait_ready(self, url: str, timeout_s: float = 30.0) -> None:
        """Wait until ``url`` returns 200; raise RuntimeError with the tail of the log if it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise RuntimeError(f"'boothsync {' '.join(self.args[:2])}' did not become ready at {url}:\n{tail}")

    def kill(self) -> None:
        """Kill the process with SIGKILL, as a power cut or a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Stop the process with SIGTERM, then SIGKILL after ``timeout_s``; return its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def server_process(data: Path, port: int, log_path: Path, env: dict[str, str] | None = None) -> ChildProcess:
    return ChildProcess(["server", "run", "--data", str(data), "--port", str(port)], log_path, env)


def agent_process(data: Path, port: int, server_url: str, log_path: Path, env: dict[str, str] | None = None,
                  extra: list[str] | None = None) -> ChildProcess:
    args = ["agent", "run", "--data", str(data), "--port", str(port), "--server", server_url, *(extra or [])]
    return ChildProcess(args, log_path, env)
