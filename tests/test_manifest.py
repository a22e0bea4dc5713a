"""Tests for manifest validation on the server."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from boothsync.manifest import MAX_METADATA_BYTES, ManifestError, is_capture_id, parse_manifest

CAPTURE_ID = "01HZX3K8Q7RM5V2N9T4B6C0D1E"
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4


def _manifest(**changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "capture_id": CAPTURE_ID,
        "event": "spring-market_2025",
        "device_id": "stall-07",
        "class": "receipt",
        "captured_at": 1_700_000_000.25,
        "filename": "IMG_0001.jpg",
        "metadata": {"table": 4, "note": "paid in cash"},
        "parts": [
            {"part": "original", "sha256": SHA_A, "size": 2048, "content_type": "image/jpeg"},
            {"part": "thumbnail", "sha256": SHA_B, "size": 300, "content_type": "image/jpeg"},
        ],
    }
    manifest.update(changes)
    return manifest


def _part(**changes: Any) -> dict[str, Any]:
    part: dict[str, Any] = {"part": "original", "sha256": SHA_A, "size": 10, "content_type": None}
    part.update(changes)
    return part


def _error(data: Any) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    return str(info.value)


# Valid manifests


def test_valid_manifest_unchanged() -> None:
    manifest = _manifest()

    assert parse_manifest(copy.deepcopy(manifest)) == manifest


def test_valid_manifest_json_round_trip() -> None:
    parsed = parse_manifest(_manifest())

    assert parse_manifest(json.loads(json.dumps(parsed))) == parsed


def test_valid_integer_time_becomes_float() -> None:
    parsed = parse_manifest(_manifest(captured_at=1_700_000_000))

    assert parsed["captured_at"] == 1_700_000_000.0
    assert type(parsed["captured_at"]) is float


def test_valid_defaults_for_optional_fields() -> None:
    data = _manifest(parts=[{"part": "ocr_text", "sha256": SHA_B, "size": 0}])
    del data["metadata"]
    del data["filename"]

    parsed = parse_manifest(data)

    assert parsed["metadata"] == {}
    assert parsed["filename"] == "capture"
    assert parsed["parts"] == [{"part": "ocr_text", "sha256": SHA_B, "size": 0, "content_type": None}]


def test_valid_unknown_top_level_field_dropped() -> None:
    parsed = parse_manifest(_manifest(extra="ignored"))

    assert "extra" not in parsed


@pytest.mark.parametrize("klass", ["consent", "receipt", "contract", "document", "media"])
def test_valid_every_class(klass: str) -> None:
    assert parse_manifest(_manifest(**{"class": klass}))["class"] == klass


def test_valid_all_three_parts() -> None:
    parts = [_part(part="original"), _part(part="thumbnail"), _part(part="ocr_text")]

    parsed = parse_manifest(_manifest(parts=parts))

    assert [part["part"] for part in parsed["parts"]] == ["original", "thumbnail", "ocr_text"]


def test_valid_slug_at_max_length() -> None:
    event = "e" * 64

    assert parse_manifest(_manifest(event=event))["event"] == event


def test_valid_metadata_under_limit() -> None:
    metadata = {"note": "x" * (MAX_METADATA_BYTES - 100)}

    assert parse_manifest(_manifest(metadata=metadata))["metadata"] == metadata


# Filename


def test_filename_traversal_sanitized() -> None:
    assert parse_manifest(_manifest(filename="../../etc/passwd"))["filename"] == "passwd"


def test_filename_backslash_sanitized() -> None:
    assert parse_manifest(_manifest(filename="..\\..\\scan.pdf"))["filename"] == "scan.pdf"


def test_filename_newline_sanitized() -> None:
    assert parse_manifest(_manifest(filename="a\nb.jpg"))["filename"] == "a_b.jpg"


@pytest.mark.parametrize("filename", [123, ["a.jpg"], {"name": "a.jpg"}])
def test_filename_not_string_rejected(filename: Any) -> None:
    # A client bug can send a non-string name, and the server must return 422 for it, not 500.
    assert "filename" in _error(_manifest(filename=filename))


# Invalid top level


@pytest.mark.parametrize("data", [[], "manifest", None, 42, [_manifest()]])
def test_invalid_not_object(data: Any) -> None:
    assert "JSON object" in _error(data)


@pytest.mark.parametrize(
    "capture_id",
    [
        "not-a-ulid",
        CAPTURE_ID.lower(),
        CAPTURE_ID[:-1],
        CAPTURE_ID + "0",
        "8" + CAPTURE_ID[1:],
        CAPTURE_ID[:-1] + "U",
        "",
        None,
        12345,
    ],
)
def test_invalid_capture_id(capture_id: Any) -> None:
    assert "capture_id" in _error(_manifest(capture_id=capture_id))


def test_invalid_capture_id_missing() -> None:
    data = _manifest()
    del data["capture_id"]

    assert "capture_id" in _error(data)


@pytest.mark.parametrize("klass", ["video", "Receipt", "", None])
def test_invalid_class(klass: Any) -> None:
    assert "class" in _error(_manifest(**{"class": klass}))


@pytest.mark.parametrize("event", ["a/b", "..", "../x", ".hidden", "-lead", "a b", "e" * 65, "", None, 7])
def test_invalid_event(event: Any) -> None:
    assert "event" in _error(_manifest(event=event))


@pytest.mark.parametrize("device_id", ["stall/07", "..", "", None])
def test_invalid_device_id(device_id: Any) -> None:
    assert "device_id" in _error(_manifest(device_id=device_id))


@pytest.mark.parametrize("captured_at", [-1, -0.5, "1700000000", True, None])
def test_invalid_captured_at(captured_at: Any) -> None:
    assert "captured_at" in _error(_manifest(captured_at=captured_at))


def test_invalid_metadata_too_large() -> None:
    message = _error(_manifest(metadata={"note": "x" * (MAX_METADATA_BYTES + 1)}))

    assert "metadata" in message
    assert str(MAX_METADATA_BYTES) in message


@pytest.mark.parametrize("metadata", [None, [], "note", 3])
def test_invalid_metadata_not_object(metadata: Any) -> None:
    assert "metadata" in _error(_manifest(metadata=metadata))


# Invalid parts


def test_invalid_parts_missing() -> None:
    data = _manifest()
    del data["parts"]

    assert "parts" in _error(data)


@pytest.mark.parametrize("parts", [None, {"part": "original"}, "original"])
def test_invalid_parts_not_list(parts: Any) -> None:
    assert "parts" in _error(_manifest(parts=parts))


def test_empty_parts_allowed() -> None:
    # A capture whose original stays on the device by policy is still announced.
    assert parse_manifest(_manifest(parts=[]))["parts"] == []


def test_invalid_part_not_object() -> None:
    assert "part" in _error(_manifest(parts=["original"]))


def test_invalid_part_duplicate() -> None:
    message = _error(_manifest(parts=[_part(), _part(sha256=SHA_B)]))

    assert "'original'" in message
    assert "twice" in message


@pytest.mark.parametrize("name", ["preview", "Original", "", None])
def test_invalid_part_name(name: Any) -> None:
    message = _error(_manifest(parts=[_part(part=name)]))

    assert repr(name) in message


@pytest.mark.parametrize("sha256", [SHA_A.upper(), SHA_A[:-1], SHA_A + "0", "g" * 64, None, 12])
def test_invalid_part_sha256(sha256: Any) -> None:
    assert "sha256" in _error(_manifest(parts=[_part(sha256=sha256)]))


@pytest.mark.parametrize("size", [-1, True, False, 1.5, "10", None])
def test_invalid_part_size(size: Any) -> None:
    message = _error(_manifest(parts=[_part(size=size)]))

    assert "size" in message
    assert repr(size) in message


def test_invalid_part_content_type() -> None:
    assert "content_type" in _error(_manifest(parts=[_part(content_type=5)]))


# is_capture_id


def test_is_capture_id_canonical() -> None:
    assert is_capture_id(CAPTURE_ID)


def test_is_capture_id_lower_case() -> None:
    assert not is_capture_id(CAPTURE_ID.lower())
