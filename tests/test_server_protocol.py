"""Protocol tests of the ingest server: tus 1.0 uploads and the manifest API.

Each test drives a real ``boothsync server run`` process on 127.0.0.1 with
raw HTTP requests, and checks status codes, headers and the files on disk.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import socket
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from boothsync.ids import new_capture_id
from boothsync.processes import ChildProcess, free_port, server_process
from boothsync.tus.protocol import BLOCK_CHECKSUMS_HEADER, block_checksums_header, encode_metadata

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
TUS_VERSION = "1.0.0"
OFFSET_TYPE = "application/offset+octet-stream"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SMALL_MAX_BYTES = 1_000_000


@dataclass
class Server:
    """A running server process and where it keeps its data."""

    url: str
    port: int
    data_dir: Path
    process: ChildProcess

    @property
    def uploads_url(self) -> str:
        return self.url + "/files/"


def _run_server(root: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    port = free_port()
    url = f"http://{HOST}:{port}"
    data_dir = root / "server-data"
    process = server_process(data_dir, port, root / "server.log", env)
    process.start()
    try:
        process.wait_ready(url + "/v1/health")
        yield Server(url, port, data_dir, process)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _run_server(tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"BOOTHSYNC_SERVER_MAX_UPLOAD_BYTES": str(SMALL_MAX_BYTES)}
    yield from _run_server(tmp_path_factory.mktemp("small-server"), env)


@pytest.fixture(scope="module")
def expiring_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"BOOTHSYNC_SERVER_UPLOAD_EXPIRY_S": "1"}
    yield from _run_server(tmp_path_factory.mktemp("expiring-server"), env)


@pytest.fixture
def scratch_server(tmp_path: Path) -> Iterator[Server]:
    """A server of its own, for a test whose input may leave the index unusable."""
    yield from _run_server(tmp_path)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


# Helpers


def _payload(size: int, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(size))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checksum(algorithm: str, data: bytes) -> str:
    digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(digest).decode('ascii')}"


def _manifest(capture_id: str, data: bytes, **changes: Any) -> dict[str, Any]:
    manifest = {
        "capture_id": capture_id,
        "event": "spring-fair",
        "device_id": "stall-7",
        "class": "document",
        "captured_at": 1_700_000_000.0,
        "filename": "receipt.pdf",
        "metadata": {"note": "protocol test"},
        "parts": [
            {"part": "original", "size": len(data), "sha256": _sha256(data), "content_type": "application/pdf"}
        ],
    }
    manifest.update(changes)
    return manifest


def _announce(client: httpx.Client, server: Server, data: bytes, **changes: Any) -> str:
    """POST a manifest for one original part of ``data`` and return its capture id."""
    capture_id = new_capture_id()
    response = client.post(server.url + "/v1/manifests", json=_manifest(capture_id, data, **changes))
    assert response.status_code == 200, response.text
    return capture_id


def _create(
    client: httpx.Client,
    server: Server,
    length: int | str,
    metadata: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    request_headers = {"Tus-Resumable": TUS_VERSION, "Upload-Length": str(length)}
    if metadata is not None:
        request_headers["Upload-Metadata"] = encode_metadata(metadata)
    request_headers.update(headers or {})
    return client.post(server.uploads_url, headers=request_headers, content=content)


def _new_upload(client: httpx.Client, server: Server, length: int, metadata: dict[str, str] | None = None) -> str:
    """Create an upload and return its absolute URL."""
    response = _create(client, server, length, metadata)
    assert response.status_code == 201, response.text
    return _resolve(server, response.headers["location"])


def _capture_upload(client: httpx.Client, server: Server, data: bytes, **changes: Any) -> tuple[str, str]:
    """Announce ``data`` as a capture's original part and create its upload.

    Return the capture id and the upload's absolute URL.
    """
    capture_id = _announce(client, server, data, **changes)
    url = _new_upload(client, server, len(data), {"capture_id": capture_id, "part": "original"})
    return capture_id, url


def _resolve(server: Server, location: str) -> str:
    return str(httpx.URL(server.uploads_url).join(location))


def _patch(
    client: httpx.Client, url: str, offset: int, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    request_headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": str(offset), "Content-Type": OFFSET_TYPE}
    request_headers.update(headers or {})
    return client.patch(url, headers=request_headers, content=body)


def _head(client: httpx.Client, url: str) -> httpx.Response:
    return client.head(url, headers={"Tus-Resumable": TUS_VERSION})


def _offset(client: httpx.Client, url: str) -> int:
    response = _head(client, url)
    assert response.status_code == 200, response.headers
    return int(response.headers["upload-offset"])


def _upload_all(client: httpx.Client, url: str, data: bytes, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        response = _patch(client, url, start, data[start : start + chunk])
        assert response.status_code == 204, response.text


def _listing(client: httpx.Client, server: Server) -> dict[str, Any]:
    response = client.get(server.url + "/v1/captures")
    assert response.status_code == 200, response.text
    return response.json()


def _listed_part(client: httpx.Client, server: Server, capture_id: str, part: str = "original") -> dict[str, Any]:
    for capture in _listing(client, server)["captures"]:
        if capture["capture_id"] == capture_id:
            for listed in capture["parts"]:
                if listed["part"] == part:
                    return listed
    raise AssertionError(f"capture {capture_id} part {part} is not in the server's listing")


def _stored_file(client: httpx.Client, server: Server, capture_id: str) -> Path:
    """Return the file the listing names for the capture's original part."""
    listing = _listing(client, server)
    part = _listed_part(client, server, capture_id)
    assert part["path"] is not None, part
    return Path(listing["storage_dir"]) / part["path"]


