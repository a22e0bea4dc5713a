"""Benchmark capture intake: time from request start to the 201, against the disk's own limit, in one run.

Usage (from the repository root):

    .venv/bin/python benchmarks/intake/run.py [--size-mb 200] [--rounds 5] [--multipart]
        [--dir DIR] [--out FILE] [--agent-env NAME=VALUE ...] [--no-buffered-agent] [--compare-src DIR]

The script starts real ``boothsync agent run`` processes on 127.0.0.1, each
with its data directory below ``--dir`` (by default a new directory under
/tmp) and a server URL where nothing listens, so the uploader stays idle:
one with the default settings, one with BOOTHSYNC_AGENT_DIRECT_IO=false
(unless ``--no-buffered-agent``), and with ``--compare-src DIR`` one that
imports boothsync from DIR, such as the src/ folder of an older checkout.
Each round:

1. posts ``--size-mb`` MB of random bytes to each agent as a raw body to
   ``POST /v1/captures?class=media&filename=stall.mp4`` and, with
   ``--multipart``, as a multipart form, and checks the returned sha256;
2. writes the same bytes into a new file in the same file system in 1 MiB
   writes, then fsyncs the file and the directory once (the page cache
   path);
3. does the same with O_DIRECT from a page-aligned buffer, if the file
   system accepts O_DIRECT.

The order of the agents rotates from round to round. The body differs in
its first 8 bytes from one post to the next, so each capture is a new blob.
The client is http.client, which sends the body with one sendall call.
After the rounds, every real receipt in src/boothsync/samples/receipt/ is
posted once to each agent. Before each post the script waits until the
agent's processes are idle, so that derivative workers do not compete with
the capture. The report (markdown) goes to standard output and, with the
raw numbers, to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import http.client
import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode


from boothsync.durable import fsync_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import machine_facts, tree_cpu_seconds  # noqa: E402  (benchmarks/machine.py)
from boothsync.processes import ChildProcess, agent_process, free_port

REPO = Path(__file__).resolve().parents[2]
RECEIPTS = REPO / "src" / "boothsync" / "samples" / "receipt"
MIB = 1024 * 1024
PAGE = mmap.PAGESIZE
AGENT_ENV = {
    "BOOTHSYNC_AGENT_EVENT": "bench",
    "BOOTHSYNC_AGENT_DEVICE_ID": "bench-stall",
    "BOOTHSYNC_AGENT_DISK_RESERVE_BYTES": "0",
    "BOOTHSYNC_LOG_LEVEL": "INFO",
}
# Port 9 (discard) on 127.0.0.1: connections are refused, so the uploader backs off and stays idle.
NO_SERVER = "http://127.0.0.1:9"


def file_system_of(path: Path) -> str:
    output = subprocess.run(["df", "--output=fstype,source", str(path)], capture_output=True, text=True).stdout
    return " ".join(output.splitlines()[-1].split()) if output else "unknown"


def git_commit() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return f"{commit} (with uncommitted changes under src/)" if dirty else commit


def wait_idle(pid: int, timeout_s: float = 120.0) -> None:
    """Wait until the agent and its workers use under 5 % of a core over 0.5 s, at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = tree_cpu_seconds(pid)
        time.sleep(0.5)
        if tree_cpu_seconds(pid) - before < 0.025:
            return


def post_capture(port: int, body: bytes | memoryview, params: dict[str, str],
                 content_type: str = "application/octet-stream") -> tuple[float, dict[str, Any]]:
    """Post ``body`` and return the seconds from connect to the response status, and the JSON response."""
    path = "/v1/captures?" + urlencode(params)
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        elapsed = time.perf_counter() - started
        payload = json.loads(response.read())
    finally:
        connection.close()
    if response.status != 201:
        raise RuntimeError(f"capture failed with HTTP {response.status}: {payload}")
    return elapsed, payload


