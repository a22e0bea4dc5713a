"""The server's index of captures, their parts and the uploads that carry them (SQLite)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from boothsync.database import open_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS captures (
    capture_id   TEXT PRIMARY KEY,
    event        TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    class        TEXT NOT NULL,
    captured_at  REAL NOT NULL,
    filename     TEXT,
    metadata     TEXT NOT NULL,
    received_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    capture_id    TEXT NOT NULL REFERENCES captures(capture_id),
    part          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    content_type  TEXT,
    state         TEXT NOT NULL DEFAULT 'announced',
    path          TEXT,
    synced_at     REAL,
    PRIMARY KEY (capture_id, part)
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id   TEXT PRIMARY KEY,
    capture_id  TEXT NOT NULL,
    part        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    UNIQUE (capture_id, part)
);
"""


class PartConflictError(Exception):
    """Raised when a manifest changes the sha256 or size of a part already synced."""


class Index:
    """A SQLite index shared by the request handlers of one server process.

    One connection behind a lock: SQLite serialises writers anyway, and the
    handlers call in from worker threads.
    """

    def __init__(self, path: Path) -> None:
        self._conn = open_database(path, _SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def upsert_manifest(self, manifest: dict[str, Any]) -> None:
        """Record a capture and its parts; a part already synced must keep its sha256 and size."""
        self.upsert_manifests([manifest])

    def upsert_manifests(self, manifests: list[dict[str, Any]]) -> None:
        """Record several captures in one transaction: all of them, or none if one part conflicts."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for manifest in manifests:
                self._conn.execute(
                    "INSERT INTO captures VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(capture_id) DO UPDATE SET"
                    " class=excluded.class, filename=excluded.filename, metadata=excluded.metadata",
                    (
                        manifest["capture_id"],
                        manifest["event"],
                        manifest["device_id"],
                        manifest["class"],
                        manifest["captured_at"],
                        manifest.get("filename"),
                        json.dumps(manifest.get("metadata", {})),
                        time.time(),
                    ),
                )
                for part in manifest["parts"]:
                    self._upsert_part(manifest["capture_id"], part)

    def _upsert_part(self, capture_id: str, part: dict[str, Any]) -> None:
        row = self._conn.execute(
            "SELECT sha256, size, state FROM parts WHERE capture_id=? AND part=?",
            (capture_id, part["part"]),
        ).fetchone()
        if row is None:
            self._conn.execute(
                "INSERT INTO parts (capture_id, part, size, sha256, content_type) VALUES (?,?,?,?,?)",
                (capture_id, part["part"], part["size"], part["sha256"], part.get("content_type")),
            )
            return
        if row["state"] == "synced" and (row["sha256"], row["size"]) != (part["sha256"], part["size"]):
            raise PartConflictError(
                f"part {part['part']!r} of capture {capture_id} is already synced with sha256"
                f" {row['sha256']}; a capture's bytes cannot change"
            )
        self._conn.execute(
            "UPDATE parts SET size=?, sha256=?, content_type=? WHERE capture_id=? AND part=?",
            (part["size"], part["sha256"], part.get("content_type"), capture_id, part["part"]),
        )

    def capture(self, capture_id: str) -> dict[str, Any] | None:
        """Return one capture with its parts, or None."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM captures WHERE capture_id=?", (capture_id,)).fetchone()
            if row is None:
                return None
            return self._with_parts(row)

    def captures(self, limit: int = 1000, after: str = "") -> list[dict[str, Any]]:
        """Return up to ``limit`` captures ordered by id, starting after ``after``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM captures WHERE capture_id > ? ORDER BY capture_id LIMIT ?", (after, limit)
            ).fetchall()
            return [self._with_parts(row) for row in rows]

    def _with_parts(self, row: sqlite3.Row) -> dict[str, Any]:
        capture = dict(row)
        capture["metadata"] = json.loads(capture["metadata"])
        parts = self._conn.execute(
            "SELECT part, size, sha256, content_type, state, path, synced_at FROM parts"
            " WHERE capture_id=? ORDER BY part",
            (capture["capture_id"],),
        ).fetchall()
        capture["parts"] = [dict(part) for part in parts]
        return capture

    def expected_part(self, capture_id: str, part: str) -> dict[str, Any] | None:
        """Return the announced part with the capture's event and class, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT p.*, c.event, c.class, c.captured_at, c.filename FROM parts p"
                " JOIN captures c USING (capture_id) WHERE p.capture_id=? AND p.part=?",
                (capture_id, part),
            ).fetchone()
            return dict(row) if row else None

    def find_upload(self, capture_id: str, part: str) -> str | None:
        """Return the upload id that carries (capture_id, part), or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT upload_id FROM uploads WHERE capture_id=? AND part=?", (capture_id, part)
            ).fetchone()
            return row["upload_id"] if row else None

    def add_upload(self, upload_id: str, capture_id: str, part: str) -> str:
        """Bind ``upload_id`` to (capture_id, part), or return the id already bound to it.

        Two creations for one key may race on different nodes; the unique
        key makes the loser adopt the winner's upload.
        """
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO uploads VALUES (?,?,?,?)", (upload_id, capture_id, part, time.time())
            )
            row = self._conn.execute(
                "SELECT upload_id FROM uploads WHERE capture_id=? AND part=?", (capture_id, part)
            ).fetchone()
            return str(row["upload_id"])

    def forget_upload(self, upload_id: str) -> None:
        """Unbind an upload that was terminated, expired or failed verification."""
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))

    def mark_synced(self, capture_id: str, part: str, path: str) -> None:
        """Record that a part was verified and stored at ``path``."""
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE parts SET state='synced', path=?, synced_at=? WHERE capture_id=? AND part=?",
                (path, time.time(), capture_id, part),
            )

    def counts(self) -> dict[str, int]:
        """Return the number of captures and of synced parts."""
        with self._lock:
            captures = self._conn.execute("SELECT count(*) FROM captures").fetchone()[0]
            synced = self._conn.execute("SELECT count(*) FROM parts WHERE state='synced'").fetchone()[0]
            return {"captures": captures, "parts_synced": synced}
