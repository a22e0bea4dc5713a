"""One process per data directory: a second agent or server on the same data would corrupt it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DataDirLockedError(Exception):
    """Raised when another process already uses the data directory."""


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/.lock``, held for the life of the process.

    The kernel releases it when the process exits, however it exits.
    """

    def __init__(self, data_dir: Path, program: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / ".lock"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DataDirLockedError(
                f"another {program} is already using the data directory {data_dir}: stop it, or use another --data"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
