"""The agent's journal: captures, their parts, upload state and an audit log (SQLite).

The database runs in WAL mode with ``synchronous=FULL``, so a committed
capture survives a power cut. The audit log is append-only: triggers reject
any UPDATE or DELETE on it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boothsync.database import open_database

from boothsync.classes import PRIORITY

_SCHEMA = """
CREATE TABLE IF NOT EXISTS captures (
    capture_id         TEXT PRIMARY KEY,
    short_code         TEXT NOT NULL,
    class              TEXT NOT NULL,
    state              TEXT NOT NULL,
    filename           TEXT NOT NULL,
    content_type       TEXT,
    metadata           TEXT NOT NULL,
    captured_at        REAL NOT NULL,
    derived_at         REAL,
    derived_info       TEXT,
    synced_at          REAL,
    manifest_version   INTEGER NOT NULL DEFAULT 1,
    announced_version  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS parts (
    capture_id    TEXT NOT NULL REFERENCES captures(capture_id),
    part          TEXT NOT NULL,
    state         TEXT NOT NULL,
    sha256        TEXT,
    size          INTEGER,
    content_type  TEXT,
    reason        TEXT,
    upload_url    TEXT,
    acked_offset  INTEGER NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 0,
    synced_at     REAL,
    PRIMARY KEY (capture_id, part)
);
CREATE INDEX IF NOT EXISTS parts_pending ON parts(state);
CREATE TABLE IF NOT EXISTS audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    capture_id  TEXT,
    part        TEXT,
    event       TEXT NOT NULL,
    detail      TEXT
);
CREATE TABLE IF NOT EXISTS control (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

# Part states. "pending" parts wait for upload; "failed" and "unavailable"
# are derivatives that could not be made and are never uploaded.
# "parked" parts were rejected by the server too often and wait for the operator.
# "local_only" parts stay on the device by policy and are never announced.
PENDING, UPLOADING, SYNCED, PARKED, LOCAL = "pending", "uploading", "synced", "parked", "local_only"
FAILED, UNAVAILABLE = "failed", "unavailable"


@dataclass(frozen=True)
class PartToUpload:
    """One part the uploader should send next."""

    capture_id: str
    part: str
    klass: str
    sha256: str
    size: int
    content_type: str | None
    upload_url: str | None
    filename: str
    captured_at: float


class Journal:
    """Durable record of everything the agent has captured and sent."""

    def __init__(self, path: Path) -> None:
        self._conn = open_database(path, _SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _audit(self, capture_id: str | None, part: str | None, event: str, detail: Any = None) -> None:
        self._conn.execute(
            "INSERT INTO audit (at, capture_id, part, event, detail) VALUES (?,?,?,?,?)",
            (time.time(), capture_id, part, event, json.dumps(detail) if detail is not None else None),
        )

    def add_capture(self, capture: dict[str, Any]) -> None:
        """Commit a stored capture and its original part in one transaction."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT INTO captures (capture_id, short_code, class, state, filename, content_type,"
                " metadata, captured_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    capture["capture_id"],
                    capture["short_code"],
                    capture["class"],
                    "stored",
                    capture["filename"],
                    capture["content_type"],
                    json.dumps(capture["metadata"]),
                    capture["captured_at"],
                ),
            )
            self._conn.execute(
                "INSERT INTO parts (capture_id, part, state, sha256, size, content_type) VALUES (?,?,?,?,?,?)",
                (capture["capture_id"], "original", LOCAL if capture.get("local_only") else PENDING,
                 capture["sha256"], capture["size"], capture["content_type"]),
            )
            self._audit(capture["capture_id"], "original", "stored", {"sha256": capture["sha256"], "size": capture["size"]})

    def add_derivative(self, capture_id: str, part: str, state: str, *, sha256: str | None = None,
                       size: int | None = None, content_type: str | None = None, reason: str | None = None) -> None:
        """Record a derivative: a pending part to upload, or why it could not be made."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT OR REPLACE INTO parts (capture_id, part, state, sha256, size, content_type, reason)"
                " VALUES (?,?,?,?,?,?,?)",
                (capture_id, part, state, sha256, size, content_type, reason),
            )
            if state == PENDING:
                self._conn.execute(
                    "UPDATE captures SET manifest_version = manifest_version + 1 WHERE capture_id=?", (capture_id,)
                )
            self._audit(capture_id, part, f"derivative_{state}", {"reason": reason} if reason else None)

    def mark_derived(self, capture_id: str, info: dict[str, Any] | None = None) -> None:
        """Record that derivation ended, whether each derivative was made or not.

        ``info`` contains what derivation learned that may leave the device
        (key fields, a suggested class, privacy flags); it goes into the
        next manifest, so the manifest version is bumped when it is given.
        """
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE captures SET derived_at=?, derived_info=coalesce(?, derived_info),"
                " manifest_version = manifest_version + (? IS NOT NULL),"
                " state=CASE WHEN state='stored' THEN 'derived' ELSE state END WHERE capture_id=?",
                (time.time(), json.dumps(info) if info else None, json.dumps(info) if info else None, capture_id),
            )
            self._audit(capture_id, None, "derived")

    def capture(self, capture_id: str) -> dict[str, Any] | None:
        """Return a capture with its parts, or None."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM captures WHERE capture_id=?", (capture_id,)).fetchone()
            if row is None:
                return None
            capture = dict(row)
            capture["metadata"] = json.loads(capture["metadata"])
            capture["derived_info"] = json.loads(capture["derived_info"] or "{}")
            parts = self._conn.execute(
                "SELECT part, state, sha256, size, content_type, reason, acked_offset, synced_at"
                " FROM parts WHERE capture_id=? ORDER BY part",
                (capture_id,),
            ).fetchall()
            capture["parts"] = [dict(p) for p in parts]
            return capture

    def find_by_short_code(self, code: str) -> str | None:
        """Return the newest capture id with this short code (case-insensitive, dash optional), or None."""
        text = code.strip().upper().replace("-", "")
        if len(text) != 6:
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT capture_id FROM captures WHERE short_code=? ORDER BY capture_id DESC LIMIT 1",
                (f"{text[:3]}-{text[3:]}",),
            ).fetchone()
        return row["capture_id"] if row else None

    def captures(self, limit: int = 1000) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT capture_id FROM captures ORDER BY capture_id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [c for c in (self.capture(r["capture_id"]) for r in rows) if c is not None]

    def manifest_to_announce(self) -> tuple[dict[str, Any], int] | None:
        """Return the oldest capture whose manifest the server has not acknowledged, and its version."""
        pending = self.manifests_to_announce(1)
        return pending[0] if pending else None

    def manifests_to_announce(self, limit: int) -> list[tuple[dict[str, Any], int]]:
        """Return up to ``limit`` captures whose manifest the server has not acknowledged, oldest first, with their versions."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM captures WHERE announced_version < manifest_version ORDER BY capture_id LIMIT ?",
                (limit,),
            ).fetchall()
            pending = []
            for row in rows:
                parts = self._conn.execute(
                    "SELECT part, sha256, size, content_type FROM parts WHERE capture_id=? AND sha256 IS NOT NULL"
                    " AND state IN (?,?,?)",
                    (row["capture_id"], PENDING, UPLOADING, SYNCED),
                ).fetchall()
                capture = dict(row)
                capture["metadata"] = json.loads(capture["metadata"])
                capture["derived_info"] = json.loads(capture["derived_info"] or "{}")
                capture["parts"] = [dict(p) for p in parts]
                pending.append((capture, row["manifest_version"]))
            return pending

    def has_unannounced(self) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM captures WHERE announced_version < manifest_version LIMIT 1"
            ).fetchone()
        return row is not None

    def mark_announced(self, capture_id: str, version: int) -> None:
        self.mark_all_announced([(capture_id, version)])

    def mark_all_announced(self, announced: list[tuple[str, int]]) -> None:
        """Record the (capture_id, version) pairs the server acknowledged, in one transaction."""
        with self._lock, self._conn:
            for capture_id, version in announced:
                self._conn.execute(
                    "UPDATE captures SET announced_version=?,"
                    " state=CASE WHEN state IN ('stored','derived') THEN 'announced' ELSE state END"
                    " WHERE capture_id=? AND announced_version < ?",
                    (version, capture_id, version),
                )
                self._audit(capture_id, None, "announced", {"version": version})

    def next_part(self) -> PartToUpload | None:
        """Return the most important pending part of a capture whose latest manifest is announced.

        Order: class priority (consent first, media last), then capture time.
        A part added since the last announcement waits for the new manifest,
        because the server rejects a part that no manifest lists.
        """
        order = " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in PRIORITY.items())
        with self._lock:
            row = self._conn.execute(
                "SELECT p.capture_id, p.part, c.class, p.sha256, p.size, p.content_type, p.upload_url,"
                " c.filename, c.captured_at FROM parts p JOIN captures c USING (capture_id)"
                " WHERE p.state IN (?, ?) AND c.announced_version = c.manifest_version"
                f" ORDER BY CASE c.class {order} END, p.capture_id, p.part LIMIT 1",
                (PENDING, UPLOADING),
            ).fetchone()
        if row is None:
            return None
        return PartToUpload(
            row["capture_id"], row["part"], row["class"], row["sha256"], row["size"],
            row["content_type"], row["upload_url"], row["filename"], row["captured_at"],
        )

    def pending_parts(self, limit: int = 5000) -> list[PartToUpload]:
        """Return pending parts of captures whose latest manifest is announced, most important class first."""
        order = " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in PRIORITY.items())
        with self._lock:
            rows = self._conn.execute(
                "SELECT p.capture_id, p.part, c.class, p.sha256, p.size, p.content_type, p.upload_url,"
                " c.filename, c.captured_at FROM parts p JOIN captures c USING (capture_id)"
                " WHERE p.state IN (?, ?) AND c.announced_version = c.manifest_version"
                f" ORDER BY CASE c.class {order} END, p.capture_id, p.part LIMIT ?",
                (PENDING, UPLOADING, limit),
            ).fetchall()
        return [
            PartToUpload(
                r["capture_id"], r["part"], r["class"], r["sha256"], r["size"],
                r["content_type"], r["upload_url"], r["filename"], r["captured_at"],
            )
            for r in rows
        ]

    def retry_parked(self) -> int:
        """Put every parked part back in the queue; return how many."""
        with self._lock, self._conn:
            rows = self._conn.execute("SELECT capture_id, part FROM parts WHERE state=?", (PARKED,)).fetchall()
            self._conn.execute(
                "UPDATE parts SET state=?, attempts=0, upload_url=NULL WHERE state=?", (PENDING, PARKED)
            )
            for row in rows:
                self._audit(row["capture_id"], row["part"], "retry_requested")
            return len(rows)

    def parked_parts(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT capture_id, part, reason, attempts FROM parts WHERE state=? ORDER BY capture_id", (PARKED,)
            ).fetchall()
        return [dict(r) for r in rows]

    def load_control(self) -> dict[str, Any]:
        """Return what the operator set about the link (metered, cap, event ended)."""
        with self._lock:
            rows = self._conn.execute("SELECT name, value FROM control").fetchall()
        return {r["name"]: json.loads(r["value"]) for r in rows}

    def save_control(self, values: dict[str, Any]) -> None:
        with self._lock, self._conn:
            for name, value in values.items():
                self._conn.execute(
                    "INSERT INTO control VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                    (name, json.dumps(value)),
                )
            self._audit(None, None, "control_changed", values)

    def set_upload_url(self, capture_id: str, part: str, url: str | None) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE parts SET upload_url=?, state=? WHERE capture_id=? AND part=?",
                (url, UPLOADING if url else PENDING, capture_id, part),
            )
            self._conn.execute(
                "UPDATE captures SET state='uploading' WHERE capture_id=? AND state IN ('announced','derived','stored')",
                (capture_id,),
            )
            self._audit(capture_id, part, "upload_created" if url else "upload_reset", {"url": url})

    def set_offset(self, capture_id: str, part: str, offset: int) -> None:
        """Remember the server's last acknowledged offset (informational: HEAD is the truth)."""
        with self._lock:
            self._conn.execute(
                "UPDATE parts SET acked_offset=? WHERE capture_id=? AND part=?", (offset, capture_id, part)
            )

    def count_attempt(self, capture_id: str, part: str, reason: str) -> int:
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE parts SET attempts = attempts + 1, reason=? WHERE capture_id=? AND part=?",
                (reason, capture_id, part),
            )
            row = self._conn.execute(
                "SELECT attempts FROM parts WHERE capture_id=? AND part=?", (capture_id, part)
            ).fetchone()
            return int(row["attempts"]) if row else 0

    def park(self, capture_id: str, part: str, reason: str) -> None:
        """Stop trying a part the server keeps rejecting, keeping the reason for the operator."""
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE parts SET state=?, reason=?, upload_url=NULL WHERE capture_id=? AND part=?",
                (PARKED, reason, capture_id, part),
            )
            self._audit(capture_id, part, "parked", {"reason": reason})

    def parked_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM parts WHERE state=?", (PARKED,)).fetchone()[0])

    def mark_part_synced(self, capture_id: str, part: str) -> bool:
        """Record a part as synced; return True when that made the whole capture synced."""
        now = time.time()
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "UPDATE parts SET state=?, synced_at=?, acked_offset=size, reason=NULL WHERE capture_id=? AND part=?",
                (SYNCED, now, capture_id, part),
            )
            self._audit(capture_id, part, "synced")
            return self._settle_capture(capture_id, now)

    def _settle_capture(self, capture_id: str, now: float) -> bool:
        row = self._conn.execute(
            "SELECT state, derived_at FROM captures WHERE capture_id=?", (capture_id,)
        ).fetchone()
        if row is None or row["state"] == "synced" or row["derived_at"] is None:
            # Without derived_at, derivatives are still on the way.
            return False
        open_parts = self._conn.execute(
            "SELECT count(*) FROM parts WHERE capture_id=? AND state IN (?,?,?)",
            (capture_id, PENDING, UPLOADING, PARKED),
        ).fetchone()[0]
        if open_parts:
            return False
        self._conn.execute("UPDATE captures SET state='synced', synced_at=? WHERE capture_id=?", (now, capture_id))
        self._audit(capture_id, None, "capture_synced")
        return True

    def settle(self, capture_id: str) -> bool:
        """Mark the capture synced if every part that exists is synced (after derivation ends)."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            return self._settle_capture(capture_id, time.time())

    def captures_to_derive(self) -> list[tuple[str, str]]:
        """Return (capture_id, sha256 of the original) of captures whose derivatives were never made."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT c.capture_id, p.sha256 FROM captures c JOIN parts p USING (capture_id)"
                " WHERE c.derived_at IS NULL AND p.part='original' ORDER BY c.capture_id"
            ).fetchall()
            return [(r["capture_id"], r["sha256"]) for r in rows]

    def pending_by_class(self) -> dict[str, dict[str, int]]:
        """Return items and bytes not yet synced, per class."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT c.class, count(DISTINCT c.capture_id) AS items, coalesce(sum(p.size - p.acked_offset), 0) AS bytes"
                " FROM captures c JOIN parts p USING (capture_id)"
                " WHERE p.state IN (?, ?) GROUP BY c.class",
                (PENDING, UPLOADING),
            ).fetchall()
        return {r["class"]: {"items": r["items"], "bytes": r["bytes"]} for r in rows}

    def oldest_unflushed_at(self) -> float | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT min(captured_at) FROM captures WHERE state != 'synced'"
            ).fetchone()
        return row[0]

    def state_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT state, count(*) FROM captures GROUP BY state").fetchall()
        return {r[0]: r[1] for r in rows}

    def audit_log(self, capture_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT at, part, event, detail FROM audit WHERE capture_id=? ORDER BY seq", (capture_id,)
            ).fetchall()
        return [dict(r) for r in rows]