def _stored_infos(server: Server) -> list[dict[str, Any]]:
    """Read every upload info row, as the server process left it, from the store's SQLite file."""
    path = server.data_dir / "uploads" / "infos.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT info FROM upload_infos ORDER BY upload_id").fetchall()
    return [json.loads(row[0]) for row in rows]


def _upload_id(url: str) -> str:
    return httpx.URL(url).path.rsplit("/", 1)[-1]


def _metric(client: httpx.Client, server: Server, name: str) -> float:
    response = client.get(server.url + "/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"metric {name} not found in /metrics")


def _wait_for_metric(client: httpx.Client, server: Server, name: str, above: float, timeout_s: float = 5.0) -> float:
    deadline = time.monotonic() + timeout_s
    value = _metric(client, server, name)
    while value <= above and time.monotonic() < deadline:
        time.sleep(0.05)
        value = _metric(client, server, name)
    return value


def _send_cut_patch(server: Server, url: str, body: bytes, declared: int, extra_headers: str = "") -> None:
    """Send a PATCH that declares ``declared`` body bytes, send only ``body``, then close the socket."""
    path = httpx.URL(url).raw_path.decode("ascii")
    head = (
        f"PATCH {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{server.port}\r\n"
        f"Tus-Resumable: {TUS_VERSION}\r\n"
        "Upload-Offset: 0\r\n"
        f"Content-Type: {OFFSET_TYPE}\r\n"
        f"Content-Length: {declared}\r\n"
        f"{extra_headers}"
        "\r\n"
    )
    with socket.create_connection((HOST, server.port), timeout=5) as sock:
        sock.sendall(head.encode("ascii") + body)


# OPTIONS and the Tus-Resumable header


def test_options_advertises_protocol(client: httpx.Client, server: Server) -> None:
    response = client.options(server.uploads_url)

    assert response.status_code == 204
    assert response.headers["tus-version"] == TUS_VERSION
    extensions = response.headers["tus-extension"].split(",")
    for extension in ("creation", "creation-with-upload", "expiration", "checksum", "termination"):
        assert extension in extensions
    assert int(response.headers["tus-max-size"]) > 0
    algorithms = response.headers["tus-checksum-algorithm"].split(",")
    assert "sha256" in algorithms
    assert "sha1" in algorithms
    assert "md5" in algorithms


def test_options_reports_configured_max(client: httpx.Client, small_server: Server) -> None:
    response = client.options(small_server.uploads_url)

    assert response.status_code == 204
    assert response.headers["tus-max-size"] == str(SMALL_MAX_BYTES)


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0", ""], ids=["missing", "old", "short", "empty"])
def test_tus_resumable_mismatch_rejected(client: httpx.Client, server: Server, version: str | None) -> None:
    url = _new_upload(client, server, 10)
    headers = {"Upload-Length": "10"}
    if version is not None:
        headers["Tus-Resumable"] = version

    created = client.post(server.uploads_url, headers=headers)
    head = client.head(url, headers={} if version is None else {"Tus-Resumable": version})

    assert created.status_code == 412
    assert created.headers["boothsync-error"] == "unsupported_version"
    assert head.status_code == 412
    if version is None:
        assert "the Tus-Resumable header is missing" in created.text
    else:
        assert repr(version) in created.text


def test_tus_resumable_mismatch_names_version(client: httpx.Client, server: Server) -> None:
    # The tus 1.0.0 protocol (tus.io/protocols/resumable-upload, section
    # "Tus-Resumable") requires the Tus-Version header on this 412.
    response = client.post(server.uploads_url, headers={"Tus-Resumable": "0.2.2", "Upload-Length": "10"})

    assert response.status_code == 412
    assert response.headers.get("tus-version") == TUS_VERSION


# Creation


def test_create_without_length_rejected(client: httpx.Client, server: Server) -> None:
    response = client.post(server.uploads_url, headers={"Tus-Resumable": TUS_VERSION})

    assert response.status_code == 400
    assert response.headers["boothsync-error"] == "missing_length"


@pytest.mark.parametrize("length", ["-1", "abc", "1.5", "0x10", "+5", "1e3", ""])
def test_create_invalid_length_rejected(client: httpx.Client, server: Server, length: str) -> None:
    response = _create(client, server, length)

    assert response.status_code == 400
    assert response.headers["boothsync-error"] == "invalid_header"
    assert "Upload-Length" in response.text


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_superscript_digit_rejected(client: httpx.Client, server: Server, method: str) -> None:
    # b"\xb2" is SUPERSCRIPT TWO in Latin-1, the charset Starlette decodes
    # headers with. str.isdigit() accepts it but int() does not.
    url = _new_upload(client, server, 10)
    if method == "POST":
        headers = {"Tus-Resumable": TUS_VERSION, "Upload-Length": b"\xb2"}
        response = client.post(server.uploads_url, headers=headers)  # type: ignore[arg-type]
    else:
        headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": b"\xb2", "Content-Type": OFFSET_TYPE}
        response = client.patch(url, headers=headers, content=b"a")  # type: ignore[arg-type]

    assert response.status_code == 400
    assert _offset(client, url) == 0


def test_create_over_max_rejected(client: httpx.Client, small_server: Server) -> None:
    too_large = _create(client, small_server, SMALL_MAX_BYTES + 1)
    at_max = _create(client, small_server, SMALL_MAX_BYTES)
    huge = _create(client, small_server, "9" * 19)

    assert too_large.status_code == 413
    assert too_large.headers["boothsync-error"] == "upload_too_large"
    assert "location" not in too_large.headers
    assert at_max.status_code == 201
    assert huge.status_code == 413


@pytest.mark.parametrize(
    "metadata",
    [
        "filename !!!not-base64!!!",
        "filename cGhvdG8uanBn,filename b3RoZXIuanBn",
        "filename cGhvdG8uanBn extra",
        "bad/key cGhvdG8uanBn",
        "filename //79",
    ],
    ids=["bad-base64", "duplicate-key", "three-fields", "bad-key", "not-utf8"],
)
def test_create_malformed_metadata_rejected(client: httpx.Client, server: Server, metadata: str) -> None:
    before = _stored_infos(server)

    response = _create(client, server, 10, headers={"Upload-Metadata": metadata})

    assert response.status_code == 400
    assert response.headers["boothsync-error"] == "invalid_header"
    assert _stored_infos(server) == before


def test_upload_urls_unguessable(client: httpx.Client, server: Server) -> None:
    first = _create(client, server, 10)
    second = _create(client, server, 10)

    assert first.status_code == 201
    assert second.status_code == 201
    first_url = _resolve(server, first.headers["location"])
    second_url = _resolve(server, second.headers["location"])
    assert first_url.startswith(server.uploads_url)
    first_id = _upload_id(first_url)
    second_id = _upload_id(second_url)
    assert re.fullmatch(r"[0-9a-f]{32}", first_id), first_id
    assert re.fullmatch(r"[0-9a-f]{32}", second_id), second_id
    assert first_id != second_id
    assert first.headers["upload-offset"] == "0"
    assert "upload-expires" in first.headers
    assert _head(client, first_url).status_code == 200


def test_create_without_manifest_rejected(client: httpx.Client, server: Server) -> None:
    before = _stored_infos(server)

    response = _create(client, server, 10, {"capture_id": new_capture_id(), "part": "original"})

    assert response.status_code == 400
    assert response.headers["boothsync-error"] == "no_manifest"
    assert response.text.startswith("no_manifest")
    assert "location" not in response.headers
    assert _stored_infos(server) == before


def test_create_unannounced_part_rejected(client: httpx.Client, server: Server) -> None:
    capture_id = _announce(client, server, b"x" * 10)

    response = _create(client, server, 10, {"capture_id": capture_id, "part": "thumbnail"})

    assert response.status_code == 400
    assert response.headers["boothsync-error"] == "no_manifest"


# A whole upload


def test_full_upload_in_chunks(client: httpx.Client, server: Server) -> None:
    data = _payload(250_000)
    capture_id, url = _capture_upload(client, server, data)

    offsets = []
    for start in range(0, len(data), 100_000):
        response = _patch(client, url, start, data[start : start + 100_000])
        assert response.status_code == 204, response.text
        assert response.headers["tus-resumable"] == TUS_VERSION
        offsets.append(int(response.headers["upload-offset"]))
    head = _head(client, url)

    assert offsets == [100_000, 200_000, 250_000]
    assert head.status_code == 200
    assert head.headers["upload-offset"] == str(len(data))
    assert head.headers["upload-length"] == str(len(data))
    assert head.headers["cache-control"] == "no-store"
    part = _listed_part(client, server, capture_id)
    assert part["state"] == "synced"
    stored = _stored_file(client, server, capture_id)
    assert stored.is_file()
    assert _sha256(stored.read_bytes()) == _sha256(data)
    assert stored.parent.name == capture_id
    assert stored.name == "original.pdf"


def test_plain_upload_filed_under_uploads(client: httpx.Client, server: Server) -> None:
    data = _payload(5000, seed=2)
    url = _new_upload(client, server, len(data), {"filename": "notes.txt"})

    response = _patch(client, url, 0, data)

    assert response.status_code == 204
    upload_id = _upload_id(url)
    filed = list(server.data_dir.joinpath("files", "_uploads").glob(f"*/{upload_id}"))
    assert len(filed) == 1
    assert filed[0].read_bytes() == data
    assert _offset(client, url) == len(data)


def test_head_fresh_upload(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 123)

    response = _head(client, url)

    assert response.status_code == 200
    assert response.headers["upload-offset"] == "0"
    assert response.headers["upload-length"] == "123"
    assert response.headers["cache-control"] == "no-store"
    assert "upload-expires" in response.headers


# PATCH guards


def test_patch_wrong_content_type_rejected(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 100)

    response = _patch(client, url, 0, b"a" * 10, {"Content-Type": "application/octet-stream"})

    assert response.status_code == 415
    assert response.headers["boothsync-error"] == "wrong_content_type"
    assert _offset(client, url) == 0


def test_patch_wrong_offset_rejected(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 100)
    assert _patch(client, url, 0, b"a" * 10).status_code == 204

    behind = _patch(client, url, 0, b"b" * 10)
    ahead = _patch(client, url, 20, b"c" * 10)

    assert behind.status_code == 409
    assert behind.headers["boothsync-error"] == "offset_mismatch"
    assert ahead.status_code == 409
    assert _offset(client, url) == 10


def test_patch_missing_offset_rejected(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 100)
    headers = {"Tus-Resumable": TUS_VERSION, "Content-Type": OFFSET_TYPE}

    response = client.patch(url, headers=headers, content=b"a" * 10)

    assert response.status_code == 400
    assert _offset(client, url) == 0


def test_patch_unknown_upload_not_found(client: httpx.Client, server: Server) -> None:
    url = server.uploads_url + "0123456789abcdef0123456789abcdef"

    patch = _patch(client, url, 0, b"a")
    head = _head(client, url)

    assert patch.status_code == 404
    assert patch.headers["boothsync-error"] == "upload_not_found"
    assert head.status_code == 404


@pytest.mark.parametrize(
    "upload_id",
    ["..%2F..%2Fetc", "g" * 32, "ABCDEF0123456789ABCDEF0123456789", "0123", "..", "%2E%2E"],
)
def test_patch_malformed_id_not_found(client: httpx.Client, server: Server, upload_id: str) -> None:
    url = server.uploads_url + upload_id

    patch = _patch(client, url, 0, b"a")
    head = _head(client, url)

    assert patch.status_code == 404
    assert head.status_code == 404


def test_patch_dot_segment_path_not_found(server: Server) -> None:
    # httpx removes dot segments from URLs, so this request goes out through
    # http.client, which sends the path as written.
    connection = http.client.HTTPConnection(HOST, server.port, timeout=5)
    try:
        headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": "0", "Content-Type": OFFSET_TYPE}
        connection.request("PATCH", "/files/../../etc", body=b"a", headers=headers)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()

    assert response.status == 404
    assert not server.data_dir.parent.joinpath("etc").exists()


# Checksums


def test_patch_sha256_checksum_accepted(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 100)
    body = _payload(40)

    response = _patch(client, url, 0, body, {"Upload-Checksum": _checksum("sha256", body)})

    assert response.status_code == 204
    assert response.headers["upload-offset"] == "40"
    assert _offset(client, url) == 40


def test_patch_checksum_mismatch_discarded(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 100)
    assert _patch(client, url, 0, b"a" * 30).status_code == 204
    body = _payload(40)

    response = _patch(client, url, 30, body, {"Upload-Checksum": _checksum("sha256", b"other bytes")})

    assert response.status_code == 460
    assert response.headers["boothsync-error"] == "checksum_mismatch"
    assert _offset(client, url) == 30
    upload_file = server.data_dir / "uploads" / f"{_upload_id(url)}.bin"
    assert upload_file.read_bytes() == b"a" * 30


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "SHA256"])
def test_patch_other_checksums_accepted(client: httpx.Client, server: Server, algorithm: str) -> None:
    url = _new_upload(client, server, 100)
    body = _payload(25)
    digest = base64.b64encode(hashlib.new(algorithm.lower(), body).digest()).decode("ascii")

    response = _patch(client, url, 0, body, {"Upload-Checksum": f"{algorithm} {digest}"})

    assert response.status_code == 204
    assert _offset(client, url) == 25


