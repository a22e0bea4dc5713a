"""The ``boothsync`` command line, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import Agent, Server, wait_until

from boothsync.demo import sample_files


def run_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "boothsync", *args],
        capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
    )


def test_demo_syncs_and_verifies_every_sample(tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    result = run_cli("demo", "--json", "--keep", str(keep), timeout_s=600)

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    expected = len(sample_files())
    assert expected >= 15
    assert report["captures"] == expected
    assert report["synced"] == expected
    assert report["verified"] == expected
    assert report["drops"] > 0
    assert report["bytes_sent"] >= report["bytes_resent"] >= 0
    assert report["duration_s"] > 0
    stored = [p for p in Path(report["storage_dir"]).rglob("original*") if p.is_file()]
    assert len(stored) == expected
    assert set(report["by_class"]) == {"consent", "receipt", "contract", "document", "media"}


def test_capture_command_prints_confirmations(tmp_path: Path, server: Server,
                                              start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url)
    first, second = sample_files()[1][1], sample_files()[2][1]

    result = run_cli("capture", str(first), str(second), "--class", "receipt", "--json", "--agent", agent.url)

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [c["filename"] for c in lines] == [first.name, second.name]
    assert all(c["class"] == "receipt" and c["state"] == "stored" for c in lines)
    wait_until(lambda: agent.status()["synced"] == 2, 60, "both captures to sync")


def test_capture_command_rejects_unknown_class(server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url)
    result = run_cli("capture", str(sample_files()[0][1]), "--class", "invoice", "--agent", agent.url)

    assert result.returncode == 1
    assert "unknown content class 'invoice'" in result.stderr
    assert agent.status()["captures"] == 0


def test_capture_command_without_agent() -> None:
    result = run_cli("capture", str(sample_files()[0][1]), "--agent", "http://127.0.0.1:9")

    assert result.returncode == 1
    assert "cannot reach the agent" in result.stderr


def test_server_rejects_unknown_setting(tmp_path: Path) -> None:
    config = tmp_path / "boothsync.toml"
    config.write_text("[server]\nport = 8480\nmax_upload = 5\n")

    result = run_cli("server", "run", "--config", str(config))

    assert result.returncode == 2
    assert "unknown setting server.max_upload" in result.stderr


def test_agent_rejects_invalid_env_value(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "boothsync", "agent", "run", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "BOOTHSYNC_AGENT_PORT": "eighty"},
    )

    assert result.returncode == 2
    assert "invalid value 'eighty' for agent.port" in result.stderr
