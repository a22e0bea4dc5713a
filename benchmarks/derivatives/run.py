"""Benchmark derivatives: thumbnail time per format, OCR time per receipt, capture
acknowledgement latency with the derivative workers idle and saturated, and the
workers' peak memory.

Usage (from the repository root):

    .venv/bin/python benchmarks/derivatives/run.py [--reps N] [--acks N] [--rounds N] [--workers 1,2] [--json FILE]

Thumbnails and OCR run in this process through boothsync.agent.derivatives, after
one untimed warm-up call per file. The OCR times use the default OcrSettings on
the receipts that accuracy.py loads; accuracy.py compares the settings.

The acknowledgement latency is measured against a real agent started with
boothsync.processes.agent_process on 127.0.0.1. Its server URL points at a port
where nothing listens, which acknowledgement does not need. Each capture is a
4 KiB random binary body, so its own derivatives end at once as "unavailable"
and only the large receipts of the backlog keep the workers busy. The time runs
from sending the POST to reading the 201 response. Both phases send the same
number of captures with the same pause between them: the idle phase with no
derivative queued, the saturated phase while a backlog of large receipts is
being derived. The phases alternate for several rounds, because other load on
the machine drifts more between runs than within one. The report splits the
CPU time of each phase between the agent's process tree, this client and
everything else on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

import accuracy
from boothsync.agent.derivatives import DEFAULT_OCR_SETTINGS, DONE, make_thumbnail
from boothsync.processes import agent_process, free_port

REPO = accuracy.REPO
DATA = REPO / "tests" / "data"
SAMPLES = REPO / "src" / "boothsync" / "samples"
SMALL_CAPTURE_BYTES = 4096
# A large receipt scan (2481x3508) and a typical one (928x1662), repeated to make the backlog.
BACKLOG_RECEIPTS = [SAMPLES / "receipt" / "sroie_024_X51005361898.jpg", SAMPLES / "receipt" / "sroie_616_X51008164525.jpg"]


# --- machine facts --------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    cpu = "unknown"
    memory = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as file:
        for line in file:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as file:
        for line in file:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "date": datetime.date.today().isoformat(),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tesseract": _first_line(["tesseract", "--version"]),
        "ffmpeg": _first_line(["ffmpeg", "-version"]),
    }


def _first_line(command: list[str]) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"not available ({exc.strerror})"
    return (completed.stdout or completed.stderr).splitlines()[0].strip()


# --- thumbnails -----------------------------------------------------------------


def thumbnail_inputs(work: Path) -> dict[str, list[Path]]:
    """Return the files to time per format: bundled files, and conversions of a 2048x1536 photo."""
    photo = DATA / "photos" / "camera_canon_sx60_orientation6.jpg"
    with Image.open(photo) as image:
        rgb = image.convert("RGB")
        rgb.save(work / "photo_2048x1536.png")
        rgb.save(work / "photo_2048x1536.webp", quality=85)
        rgb.save(work / "photo_2048x1536.tif")
        rgb.save(work / "photo_2048x1536.gif")

    clip = work / "testsrc_1920x1080_10s.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30:duration=10",
         "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(clip)],
        check=True, timeout=300,
    )  # fmt: skip
    return {
        "JPEG": [photo, DATA / "photos" / "phone_samsung_galaxy_s7_gps.jpg"],
        "PNG": [work / "photo_2048x1536.png"],
        "HEIC": [DATA / "photos" / "phone_iphone11promax_gps.heic", DATA / "photos" / "phone_iphone13promax_orientation6.heic"],
        "WebP": [work / "photo_2048x1536.webp", DATA / "photos" / "animated.webp"],
        "GIF": [work / "photo_2048x1536.gif", DATA / "photos" / "animated.gif"],
        "TIFF": [work / "photo_2048x1536.tif"],
        "PDF": [DATA / "pdf" / "born_digital_form_sf424_page2.pdf", DATA / "pdf" / "scanned_4pages_no_text_cardinal.pdf"],
        "video": [DATA / "video" / "iphone4s_rotated90_gps.mov", clip],
    }


def describe(path: Path) -> str:
    if path.suffix in (".mov", ".mp4"):
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height,codec_name",
             "-of", "csv=p=0", str(path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        codec, width, height = probe.stdout.strip().split(",")[:3]
        return f"{path.name} ({codec} {width}x{height})"
    if path.suffix == ".pdf":
        return path.name
    with open_image(path) as image:
        return f"{path.name} ({image.width}x{image.height})"


def open_image(path: Path) -> Image.Image:
    if path.suffix == ".heic":
        import pillow_heif

        pillow_heif.register_heif_opener()
    return Image.open(path)


def time_thumbnails(inputs: dict[str, list[Path]], reps: int, work: Path) -> dict[str, dict]:
    results = {}
    for kind, paths in inputs.items():
        times = []
        for path in paths:
            warm = make_thumbnail(path, work / "thumb.jpg")
            if warm.status != DONE:
                raise RuntimeError(f"thumbnail of {path} {warm.status}: {warm.reason}")
            for _ in range(reps):
                started = time.perf_counter()
                make_thumbnail(path, work / "thumb.jpg")
                times.append(time.perf_counter() - started)
        results[kind] = {
            "files": [describe(path) for path in paths],
            "median_ms": statistics.median(times) * 1000,
            "p95_ms": accuracy.percentile(times, 0.95) * 1000,
            "runs": len(times),
        }
        print(f"  thumbnail {kind}: median {results[kind]['median_ms']:.0f} ms", file=sys.stderr)
    return results


def time_ocr(receipts: list[accuracy.Receipt], work: Path) -> dict:
    engine = accuracy.tesseract_engine(DEFAULT_OCR_SETTINGS, work)
    engine(receipts[0].path)
    times = []
    for receipt in receipts:
        started = time.perf_counter()
        engine(receipt.path)
        times.append(time.perf_counter() - started)
    return {
        "setting": repr(DEFAULT_OCR_SETTINGS),
        "receipts": len(receipts),
        "median_s": statistics.median(times),
        "p95_s": accuracy.percentile(times, 0.95),
        "max_s": max(times),
    }


# --- acknowledgement latency and worker memory ----------------------------------


def _children(pid: int) -> list[int]:
    children = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as file:
                children += [int(child) for child in file.read().split()]
    except OSError:
        return []
    return children


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as file:
            for line in file:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_times() -> list[int]:
    with open("/proc/stat", encoding="ascii") as file:
        return [int(value) for value in file.readline().split()[1:]]


@dataclass
class MemorySampler:
    """Samples the agent's process tree, keeping each process's latest VmHWM."""

    agent_pid: int
    interval_s: float = 0.1
    worker_hwm_kib: dict[int, int] = field(default_factory=dict)
    grandchild_max_kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for child in _children(self.agent_pid):
                hwm = _status_kib(child, "VmHWM")
                if hwm is not None:
                    self.worker_hwm_kib[child] = hwm
                for grandchild in _children(child):
                    self.grandchild_max_kib = max(self.grandchild_max_kib, _status_kib(grandchild, "VmHWM") or 0)


def _post_small(client: httpx.Client, url: str, index: int) -> float:
    body = os.urandom(SMALL_CAPTURE_BYTES)
    started = time.perf_counter()
    response = client.post(url, content=body, headers={"content-type": "application/octet-stream"},
                           params={"filename": f"small-{index}.bin"})
    elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(f"POST {url} returned {response.status_code}: {response.text[:200]}")
    return elapsed


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> float:
    """Return a process's CPU seconds, with those of its exited and reaped children."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields 14 to 17 of proc(5) are utime, stime, cutime and cstime, and fields[0] here is field 3.
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def _tree_cpu_s(root_pid: int) -> float:
    """Return the CPU seconds of a process and all its descendants, live or reaped."""
    return _process_cpu_s(root_pid) + sum(_tree_cpu_s(child) for child in _children(root_pid))