def test_patch_crc32_checksum_accepted(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 100)
    body = _payload(25)
    digest = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode("ascii")

    wrong = _patch(client, url, 0, body, {"Upload-Checksum": "crc32 AAAAAA=="})
    right = _patch(client, url, 0, body, {"Upload-Checksum": f"crc32 {digest}"})

    assert wrong.status_code == 460
    assert right.status_code == 204
    assert _offset(client, url) == 25


@pytest.mark.parametrize(
    "checksum",
    ["sha512 " + base64.b64encode(hashlib.sha512(b"x").digest()).decode(), "sha256", "sha256 !!!"],
    ids=["sha512", "no-digest", "bad-base64"],
)
def test_patch_unsupported_checksum_rejected(client: httpx.Client, server: Server, checksum: str) -> None:
    url = _new_upload(client, server, 100)

    response = _patch(client, url, 0, b"a" * 10, {"Upload-Checksum": checksum})

    assert response.status_code == 400
    assert response.headers["boothsync-error"] == "invalid_header"
    assert _offset(client, url) == 0


def test_patch_past_length_rejected(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 100)
    assert _patch(client, url, 0, b"a" * 60).status_code == 204

    response = _patch(client, url, 60, b"b" * 41)

    assert response.status_code == 413
    assert response.headers["boothsync-error"] == "beyond_length"
    assert "by 1 bytes: send at most 40 bytes" in response.text
    assert _offset(client, url) == 60