def multipart_body(data: bytes, filename: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"class\"\r\n\r\nmedia\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def buffered_write(directory: Path, data: memoryview) -> float:
    """Write ``data`` into a new file in 1 MiB writes, fsync it and its directory; return the seconds taken."""
    path = directory / f"limit-{uuid.uuid4().hex}.bin"
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for start in range(0, len(data), MIB):
            _write_all(fd, data[start:start + MIB])
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(directory)
    elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed


def direct_write(directory: Path, aligned: mmap.mmap, size: int) -> float | None:
    """Write the first ``size`` bytes of ``aligned`` with O_DIRECT in 1 MiB writes, then fsync.

    Returns the seconds taken, or None when the file system rejects O_DIRECT.
    The last partial page is written through the page cache after the
    O_DIRECT flag is cleared, as an O_DIRECT writer must.
    """
    path = directory / f"limit-direct-{uuid.uuid4().hex}.bin"
    started = time.perf_counter()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
    except OSError:
        return None
    view = memoryview(aligned)
    try:
        whole = size - size % PAGE
        try:
            for start in range(0, whole, MIB):
                _write_all(fd, view[start:min(start + MIB, whole)])
        except OSError:
            return None
        if whole < size:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            os.pwrite(fd, view[whole:size], whole)
        os.fsync(fd)
    finally:
        view.release()
        os.close(fd)
        fsync_dir(directory)
        elapsed = time.perf_counter() - started
        path.unlink(missing_ok=True)
    return elapsed


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Variant:
    """One agent under test: its name in the report, its extra environment, and its results."""

    name: str
    env: dict[str, str]
    process: ChildProcess | None = None
    port: int = 0
    raw_s: list[float] = field(default_factory=list)
    raw_cpu_s: list[float] = field(default_factory=list)
    multipart_s: list[float] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.proc is not None
        return self.process.proc.pid

    def start(self, work: Path) -> None:
        self.port = free_port()
        folder = work / self.name.replace(" ", "-").replace("=", "-")
        self.process = agent_process(folder / "data", self.port, NO_SERVER, folder / "agent.log",
                                     {**AGENT_ENV, **self.env})
        self.process.start()
        self.process.wait_ready(f"http://127.0.0.1:{self.port}/v1/status")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def results(self) -> dict[str, Any]:
        return {"name": self.name, "env": self.env, "raw_s": self.raw_s, "raw_cpu_s": self.raw_cpu_s,
                "multipart_s": self.multipart_s, "receipts": self.receipts}


def build_variants(options: argparse.Namespace) -> list[Variant]:
    extra = dict(item.split("=", 1) for item in options.agent_env)
    variants = [Variant("agent", extra)]
    if not options.no_buffered_agent:
        variants.append(Variant("agent direct_io=false", {**extra, "BOOTHSYNC_AGENT_DIRECT_IO": "false"}))
    if options.compare_src is not None:
        path = str(options.compare_src.resolve())
        variants.append(Variant(f"agent from {options.compare_src}", {**extra, "PYTHONPATH": path}))
    return variants


def post_large(variant: Variant, data: bytearray, round_index: int, options: argparse.Namespace) -> None:
    size = len(data)
    # A new first byte per capture gives each one its own blob.
    data[:8] = (round_index * 1000 + variant.port).to_bytes(8, "big")
    wait_idle(variant.pid)
    cpu_before = tree_cpu_seconds(variant.pid)
    elapsed, confirmation = post_capture(variant.port, data, {"class": "media", "filename": "stall.mp4"})
    variant.raw_cpu_s.append(tree_cpu_seconds(variant.pid) - cpu_before)
    if confirmation["size"] != size or confirmation["sha256"] != hashlib.sha256(data).hexdigest():
        raise RuntimeError(f"{variant.name} stored {confirmation['size']} bytes with another sha256")
    variant.raw_s.append(elapsed)
    if options.multipart:
        data[:8] = (round_index * 1000 + variant.port + 500).to_bytes(8, "big")
        body, content_type = multipart_body(bytes(data), "stall.mp4")
        wait_idle(variant.pid)
        elapsed, _ = post_capture(variant.port, body, {}, content_type)
        variant.multipart_s.append(elapsed)


def post_receipts(variant: Variant) -> None:
    for path in sorted(RECEIPTS.glob("*.jpg")):
        wait_idle(variant.pid)
        elapsed, _ = post_capture(variant.port, path.read_bytes(), {"class": "receipt", "filename": path.name},
                                  "image/jpeg")
        variant.receipts.append({"file": path.name, "bytes": path.stat().st_size, "seconds": elapsed})


def run(options: argparse.Namespace, work: Path) -> dict[str, Any]:
    size = options.size_mb * 1_000_000
    data = bytearray(os.urandom(size))
    aligned = mmap.mmap(-1, (size + PAGE - 1) // PAGE * PAGE)
    variants = build_variants(options)
    limits: dict[str, list[float]] = {"buffered_s": [], "direct_s": []}
    try:
        for variant in variants:
            variant.start(work)
        file_dir = work / "file-writes"
        file_dir.mkdir()
        for round_index in range(options.rounds):
            # Rotate the order, so that no agent always runs first or last in a round.
            shift = round_index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                post_large(variant, data, round_index, options)
            limits["buffered_s"].append(buffered_write(file_dir, memoryview(data)))
            aligned[:size] = data
            direct = direct_write(file_dir, aligned, size)
            if direct is not None:
                limits["direct_s"].append(direct)
            progress = [f"{v.name} {size / v.raw_s[-1] / 1e6:.0f} MB/s" for v in variants]
            progress.append(f"buffered file {size / limits['buffered_s'][-1] / 1e6:.0f} MB/s")
            if direct is not None:
                progress.append(f"O_DIRECT file {size / direct / 1e6:.0f} MB/s")
            print(f"round {round_index + 1}: " + ", ".join(progress), file=sys.stderr)
        for variant in variants:
            post_receipts(variant)
    finally:
        for variant in variants:
            variant.stop()
    return {"size_bytes": size, "file_system": file_system_of(work), **limits,
            "agents": [variant.results() for variant in variants]}


def report(results: dict[str, Any], facts: dict[str, Any], command: str) -> str:
    size = results["size_bytes"]

    def rate(seconds: list[float]) -> str:
        if not seconds:
            return "n/a | n/a"
        return f"{median(seconds):.3f} | {size / median(seconds) / 1e6:.0f}"

    def ratio(seconds: list[float], limit: list[float]) -> str:
        return f"{median(seconds) / median(limit):.2f}" if seconds and limit else "n/a"

    buffered, direct = results["buffered_s"], results["direct_s"]
    lines = [
        f"Command: `{command}`, {facts['date_utc']}, commit {facts['commit']}.",
        f"Machine: {facts['nproc']} cores ({facts['cpu_model']}), {facts['memory_gib']} GiB, Linux {facts['kernel']},"
        f" Python {facts['python']}; data on {results['file_system']}.",
        "",
        f"{size / 1e6:.0f} MB of random bytes, median of {len(buffered)} rounds:",
        "",
        "| what | seconds | MB/s | time / buffered file | time / O_DIRECT file | agent CPU s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for agent in results["agents"]:
        lines.append(f"| {agent['name']}, raw body, request start to 201 | {rate(agent['raw_s'])}"
                     f" | {ratio(agent['raw_s'], buffered)} | {ratio(agent['raw_s'], direct)}"
                     f" | {median(agent['raw_cpu_s']):.2f} |")
        if agent["multipart_s"]:
            lines.append(f"| {agent['name']}, multipart form, request start to 201 | {rate(agent['multipart_s'])}"
                         f" | {ratio(agent['multipart_s'], buffered)} | {ratio(agent['multipart_s'], direct)} | |")
    lines += [
        f"| file, 1 MiB buffered writes, one fsync | {rate(buffered)} | 1.00 | {ratio(buffered, direct)} | |",
        f"| file, 1 MiB O_DIRECT writes, one fsync | {rate(direct)} | {ratio(direct, buffered)} | 1.00 | |",
        "",
    ]
    for agent in results["agents"]:
        receipt_ms = [r["seconds"] * 1000 for r in agent["receipts"]]
        if receipt_ms:
            sizes = [r["bytes"] for r in agent["receipts"]]
            lines.append(
                f"Receipts, {agent['name']}: {len(receipt_ms)} real JPEGs of {min(sizes) // 1000} to"
                f" {max(sizes) // 1000} kB, request start to 201: median {median(receipt_ms):.1f} ms,"
                f" max {max(receipt_ms):.1f} ms."
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200, help="size of the large capture in MB (10^6 bytes)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of large capture and file writes")
    parser.add_argument("--multipart", action="store_true", help="also post the large capture as a multipart form")
    parser.add_argument("--dir", type=Path, default=None,
                        help="directory for the agent's data and the file writes (default: a new one under /tmp)")
    parser.add_argument("--out", type=Path, default=None, help="write the raw numbers to this JSON file")
    parser.add_argument("--agent-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment variable for every agent; may repeat")
    parser.add_argument("--no-buffered-agent", action="store_true",
                        help="skip the second agent, which runs with BOOTHSYNC_AGENT_DIRECT_IO=false")
    parser.add_argument("--compare-src", type=Path, default=None, metavar="DIR",
                        help="also run an agent that imports boothsync from DIR (a src/ folder of another checkout)")
    options = parser.parse_args()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(name, None)

    facts = {**machine_facts(), "commit": git_commit()}
    command = " ".join(["benchmarks/intake/run.py", *sys.argv[1:]])
    if options.dir is None:
        with tempfile.TemporaryDirectory(prefix="intake-bench-") as work:
            results = run(options, Path(work))
    else:
        options.dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="intake-bench-", dir=options.dir))
        results = run(options, work)
    text = report(results, facts, command)
    print(text)
    if options.out is not None:
        options.out.write_text(json.dumps({"facts": facts, "command": command, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
