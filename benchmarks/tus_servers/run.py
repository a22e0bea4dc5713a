"""Benchmark boothsync's tus server against @tus/server and tuspyserver in one run.

Usage (from the repository root, after benchmarks/tus_servers/setup.sh):

    .venv/bin/python benchmarks/tus_servers/run.py [--cases a,b,c,d] [--rounds N] [--out docs/benchmarks.md]

For every round and case, each server is started fresh on 127.0.0.1 with an
empty store in a temporary directory, warmed up, left idle for ``--wait``
seconds after a ``sync``, and then timed with load.py in a separate process.
The servers take turns in an order that rotates from one case and round to
the next. The same run measures the disk (sequential writes and small files
with fsync) and the load client's ceiling against sink_server.py, and ends
with a markdown report on standard output and, with ``--out``, in a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import disk
import procstats
import report
from load import CASES, GIB, MIB

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BOOTHSYNC_PYTHON = REPO / ".venv" / "bin" / "python"
PEERS_PYTHON = REPO / "benchmarks" / ".venv-peers" / "bin" / "python"
NODE_MODULES = HERE / "node_modules"

# Every server gets the same upload size limit: 64 GiB.
MAX_UPLOAD_BYTES = 64 * GIB
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# load.py stops itself after this many seconds, and run.py waits 60 s longer.
LOAD_TIMEOUT_S = 900.0
SMALL_FILES = 2000
SMALL_FILE_BYTES = 50_000
# A case that stores this many files or more keeps its stores until the end.
MANY_FILES = 100


@dataclass(frozen=True)
class ServerKind:
    """How to start one of the servers under test."""

    key: str
    title: str
    # "{store}", "{port}" and "{snapshot}" in argv and env are filled in per run.
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stores_data: bool = True


SERVERS: dict[str, ServerKind] = {
    "boothsync": ServerKind(
        "boothsync",
        "boothsync",
        [str(BOOTHSYNC_PYTHON), "-m", "boothsync", "server", "run", "--data", "{store}", "--port", "{port}"],
        # PYTHONPATH comes before the editable install's path entry, so the
        # server imports the snapshot of src/ taken when the run started.
        env={"BOOTHSYNC_SERVER_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES), "PYTHONPATH": "{snapshot}"},
    ),
    "tus-node": ServerKind(
        "tus-node",
        report.NODE_TITLE,
        ["node", str(HERE / "tus_node_server.js"), "--dir", "{store}", "--port", "{port}"],
    ),
    "tuspyserver": ServerKind(
        "tuspyserver",
        "tuspyserver",
        [str(PEERS_PYTHON), str(HERE / "tuspy_server.py"), "--dir", "{store}", "--port", "{port}"],
    ),
    "sink": ServerKind(
        "sink",
        "sink (discards bodies)",
        [sys.executable, str(HERE / "sink_server.py"), "--port", "{port}"],
        stores_data=False,
    ),
}
CONTENDERS = ["boothsync", "tus-node", "tuspyserver"]


class BenchmarkError(Exception):
    """Raised when a server or the load client cannot be run at all."""


def main() -> None:
    args = parse_args()
    if args.from_json:
        publish(json.loads(args.from_json.read_text()), args)
        return
    started = time.time()
    check_installed(args.servers)
    tmp_root = make_tmp_root(args.tmp_root)
    log(f"stores in {tmp_root} ({describe_filesystem(tmp_root)})")
    results: dict = {"runs": [], "repeated": [], "disk": [], "load_average_start": os.getloadavg()}
    try:
        snapshot = snapshot_source(tmp_root)
        results["boothsync_source"] = {"git": git_describe(), "digest": source_digest(snapshot)}
        log(f"boothsync runs from a copy of src/ in {snapshot}: {results['boothsync_source']}")
        for round_index in range(max(args.rounds_by_case.values())):
            if args.disk:
                results["disk"].extend(measure_disk(tmp_root, round_index, args.wait))
            for case_index, case in enumerate(args.cases):
                if round_index >= args.rounds_by_case[case]:
                    continue
                for server in run_order(args.servers, round_index + case_index):
                    for attempt in range(args.retries + 1):
                        record = run_once(SERVERS[server], case, round_index, tmp_root, snapshot, args.wait)
                        log(describe_run(record, started))
                        if record.get("other_cores", 0.0) <= args.max_other_load or attempt == args.retries:
                            break
                        results["repeated"].append(record)
                        log(f"other programs used {record['other_cores']:.2f} cores during that run, so it runs again")
                    results["runs"].append(record)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

    results["facts"] = report.machine_facts(BOOTHSYNC_PYTHON, PEERS_PYTHON, NODE_MODULES, describe_filesystem(args.tmp_root))
    results["command"] = shlex.join(sys.orig_argv)
    results["servers"] = args.servers
    results["max_other_load"] = args.max_other_load
    results["rounds_by_case"] = args.rounds_by_case
    results["started"] = started
    results["load_average_end"] = os.getloadavg()
    results["total_s"] = time.time() - started
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        log(f"wrote the raw results to {args.json}")
    publish(results, args)


def publish(results: dict, args: argparse.Namespace) -> None:
    """Print the report of ``results`` and write it into ``--out`` when given."""
    markdown = report.render(results, {key: kind.title for key, kind in SERVERS.items()})
    print(markdown)
    if args.out:
        report.write_into(args.out, markdown)
        log(f"wrote the report into {args.out}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="a,b,c,d", help="Comma-separated cases to run, from a, b, c, d (default: all).")
    parser.add_argument("--rounds", type=int, default=3, help="Timed runs of each server per case (default: 3).")
    parser.add_argument(
        "--large-rounds", type=int, default=None,
        help="Rounds for the 1 GiB cases a, b and c, when fewer than --rounds are wanted (default: --rounds).",
    )
    parser.add_argument(
        "--servers", default=",".join(CONTENDERS + ["sink"]),
        help="Comma-separated servers, from boothsync, tus-node, tuspyserver, sink (default: all).",
    )
    parser.add_argument("--wait", type=float, default=8.0, help="Idle seconds after sync before each timed run (default: 8).")
    parser.add_argument(
        "--max-other-load", type=float, default=0.5,
        help="Repeat a run when other programs used more than this many cores during it (default: 0.5).",
    )
    parser.add_argument("--retries", type=int, default=2, help="How often to repeat one such run at most (default: 2).")
    parser.add_argument("--no-disk", dest="disk", action="store_false", help="Skip the disk measurements.")
    parser.add_argument(
        "--tmp-root", type=Path, default=Path(tempfile.gettempdir()),
        help="Directory for the stores, on the repository's file system and not tmpfs (default: the system temp dir).",
    )
    parser.add_argument("--out", type=Path, help="Markdown file to write the report into, between its result markers.")
    parser.add_argument("--json", type=Path, help="File to write every raw measurement to, as JSON.")
    parser.add_argument(
        "--from-json", type=Path,
        help="Measure nothing: render the report of a file written by --json, for example after changing report.py.",
    )
    args = parser.parse_args()

    args.cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = [case for case in args.cases if case not in CASES or case == "warmup"]
    if unknown or not args.cases:
        parser.error(f"invalid --cases {','.join(unknown) or '(empty)'}: choose from a, b, c, d")
    args.servers = [server.strip() for server in args.servers.split(",") if server.strip()]
    unknown = [server for server in args.servers if server not in SERVERS]
    if unknown or not args.servers:
        parser.error(f"invalid --servers {','.join(unknown) or '(empty)'}: choose from {', '.join(SERVERS)}")
    if args.rounds < 1 or (args.large_rounds is not None and args.large_rounds < 1):
        parser.error("--rounds and --large-rounds must be at least 1")
    large = args.rounds if args.large_rounds is None else args.large_rounds
    args.rounds_by_case = {case: (large if case in ("a", "b", "c") else args.rounds) for case in args.cases}
    return args


def check_installed(servers: list[str]) -> None:
    """Fail early with the fix when a server under test is not installed."""
    missing = []
    if "boothsync" in servers and not BOOTHSYNC_PYTHON.exists():
        missing.append(f"{BOOTHSYNC_PYTHON} (create the project's venv and pip install -e .)")
    if "tus-node" in servers and not (NODE_MODULES / "@tus" / "server").is_dir():
        missing.append(f"{NODE_MODULES}/@tus/server (run benchmarks/tus_servers/setup.sh)")
    if "tus-node" in servers and shutil.which("node") is None:
        missing.append("node on PATH (install Node.js 20.19 or later)")
    if "tuspyserver" in servers and not PEERS_PYTHON.exists():
        missing.append(f"{PEERS_PYTHON} (run benchmarks/tus_servers/setup.sh)")
    if missing:
        raise SystemExit("run.py: missing: " + "; ".join(missing))


def make_tmp_root(parent: Path) -> Path:
    """Create the directory for all stores, rejecting tmpfs and any file system other than the repository's."""
    parent = parent.resolve()
    if os.stat(parent).st_dev != os.stat(REPO).st_dev:
        raise SystemExit(f"run.py: --tmp-root {parent} is not on the file system of {REPO}: pass a directory on that disk")
    fstype = filesystem_of(parent)[1]
    if fstype in ("tmpfs", "ramfs"):
        raise SystemExit(f"run.py: --tmp-root {parent} is on {fstype}: pass a directory on a real disk")
    return Path(tempfile.mkdtemp(prefix="boothsync-bench-", dir=parent))