def test_patch_completed_upload_says_complete(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 10)
    assert _patch(client, url, 0, b"a" * 10).status_code == 204

    response = _patch(client, url, 10, b"b")

    assert response.status_code == 409
    assert "is complete at offset 10" in response.text
    assert _offset(client, url) == 10


def test_patch_chunked_past_length_rejected(client: httpx.Client, server: Server) -> None:
    # A generator body goes out with chunked transfer encoding, so the request
    # has no Content-Length and the server must catch the overrun while
    # streaming. The pause makes the server receive the two chunks separately,
    # so the first is written before the second runs past the length.
    url = _new_upload(client, server, 100)
    assert _patch(client, url, 0, b"a" * 60).status_code == 204

    def body() -> Iterator[bytes]:
        yield b"b" * 30
        time.sleep(0.3)
        yield b"c" * 30

    headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": "60", "Content-Type": OFFSET_TYPE}
    response = client.patch(url, headers=headers, content=body())

    assert response.status_code == 413
    assert _offset(client, url) == 60
    upload_file = server.data_dir / "uploads" / f"{_upload_id(url)}.bin"
    assert upload_file.read_bytes() == b"a" * 60


# Idempotent creation and part verification


def test_creation_idempotent_per_part(client: httpx.Client, server: Server) -> None:
    data = _payload(3000, seed=3)
    capture_id = _announce(client, server, data)
    metadata = {"capture_id": capture_id, "part": "original"}

    first = _create(client, server, len(data), metadata)
    second = _create(client, server, len(data), metadata)
    assert first.status_code == 201
    assert second.status_code == 201
    assert second.headers["location"] == first.headers["location"]
    url = _resolve(server, first.headers["location"])
    _upload_all(client, url, data, 1000)
    third = _create(client, server, len(data), metadata)

    assert third.status_code == 201
    assert third.headers["location"] == first.headers["location"]
    assert third.headers["upload-offset"] == str(len(data))
    stored = _stored_file(client, server, capture_id)
    assert [path.name for path in stored.parent.iterdir()] == ["original.pdf"]
    infos = [info for info in _stored_infos(server) if info["metadata"].get("capture_id") == capture_id]
    assert len(infos) == 1
    assert not server.data_dir.joinpath("uploads", f"{_upload_id(url)}.bin").exists()


