"""Markdown report and machine facts for run.py."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from load import CASES, MIB

NODE_TITLE = "@tus/server"
PEERS = ("tus-node", "tuspyserver")
START_MARKER = "<!-- benchmark results: start -->"
END_MARKER = "<!-- benchmark results: end -->"

DISK_MEASURES = [
    ("seq_write_8mib_page_cache", "1 GiB in 8 MiB writes, page cache only (time before the fsync)", "MB/s"),
    ("seq_write_8mib_fsync", "1 GiB in 8 MiB writes, including one fsync at the end", "MB/s"),
    ("seq_write_8mib_direct", "1 GiB in 8 MiB writes with O_DIRECT, including one fsync at the end", "MB/s"),
    ("seq_write_1mib_page_cache", "1 GiB in 1 MiB writes, page cache only (time before the fsync)", "MB/s"),
    ("seq_write_1mib_fsync", "1 GiB in 1 MiB writes, including one fsync at the end", "MB/s"),
    ("seq_write_1mib_direct", "1 GiB in 1 MiB writes with O_DIRECT, including one fsync at the end", "MB/s"),
    ("small_files_fsync", "2,000 new files of 50 KB, each written and fsynced", "files/s"),
]

_VERSIONS_SCRIPT = """
import importlib.metadata, json, platform, sys
names = sys.argv[1:]
versions = {}
for name in names:
    try:
        versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        versions[name] = "not installed"
print(json.dumps({"python": platform.python_version(), "packages": versions}))
"""


def machine_facts(boothsync_python: Path, peers_python: Path, node_modules: Path, store_filesystem: str) -> dict:
    """Collect the machine, tool and package facts that the report prints."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "memory_gib": _mem_total_bytes() / 1024**3,
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "store_filesystem": store_filesystem,
        "boothsync_env": _python_versions(boothsync_python, ["boothsync", "starlette", "uvicorn", "uvloop", "httptools"]),
        "peers_env": _python_versions(peers_python, ["tuspyserver", "fastapi", "starlette", "uvicorn", "uvloop", "httptools"]),
        "client_python": platform.python_version(),
        "node": _command_output(["node", "--version"]),
        "npm_packages": {name: _npm_version(node_modules, name) for name in ("@tus/server", "@tus/file-store", "@tus/utils")},
    }


def _mem_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _python_versions(python: Path, packages: list[str]) -> dict:
    if not python.exists():
        return {"python": "not installed", "packages": {}}
    output = _command_output([str(python), "-c", _VERSIONS_SCRIPT, *packages])
    return json.loads(output)


def _npm_version(node_modules: Path, name: str) -> str:
    try:
        return json.loads((node_modules / name / "package.json").read_text())["version"]
    except OSError:
        return "not installed"


def _command_output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"unknown ({exc})"


def render(results: dict, titles: dict[str, str]) -> str:
    """Return the whole report as markdown."""
    facts = results["facts"]
    lines = _header_section(results)
    lines += _throughput_section(results["runs"], titles)
    lines += _invalid_section(results["runs"], titles)
    lines += _ceiling_section(results["runs"])
    if results["disk"]:
        lines += _disk_section(results["disk"], facts["store_filesystem"])
    lines += _machine_section(facts)
    return "\n".join(lines).rstrip() + "\n"


def _header_section(results: dict) -> list[str]:
    rounds = results["rounds_by_case"]
    if len(set(rounds.values())) == 1:
        rounds_text = f"{next(iter(rounds.values()))} per case"
    else:
        rounds_text = ", ".join(f"{count} for case {case}" for case, count in rounds.items())
    load_start = ", ".join(f"{value:.2f}" for value in results["load_average_start"])
    load_end = ", ".join(f"{value:.2f}" for value in results["load_average_end"])
    source = results["boothsync_source"]

    lines = [
        f"### Run of {results['facts']['date']}",
        "",
        f"- Command: `{results['command']}`",
        f"- Rounds: {rounds_text}. Each round starts every server fresh.",
        f"- Total time: {results['total_s'] / 60:.1f} min",
        f"- Load average (1, 5, 15 min): {load_start} at the start and {load_end} at the end",
        f"- boothsync code: a copy of src/boothsync taken at the start, when `git describe --dirty` gave"
        f" `{source['git']}`. The sha256 of its .py files starts with {source['digest']}.",
        "",
    ]
    if results["repeated"]:
        lines += [
            f"{len(results['repeated'])} runs were repeated because other programs used more than"
            f" {results['max_other_load']} cores during them. Only the last attempt of each run counts.",
            "",
        ]
    return lines