def filesystem_of(path: Path) -> tuple[str, str]:
    """Return the device and file system type of ``path``, as df reports them."""
    output = subprocess.run(["df", "--output=source,fstype", str(path)], capture_output=True, text=True, check=True).stdout
    source, fstype = output.splitlines()[1].split()
    return source, fstype


def describe_filesystem(path: Path) -> str:
    source, fstype = filesystem_of(path)
    return f"{source}, {fstype}"


def run_order(servers: list[str], turn: int) -> list[str]:
    """Return the sink first, then the contenders rotated by ``turn``, so each goes first in turn."""
    contenders = [server for server in CONTENDERS if server in servers]
    shift = turn % len(contenders) if contenders else 0
    first = ["sink"] if "sink" in servers else []
    return first + contenders[shift:] + contenders[:shift]


def snapshot_source(tmp_root: Path) -> Path:
    """Copy boothsync's package into ``tmp_root``, so every round runs the same code while others edit src/."""
    snapshot = tmp_root / "boothsync-src"
    shutil.copytree(REPO / "src" / "boothsync", snapshot / "boothsync", ignore=shutil.ignore_patterns("__pycache__"))
    probe = subprocess.run(
        [str(BOOTHSYNC_PYTHON), "-c", "import boothsync; print(boothsync.__file__)"],
        cwd=tmp_root, env={**os.environ, "PYTHONPATH": str(snapshot)}, capture_output=True, text=True,
    )
    if probe.returncode != 0 or not probe.stdout.strip().startswith(str(snapshot)):
        raise BenchmarkError(f"boothsync does not import from the copy in {snapshot}: {probe.stdout.strip()} {probe.stderr.strip()[-300:]}")
    return snapshot


