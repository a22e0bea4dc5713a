"""Benchmark the agent's uploader against a tuspy baseline on the same flaky link, in one run.

Usage (from the repository root):

    .venv/bin/python benchmarks/uploader/run.py [--streams 1,2] [--rounds N] [--out DIR]
        [--agent-env NAME=VALUE ...] [--no-baseline] [--baseline-retries N] [--baseline-retry-delay S]

Each uploader gets a fresh ``boothsync server run`` on 127.0.0.1 behind a
fresh FlakyLink. The link (plan.link_profile()) has 1,000,000 bytes/s, 75 ms
each way, a connection drop every 20 s and a blackout from 60 s to 90 s of
link time. Every uploader gets the same capture schedule
(plan.build_schedule(): a 200 MB random-byte stall.mp4 first, then 60
receipts, 10 consent forms and 5 PDFs over about three minutes). The uploaders are the boothsync agent once per
``--streams`` value (BOOTHSYNC_AGENT_SYNC_STREAMS) and the tuspy baseline
(baseline.py). They run one after the other, and the order rotates from one
round to the next. The report (markdown) goes to standard output and, with
the raw numbers and the logs, to the output directory.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


from boothsync.flakylink import FlakyLinkThread
from boothsync.processes import ChildProcess, agent_process, free_port, server_process

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import machine_facts, tree_cpu_seconds  # noqa: E402  (benchmarks/machine.py)

from agent_side import AgentObservation, collect_captures, feed_agent, poll_until_drained, server_part_states
from metrics import judge_drain, markdown_table, summarize
from plan import MIB, REPO, VIDEO_BYTES, PlannedCapture, build_schedule, link_profile, save_schedule, write_video

log = logging.getLogger("benchmark")

HERE = Path(__file__).resolve().parent
# A run that has not drained this long after the link started is stopped and reported as not drained.
RUN_DEADLINE_S = 600.0
AGENT_ENV = {
    "BOOTHSYNC_AGENT_EVENT": "bench",
    "BOOTHSYNC_AGENT_DEVICE_ID": "bench-stall",
    "BOOTHSYNC_LOG_LEVEL": "DEBUG",
}
SERVER_ENV = {"BOOTHSYNC_LOG_LEVEL": "INFO"}
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def code_fingerprint() -> str:
    """Return the commit, whether src/ has uncommitted changes, and a sha256 prefix of src/boothsync's .py files.

    Each uploader run records it when it starts, because the servers and
    agents import the working tree (an editable install) at that moment.
    """
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    digest = hashlib.sha256()
    for path in sorted((REPO / "src" / "boothsync").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    state = "with uncommitted changes under src/" if dirty else "clean"
    return f"{commit} ({state}), sources {digest.hexdigest()[:12]}"


def machine_busy_seconds() -> float:
    """Return the CPU seconds all cores have spent busy since boot, from the first line of /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_load(busy_s: float, wall_s: float, own_cpu: dict[str, float]) -> float:
    """Return the cores that processes outside this run used on average: busy CPU seconds minus the run's own, per second."""
    own = sum(v for v in own_cpu.values() if not math.isnan(v))
    return (busy_s - own) / wall_s


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(MIB):
            digest.update(block)
    return digest.hexdigest()


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
_CHUNK = re.compile(r"chunk size (\d+) -> (\d+) bytes because (.*)$")
_RETRY = re.compile(r"sync failed, retrying attempt=(\d+) delay_s=([\d.]+)")


def log_time(line: str) -> float | None:
    match = _LOG_TIME.match(line)
    if match is None:
        return None
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000


def read_agent_log(path: Path, link_start: float) -> dict[str, Any]:
    """Pick the uploader's chunk sizes, preemptions, retries and recoveries out of its DEBUG log."""
    sizes: list[int] = []
    changes: list[dict[str, Any]] = []
    retries: list[dict[str, Any]] = []
    online: list[float] = []
    paused = 0
    for line in path.read_text(errors="replace").splitlines():
        at = log_time(line)
        link_t = round(at - link_start, 3) if at is not None else None
        if match := _CHUNK.search(line):
            old, new = int(match.group(1)), int(match.group(2))
            sizes += [old, new]
            changes.append({"t": link_t, "from": old, "to": new, "reason": match.group(3)})
        elif match := _RETRY.search(line):
            retries.append({"t": link_t, "attempt": int(match.group(1)), "delay_s": float(match.group(2))})
        elif "link back online" in line and link_t is not None:
            online.append(link_t)
        elif "part paused for a more important one" in line:
            paused += 1
    return {
        "chunk_min": min(sizes) if sizes else None,
        "chunk_max": max(sizes) if sizes else None,
        "chunk_changes": changes,
        "retries": retries,
        "back_online_at": online,
        "preemptions": paused,
    }