@dataclass
class Phase:
    """Acknowledgement times of one phase, over all rounds, and where the CPU time went."""

    times_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    busy_s: float = 0.0
    agent_s: float = 0.0
    client_s: float = 0.0
    medians_ms: list[float] = field(default_factory=list)

    def run(self, client: httpx.Client, url: str, agent_pid: int, count: int, pause_s: float) -> None:
        cpu_before, agent_before, client_before = _cpu_times(), _tree_cpu_s(agent_pid), _own_cpu_s()
        started = time.monotonic()
        times = [self._post(client, url, index, pause_s) for index in range(count)]
        self.wall_s += time.monotonic() - started
        cpu_after = _cpu_times()
        self.busy_s += _busy_ticks(cpu_before, cpu_after) / CLOCK_TICKS
        self.agent_s += _tree_cpu_s(agent_pid) - agent_before
        self.client_s += _own_cpu_s() - client_before
        self.times_s += times
        self.medians_ms.append(statistics.median(times) * 1000)

    @staticmethod
    def _post(client: httpx.Client, url: str, index: int, pause_s: float) -> float:
        elapsed = _post_small(client, url, index)
        time.sleep(pause_s)
        return elapsed

    def summary(self) -> dict:
        cores = os.cpu_count() or 1
        other_s = max(0.0, self.busy_s - self.agent_s - self.client_s)
        return {
            "count": len(self.times_s),
            "median_ms": statistics.median(self.times_s) * 1000,
            "p99_ms": accuracy.percentile(self.times_s, 0.99) * 1000,
            "max_ms": max(self.times_s) * 1000,
            "round_medians_ms": self.medians_ms,
            "cpu_busy": self.busy_s / (self.wall_s * cores),
            "agent_cores": self.agent_s / self.wall_s,
            "client_cores": self.client_s / self.wall_s,
            "other_cores": other_s / self.wall_s,
        }


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _busy_ticks(before: list[int], after: list[int]) -> int:
    deltas = [later - earlier for earlier, later in zip(before, after, strict=True)]
    return sum(deltas) - deltas[3] - deltas[4]