def test_part_sha256_mismatch_discarded(client: httpx.Client, server: Server) -> None:
    announced = _payload(2000, seed=4)
    sent = _payload(2000, seed=5)
    capture_id, url = _capture_upload(client, server, announced)
    assert _patch(client, url, 0, sent[:1000]).status_code == 204

    completing = _patch(client, url, 1000, sent[1000:])

    assert completing.status_code == 460
    assert completing.headers["boothsync-error"] == "part_rejected"
    assert _head(client, url).status_code == 404
    part = _listed_part(client, server, capture_id)
    assert part["state"] != "synced"
    assert part["path"] is None
    assert not server.data_dir.joinpath("uploads", f"{_upload_id(url)}.bin").exists()
    assert not list(server.data_dir.joinpath("files").rglob(f"{capture_id}/*"))


def test_part_rejected_then_new_upload(client: httpx.Client, server: Server) -> None:
    data = _payload(500, seed=6)
    capture_id, url = _capture_upload(client, server, data)
    assert _patch(client, url, 0, bytes(500)).status_code == 460

    retry = _create(client, server, len(data), {"capture_id": capture_id, "part": "original"})

    assert retry.status_code == 201
    retry_url = _resolve(server, retry.headers["location"])
    assert retry_url != url
    assert _patch(client, retry_url, 0, data).status_code == 204
    assert _listed_part(client, server, capture_id)["state"] == "synced"


def test_creation_with_upload(client: httpx.Client, server: Server) -> None:
    data = _payload(8000, seed=7)
    capture_id = _announce(client, server, data)
    metadata = {"capture_id": capture_id, "part": "original"}

    response = _create(client, server, len(data), metadata, {"Content-Type": OFFSET_TYPE}, content=data[:3000])

    assert response.status_code == 201
    assert response.headers["upload-offset"] == "3000"
    url = _resolve(server, response.headers["location"])
    assert _offset(client, url) == 3000
    assert _patch(client, url, 3000, data[3000:]).status_code == 204
    assert _listed_part(client, server, capture_id)["state"] == "synced"


def test_creation_with_whole_upload(client: httpx.Client, server: Server) -> None:
    data = _payload(2000, seed=8)
    capture_id = _announce(client, server, data)
    metadata = {"capture_id": capture_id, "part": "original"}

    response = _create(client, server, len(data), metadata, {"Content-Type": OFFSET_TYPE}, content=data)

    assert response.status_code == 201
    assert response.headers["upload-offset"] == str(len(data))
    assert "location" in response.headers
    stored = _stored_file(client, server, capture_id)
    assert stored.read_bytes() == data


def test_creation_retry_fills_empty_upload(client: httpx.Client, server: Server) -> None:
    data = _payload(3000, seed=17)
    capture_id = _announce(client, server, data)
    metadata = {"capture_id": capture_id, "part": "original"}
    first = _create(client, server, len(data), metadata)
    assert first.status_code == 201

    retry = _create(client, server, len(data), metadata, {"Content-Type": OFFSET_TYPE}, content=data)

    assert retry.status_code == 201
    assert retry.headers["location"] == first.headers["location"], "the same upload, not a second copy"
    assert retry.headers["upload-offset"] == str(len(data))
    assert _stored_file(client, server, capture_id).read_bytes() == data


def test_creation_retry_keeps_started_upload(client: httpx.Client, server: Server) -> None:
    data = _payload(3000, seed=18)
    capture_id = _announce(client, server, data)
    metadata = {"capture_id": capture_id, "part": "original"}
    first = _create(client, server, len(data), metadata, {"Content-Type": OFFSET_TYPE}, content=data[:1000])
    assert first.headers["upload-offset"] == "1000"

    retry = _create(client, server, len(data), metadata, {"Content-Type": OFFSET_TYPE}, content=data)

    assert retry.status_code == 201
    assert retry.headers["location"] == first.headers["location"]
    assert retry.headers["upload-offset"] == "1000", "a body from offset 0 cannot join an upload at 1000"
    url = _resolve(server, retry.headers["location"])
    assert _patch(client, url, 1000, data[1000:]).status_code == 204
    assert _stored_file(client, server, capture_id).read_bytes() == data


def test_zero_length_upload_synced(client: httpx.Client, server: Server) -> None:
    capture_id = _announce(client, server, b"")

    response = _create(client, server, 0, {"capture_id": capture_id, "part": "original"})

    assert response.status_code == 201
    assert response.headers["upload-offset"] == "0"
    part = _listed_part(client, server, capture_id)
    assert part["state"] == "synced"
    assert part["sha256"] == EMPTY_SHA256
    stored = _stored_file(client, server, capture_id)
    assert stored.is_file()
    assert stored.stat().st_size == 0


# Termination


def test_delete_removes_upload(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 100)
    assert _patch(client, url, 0, b"a" * 10).status_code == 204
    upload_id = _upload_id(url)

    deleted = client.delete(url, headers={"Tus-Resumable": TUS_VERSION})

    assert deleted.status_code == 204
    assert _head(client, url).status_code == 404
    assert _patch(client, url, 10, b"b").status_code == 404
    assert not server.data_dir.joinpath("uploads", f"{upload_id}.bin").exists()
    assert upload_id not in [info["upload_id"] for info in _stored_infos(server)]


