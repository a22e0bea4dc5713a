"""The SQLite set-up the agent's journal and the server's index share."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with ``synchronous=FULL`` and create ``schema``.

    FULL makes every commit durable before it returns, which is what an
    acknowledged capture or a synced part promises. The connection runs in
    autocommit mode; callers open transactions with BEGIN IMMEDIATE, and may
    use it from several threads behind their own lock.
    """
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(schema)
    return conn
