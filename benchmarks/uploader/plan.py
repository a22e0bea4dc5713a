"""The link profile and the capture schedule that every uploader in a run gets.

Times are seconds of link time: 0 is the moment the FlakyLink starts, which is
also when its drop ticks and the blackout are counted from.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from boothsync.flakylink import LinkProfile

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "src" / "boothsync" / "samples"
TEST_DATA = REPO / "tests" / "data"

MIB = 1024 * 1024

# 8 Mbit/s each way, 150 ms round trip, a drop every 20 s, one 30 s blackout.
CAP_BYTES_PER_S = 1_000_000
ONE_WAY_LATENCY_S = 0.075
DROP_EVERY_S = 20.0
BLACKOUT = (60.0, 90.0)

VIDEO_BYTES = 200_000_000
VIDEO_AT_S = 2.0
RECEIPTS = 60
RECEIPTS_FROM_S = 8.0
RECEIPT_EVERY_S = 3.0  # the last receipt comes at 185 s
CONSENTS = 10
CONSENTS_FROM_S = 12.5
CONSENT_EVERY_S = 18.0
DOCUMENTS = 5
DOCUMENTS_FROM_S = 21.5
DOCUMENT_EVERY_S = 36.0

CONTENT_TYPES = {".jpg": "image/jpeg", ".pdf": "application/pdf", ".mp4": "video/mp4"}


def link_profile() -> LinkProfile:
    return LinkProfile(
        rate_bytes_per_s=CAP_BYTES_PER_S,
        latency_s=ONE_WAY_LATENCY_S,
        drop_every_s=DROP_EVERY_S,
        blackouts=[BLACKOUT],
    )


@dataclass(frozen=True)
class PlannedCapture:
    """One file to capture at ``at_s`` seconds of link time."""

    number: int
    at_s: float
    klass: str
    filename: str
    path: str
    size: int
    content_type: str

    def as_dict(self) -> dict:
        return asdict(self)


def receipt_sources() -> list[Path]:
    """Return the real SROIE receipt scans, which the schedule reuses in turn."""
    return sorted((SAMPLES / "receipt").glob("*.jpg")) + sorted((TEST_DATA / "receipts").glob("*.jpg"))


def consent_sources() -> list[Path]:
    return sorted((SAMPLES / "consent").glob("*.pdf"))


def document_sources() -> list[Path]:
    """Return the sample and test PDFs whose name does not mark them as malformed."""
    found = sorted(SAMPLES.glob("*/*.pdf")) + sorted((TEST_DATA / "pdf").glob("*.pdf"))
    return [path for path in found if not path.name.startswith("malformed")]


def write_video(path: Path, size: int = VIDEO_BYTES) -> Path:
    """Write ``size`` random bytes, the stand-in for a stall's 200 MB video."""
    if path.exists() and path.stat().st_size == size:
        return path
    block = 4 * MIB
    with open(path, "wb") as handle:
        left = size
        while left:
            size = min(block, left)
            handle.write(os.urandom(size))
            left -= size
    return path


def build_schedule(video: Path) -> list[PlannedCapture]:
    """Return the captures in the order of their times."""
    entries: list[tuple[float, str, Path, str]] = [(VIDEO_AT_S, "media", video, "stall.mp4")]
    receipts = receipt_sources()
    for i in range(RECEIPTS):
        source = receipts[i % len(receipts)]
        entries.append((RECEIPTS_FROM_S + i * RECEIPT_EVERY_S, "receipt", source, f"receipt-{i + 1:02d}-{source.name}"))
    consents = consent_sources()
    for i in range(CONSENTS):
        source = consents[i % len(consents)]
        entries.append((CONSENTS_FROM_S + i * CONSENT_EVERY_S, "consent", source, f"consent-{i + 1:02d}-{source.name}"))
    documents = document_sources()
    for i in range(DOCUMENTS):
        source = documents[i % len(documents)]
        entries.append((DOCUMENTS_FROM_S + i * DOCUMENT_EVERY_S, "document", source, f"document-{i + 1}-{source.name}"))
    entries.sort(key=lambda entry: entry[0])
    return [
        PlannedCapture(
            number, at_s, klass, filename, str(path), path.stat().st_size,
            CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"),
        )
        for number, (at_s, klass, path, filename) in enumerate(entries)
    ]


def save_schedule(schedule: list[PlannedCapture], path: Path) -> None:
    path.write_text(json.dumps([c.as_dict() for c in schedule], indent=1), encoding="utf-8")


def load_schedule(path: Path) -> list[PlannedCapture]:
    return [PlannedCapture(**entry) for entry in json.loads(path.read_text(encoding="utf-8"))]
