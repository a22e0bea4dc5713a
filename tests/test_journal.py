"""Tests for the agent's SQLite journal, on real database files."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from boothsync.agent.journal import FAILED, PENDING, SYNCED, UNAVAILABLE, Journal

# Capture ids in increasing order, so tests can reason about "older" captures.
ID_1 = "01HZX3K8Q70000000000000001"
ID_2 = "01HZX3K8Q70000000000000002"
ID_3 = "01HZX3K8Q70000000000000003"
ID_4 = "01HZX3K8Q70000000000000004"


def _capture(capture_id: str, klass: str = "receipt", size: int = 100, sha256: str | None = None) -> dict[str, Any]:
    return {
        "capture_id": capture_id,
        "short_code": "ABC-123",
        "class": klass,
        "filename": f"{capture_id}.jpg",
        "content_type": "image/jpeg",
        "metadata": {"note": "table 4"},
        "captured_at": 1_700_000_000.0,
        "sha256": sha256 or capture_id[-1] * 64,
        "size": size,
    }


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite3"


@pytest.fixture
def journal(db_path: Path) -> Iterator[Journal]:
    journal = Journal(db_path)
    yield journal
    journal.close()


def _announce_all(journal: Journal) -> None:
    while (pending := journal.manifest_to_announce()) is not None:
        capture, version = pending
        journal.mark_announced(capture["capture_id"], version)


def _part_states(journal: Journal, capture_id: str) -> dict[str, str]:
    capture = journal.capture(capture_id)
    assert capture is not None
    return {part["part"]: part["state"] for part in capture["parts"]}


# Durability and database settings


def test_add_capture_survives_reopen(db_path: Path) -> None:
    first = Journal(db_path)
    first.add_capture(_capture(ID_1))
    first.close()

    second = Journal(db_path)
    capture = second.capture(ID_1)
    second.close()

    assert capture is not None
    assert capture["class"] == "receipt"
    assert capture["state"] == "stored"
    assert capture["metadata"] == {"note": "table 4"}
    assert capture["parts"][0]["part"] == "original"
    assert capture["parts"][0]["state"] == PENDING
    assert capture["parts"][0]["size"] == 100


def test_add_capture_visible_to_other_connection(journal: Journal, db_path: Path) -> None:
    # add_capture commits before it returns, so a second connection reads the row at once.
    journal.add_capture(_capture(ID_1))

    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT capture_id, short_code FROM captures").fetchall()
        parts = conn.execute("SELECT part, sha256 FROM parts").fetchall()

    assert rows == [(ID_1, "ABC-123")]
    assert parts == [("original", "1" * 64)]


def test_add_capture_duplicate_rejected(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))

    with pytest.raises(sqlite3.IntegrityError):
        journal.add_capture(_capture(ID_1))


def test_journal_mode_wal(journal: Journal) -> None:
    assert journal._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_synchronous_full(journal: Journal) -> None:
    # PRAGMA synchronous reads back 2 for FULL.
    assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_wal_mode_persists_in_file(journal: Journal, db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# Audit log


def test_audit_records_store(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))

    log = journal.audit_log(ID_1)

    assert [entry["event"] for entry in log] == ["stored"]
    assert log[0]["part"] == "original"
    assert '"size": 100' in log[0]["detail"]


def test_audit_rejects_update(journal: Journal, db_path: Path) -> None:
    journal.add_capture(_capture(ID_1))

    with sqlite3.connect(db_path) as conn:
        with pytest.raises(sqlite3.IntegrityError) as info:
            conn.execute("UPDATE audit SET event='edited'")

    assert "append-only" in str(info.value)


def test_audit_rejects_delete(journal: Journal, db_path: Path) -> None:
    journal.add_capture(_capture(ID_1))

    with sqlite3.connect(db_path) as conn:
        with pytest.raises(sqlite3.IntegrityError) as info:
            conn.execute("DELETE FROM audit")

    assert "append-only" in str(info.value)


def test_audit_rows_kept_after_rejection(journal: Journal, db_path: Path) -> None:
    journal.add_capture(_capture(ID_1))
    with sqlite3.connect(db_path) as conn:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("DELETE FROM audit")

    assert [entry["event"] for entry in journal.audit_log(ID_1)] == ["stored"]


# Manifests


def test_announce_new_capture(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))

    pending = journal.manifest_to_announce()

    assert pending is not None
    capture, version = pending
    assert capture["capture_id"] == ID_1
    assert version == 1
    assert capture["parts"] == [
        {"part": "original", "sha256": "1" * 64, "size": 100, "content_type": "image/jpeg"}
    ]


def test_announce_oldest_first(journal: Journal) -> None:
    journal.add_capture(_capture(ID_2))
    journal.add_capture(_capture(ID_1))

    pending = journal.manifest_to_announce()

    assert pending is not None
    assert pending[0]["capture_id"] == ID_1


def test_mark_announced_clears(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))

    journal.mark_announced(ID_1, 1)

    assert journal.manifest_to_announce() is None
    assert journal.capture(ID_1)["state"] == "announced"


def test_announce_several_oldest_first(journal: Journal) -> None:
    for capture_id in (ID_3, ID_1, ID_4, ID_2):
        journal.add_capture(_capture(capture_id))
    journal.add_derivative(ID_1, "thumbnail", PENDING, sha256="f" * 64, size=20, content_type="image/jpeg")

    pending = journal.manifests_to_announce(3)

    assert [capture["capture_id"] for capture, _ in pending] == [ID_1, ID_2, ID_3]
    assert [version for _, version in pending] == [2, 1, 1]
    assert sorted(part["part"] for part in pending[0][0]["parts"]) == ["original", "thumbnail"]


def test_mark_all_announced_clears(journal: Journal) -> None:
    for capture_id in (ID_1, ID_2, ID_3):
        journal.add_capture(_capture(capture_id))

    journal.mark_all_announced([(ID_1, 1), (ID_3, 1)])

    assert [capture["capture_id"] for capture, _ in journal.manifests_to_announce(10)] == [ID_2]
    assert journal.capture(ID_1)["state"] == "announced"
    assert journal.capture(ID_3)["state"] == "announced"
    assert journal.capture(ID_2)["state"] != "announced"


def test_pending_derivative_reannounces(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))
    journal.mark_announced(ID_1, 1)

    journal.add_derivative(ID_1, "thumbnail", PENDING, sha256="f" * 64, size=20, content_type="image/jpeg")

    pending = journal.manifest_to_announce()
    assert pending is not None
    capture, version = pending
    assert version == 2
    assert sorted(part["part"] for part in capture["parts"]) == ["original", "thumbnail"]


def test_failed_derivative_not_announced(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))
    journal.mark_announced(ID_1, 1)

    journal.add_derivative(ID_1, "ocr_text", FAILED, reason="tesseract timed out")

    assert journal.manifest_to_announce() is None
    assert _part_states(journal, ID_1)["ocr_text"] == FAILED


def test_mark_announced_stale_version_ignored(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))
    journal.add_derivative(ID_1, "thumbnail", PENDING, sha256="f" * 64, size=20)
    journal.mark_announced(ID_1, 2)

    journal.mark_announced(ID_1, 1)

    assert journal.manifest_to_announce() is None


# Upload order


def test_next_part_none_before_announce(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))

    assert journal.next_part() is None


def test_next_part_class_priority(journal: Journal) -> None:
    # Added oldest first with the least important class first.
    journal.add_capture(_capture(ID_1, klass="media"))
    journal.add_capture(_capture(ID_2, klass="receipt"))
    journal.add_capture(_capture(ID_3, klass="consent"))
    _announce_all(journal)

    order = []
    while (part := journal.next_part()) is not None:
        order.append(part.klass)
        journal.mark_part_synced(part.capture_id, part.part)

    assert order == ["consent", "receipt", "media"]


def test_next_part_same_class_by_capture_id(journal: Journal) -> None:
    journal.add_capture(_capture(ID_3, klass="receipt"))
    journal.add_capture(_capture(ID_1, klass="receipt"))
    journal.add_capture(_capture(ID_2, klass="receipt"))
    _announce_all(journal)

    part = journal.next_part()

    assert part is not None
    assert part.capture_id == ID_1


def test_next_part_skips_unannounced(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1, klass="media"))
    journal.mark_announced(ID_1, 1)
    journal.add_capture(_capture(ID_2, klass="consent"))

    part = journal.next_part()

    assert part is not None
    assert part.capture_id == ID_1
    assert part.klass == "media"


def test_next_part_fields(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1, size=4096))
    journal.mark_announced(ID_1, 1)

    part = journal.next_part()

    assert part is not None
    assert part.part == "original"
    assert part.sha256 == "1" * 64
    assert part.size == 4096
    assert part.upload_url is None
    assert part.filename == f"{ID_1}.jpg"


def test_next_part_keeps_upload_url(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))
    journal.mark_announced(ID_1, 1)
    journal.set_upload_url(ID_1, "original", "http://hq/files/abc")

    part = journal.next_part()

    assert part is not None
    assert part.upload_url == "http://hq/files/abc"


# Sync state


def test_synced_needs_mark_derived(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))
    journal.mark_announced(ID_1, 1)

    became_synced = journal.mark_part_synced(ID_1, "original")

    assert became_synced is False
    assert journal.capture(ID_1)["state"] != "synced"


def test_synced_waits_for_pending_derivative(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))
    journal.add_derivative(ID_1, "thumbnail", PENDING, sha256="f" * 64, size=20)
    journal.mark_derived(ID_1)
    _announce_all(journal)

    assert journal.mark_part_synced(ID_1, "original") is False
    assert journal.capture(ID_1)["state"] != "synced"


def test_synced_after_last_part(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))
    journal.add_derivative(ID_1, "thumbnail", PENDING, sha256="f" * 64, size=20)
    journal.add_derivative(ID_1, "ocr_text", UNAVAILABLE, reason="not an image or PDF")
    journal.mark_derived(ID_1)
    _announce_all(journal)
    journal.mark_part_synced(ID_1, "original")

    became_synced = journal.mark_part_synced(ID_1, "thumbnail")

    capture = journal.capture(ID_1)
    assert became_synced is True
    assert capture["state"] == "synced"
    assert capture["synced_at"] is not None
    assert journal.audit_log(ID_1)[-1]["event"] == "capture_synced"


def test_synced_only_once(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))
    journal.mark_derived(ID_1)
    journal.mark_announced(ID_1, 1)
    assert journal.mark_part_synced(ID_1, "original") is True

    assert journal.mark_part_synced(ID_1, "original") is False


def test_settle_after_late_mark_derived(journal: Journal) -> None:
    # The original can sync before derivation ends, and settle() then finishes the capture.
    journal.add_capture(_capture(ID_1))
    journal.mark_announced(ID_1, 1)
    journal.mark_part_synced(ID_1, "original")
    journal.add_derivative(ID_1, "thumbnail", FAILED, reason="decoder error")
    journal.mark_derived(ID_1)

    assert journal.settle(ID_1) is True
    assert journal.capture(ID_1)["state"] == "synced"


def test_synced_part_state_and_offset(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1, size=300))
    journal.mark_announced(ID_1, 1)
    journal.set_offset(ID_1, "original", 120)

    journal.mark_part_synced(ID_1, "original")

    part = journal.capture(ID_1)["parts"][0]
    assert part["state"] == SYNCED
    assert part["acked_offset"] == 300


def test_park_keeps_capture_unsynced(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))
    journal.add_derivative(ID_1, "thumbnail", PENDING, sha256="f" * 64, size=20)
    journal.mark_derived(ID_1)
    _announce_all(journal)

    journal.park(ID_1, "thumbnail", "server rejected the part 5 times")
    became_synced = journal.mark_part_synced(ID_1, "original")

    assert became_synced is False
    assert journal.capture(ID_1)["state"] != "synced"
    assert journal.parked_count() == 1


def test_park_removes_from_queue(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))
    journal.mark_announced(ID_1, 1)
    journal.set_upload_url(ID_1, "original", "http://hq/files/abc")

    journal.park(ID_1, "original", "sha256 mismatch")

    assert journal.next_part() is None
    part = journal.capture(ID_1)["parts"][0]
    assert part["reason"] == "sha256 mismatch"


def test_parked_count_zero(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))

    assert journal.parked_count() == 0


def test_count_attempt_increments(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1))

    assert journal.count_attempt(ID_1, "original", "HTTP 400") == 1
    assert journal.count_attempt(ID_1, "original", "HTTP 400") == 2


# Pending totals


def test_pending_by_class_sums(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1, klass="receipt", size=100))
    journal.add_capture(_capture(ID_2, klass="receipt", size=50))
    journal.add_capture(_capture(ID_3, klass="media", size=1000))
    journal.add_derivative(ID_3, "thumbnail", PENDING, sha256="f" * 64, size=20)
    journal.add_derivative(ID_3, "ocr_text", FAILED, reason="no text")

    pending = journal.pending_by_class()

    assert pending == {"receipt": {"items": 2, "bytes": 150}, "media": {"items": 1, "bytes": 1020}}


def test_pending_by_class_subtracts_acked(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1, klass="media", size=1000))
    journal.mark_announced(ID_1, 1)
    journal.set_upload_url(ID_1, "original", "http://hq/files/abc")
    journal.set_offset(ID_1, "original", 400)

    assert journal.pending_by_class() == {"media": {"items": 1, "bytes": 600}}


def test_pending_by_class_skips_synced(journal: Journal) -> None:
    journal.add_capture(_capture(ID_1, klass="consent", size=10))
    journal.add_capture(_capture(ID_4, klass="consent", size=30))
    _announce_all(journal)
    journal.mark_part_synced(ID_1, "original")

    assert journal.pending_by_class() == {"consent": {"items": 1, "bytes": 30}}


def test_pending_by_class_empty(journal: Journal) -> None:
    assert journal.pending_by_class() == {}