def _derived_count(client: httpx.Client, base: str, capture_ids: list[str]) -> int:
    derived = 0
    for capture_id in capture_ids:
        capture = client.get(f"{base}/v1/captures/{capture_id}").json()
        derived += capture.get("derived_at") is not None
    return derived


def _queue_backlog(client: httpx.Client, url: str, backlog: int, round_index: int) -> list[str]:
    capture_ids = []
    for index in range(backlog):
        source = BACKLOG_RECEIPTS[index % len(BACKLOG_RECEIPTS)]
        # A trailer after the JPEG's end marker makes every copy a distinct blob.
        body = source.read_bytes() + f"backlog-{round_index}-{index}".encode()
        response = client.post(url, content=body, headers={"content-type": "image/jpeg"},
                               params={"filename": f"backlog-{round_index}-{index}.jpg"})
        response.raise_for_status()
        capture_ids.append(response.json()["capture_id"])
    return capture_ids


def _wait_until_derived(client: httpx.Client, base: str, capture_ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _derived_count(client, base, capture_ids) < len(capture_ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the backlog was not derived within {timeout_s:g} s")
        time.sleep(0.5)


def measure_acks(work: Path, count: int, pause_s: float, workers: int, backlog: int, rounds: int) -> dict:
    """Time capture acknowledgements on a real agent, idle and with the workers saturated.

    The phases alternate (idle, saturated, idle, ...) for the given rounds, and
    each idle phase starts after the previous backlog has been derived.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "BOOTHSYNC_AGENT_DISK_RESERVE_BYTES": "0",
        "BOOTHSYNC_AGENT_DERIVATIVE_WORKERS": str(workers),
        "BOOTHSYNC_AGENT_EVENT": "bench",
        "BOOTHSYNC_AGENT_DEVICE_ID": "bench-device",
        "BOOTHSYNC_LOG_LEVEL": "WARNING",
    }
    agent = agent_process(work / "agent", port, f"http://127.0.0.1:{free_port()}", work / "agent.log", env)
    idle, saturated = Phase(), Phase()
    still_queued = []
    agent.start()
    try:
        agent.wait_ready(f"{base}/v1/status")
        assert agent.proc is not None
        sampler = MemorySampler(agent.proc.pid)
        sampler.start()
        with httpx.Client(timeout=30) as client:
            url = f"{base}/v1/captures"
            for index in range(20):
                _post_small(client, url, index)
            time.sleep(2)
            for round_index in range(rounds):
                idle.run(client, url, agent.proc.pid, count, pause_s)
                backlog_ids = _queue_backlog(client, url, backlog, round_index)
                time.sleep(1)
                saturated.run(client, url, agent.proc.pid, count, pause_s)
                still_queued.append(len(backlog_ids) - _derived_count(client, base, backlog_ids))
                _wait_until_derived(client, base, backlog_ids, timeout_s=600)
                time.sleep(2)
        sampler.stop()
    finally:
        children = _children(agent.proc.pid) if agent.proc is not None else []
        agent.stop()
        left_running = _wait_for_exit(children, timeout_s=60)

    idle_summary, saturated_summary = idle.summary(), saturated.summary()
    return {
        "workers": workers,
        "pause_ms": pause_s * 1000,
        "rounds": rounds,
        "backlog": backlog,
        "backlog_left_after_phase": still_queued,
        "idle": idle_summary,
        "saturated": saturated_summary,
        "median_change": saturated_summary["median_ms"] / idle_summary["median_ms"] - 1,
        "worker_vmhwm_mib": {str(pid): kib / 1024 for pid, kib in sampler.worker_hwm_kib.items()},
        "worker_vmhwm_sum_mib": sum(sampler.worker_hwm_kib.values()) / 1024,
        "largest_subprocess_vmhwm_mib": sampler.grandchild_max_kib / 1024,
        "children_left_running": left_running,
    }


def _wait_for_exit(pids: list[int], timeout_s: float) -> list[int]:
    """Wait until the processes are gone, and return those still running after timeout_s.

    The agent shuts its worker pool down without waiting, so a worker may finish
    its current capture after the agent has exited.
    """
    deadline = time.monotonic() + timeout_s
    running = pids
    while running and time.monotonic() < deadline:
        time.sleep(0.2)
        running = [pid for pid in running if os.path.exists(f"/proc/{pid}")]
    return running


# --- report ---------------------------------------------------------------------


def report(results: dict) -> str:
    facts = results["machine"]
    lines = [
        f"Run on {facts['date']}: {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory']} memory, "
        f"Linux {facts['kernel']}, Python {facts['python']}, {facts['tesseract']}, {facts['ffmpeg'].split(' Copyright')[0]}.",
        "",
        "| format | files | thumbnail ms median | p95 | runs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, row in results["thumbnails"].items():
        lines.append(f"| {kind} | {', '.join(row['files'])} | {row['median_ms']:.0f} | {row['p95_ms']:.0f} | {row['runs']} |")
    ocr = results["ocr"]
    lines += [
        "",
        f"OCR with the default {ocr['setting']}: {ocr['receipts']} receipts, median {ocr['median_s']:.2f} s, "
        f"p95 {ocr['p95_s']:.2f} s, max {ocr['max_s']:.2f} s per receipt.",
        "",
    ]
    for acks in results["acks"]:
        idle, busy = acks["idle"], acks["saturated"]
        lines += [
            f"Acknowledgement with {acks['workers']} derivative worker(s): {acks['rounds']} rounds of an idle and a "
            f"saturated phase, {idle['count'] // acks['rounds']} captures per phase, {acks['pause_ms']:.0f} ms apart, "
            f"{acks['backlog']} large receipts queued per saturated phase:",
            "",
            "| phase | median ms | p99 ms | max ms | round medians ms | CPU busy | agent cores | client cores | other cores |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for label, phase in (("idle", idle), ("saturated", busy)):
            medians = ", ".join(f"{value:.1f}" for value in phase["round_medians_ms"])
            lines.append(
                f"| {label} | {phase['median_ms']:.1f} | {phase['p99_ms']:.1f} | {phase['max_ms']:.1f} | {medians} "
                f"| {phase['cpu_busy']:.0%} | {phase['agent_cores']:.2f} | {phase['client_cores']:.2f} "
                f"| {phase['other_cores']:.2f} |"
            )
        lines += [
            "",
            f"The median changed by {acks['median_change']:+.0%}. Backlog receipts still queued at the end of each "
            f"saturated phase: {', '.join(str(value) for value in acks['backlog_left_after_phase'])} of {acks['backlog']}. "
            f"Peak RSS of the agent's child processes (sum of VmHWM): {acks['worker_vmhwm_sum_mib']:.0f} MiB "
            f"({', '.join(f'{value:.0f}' for value in acks['worker_vmhwm_mib'].values())} MiB each); "
            f"largest tesseract or ffmpeg subprocess seen: {acks['largest_subprocess_vmhwm_mib']:.0f} MiB.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="timed thumbnails per file (default 10)")
    parser.add_argument("--acks", type=int, default=100, help="captures per acknowledgement phase (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="idle and saturated phase pairs per worker count (default 3)")
    parser.add_argument("--pause-ms", type=float, default=20.0, help="pause between captures, in ms (default 20)")
    parser.add_argument("--workers", default="1,2", help="comma-separated derivative worker counts (default 1,2)")
    parser.add_argument("--backlog-per-worker", type=int, default=6,
                        help="large receipts queued per worker before the saturated phase (default 6)")
    parser.add_argument("--extra-receipts", type=Path, default=accuracy.DEFAULT_EXTRA_DIR,
                        help="folder with more sroie_*.jpg receipts for the OCR times (skipped when missing)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    for tool in ("ffmpeg", "ffprobe", "tesseract"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install it (Debian: apt-get install ffmpeg tesseract-ocr)")

    results: dict = {"machine": machine_facts(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
    with tempfile.TemporaryDirectory(prefix="derivatives-bench-", ignore_cleanup_errors=True) as temp:
        work = Path(temp)
        print("thumbnails", file=sys.stderr)
        results["thumbnails"] = time_thumbnails(thumbnail_inputs(work), args.reps, work)
        print("OCR", file=sys.stderr)
        results["ocr"] = time_ocr(accuracy.load_receipts(args.extra_receipts), work)
        results["acks"] = []
        for workers in (int(value) for value in args.workers.split(",")):
            print(f"acknowledgements, {workers} worker(s)", file=sys.stderr)
            run_dir = work / f"acks-{workers}"
            run_dir.mkdir()
            results["acks"].append(
                measure_acks(
                    run_dir, args.acks, args.pause_ms / 1000, workers, args.backlog_per_worker * workers, args.rounds
                )
            )

    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