def test_delete_completed_forbidden(client: httpx.Client, server: Server) -> None:
    data = _payload(300, seed=9)
    capture_id, url = _capture_upload(client, server, data)
    assert _patch(client, url, 0, data).status_code == 204

    deleted = client.delete(url, headers={"Tus-Resumable": TUS_VERSION})

    assert deleted.status_code == 403
    assert deleted.headers["boothsync-error"] == "upload_final"
    assert _offset(client, url) == len(data)
    assert _stored_file(client, server, capture_id).read_bytes() == data


# Concurrency and disconnects


def test_concurrent_patch_locked(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 1_000_000)
    first_chunk = _payload(64 * 1024, seed=10)
    last_chunk = _payload(4096, seed=11)

    def slow_body() -> Iterator[bytes]:
        yield first_chunk
        time.sleep(1.0)
        yield last_chunk

    results: dict[str, httpx.Response] = {}

    def send_slow() -> None:
        with httpx.Client(timeout=10) as own_client:
            headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": "0", "Content-Type": OFFSET_TYPE}
            results["slow"] = own_client.patch(url, headers=headers, content=slow_body())

    sender = threading.Thread(target=send_slow)
    sender.start()
    # The slow body pauses for 1 s after its first chunk, so 0.4 s in, the
    # first PATCH holds the lock. Its bytes may still be buffered, so the
    # offset cannot tell.
    time.sleep(0.4)

    competing = _patch(client, url, 0, b"z" * 100)
    sender.join(timeout=10)

    assert competing.status_code == 423
    assert competing.headers["boothsync-error"] == "upload_locked"
    assert results["slow"].status_code == 204
    written = len(first_chunk) + len(last_chunk)
    assert results["slow"].headers["upload-offset"] == str(written)
    assert _offset(client, url) == written
    upload_file = server.data_dir / "uploads" / f"{_upload_id(url)}.bin"
    assert upload_file.read_bytes() == first_chunk + last_chunk


def test_disconnect_keeps_received_bytes(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 200_000)
    disconnects = _metric(client, server, "boothsync_server_client_disconnects_total")
    body = _payload(40_000, seed=12)

    _send_cut_patch(server, url, body, declared=100_000)
    assert _wait_for_metric(client, server, "boothsync_server_client_disconnects_total", disconnects) > disconnects

    offset = _offset(client, url)
    assert 0 < offset <= len(body)
    time.sleep(0.3)
    offset = _offset(client, url)
    assert offset == len(body)
    upload_file = server.data_dir / "uploads" / f"{_upload_id(url)}.bin"
    assert upload_file.read_bytes() == body[:offset]


def test_disconnect_with_checksum_keeps_nothing(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 200_000)
    disconnects = _metric(client, server, "boothsync_server_client_disconnects_total")
    whole = _payload(100_000, seed=13)
    checksum = _checksum("sha256", whole)

    _send_cut_patch(server, url, whole[:40_000], declared=100_000, extra_headers=f"Upload-Checksum: {checksum}\r\n")
    assert _wait_for_metric(client, server, "boothsync_server_client_disconnects_total", disconnects) > disconnects
    time.sleep(0.2)

    assert _offset(client, url) == 0


def _cut_patch_with_blocks(client: httpx.Client, server: Server, url: str, claimed: bytes, sent: bytes) -> None:
    """Send ``sent``, the start of a body announced as ``claimed`` with 16 KiB block digests, then disconnect."""
    disconnects = _metric(client, server, "boothsync_server_client_disconnects_total")
    blocks = block_checksums_header("sha256", claimed, 16_384)
    headers = f"Upload-Checksum: {_checksum('sha256', claimed)}\r\n{BLOCK_CHECKSUMS_HEADER}: {blocks}\r\n"
    _send_cut_patch(server, url, sent, declared=len(claimed), extra_headers=headers)
    assert _wait_for_metric(client, server, "boothsync_server_client_disconnects_total", disconnects) > disconnects
    time.sleep(0.2)


def test_disconnect_with_block_checksums_keeps_checked_blocks(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 200_000)
    whole = _payload(100_000, seed=14)

    _cut_patch_with_blocks(client, server, url, whole, whole[:40_000])

    assert _offset(client, url) == 32_768, "the two whole blocks that arrived are kept, the partial third is not"
    upload_file = server.data_dir / "uploads" / f"{_upload_id(url)}.bin"
    assert upload_file.read_bytes() == whole[:32_768]
    rest = whole[32_768:]
    response = _patch(client, url, 32_768, rest, headers={"Upload-Checksum": _checksum("sha256", rest)})
    assert response.status_code == 204
    assert upload_file.read_bytes() == whole


def test_block_checksums_stop_at_wrong_block(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 200_000)
    whole = _payload(100_000, seed=15)
    claimed = whole[:16_384] + b"x" * 16_384 + whole[32_768:]

    _cut_patch_with_blocks(client, server, url, claimed, whole[:60_000])

    assert _offset(client, url) == 16_384, "blocks after the first wrong one are dropped, even where they match"


@pytest.mark.parametrize(
    ("blocks", "with_checksum"),
    [
        ("16384 AAAA", True),  # digest count does not match the body's blocks
        ("0", True),  # block size zero
        ("abc", True),  # block size not a number
        (None, False),  # block digests without Upload-Checksum
    ],
)
def test_block_checksums_invalid(client: httpx.Client, server: Server, blocks: str | None, with_checksum: bool) -> None:
    url = _new_upload(client, server, 100_000)
    body = _payload(40_000, seed=16)
    value = blocks if blocks is not None else block_checksums_header("sha256", body, 16_384)
    extra = {BLOCK_CHECKSUMS_HEADER: value}
    if with_checksum:
        extra["Upload-Checksum"] = _checksum("sha256", body)

    response = _patch(client, url, 0, body, headers=extra)

    assert response.status_code == 400
    assert _offset(client, url) == 0