def _throughput_section(runs: list[dict], titles: dict[str, str]) -> list[str]:
    lines = [
        "#### Throughput",
        "",
        "Medians over the valid runs, with min–max in brackets. MB/s means 10^6 bytes per second.",
        "The ratios divide this server's median by the better peer's median and by @tus/server's median",
        "(above 1 is faster). Server CPU is user plus system seconds of the server's processes during the",
        "timed run, and cores is that divided by the run's wall time. Peak RSS is VmHWM, reset before the run.",
        "Other load is the CPU, in cores, that other programs used during the run, apart from the server,",
        "the load client and kernel threads. A high value means another program competed for the CPUs.",
        "",
        "| case | server | throughput | ratio to better peer | ratio to @tus/server | server CPU s | cores | peak RSS MiB | other load, cores | valid runs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in _cases_in(runs):
        unit = CASES[case].unit
        medians = {server: _median_of(runs, case, server, "value") for server in titles}
        peer_medians = [medians[peer] for peer in PEERS if medians.get(peer) is not None]
        better_peer = max(peer_medians) if peer_medians else None
        node = medians.get("tus-node")
        for server in titles:
            if server == "sink":
                continue
            case_runs = [run for run in runs if run["case"] == case and run["server"] == server]
            if not case_runs:
                continue
            valid = [run for run in case_runs if run["valid"]]
            if valid:
                values = [run["value"] for run in valid]
                throughput = f"{_number(statistics.median(values))} {unit} ({_number(min(values))}–{_number(max(values))})"
                cpu = statistics.median(run["server_cpu_s"] for run in valid)
                cores = statistics.median(run["server_cpu_s"] / run["elapsed_s"] for run in valid)
                rss = statistics.median(run["server_peak_rss_bytes"] for run in valid) / MIB
                median = statistics.median(values)
                others = statistics.median(run["other_cores"] for run in valid)
                cells = [
                    throughput,
                    _ratio(median, better_peer),
                    _ratio(median, node),
                    _number(cpu),
                    f"{cores:.2f}",
                    f"{rss:.0f}",
                    f"{others:.2f}",
                ]
            else:
                cells = ["no valid run", "", "", "", "", "", ""]
            lines.append(f"| {case}: {CASES[case].title} | {titles[server]} | " + " | ".join(cells) + f" | {len(valid)}/{len(case_runs)} |")
    lines.append("")
    return lines


def _invalid_section(runs: list[dict], titles: dict[str, str]) -> list[str]:
    invalid = [run for run in runs if not run["valid"]]
    if not invalid:
        return ["Every run was valid: no request failed and every upload was stored whole.", ""]
    lines = ["#### Invalid runs", "", "These runs had errors and are left out of the medians:", ""]
    for run in invalid:
        line = f"- Round {run['round']}, case {run['case']}, {titles[run['server']]}: {run['problem']}."
        kinds = run.get("error_kinds") or {}
        if kinds:
            counted = [f"{kind} ({count})" for kind, count in kinds.items()]
            line += " Errors: " + ", ".join(counted) + "."
        lines.append(line)
    lines.append("")
    return lines


def _ceiling_section(runs: list[dict]) -> list[str]:
    cases = [case for case in _cases_in(runs) if any(run["server"] == "sink" and run["case"] == case for run in runs)]
    if not cases:
        return []
    lines = [
        "#### Load client ceiling",
        "",
        "The same load against sink_server.py, which keeps no bytes and spends almost no CPU.",
        "",
        "| case | throughput against the sink | client CPU s | sink CPU s | valid runs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for case in cases:
        case_runs = [run for run in runs if run["case"] == case and run["server"] == "sink"]
        valid = [run for run in case_runs if run["valid"]]
        if not valid:
            lines.append(f"| {case}: {CASES[case].title} | no valid run | | | 0/{len(case_runs)} |")
            continue
        values = [run["value"] for run in valid]
        lines.append(
            f"| {case}: {CASES[case].title} | {_number(statistics.median(values))} {CASES[case].unit} "
            f"({_number(min(values))}–{_number(max(values))}) | {_number(statistics.median(run['client_cpu_s'] for run in valid))} | "
            f"{_number(statistics.median(run['server_cpu_s'] for run in valid))} | {len(valid)}/{len(case_runs)} |"
        )
    lines.append("")
    return lines


def _disk_section(disk: list[dict], store_filesystem: str) -> list[str]:
    lines = [
        "#### Disk limits",
        "",
        f"Measured in the directory that held the stores ({store_filesystem}), after a sync and the same idle wait.",
        "",
        "| measure | median (min–max) |",
        "| --- | --- |",
    ]
    for key, title, unit in DISK_MEASURES:
        values = [record["value"] for record in disk if record["measure"] == key]
        if values:
            lines.append(f"| {title} | {_number(statistics.median(values))} {unit} ({_number(min(values))}–{_number(max(values))}) |")
    lines.append("")
    return lines


def _machine_section(facts: dict) -> list[str]:
    boothsync_env = facts["boothsync_env"]
    peers_env = facts["peers_env"]
    npm = facts["npm_packages"]
    return [
        "#### Machine",
        "",
        "| fact | value |",
        "| --- | --- |",
        f"| CPUs (nproc) | {facts['nproc']} |",
        f"| memory | {facts['memory_gib']:.1f} GiB |",
        f"| CPU model | {facts['cpu_model']} |",
        f"| kernel | {facts['kernel']} |",
        f"| store file system | {facts['store_filesystem']} |",
        f"| boothsync's venv | Python {boothsync_env['python']}, {_packages(boothsync_env)} |",
        f"| peers' venv | Python {peers_env['python']}, {_packages(peers_env)} |",
        f"| load client and sink | Python {facts['client_python']} |",
        f"| Node.js | {facts['node']}, " + ", ".join(f"{name} {version}" for name, version in npm.items()) + " |",
        "",
    ]


def _packages(env: dict) -> str:
    return ", ".join(f"{name} {version}" for name, version in env["packages"].items())


def _cases_in(runs: list[dict]) -> list[str]:
    return sorted({run["case"] for run in runs})


def _median_of(runs: list[dict], case: str, server: str, key: str) -> float | None:
    values = [run[key] for run in runs if run["case"] == case and run["server"] == server and run["valid"]]
    return statistics.median(values) if values else None


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}" if reference else "n/a"


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def write_into(path: Path, markdown: str) -> None:
    """Put ``markdown`` between the result markers of ``path``, or append the markers and it."""
    block = f"{START_MARKER}\n\n{markdown}\n{END_MARKER}\n"
    text = path.read_text() if path.exists() else ""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start >= 0 and end > start:
        rest = text[end + len(END_MARKER) :].lstrip("\n")
        text = text[:start] + block + ("\n" + rest if rest else "")
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block
    path.write_text(text)
