"""The ``boothsync`` command line, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import Agent, Server, wait_until

from boothsync.demo import sample_files
from boothsync.processes import free_port


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


def test_second_agent_on_same_data_rejected(server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url)

    result = run_cli("agent", "run", "--data", str(agent.data), "--port", "9", "--server", server.url)

    assert result.returncode == 2
    assert "already using the data directory" in result.stderr


def test_short_code_finds_capture(server: Server, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(server.url)
    confirmation = agent.capture(b"receipt bytes", "r.jpg", "receipt").json()

    by_code = httpx.get(f"{agent.url}/v1/captures/{confirmation['short_code'].lower()}")

    assert by_code.status_code == 200
    assert by_code.json()["capture_id"] == confirmation["capture_id"]


def test_disk_reserve_shown_in_status(tmp_path: Path, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent("http://127.0.0.1:9", env={"BOOTHSYNC_AGENT_DISK_RESERVE_BYTES": str(10**18)})

    assert agent.capture(b"x", "x.jpg").status_code == 507
    status = agent.status()

    assert "disk_reserve_bytes" in status["last_capture_error"]
    assert "New captures are being rejected" in status["message"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"BOOTHSYNC_AGENT_SERVER_URL": "127.0.0.1:8480"}, "starts with http:// or https:// (from BOOTHSYNC_AGENT_SERVER_URL)"),
        ({"BOOTHSYNC_AGENT_DEVICE_ID": "stall 07"}, "agent.device_id"),
        ({"BOOTHSYNC_AGENT_POLICY_MEDIA": "later"}, "use one of immediate, unmetered, after_event, local_only"),
        ({"BOOTHSYNC_LOG_LEVEL": "verbose"}, "invalid log level 'VERBOSE'"),
    ],
)
def test_agent_rejects_bad_setting_at_start(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "boothsync", "agent", "run", "--data", str(tmp_path / "data"), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", **env},
    )

    assert result.returncode == 2
    assert expected in result.stderr


def test_version_option() -> None:
    result = run_cli("--version")

    assert result.returncode == 0
    assert result.stdout.startswith("boothsync ")