def source_digest(snapshot: Path) -> str:
    """Return a short sha256 over the copied package's Python files, to tell one copy of the code from another."""
    digest = hashlib.sha256()
    for path in sorted(snapshot.rglob("*.py")):
        digest.update(str(path.relative_to(snapshot)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def git_describe() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=10"], capture_output=True, text=True)
    return done.stdout.strip() or f"unknown ({done.stderr.strip()})"


def run_once(kind: ServerKind, case: str, round_index: int, tmp_root: Path, snapshot: Path, wait_s: float) -> dict:
    """Start ``kind`` fresh, warm it up, time one case against it and stop it."""
    record: dict = {"round": round_index + 1, "case": case, "server": kind.key, "valid": False, "problem": None}
    store = tmp_root / f"r{round_index + 1}-{case}-{kind.key}"
    store.mkdir()
    server_log = tmp_root / f"r{round_index + 1}-{case}-{kind.key}.log"
    try:
        with running_server(kind, store, snapshot, server_log) as (process, port):
            warmup = run_load("warmup", port)
            if warmup["errors"] or warmup["uploads_ok"] != warmup["uploads"]:
                raise BenchmarkError(f"warm-up failed: {warmup['error_kinds']}")
            os.sync()
            time.sleep(wait_s)

            pids = procstats.process_tree(process.pid)
            procstats.reset_peak_rss(pids)
            cpu_before = procstats.cpu_seconds(pids)
            tasks_before = procstats.system_task_seconds()
            kernel_before = procstats.kernel_thread_seconds()
            window_start = time.perf_counter()
            result = run_load(case, port)
            window_s = time.perf_counter() - window_start
            tasks_s = procstats.system_task_seconds() - tasks_before
            kernel_s = procstats.kernel_thread_seconds() - kernel_before
            pids = procstats.process_tree(process.pid)
            record["server_cpu_s"] = procstats.cpu_seconds(pids) - cpu_before
            record["server_peak_rss_bytes"] = procstats.peak_rss_bytes(pids)
            # CPU of all other programs while the client ran, short-lived ones
            # included: every task's time minus the server, the client and the
            # kernel threads (whose writeback work the server itself causes).
            other_s = max(0.0, tasks_s - kernel_s - record["server_cpu_s"] - result["client_process_cpu_s"])
            record["other_cores"] = other_s / window_s
            record["kernel_thread_cores"] = kernel_s / window_s

        record.update(result)
        record["value"] = result["uploads_per_s"] if CASES[case].unit == "uploads/s" else result["mb_per_s"]
        problems = []
        if result["errors"] or result["uploads_ok"] != result["uploads"]:
            problems.append(f"{result['errors']} errors, {result['uploads_ok']} of {result['uploads']} uploads complete")
        if kind.stores_data:
            problems.extend(check_stored(store, case))
        record["problem"] = "; ".join(problems) or None
        record["valid"] = not problems
    except BenchmarkError as exc:
        record["problem"] = str(exc)
        record["errors"] = record.get("errors", 0) + 1
        log(f"round {round_index + 1} case {case} {kind.key}: {exc}; server log: {tail(server_log)}")
    finally:
        # On an ext4 without a journal, file creation skips the inodes deleted
        # in the last minutes (ext4's recently_deleted check, seen with perf).
        # Case d ran at 620 uploads/s right after such a deletion and at 1,040
        # six minutes later, so stores of many files stay until the end.
        if sum(load.uploads for load in CASES[case].loads) < MANY_FILES:
            shutil.rmtree(store, ignore_errors=True)
        server_log.unlink(missing_ok=True)
    return record


@contextmanager
def running_server(kind: ServerKind, store: Path, snapshot: Path, server_log: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """Start the server on a free port, wait until it responds to OPTIONS, and stop it on exit."""
    port = free_port()
    fields = {"store": store, "port": port, "snapshot": snapshot}
    argv = [arg.format(**fields) for arg in kind.argv]
    env = {**os.environ, **{name: value.format(**fields) for name, value in kind.env.items()}}
    with open(server_log, "wb") as output:
        process = subprocess.Popen(
            argv, cwd=store.parent, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until_ready(process, port, server_log)
        yield process, port
    finally:
        stop_server(process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(process: subprocess.Popen, port: int, server_log: Path) -> None:
    """Return once the server responds to OPTIONS /files/ with a 2xx status."""
    request = (
        f"OPTIONS /files/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTus-Resumable: 1.0.0\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"server exited with status {process.returncode} before it was ready")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(request)
                status_line = sock.recv(256).split(b"\r\n", 1)[0]
            if status_line[9:10] == b"2":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchmarkError(f"server did not respond to OPTIONS on port {port} within {READY_TIMEOUT_S:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server with SIGTERM, then SIGKILL its process group if it has not exited in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"server pid {process.pid} did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM, so it gets SIGKILL")
    try:
        # The server ran in its own session, so its pid is its process group.
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_load(case: str, port: int) -> dict:
    """Run load.py for ``case`` in its own process and return its JSON result."""
    argv = [sys.executable, str(HERE / "load.py"), "--case", case, "--port", str(port), "--timeout", str(LOAD_TIMEOUT_S)]
    # The servers are children too, but they are still running, so only the
    # load process adds to the children's usage here.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=LOAD_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"load.py --case {case} did not finish in {LOAD_TIMEOUT_S + 60:.0f} s") from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchmarkError(f"load.py --case {case} failed with status {done.returncode}: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout)
    # The whole client process, start-up included, unlike client_cpu_s.
    result["client_process_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


def check_stored(store: Path, case: str) -> list[str]:
    """Check that the store has one file of the upload's size for each upload of the case."""
    problems = []
    for load in CASES[case].loads:
        found = 0
        for directory, _, files in os.walk(store):
            for name in files:
                if os.path.getsize(os.path.join(directory, name)) == load.size:
                    found += 1
        if found != load.uploads:
            problems.append(f"store has {found} files of {load.size} bytes, expected {load.uploads}")
    return problems


def measure_disk(tmp_root: Path, round_index: int, wait_s: float) -> list[dict]:
    """Measure the disk's write limits once, each measurement after a sync and ``wait_s`` idle seconds."""
    payload = memoryview(os.urandom(8 * MIB))
    records = []
    for block in (8 * MIB, 1 * MIB):
        os.sync()
        time.sleep(wait_s)
        write_s, fsync_s = disk.sequential_write(tmp_root, GIB, block, payload)
        label = f"{block // MIB}mib"
        records.append({"round": round_index + 1, "measure": f"seq_write_{label}_page_cache", "value": GIB / write_s / 1e6})
        records.append({"round": round_index + 1, "measure": f"seq_write_{label}_fsync", "value": GIB / (write_s + fsync_s) / 1e6})
        os.sync()
        time.sleep(wait_s)
        direct_s = disk.sequential_direct_write(tmp_root, GIB, block, payload)
        if direct_s is not None:
            records.append({"round": round_index + 1, "measure": f"seq_write_{label}_direct", "value": GIB / direct_s / 1e6})
    os.sync()
    time.sleep(wait_s)
    seconds = disk.small_files_fsync(tmp_root / f"r{round_index + 1}-small-files", SMALL_FILES, SMALL_FILE_BYTES, payload)
    records.append({"round": round_index + 1, "measure": "small_files_fsync", "value": SMALL_FILES / seconds})
    for record in records:
        log(f"round {record['round']} disk {record['measure']}: {record['value']:.0f}")
    return records


def describe_run(record: dict, started: float) -> str:
    minutes = (time.time() - started) / 60
    head = f"[{minutes:5.1f} min] round {record['round']} case {record['case']} {record['server']}:"
    if "value" not in record:
        return f"{head} failed: {record['problem']}"
    unit = CASES[record["case"]].unit
    text = (
        f"{head} {record['value']:.1f} {unit}, server CPU {record['server_cpu_s']:.2f} s, "
        f"peak RSS {record['server_peak_rss_bytes'] / MIB:.0f} MiB, client CPU {record['client_cpu_s']:.2f} s, "
        f"other load {record['other_cores']:.2f} cores"
    )
    if record["problem"]:
        text += f", INVALID: {record['problem']}"
    return text


def tail(path: Path, limit: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        raise SystemExit(f"run.py: {exc}") from None
