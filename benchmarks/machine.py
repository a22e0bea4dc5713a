"""Facts about the machine a benchmark ran on, for its report."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any

import psutil


def machine_facts() -> dict[str, Any]:
    """Return the date, CPU count and model, memory, kernel and Python version."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def tree_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds of a process and its children, live or already waited for; NaN once it has exited."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        used = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            try:
                child_times = child.cpu_times()
                # A live child's children_* times include the processes it has waited for, such as tesseract runs.
                used += child_times.user + child_times.system + child_times.children_user + child_times.children_system
            except psutil.NoSuchProcess:
                pass
        return used
    except psutil.NoSuchProcess:
        return float("nan")