# Expiration


def test_expired_upload_gone(client: httpx.Client, expiring_server: Server) -> None:
    url = _new_upload(client, expiring_server, 100)
    assert _patch(client, url, 0, b"a" * 10).status_code == 204

    time.sleep(1.5)
    head = _head(client, url)
    patch = _patch(client, url, 10, b"b" * 10)

    assert head.status_code == 410
    assert head.headers["boothsync-error"] == "upload_expired"
    assert "upload-offset" not in head.headers
    assert patch.status_code == 410


def test_expired_capture_upload_replaced(client: httpx.Client, expiring_server: Server) -> None:
    # A client whose capture upload expired creates it again and must get an
    # upload it can write to, not the expired one.
    data = _payload(100, seed=14)
    capture_id, url = _capture_upload(client, expiring_server, data)

    time.sleep(1.5)
    retry = _create(client, expiring_server, len(data), {"capture_id": capture_id, "part": "original"})

    assert retry.status_code == 201
    retry_url = _resolve(expiring_server, retry.headers["location"])
    assert retry_url != url
    assert _head(client, retry_url).status_code == 200


# Method override


def test_method_override_acts_as_patch(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 100)
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Upload-Offset": "0",
        "Content-Type": OFFSET_TYPE,
        "X-HTTP-Method-Override": "PATCH",
    }

    response = client.post(url, headers=headers, content=b"a" * 30)

    assert response.status_code == 204
    assert response.headers["upload-offset"] == "30"
    assert _offset(client, url) == 30


def test_method_override_acts_as_delete(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, 100)

    response = client.post(url, headers={"Tus-Resumable": TUS_VERSION, "X-HTTP-Method-Override": "DELETE"})

    assert response.status_code == 204
    assert _head(client, url).status_code == 404


# Manifest API


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe{}", b'{"capture_id": '], ids=["garbage", "empty", "bad-utf", "cut"])
def test_manifest_invalid_json_rejected(client: httpx.Client, server: Server, body: bytes) -> None:
    response = client.post(server.url + "/v1/manifests", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


def _without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in mapping.items() if name != key}


def _with_part(manifest: dict[str, Any], **changes: Any) -> dict[str, Any]:
    part = {**manifest["parts"][0], **changes}
    return {**manifest, "parts": [part]}


_BASE = _manifest("01ARZ3NDEKTSV4RRFFQ69G5FAV", b"data")

INVALID_MANIFESTS = {
    "bad-capture-id": ({**_BASE, "capture_id": "not-a-ulid"}, "capture_id"),
    "lowercase-capture-id": ({**_BASE, "capture_id": _BASE["capture_id"].lower()}, "capture_id"),
    "unknown-class": ({**_BASE, "class": "poster"}, "class"),
    "bad-sha256": (_with_part(_BASE, sha256="XYZ"), "sha256"),
    "upper-sha256": (_with_part(_BASE, sha256=_BASE["parts"][0]["sha256"].upper()), "sha256"),
    "negative-size": (_with_part(_BASE, size=-1), "size"),
    "string-size": (_with_part(_BASE, size="4"), "size"),
    "unknown-part": (_with_part(_BASE, part="raw"), "part"),
    "missing-event": (_without(_BASE, "event"), "event"),
    "missing-device-id": (_without(_BASE, "device_id"), "device_id"),
    "missing-captured-at": (_without(_BASE, "captured_at"), "captured_at"),
    "missing-parts": (_without(_BASE, "parts"), "parts"),
    "missing-sha256": ({**_BASE, "parts": [_without(_BASE["parts"][0], "sha256")]}, "sha256"),
    "slash-event": ({**_BASE, "event": "../fair"}, "event"),
    "not-object": (["a", "list"], "object"),
}


@pytest.mark.parametrize("case", list(INVALID_MANIFESTS), ids=list(INVALID_MANIFESTS))
def test_manifest_invalid_field_rejected(client: httpx.Client, server: Server, case: str) -> None:
    manifest, field = INVALID_MANIFESTS[case]

    response = client.post(server.url + "/v1/manifests", json=manifest)

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_manifest"
    assert field in response.json()["message"]


@pytest.mark.parametrize("captured_at", ["NaN", "Infinity", "1e300"])
def test_manifest_unusable_captured_at_rejected(
    client: httpx.Client, scratch_server: Server, captured_at: str
) -> None:
    # Python's json module reads NaN and Infinity. A finite 1e300 is no time
    # that time.gmtime() can convert when the part is filed.
    text = json.dumps(_manifest(new_capture_id(), b"data")).replace("1700000000.0", captured_at)
    headers = {"Content-Type": "application/json"}

    response = client.post(scratch_server.url + "/v1/manifests", content=text, headers=headers)

    assert response.status_code == 422
    assert "captured_at" in response.json()["message"]


def test_listing_survives_infinite_captured_at(client: httpx.Client, scratch_server: Server) -> None:
    text = json.dumps(_manifest(new_capture_id(), b"data")).replace("1700000000.0", "Infinity")
    client.post(scratch_server.url + "/v1/manifests", content=text, headers={"Content-Type": "application/json"})

    response = client.get(scratch_server.url + "/v1/captures")

    assert response.status_code == 200


def test_manifest_oversized_size_rejected(client: httpx.Client, scratch_server: Server) -> None:
    manifest = _with_part(_manifest(new_capture_id(), b"data"), size=2**70)

    response = client.post(scratch_server.url + "/v1/manifests", json=manifest)

    assert response.status_code == 422
    assert "size" in response.json()["message"]


