"""``boothsync demo``: the product's main job in one command.

It starts an ingest server, an agent and a flaky link between them on free
ports of 127.0.0.1, captures the bundled real sample files, waits until
everything is synced, checks every stored file's sha256 against what was
captured, and reports.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from boothsync.classes import CONTENT_CLASSES
from boothsync.flakylink import FlakyLinkThread, LinkProfile
from boothsync.processes import agent_process, free_port, server_process
from boothsync.server.filing import sha256_file

# The link a busy pop-up gets: about 16 Mbit/s, 30 ms each way, every
# connection cut every 2 seconds, and a 3-second blackout early on.
DEMO_LINK = LinkProfile(rate_bytes_per_s=2_000_000, latency_s=0.03, drop_every_s=2.0, blackouts=[(3.0, 6.0)])
DEMO_AGENT_ENV = {
    "BOOTHSYNC_AGENT_EVENT": "demo-market",
    "BOOTHSYNC_AGENT_DEVICE_ID": "stall-01",
    "BOOTHSYNC_AGENT_CHUNK_BYTES": str(256 * 1024),
    # A link cut every 2 s loses the chunk in flight; at 2 MB/s, 512 KiB
    # chunks keep that loss small.
    "BOOTHSYNC_AGENT_CHUNK_MAX_BYTES": str(512 * 1024),
    "BOOTHSYNC_AGENT_RETRY_BASE_S": "0.2",
    "BOOTHSYNC_AGENT_RETRY_MAX_S": "2",
    "BOOTHSYNC_AGENT_DISK_RESERVE_BYTES": str(50 * 1024 * 1024),
}
SAMPLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".heic", ".pdf", ".mov", ".mp4", ".gif", ".webp", ".tif", ".tiff"}


def sample_files() -> list[tuple[str, Path]]:
    """Return (class, path) of every bundled sample, by class folder."""
    root = Path(str(resources.files("boothsync") / "samples"))
    found = []
    for klass in CONTENT_CLASSES:
        folder = root / klass
        if folder.is_dir():
            found += [(klass, p) for p in sorted(folder.iterdir()) if p.suffix.lower() in SAMPLE_SUFFIXES]
    return found


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def run_demo(keep: Path | None = None, timeout_s: float = 300.0, progress: bool = True) -> dict[str, Any]:
    """Run the whole demo and return its report; ``report["ok"]`` is True only if all is synced and verified."""
    work = keep if keep is not None else Path(tempfile.mkdtemp(prefix="boothsync-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    server_port, agent_port = free_port(), free_port()
    server = server_process(work / "server", server_port, work / "logs" / "server.log")
    link = FlakyLinkThread("127.0.0.1", server_port, DEMO_LINK)
    agent = None
    started = time.monotonic()
    try:
        server.start().wait_ready(f"http://127.0.0.1:{server_port}/v1/health")
        link.start()
        agent = agent_process(
            work / "agent", agent_port, f"http://127.0.0.1:{link.port}", work / "logs" / "agent.log", DEMO_AGENT_ENV
        )
        agent.start().wait_ready(f"http://127.0.0.1:{agent_port}/v1/status")
        _say(progress, f"server on :{server_port}, agent on :{agent_port}, flaky link on :{link.port}")
        agent_url = f"http://127.0.0.1:{agent_port}"
        confirmations = _capture_samples(agent_url, progress)
        synced_all = _wait_synced(agent_url, len(confirmations), started + timeout_s, progress)
        report = _report(agent_url, f"http://127.0.0.1:{server_port}", confirmations, link.stats)
        report["timed_out"] = not synced_all
    finally:
        if agent is not None:
            agent.stop()
        link.stop()
        server.stop()
    report["duration_s"] = round(time.monotonic() - started, 2)
    report["kept"] = keep is not None
    report["logs_dir"] = str((work / "logs").resolve())
    if keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _capture_samples(agent_url: str, progress: bool) -> list[dict[str, Any]]:
    confirmations = []
    with httpx.Client(base_url=agent_url, timeout=60) as client:
        for klass, path in sample_files():
            with open(path, "rb") as handle:
                response = client.post("/v1/captures", files={"file": (path.name, handle)}, data={"class": klass})
            response.raise_for_status()
            confirmation = response.json()
            confirmations.append(confirmation)
            _say(progress, f"captured {confirmation['short_code']} {klass:8} {path.name}")
    return confirmations


def _wait_synced(agent_url: str, expected: int, deadline: float, progress: bool) -> bool:
    last_message = ""
    while time.monotonic() < deadline:
        status = httpx.get(agent_url + "/v1/status", timeout=10).json()
        if status["message"] != last_message:
            _say(progress, f"agent: {status['message']} (link {status['link']})")
            last_message = status["message"]
        if status["synced"] >= expected:
            return True
        time.sleep(0.25)
    return False


def _report(agent_url: str, server_url: str, confirmations: list[dict[str, Any]], link_stats: Any) -> dict[str, Any]:
    local = httpx.get(agent_url + "/v1/captures", timeout=30).json()["captures"]
    status = httpx.get(agent_url + "/v1/status", timeout=10).json()
    listing = httpx.get(server_url + "/v1/captures", timeout=30).json()
    storage_dir = Path(listing["storage_dir"])
    remote = {c["capture_id"]: c for c in listing["captures"]}

    by_class: dict[str, dict[str, int]] = {}
    latencies = []
    verified = 0
    failures = []
    for capture in local:
        entry = by_class.setdefault(capture["class"], {"captures": 0, "synced": 0, "verified": 0})
        entry["captures"] += 1
        if capture["state"] == "synced":
            entry["synced"] += 1
            latencies.append(capture["synced_at"] - capture["captured_at"])
        problem = _verify(capture, remote.get(capture["capture_id"]), storage_dir)
        if problem is None:
            verified += 1
            entry["verified"] += 1
        else:
            failures.append({"capture_id": capture["capture_id"], "problem": problem})

    synced = sum(1 for c in local if c["state"] == "synced")
    return {
        "ok": synced == len(confirmations) == verified,
        "captures": len(confirmations),
        "synced": synced,
        "verified": verified,
        "by_class": by_class,
        "sync_latency_s": {
            "median": round(statistics.median(latencies), 2) if latencies else None,
            "max": round(max(latencies), 2) if latencies else None,
        },
        "bytes_sent": status["bytes_sent"],
        "bytes_resent": status["bytes_resent"],
        "drops": link_stats.drops,
        "refused_during_blackout": link_stats.refused,
        "storage_dir": str(storage_dir),
        "failures": failures,
    }


def _verify(capture: dict[str, Any], remote: dict[str, Any] | None, storage_dir: Path) -> str | None:
    """Return why a capture is not verified at HQ, or None when every part matches byte for byte."""
    if remote is None:
        return "not in the server's index"
    remote_parts = {p["part"]: p for p in remote["parts"]}
    for part in capture["parts"]:
        if part["state"] in ("failed", "unavailable"):
            continue
        stored = remote_parts.get(part["part"])
        if stored is None or stored["state"] != "synced":
            return f"part {part['part']} is not synced at HQ"
        path = storage_dir / stored["path"]
        if not path.is_file():
            return f"part {part['part']} is missing at {path}"
        if sha256_file(path) != part["sha256"]:
            return f"part {part['part']} at {path} has a different sha256"
    return None


def print_report(report: dict[str, Any]) -> None:
    """Print the report for a person."""
    print()
    print(f"{'class':10} {'captured':>8} {'synced':>7} {'verified':>9}")
    for klass in CONTENT_CLASSES:
        entry = report["by_class"].get(klass)
        if entry:
            print(f"{klass:10} {entry['captures']:>8} {entry['synced']:>7} {entry['verified']:>9}")
    latency = report["sync_latency_s"]
    print()
    print(f"captures            {report['captures']} ({report['synced']} synced, {report['verified']} verified by sha256)")
    print(f"capture to synced   median {latency['median']} s, max {latency['max']} s")
    print(f"bytes sent          {report['bytes_sent']:,} ({report['bytes_resent']:,} re-sent after drops)")
    print(f"link                {report['drops']} connections dropped, {report['refused_during_blackout']} refused in a blackout")
    print(f"duration            {report['duration_s']} s")
    where = report["storage_dir"] if report["kept"] else f"{report['storage_dir']} (removed; use --keep DIR to keep it)"
    print(f"stored at HQ in     {where}")
    for failure in report["failures"]:
        print(f"NOT VERIFIED        {failure['capture_id']}: {failure['problem']}")
    print()
    print("OK: every capture is synced and verified." if report["ok"] else "FAILED: see above and the logs in " + report["logs_dir"])
