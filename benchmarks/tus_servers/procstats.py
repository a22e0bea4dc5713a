"""CPU time and peak RSS of a process and its descendants, read from /proc (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and the pids of all its living descendants."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tree = [pid]
    for current in tree:
        tree.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """Return the user plus system CPU seconds the processes have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        # After the command name: state, ppid, ... utime is field 14 and
        # stime field 15 of /proc/PID/stat, counted from 1.
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS_PER_S


def system_task_seconds() -> float:
    """Return the user plus system CPU seconds of all tasks since boot, from /proc/stat.

    Time in interrupts and softirqs is not included, because /proc/stat
    counts it apart from the task that was running.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system = (int(value) for value in fields[1:4])
    return (user + nice + system) / CLOCK_TICKS_PER_S


def kernel_thread_seconds() -> float:
    """Return the CPU seconds used so far by kernel threads (kthreadd, pid 2, and its children).

    Page-cache writeback and the file system journal run there, so a server
    that writes a lot makes them busy too.
    """
    return cpu_seconds(process_tree(2))


def reset_peak_rss(pids: list[int]) -> None:
    """Set each process's VmHWM back to its current RSS, so a later read gives a new peak."""
    for pid in pids:
        try:
            (PROC / str(pid) / "clear_refs").write_text("5")
        except OSError:
            continue


def peak_rss_bytes(pids: list[int]) -> int:
    """Return the sum of the processes' VmHWM (peak resident set size) in bytes."""
    total = 0
    for pid in pids:
        try:
            status = (PROC / str(pid) / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def _stat_fields(pid: int) -> list[str]:
    """Return the fields of /proc/PID/stat that follow the command name, starting with the state."""
    raw = (PROC / str(pid) / "stat").read_text()
    # The command name is in parentheses and may itself contain spaces or ')'.
    return raw[raw.rindex(")") + 2 :].split()