def test_manifest_accepted_and_listed(client: httpx.Client, server: Server) -> None:
    data = b"manifest data"
    capture_id = new_capture_id()

    response = client.post(server.url + "/v1/manifests", json=_manifest(capture_id, data))

    assert response.status_code == 200
    assert response.json() == {"capture_id": capture_id, "status": "announced"}
    capture = client.get(server.url + f"/v1/captures/{capture_id}").json()
    assert capture["event"] == "spring-fair"
    assert capture["class"] == "document"
    assert capture["parts"][0]["sha256"] == _sha256(data)
    assert capture["parts"][0]["state"] == "announced"


def test_manifest_changed_after_sync_conflict(client: httpx.Client, server: Server) -> None:
    data = _payload(400, seed=15)
    capture_id, url = _capture_upload(client, server, data)
    assert _patch(client, url, 0, data).status_code == 204
    changed = _manifest(capture_id, _payload(400, seed=16))
    same = _manifest(capture_id, data)

    conflict = client.post(server.url + "/v1/manifests", json=changed)
    repeat = client.post(server.url + "/v1/manifests", json=same)

    assert conflict.status_code == 409
    assert conflict.json()["error"] == "part_conflict"
    assert repeat.status_code == 200
    part = _listed_part(client, server, capture_id)
    assert part["sha256"] == _sha256(data)
    assert part["state"] == "synced"


def test_manifest_list_accepted(client: httpx.Client, server: Server) -> None:
    manifests = [_manifest(new_capture_id(), _payload(100, seed=n)) for n in range(3)]

    response = client.post(server.url + "/v1/manifests", json=manifests)

    assert response.status_code == 200
    assert response.json() == {"manifests": [{"capture_id": m["capture_id"], "status": "announced"} for m in manifests]}
    for manifest in manifests:
        capture = client.get(server.url + f"/v1/captures/{manifest['capture_id']}").json()
        assert capture["parts"][0]["sha256"] == manifest["parts"][0]["sha256"]
        assert capture["parts"][0]["state"] == "announced"


def test_manifest_list_invalid_item_stores_none(client: httpx.Client, server: Server) -> None:
    good = _manifest(new_capture_id(), b"good")
    bad = _with_part(_manifest(new_capture_id(), b"bad"), sha256="XYZ")

    response = client.post(server.url + "/v1/manifests", json=[good, bad])

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_manifest"
    assert "manifest 1" in response.json()["message"]
    assert "sha256" in response.json()["message"]
    assert client.get(server.url + f"/v1/captures/{good['capture_id']}").status_code == 404


def test_manifest_list_conflict_stores_none(client: httpx.Client, server: Server) -> None:
    data = _payload(400, seed=17)
    synced_id, url = _capture_upload(client, server, data)
    assert _patch(client, url, 0, data).status_code == 204
    fresh = _manifest(new_capture_id(), b"fresh")
    changed = _manifest(synced_id, _payload(400, seed=18))

    response = client.post(server.url + "/v1/manifests", json=[fresh, changed])

    assert response.status_code == 409
    assert response.json()["error"] == "part_conflict"
    assert synced_id in response.json()["message"]
    assert client.get(server.url + f"/v1/captures/{fresh['capture_id']}").status_code == 404


def _padded(manifest: dict[str, Any], size: int) -> dict[str, Any]:
    return {**manifest, "padding": "x" * size}


BAD_MANIFEST_LISTS = {
    "empty": (lambda: [], "empty"),
    "too-many": (lambda: [_manifest(new_capture_id(), b"x") for _ in range(101)], "maximum of 100"),
    "item-too-large": (lambda: [_padded(_manifest(new_capture_id(), b"x"), 70_000)], "manifest 0: manifest of"),
    "body-too-large": (lambda: [_padded(_manifest(new_capture_id(), b"x"), 60_000) for _ in range(20)], "exceeds 1048576"),
    "list-of-lists": (lambda: [[_manifest(new_capture_id(), b"x")]], "object"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFEST_LISTS), ids=list(BAD_MANIFEST_LISTS))
def test_manifest_list_rejected(client: httpx.Client, server: Server, case: str) -> None:
    make, message = BAD_MANIFEST_LISTS[case]
    manifests = make()

    response = client.post(server.url + "/v1/manifests", json=manifests)

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_manifest"
    assert message in response.json()["message"]
    for manifest in manifests:
        if isinstance(manifest, dict):
            assert client.get(server.url + f"/v1/captures/{manifest['capture_id']}").status_code == 404


def test_filename_never_becomes_path(client: httpx.Client, server: Server) -> None:
    data = b"#!/bin/sh\necho hi\n"
    capture_id = _announce(client, server, data, filename="../../evil.sh")
    metadata = {"capture_id": capture_id, "part": "original", "filename": "../../evil.sh"}
    url = _new_upload(client, server, len(data), metadata)

    assert _patch(client, url, 0, data).status_code == 204

    stored = _stored_file(client, server, capture_id)
    storage_dir = Path(_listing(client, server)["storage_dir"])
    assert stored.name == "original.sh"
    assert stored.parent.name == capture_id
    assert stored.resolve().is_relative_to(storage_dir)
    assert stored.read_bytes() == data
    module_root = server.data_dir.parent
    assert list(module_root.parent.rglob("evil.sh")) == []
    assert list(module_root.rglob("*evil*")) == []


# Metrics


def test_metrics_count_created_uploads(client: httpx.Client, server: Server) -> None:
    before = _metric(client, server, "boothsync_server_uploads_created_total")
    _new_upload(client, server, 10)
    _new_upload(client, server, 10)

    response = client.get(server.url + "/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "boothsync_server_uploads_created" in response.text
    assert _metric(client, server, "boothsync_server_uploads_created_total") == before + 2