class Stack:
    """A server behind a FlakyLink for one uploader run. stop() ends both."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.server_port = free_port()
        self.server = server_process(run_dir / "server", self.server_port, run_dir / "server.log", SERVER_ENV)
        self.link_port = free_port()
        self.link = FlakyLinkThread("127.0.0.1", self.server_port, link_profile(), listen_port=self.link_port)
        self.link_started = False
        self.link_start = 0.0

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    @property
    def link_url(self) -> str:
        return f"http://127.0.0.1:{self.link_port}"

    def start_server(self) -> None:
        self.server.start()
        self.server.wait_ready(self.server_url + "/v1/health")

    def start_link(self) -> float:
        """Start the link and return the wall-clock time of its link time 0."""
        self.link_start = time.time()
        self.link.start()
        self.link_started = True
        return self.link_start

    def link_counters(self) -> dict[str, int]:
        stats = self.link.stats
        return {"drops": stats.drops, "refused": stats.refused, "connections": stats.connections,
                "bytes_up": stats.bytes_up, "bytes_down": stats.bytes_down}

    def stop(self) -> None:
        if self.link_started:
            self.link.stop()
        self.server.stop()


def run_agent(name: str, streams: int, run_dir: Path, schedule: list[PlannedCapture],
              extra_env: dict[str, str]) -> dict[str, Any]:
    stack = Stack(run_dir)
    agent: ChildProcess | None = None
    own_cpu = time.process_time()
    busy_start, started = machine_busy_seconds(), time.time()
    code = code_fingerprint()
    try:
        stack.start_server()
        agent_port = free_port()
        env = {**AGENT_ENV, "BOOTHSYNC_AGENT_SYNC_STREAMS": str(streams), **extra_env}
        agent = agent_process(run_dir / "agent", agent_port, stack.link_url, run_dir / "agent.log", env)
        agent.start()
        agent_url = f"http://127.0.0.1:{agent_port}"
        agent.wait_ready(agent_url + "/v1/status")

        link_start = stack.start_link()
        observation = AgentObservation()
        feeder = threading.Thread(target=feed_agent, args=(agent_url, schedule, link_start, observation), daemon=True)
        feeder.start()
        poll_until_drained(agent_url, len(schedule), observation, link_start + RUN_DEADLINE_S)
        ended_at = time.time()
        link = stack.link_counters()
        feeder.join(5)
        collect_captures(agent_url, observation)
        cpu = {"agent": tree_cpu_seconds(agent.proc.pid), "server": tree_cpu_seconds(stack.server.proc.pid),
               "link proxy and benchmark": time.process_time() - own_cpu}
        other_cores = other_load(machine_busy_seconds() - busy_start, time.time() - started, cpu)
        ids = [c["capture_id"] for c in observation.captures]
        server_states = server_part_states(stack.server_url, ids)
    finally:
        if agent is not None:
            agent.stop()
        stack.stop()

    by_id = {c["capture_id"]: c for c in observation.captures}
    items = []
    for record in observation.feed:
        capture = by_id.get(record.capture_id or "")
        parts = capture["parts"] if capture else []
        original = next((p for p in parts if p["part"] == "original"), None)
        items.append({
            "klass": record.planned.klass,
            "filename": record.planned.filename,
            "size": record.planned.size,
            "captured_at": record.captured_at,
            "acknowledged_at": record.acknowledged_at,
            "original_synced_at": original["synced_at"] if original else None,
            "capture_synced_at": capture["synced_at"] if capture and capture["state"] == "synced" else None,
            "bytes_acked": sum(p["size"] or 0 for p in parts if p["state"] == "synced"),
            "parts": {p["part"]: p["state"] for p in parts},
        })
    status = observation.final_status
    return {
        "name": name,
        "kind": "agent",
        "streams": streams,
        "env": env,
        "link_start": link_start,
        "ended_at": ended_at,
        "drained": observation.drained,
        "link": link,
        "bytes_sent": status.get("bytes_sent", 0),
        "bytes_resent": status.get("bytes_resent", 0),
        "chunk_bytes": int(env.get("BOOTHSYNC_AGENT_CHUNK_BYTES", MIB)),
        "items": items,
        "status_samples": observation.status_samples,
        "server_part_states": server_states,
        "verified": observation.drained and set(server_states) == {"synced"},
        "cpu_s": cpu,
        "other_cores": other_cores,
        "code": code,
        "agent_log": read_agent_log(run_dir / "agent.log", link_start),
        "capture_errors": [r.error for r in observation.feed if r.error],
    }


def run_baseline(run_dir: Path, schedule_path: Path, schedule: list[PlannedCapture],
                 expected_sha: dict[str, str], options: argparse.Namespace) -> dict[str, Any]:
    stack = Stack(run_dir)
    child: subprocess.Popen | None = None
    own_cpu = time.process_time()
    busy_start, started = machine_busy_seconds(), time.time()
    code = code_fingerprint()
    try:
        stack.start_server()
        result_path = run_dir / "baseline.json"
        link_start = stack.start_link()
        with open(run_dir / "baseline.log", "ab") as log_file:
            child = subprocess.Popen(
                [sys.executable, str(HERE / "baseline.py"), "--endpoint", stack.link_url + "/files/",
                 "--schedule", str(schedule_path), "--link-start", repr(link_start), "--out", str(result_path),
                 "--retries", str(options.baseline_retries), "--retry-delay", str(options.baseline_retry_delay)],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        try:
            child.wait(timeout=link_start + RUN_DEADLINE_S - time.time())
        except subprocess.TimeoutExpired:
            log.error("baseline did not drain within %.0f s of link time; stopping it", RUN_DEADLINE_S)
        ended_at = time.time()
        link = stack.link_counters()
        cpu = {"server": tree_cpu_seconds(stack.server.proc.pid), "link proxy and benchmark": time.process_time() - own_cpu}
        busy_end, ended_wall = machine_busy_seconds(), time.time()
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        stack.stop()

    result = json.loads(result_path.read_text()) if result_path.exists() else {"files": [], "bytes_sent": 0, "bytes_resent": 0}
    cpu["baseline"] = result.get("cpu_s", float("nan"))
    other_cores = other_load(busy_end - busy_start, ended_wall - started, cpu)
    stored = sorted(sha256_of(p) for p in (run_dir / "server" / "files").rglob("*") if p.is_file())
    wanted = sorted(expected_sha[c.path] for c in schedule)
    done = {f["number"]: f for f in result["files"]}
    items = []
    for planned in schedule:
        entry = done.get(planned.number)
        items.append({
            "klass": planned.klass,
            "filename": planned.filename,
            "size": planned.size,
            "captured_at": entry["captured_at"] if entry else link_start + planned.at_s,
            "original_synced_at": entry["synced_at"] if entry else None,
            "capture_synced_at": entry["synced_at"] if entry else None,
            "bytes_acked": planned.size if entry else 0,
            "failures": entry["failures"] if entry else None,
        })
    return {
        "name": "baseline",
        "kind": "baseline",
        "link_start": link_start,
        "ended_at": ended_at,
        "drained": len(done) == len(schedule),
        "link": link,
        "bytes_sent": result["bytes_sent"],
        "bytes_resent": result["bytes_resent"],
        "patches": result.get("patches"),
        "chunk_bytes": result.get("chunk_bytes", MIB),
        "retries": options.baseline_retries,
        "retry_delay_s": options.baseline_retry_delay,
        "items": items,
        "verified": stored == wanted,
        "cpu_s": cpu,
        "other_cores": other_cores,
        "code": code,
    }


def free_disk(run_dir: Path) -> None:
    """Delete the stored bytes of a finished run but keep its logs, journals and indexes."""
    for folder in ("server/files", "server/uploads", "agent/blobs"):
        shutil.rmtree(run_dir / folder, ignore_errors=True)


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("BOOTHSYNC_"):
            raise SystemExit(f"invalid --agent-env {pair!r}: use NAME=VALUE with a BOOTHSYNC_ variable name")
        env[name] = value
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,2", help="comma-separated sync_streams values to run the agent with (default 1,2)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all uploaders; the order rotates each round (default 1)")
    parser.add_argument("--out", type=Path, help="output directory (default: a new directory under /tmp)")
    parser.add_argument("--agent-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment variable for every agent run, e.g. BOOTHSYNC_AGENT_CHUNK_TARGET_S=4")
    parser.add_argument("--no-baseline", action="store_true", help="run only the agent")
    parser.add_argument("--baseline-retries", type=int, default=5, help="tuspy retries per chunk (default 5)")
    parser.add_argument("--baseline-retry-delay", type=float, default=1.0, help="tuspy retry delay in seconds (default 1)")
    parser.add_argument("--video-bytes", type=int, default=VIDEO_BYTES,
                        help="size of the random stall.mp4 (default 200,000,000); smaller only for a quick trial")
    parser.add_argument("--keep-data", action="store_true", help="keep the uploaded bytes of each run")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # SIGTERM raises SystemExit, so the finally blocks stop the servers and agents this run started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.getLogger("boothsync.flakylink").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    # Benchmark traffic stays on 127.0.0.1: no proxy from the environment may reroute it.
    for name in PROXY_VARIABLES:
        os.environ.pop(name, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

    streams = [int(s) for s in options.streams.split(",") if s]
    extra_env = parse_env(options.agent_env)
    out = options.out or Path(f"/tmp/boothsync-uploader-bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    video = write_video(out / "stall.mp4", options.video_bytes)
    schedule = build_schedule(video)
    schedule_path = out / "schedule.json"
    save_schedule(schedule, schedule_path)
    expected_sha = {c.path: sha256_of(Path(c.path)) for c in schedule}
    facts = {**machine_facts(), "tuspy": importlib.metadata.version("tuspy")}
    command = " ".join([".venv/bin/python", "benchmarks/uploader/run.py", *sys.argv[1:]])
    log.info("output in %s; %d captures, %.1f MB", out, len(schedule), sum(c.size for c in schedule) / 1e6)

    uploaders = ([] if options.no_baseline else ["baseline"]) + [f"agent-streams-{n}" for n in streams]
    runs = []
    started = time.time()
    for round_number in range(options.rounds):
        shift = round_number % len(uploaders)
        order = uploaders[shift:] + uploaders[:shift]
        for name in order:
            run_dir = out / f"round-{round_number + 1}" / name
            run_dir.mkdir(parents=True, exist_ok=True)
            log.info("round %d: %s", round_number + 1, name)
            if name == "baseline":
                record = run_baseline(run_dir, schedule_path, schedule, expected_sha, options)
            else:
                record = run_agent(name, int(name.rsplit("-", 1)[1]), run_dir, schedule, extra_env)
            record["round"] = round_number + 1
            (run_dir / "record.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
            if not options.keep_data:
                free_disk(run_dir)
            runs.append(record)
            log.info("%s: drained=%s verified=%s", name, record["drained"], record["verified"])

    sections = [
        f"Command: `{command}`",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()),
        f"Wall time of the whole command: {(time.time() - started) / 60:.1f} min",
    ]
    results = {"command": command, "machine": facts, "rounds": []}
    for round_number in range(1, options.rounds + 1):
        in_round = [r for r in runs if r["round"] == round_number]
        summaries = [summarize(r) for r in in_round]
        judge_drain(summaries)
        for summary, record in zip(summaries, in_round):
            summary["verified"] = record["verified"]
            summary["cpu_s"] = record["cpu_s"]
            summary["other_cores"] = record["other_cores"]
            summary["code"] = record["code"]
            if record["kind"] == "agent":
                agent_log = record["agent_log"]
                summary["agent_log"] = {k: agent_log[k] for k in ("chunk_min", "chunk_max", "preemptions", "back_online_at")}
                summary["agent_log"]["max_retry_delay_s"] = max((r["delay_s"] for r in agent_log["retries"]), default=None)
        results["rounds"].append(summaries)
        order = ", ".join(s["name"] for s in summaries)
        sections.append(f"Round {round_number} (in this order: {order})\n\n" + markdown_table(summaries))
        for summary in summaries:
            notes = [
                f"code {summary['code']}",
                f"verified={summary['verified']}",
                "CPU seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["cpu_s"].items()),
                f"other programs used {summary['other_cores']:.2f} cores on average during the run",
            ]
            if "agent_log" in summary:
                a = summary["agent_log"]
                notes.append(f"chunk sizes {a['chunk_min']}..{a['chunk_max']} bytes, {a['preemptions']} preemptions,"
                             f" max retry delay {a['max_retry_delay_s']} s, back online at link t={a['back_online_at']}")
            sections.append(f"- {summary['name']}: " + "; ".join(notes))
    report = "\n\n".join(sections) + "\n"
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (out / "report.md").write_text(report, encoding="utf-8")
    print(report)
    return 0 if all(r["verified"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
