"""Protocol tests of the IETF resumable upload draft (interop version 8) on /files/.

Each test drives a real ``boothsync server run`` process on 127.0.0.1 with
httpx or raw sockets, and checks status codes, header fields, problem
details and the files on disk. The tus tests in test_server_protocol.py run
against the same endpoint and show that tus still works beside the draft.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from boothsync.ids import new_capture_id
from boothsync.processes import ChildProcess, free_port, server_process
from boothsync.tus.protocol import encode_metadata

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
INTEROP = {"Upload-Draft-Interop-Version": "8"}
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"
TUS = {"Tus-Resumable": "1.0.0"}
TUS_OFFSET_TYPE = "application/offset+octet-stream"
MAX_UPLOAD_BYTES = 1_000_000
UPLOAD_EXPIRY_S = 3600


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


def _run_server(root: Path, expiry_s: float) -> Iterator[Server]:
    port = free_port()
    url = f"http://{HOST}:{port}"
    data_dir = root / "server-data"
    env = {
        "BOOTHSYNC_SERVER_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "BOOTHSYNC_SERVER_UPLOAD_EXPIRY_S": str(expiry_s),
    }
    process = server_process(data_dir, port, root / "server.log", env)
    process.start()
    try:
        process.wait_ready(url + "/v1/health")
        yield Server(url, port, data_dir, process)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _run_server(tmp_path_factory.mktemp("draft-server"), UPLOAD_EXPIRY_S)


@pytest.fixture(scope="module")
def expiring_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _run_server(tmp_path_factory.mktemp("expiring-draft-server"), 1)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


# Helpers


def _payload(size: int, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(size))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _create(
    client: httpx.Client,
    server: Server,
    complete: bool,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    request_headers = {**INTEROP, "Upload-Complete": "?1" if complete else "?0", **(headers or {})}
    return client.post(server.uploads_url, headers=request_headers, content=body, params=params)


def _new_upload(client: httpx.Client, server: Server, headers: dict[str, str] | None = None,
                params: dict[str, str] | None = None) -> str:
    """Create an empty, incomplete upload and return its absolute URL."""
    response = _create(client, server, False, headers=headers, params=params)
    assert response.status_code == 201, response.text
    return response.headers["location"]


def _append(
    client: httpx.Client, url: str, offset: int, body: bytes, complete: bool, headers: dict[str, str] | None = None
) -> httpx.Response:
    request_headers = {
        **INTEROP,
        "Upload-Complete": "?1" if complete else "?0",
        "Upload-Offset": str(offset),
        "Content-Type": PARTIAL_UPLOAD,
        **(headers or {}),
    }
    return client.patch(url, headers=request_headers, content=body)


def _head(client: httpx.Client, url: str) -> httpx.Response:
    return client.head(url, headers=INTEROP)


def _problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == PROBLEM_JSON, response.text
    problem = response.json()
    assert problem["status"] == response.status_code
    assert problem["title"]
    assert problem["detail"]
    return problem


def _upload_id(url: str) -> str:
    return httpx.URL(url).path.rsplit("/", 1)[-1]


def _upload_file(server: Server, url: str) -> Path:
    return server.data_dir / "uploads" / f"{_upload_id(url)}.bin"


def _filed_plain_upload(server: Server, url: str) -> Path:
    filed = list(server.data_dir.joinpath("files", "_uploads").glob(f"*/{_upload_id(url)}"))
    assert len(filed) == 1, filed
    return filed[0]


def _announce(client: httpx.Client, server: Server, data: bytes, sha256: str | None = None) -> str:
    """POST a manifest for one original part of ``data`` and return its capture id."""
    capture_id = new_capture_id()
    manifest = {
        "capture_id": capture_id,
        "event": "spring-fair",
        "device_id": "stall-7",
        "class": "document",
        "captured_at": 1_700_000_000.0,
        "filename": "receipt.pdf",
        "metadata": {"note": "draft protocol test"},
        "parts": [{"part": "original", "size": len(data), "sha256": sha256 or _sha256(data),
                   "content_type": "application/pdf"}],
    }
    response = client.post(server.url + "/v1/manifests", json=manifest)
    assert response.status_code == 200, response.text
    return capture_id


def _capture_part(client: httpx.Client, server: Server, capture_id: str) -> dict[str, Any]:
    response = client.get(f"{server.url}/v1/captures/{capture_id}")
    assert response.status_code == 200, response.text
    parts = {part["part"]: part for part in response.json()["parts"]}
    return parts["original"]


def _stored_capture_file(client: httpx.Client, server: Server, capture_id: str) -> Path:
    part = _capture_part(client, server, capture_id)
    assert part["state"] == "synced", part
    storage_dir = client.get(server.url + "/v1/captures").json()["storage_dir"]
    return Path(storage_dir) / part["path"]


def _send_cut_append(server: Server, url: str, offset: int, body: bytes, declared: int) -> None:
    """Send a draft PATCH that declares ``declared`` content bytes, send only ``body``, then close the socket."""
    path = httpx.URL(url).raw_path.decode("ascii")
    head = (
        f"PATCH {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{server.port}\r\n"
        "Upload-Draft-Interop-Version: 8\r\n"
        "Upload-Complete: ?0\r\n"
        f"Upload-Offset: {offset}\r\n"
        f"Content-Type: {PARTIAL_UPLOAD}\r\n"
        f"Content-Length: {declared}\r\n"
        "\r\n"
    )
    with socket.create_connection((HOST, server.port), timeout=5) as sock:
        sock.sendall(head.encode("ascii") + body)


def _wait_for_offset(client: httpx.Client, url: str, expected: int, timeout_s: float = 5.0) -> httpx.Response:
    """Poll HEAD until the upload's offset is ``expected``, and return the last response.

    A 503 means the server has not yet seen the disconnect and still holds the upload's lock.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        response = _head(client, url)
        if response.status_code == 204 and int(response.headers["upload-offset"]) == expected:
            return response
        if time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def _tus_upload(client: httpx.Client, server: Server, data: bytes, metadata: dict[str, str], chunk: int) -> str:
    """Upload ``data`` with tus 1.0 in chunks and return the upload URL."""
    created = client.post(
        server.uploads_url,
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": encode_metadata(metadata)},
    )
    assert created.status_code == 201, created.text
    url = str(httpx.URL(server.uploads_url).join(created.headers["location"]))
    for start in range(0, len(data), chunk):
        response = client.patch(
            url,
            headers={**TUS, "Upload-Offset": str(start), "Content-Type": TUS_OFFSET_TYPE},
            content=data[start : start + chunk],
        )
        assert response.status_code == 204, response.text
    return url


def _draft_upload(client: httpx.Client, server: Server, data: bytes, params: dict[str, str], chunk: int) -> str:
    """Upload ``data`` with the draft in chunks, the last one completing it, and return the upload URL."""
    url = _new_upload(client, server, params=params)
    for start in range(0, len(data), chunk):
        last = start + chunk >= len(data)
        response = _append(client, url, start, data[start : start + chunk], complete=last)
        assert response.status_code == (200 if last else 204), response.text
    return url


# OPTIONS and protocol selection


def test_options_advertises_draft_and_tus(client: httpx.Client, server: Server) -> None:
    response = client.options(server.uploads_url)

    assert response.status_code == 204
    assert PARTIAL_UPLOAD in response.headers["accept-patch"]
    assert response.headers["upload-limit"] == f"max-size={MAX_UPLOAD_BYTES}"
    assert response.headers["tus-version"] == "1.0.0"


def test_interop_version_mismatch_rejected(client: httpx.Client, server: Server) -> None:
    response = _create(client, server, True, b"abc", headers={"Upload-Draft-Interop-Version": "6"})

    assert response.status_code == 400
    assert _problem(response)["code"] == "unsupported_interop_version"
    assert "interop version 8" in response.json()["detail"]


def test_client_without_interop_header(client: httpx.Client, server: Server) -> None:
    # A client of the final RFC sends neither Tus-Resumable nor the interop version.
    data = _payload(3000, seed=3)
    created = client.post(server.uploads_url, headers={"Upload-Complete": "?0"}, content=data[:1000])
    url = created.headers["location"]
    appended = client.patch(
        url,
        headers={"Upload-Complete": "?1", "Upload-Offset": "1000", "Content-Type": PARTIAL_UPLOAD},
        content=data[1000:],
    )
    head = client.head(url)

    assert created.status_code == 201
    assert appended.status_code == 200, appended.text
    assert head.status_code == 204
    assert head.headers["upload-complete"] == "?1"
    assert _filed_plain_upload(server, url).read_bytes() == data


def test_tus_request_without_version_still_412(client: httpx.Client, server: Server) -> None:
    response = client.post(server.uploads_url, headers={"Upload-Length": "10"})

    assert response.status_code == 412
    assert response.headers["boothsync-error"] == "unsupported_version"


# Creation


def test_create_and_complete_in_one_request(client: httpx.Client, server: Server) -> None:
    data = _payload(50_000, seed=4)

    response = _create(client, server, True, data)

    assert response.status_code == 200, response.text
    assert response.headers["upload-complete"] == "?1"
    assert response.headers["upload-offset"] == str(len(data))
    assert response.headers["upload-length"] == str(len(data))
    url = response.headers["location"]
    assert _upload_id(url).startswith("ietf-")
    assert response.json() == {"upload_id": _upload_id(url), "size": len(data)}
    assert _filed_plain_upload(server, url).read_bytes() == data
    head = _head(client, url)
    assert head.status_code == 204
    assert head.headers["upload-complete"] == "?1"
    assert head.headers["upload-offset"] == str(len(data))


def test_create_empty_complete_upload(client: httpx.Client, server: Server) -> None:
    response = _create(client, server, True, b"")

    assert response.status_code == 200, response.text
    assert response.headers["upload-length"] == "0"
    assert _filed_plain_upload(server, response.headers["location"]).read_bytes() == b""


def test_create_incomplete_append_twice(client: httpx.Client, server: Server) -> None:
    data = _payload(90_000, seed=5)

    created = _create(client, server, False, data[:30_000], headers={"Upload-Length": str(len(data))})
    url = created.headers["location"]
    first = _append(client, url, 30_000, data[30_000:60_000], complete=False)
    second = _append(client, url, 60_000, data[60_000:], complete=True)

    assert created.status_code == 201
    assert created.headers["upload-complete"] == "?0"
    assert created.headers["upload-offset"] == "30000"
    assert "max-age=" in created.headers["upload-limit"]
    assert first.status_code == 204
    assert first.headers["upload-complete"] == "?0"
    assert first.headers["upload-offset"] == "60000"
    assert second.status_code == 200, second.text
    assert second.headers["upload-complete"] == "?1"
    assert second.json()["size"] == len(data)
    assert _filed_plain_upload(server, url).read_bytes() == data


def test_create_over_max_size_rejected(client: httpx.Client, server: Server) -> None:
    response = _create(client, server, False, headers={"Upload-Length": str(MAX_UPLOAD_BYTES + 1)})

    assert response.status_code == 413
    assert _problem(response)["code"] == "upload_too_large"
    assert response.headers["upload-limit"] == f"max-size={MAX_UPLOAD_BYTES}"


def test_create_without_upload_complete_value(client: httpx.Client, server: Server) -> None:
    response = client.post(server.uploads_url, headers={**INTEROP, "Upload-Complete": "true"})

    assert response.status_code == 400
    assert _problem(response)["code"] == "missing_upload_complete"


# Offset retrieval


def test_head_reports_upload_state(client: httpx.Client, server: Server) -> None:
    created = _create(client, server, False, _payload(1234), headers={"Upload-Length": "5000"})

    head = _head(client, created.headers["location"])

    assert head.status_code == 204
    assert head.headers["upload-offset"] == "1234"
    assert head.headers["upload-complete"] == "?0"
    assert head.headers["upload-length"] == "5000"
    assert head.headers["cache-control"] == "no-store"
    limits = dict(item.strip().split("=") for item in head.headers["upload-limit"].split(","))
    assert limits["max-size"] == str(MAX_UPLOAD_BYTES)
    assert 0 < int(limits["max-age"]) <= UPLOAD_EXPIRY_S


def test_head_without_length(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server)

    head = _head(client, url)

    assert head.status_code == 204
    assert head.headers["upload-offset"] == "0"
    assert "upload-length" not in head.headers


def test_head_unknown_upload_not_found(client: httpx.Client, server: Server) -> None:
    head = _head(client, server.uploads_url + "ietf-" + "0" * 32)

    assert head.status_code == 404
    assert head.headers["boothsync-error"] == "upload_not_found"


# Append


def test_offset_mismatch_conflict(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server)
    assert _append(client, url, 0, b"x" * 100, complete=False).status_code == 204

    response = _append(client, url, 50, b"y" * 10, complete=False)

    assert response.status_code == 409
    problem = _problem(response)
    assert problem["type"] == PROBLEM_TYPES + "mismatching-upload-offset"
    assert problem["expected-offset"] == 100
    assert problem["provided-offset"] == 50
    assert response.headers["upload-offset"] == "100"
    assert _head(client, url).headers["upload-offset"] == "100"


def test_append_wrong_content_type(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server)

    response = _append(client, url, 0, b"abc", complete=False, headers={"Content-Type": TUS_OFFSET_TYPE})

    assert response.status_code == 415
    assert _problem(response)["code"] == "wrong_content_type"
    assert response.headers["accept-patch"] == PARTIAL_UPLOAD


def test_append_without_upload_complete(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server)
    headers = {**INTEROP, "Upload-Offset": "0", "Content-Type": PARTIAL_UPLOAD}

    response = client.patch(url, headers=headers, content=b"abc")

    assert response.status_code == 400
    assert _problem(response)["code"] == "missing_upload_complete"


def test_append_to_completed_upload(client: httpx.Client, server: Server) -> None:
    data = _payload(2000, seed=6)
    url = _create(client, server, True, data).headers["location"]

    with_content = _append(client, url, len(data), b"more", complete=True)
    without_content = _append(client, url, len(data), b"", complete=True)

    assert with_content.status_code == 400
    assert _problem(with_content)["type"] == PROBLEM_TYPES + "inconsistent-upload-length"
    assert without_content.status_code == 400
    assert _problem(without_content)["type"] == PROBLEM_TYPES + "completed-upload"
    assert _filed_plain_upload(server, url).read_bytes() == data


def test_complete_with_empty_append(client: httpx.Client, server: Server) -> None:
    data = _payload(4000, seed=7)
    url = _new_upload(client, server)
    assert _append(client, url, 0, data, complete=False).status_code == 204

    response = _append(client, url, len(data), b"", complete=True)

    assert response.status_code == 200, response.text
    assert response.headers["upload-length"] == str(len(data))
    assert _filed_plain_upload(server, url).read_bytes() == data


# Length consistency


def test_creation_length_inconsistent(client: httpx.Client, server: Server) -> None:
    response = _create(client, server, True, b"x" * 5, headers={"Upload-Length": "10"})

    assert response.status_code == 400
    assert _problem(response)["type"] == PROBLEM_TYPES + "inconsistent-upload-length"
    assert "location" not in response.headers


def test_append_length_differs_from_recorded(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, headers={"Upload-Length": "100"})

    response = _append(client, url, 0, b"x" * 10, complete=False, headers={"Upload-Length": "200"})

    assert response.status_code == 400
    assert _problem(response)["type"] == PROBLEM_TYPES + "inconsistent-upload-length"
    assert _head(client, url).headers["upload-offset"] == "0"


def test_completion_short_of_length(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, headers={"Upload-Length": "100"})

    response = _append(client, url, 0, b"x" * 50, complete=True)

    assert response.status_code == 400
    assert _problem(response)["type"] == PROBLEM_TYPES + "inconsistent-upload-length"
    head = _head(client, url)
    assert head.headers["upload-offset"] == "0"
    assert head.headers["upload-complete"] == "?0"


def test_chunked_content_past_length(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server, headers={"Upload-Length": "100"})

    # A generator makes httpx send the content chunked, without Content-Length.
    response = _append(client, url, 0, iter([b"x" * 60, b"y" * 60]), complete=False)  # type: ignore[arg-type]

    assert response.status_code == 400
    assert _problem(response)["type"] == PROBLEM_TYPES + "inconsistent-upload-length"
    assert _head(client, url).headers["upload-offset"] == "0"


def test_length_learned_from_completion(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server)
    assert _append(client, url, 0, b"a" * 10, complete=False).status_code == 204

    completed = _append(client, url, 10, b"b" * 15, complete=True)

    assert completed.status_code == 200, completed.text
    assert _head(client, url).headers["upload-length"] == "25"


def test_expired_upload_gone(client: httpx.Client, expiring_server: Server) -> None:
    data = _payload(2000, seed=17)
    capture_id = _announce(client, expiring_server, data)
    params = {"capture_id": capture_id, "part": "original"}
    url = _new_upload(client, expiring_server, params=params)
    time.sleep(1.2)

    head = _head(client, url)
    again = _create(client, expiring_server, True, data, params=params)

    assert head.status_code == 410
    assert head.headers["boothsync-error"] == "upload_expired"
    assert again.status_code == 200, again.text
    assert again.headers["location"] != url
    assert _stored_capture_file(client, expiring_server, capture_id).read_bytes() == data


# Cancellation


def test_cancel_removes_upload(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server)
    assert _append(client, url, 0, b"x" * 500, complete=False).status_code == 204

    response = client.delete(url, headers=INTEROP)

    assert response.status_code == 204
    assert _head(client, url).status_code == 404
    assert not _upload_file(server, url).exists()


def test_cancel_completed_upload_forbidden(client: httpx.Client, server: Server) -> None:
    url = _create(client, server, True, b"done").headers["location"]

    response = client.delete(url, headers=INTEROP)

    assert response.status_code == 403
    assert _problem(response)["code"] == "upload_final"
    assert _head(client, url).headers["upload-complete"] == "?1"


# Interrupted append


def test_interrupted_append_keeps_bytes(client: httpx.Client, server: Server) -> None:
    data = _payload(100_000, seed=8)
    url = _new_upload(client, server, headers={"Upload-Length": str(len(data))})
    assert _append(client, url, 0, data[:10_000], complete=False).status_code == 204

    _send_cut_append(server, url, 10_000, data[10_000:50_000], declared=90_000)
    head = _wait_for_offset(client, url, 50_000)

    assert head.status_code == 204
    assert head.headers["upload-offset"] == "50000"
    assert head.headers["upload-complete"] == "?0"
    assert _upload_file(server, url).read_bytes() == data[:50_000]
    resumed = _append(client, url, 50_000, data[50_000:], complete=True)
    assert resumed.status_code == 200, resumed.text
    assert _filed_plain_upload(server, url).read_bytes() == data


# Capture parts


def test_capture_part_verified_and_filed(client: httpx.Client, server: Server) -> None:
    data = _payload(120_000, seed=9)
    capture_id = _announce(client, server, data)
    params = {"capture_id": capture_id, "part": "original"}

    url = _new_upload(client, server, params=params)
    first = _append(client, url, 0, data[:70_000], complete=False)
    last = _append(client, url, 70_000, data[70_000:], complete=True)

    assert first.status_code == 204
    assert last.status_code == 200, last.text
    assert last.json() == {"upload_id": _upload_id(url), "size": len(data), "capture_id": capture_id, "part": "original"}
    stored = _stored_capture_file(client, server, capture_id)
    assert stored.read_bytes() == data
    assert stored.parent.name == capture_id
    assert stored.name == "original.pdf"


def test_capture_part_wrong_sha256_rejected(client: httpx.Client, server: Server) -> None:
    data = _payload(20_000, seed=10)
    capture_id = _announce(client, server, data, sha256=_sha256(b"other bytes"))
    params = {"capture_id": capture_id, "part": "original"}

    response = _create(client, server, True, data, params=params)

    assert response.status_code == 422
    assert _problem(response)["code"] == "part_rejected"
    assert response.headers["upload-complete"] == "?1"
    assert _head(client, response.headers["location"]).status_code == 404
    assert _capture_part(client, server, capture_id)["state"] == "announced"


def test_capture_part_without_manifest_rejected(client: httpx.Client, server: Server) -> None:
    params = {"capture_id": new_capture_id(), "part": "original"}

    response = _create(client, server, True, b"data", params=params)

    assert response.status_code == 400
    assert _problem(response)["code"] == "no_manifest"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"capture_id": "not-a-ulid", "part": "original"}, "invalid_capture_id"),
        ({"capture_id": "01J0000000000000000000000A", "part": "raw"}, "invalid_part"),
        ({"part": "original"}, "invalid_query"),
        ({"captureid": "01J0000000000000000000000A", "part": "original"}, "invalid_query"),
    ],
    ids=["bad-capture-id", "bad-part", "part-only", "misspelt"],
)
def test_capture_parameters_validated(client: httpx.Client, server: Server, params: dict[str, str], code: str) -> None:
    response = _create(client, server, True, b"data", params=params)

    assert response.status_code == 400
    assert _problem(response)["code"] == code


def test_capture_part_recreated_names_upload(client: httpx.Client, server: Server) -> None:
    data = _payload(1000, seed=11)
    params = {"capture_id": _announce(client, server, data), "part": "original"}
    url = _new_upload(client, server, params=params)

    again = _create(client, server, False, params=params)

    assert again.status_code == 409
    assert _problem(again)["code"] == "part_upload_exists"
    assert again.headers["location"] == url


# tus and the draft side by side


def test_tus_and_draft_clients_coexist(server: Server) -> None:
    tus_data = _payload(300_000, seed=12)
    draft_data = _payload(300_000, seed=13)
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def upload(name: str, data: bytes) -> None:
        try:
            with httpx.Client(timeout=10) as http:
                capture_id = _announce(http, server, data)
                if name == "tus":
                    _tus_upload(http, server, data, {"capture_id": capture_id, "part": "original"}, chunk=50_000)
                else:
                    _draft_upload(http, server, data, {"capture_id": capture_id, "part": "original"}, chunk=50_000)
                results[name] = capture_id
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(name, data)) for name, data in
               [("tus", tus_data), ("draft", draft_data)]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    with httpx.Client(timeout=10) as http:
        assert _stored_capture_file(http, server, results["tus"]).read_bytes() == tus_data
        assert _stored_capture_file(http, server, results["draft"]).read_bytes() == draft_data


def test_tus_request_on_draft_upload_rejected(client: httpx.Client, server: Server) -> None:
    url = _new_upload(client, server)
    assert _append(client, url, 0, b"draft bytes", complete=False).status_code == 204

    head = client.head(url, headers=TUS)
    patch = client.patch(url, headers={**TUS, "Upload-Offset": "11", "Content-Type": TUS_OFFSET_TYPE}, content=b"tus")

    assert head.status_code == 400
    assert head.headers["tus-resumable"] == "1.0.0"
    assert head.headers["boothsync-error"] == "wrong_protocol"
    assert patch.status_code == 400
    assert patch.headers["boothsync-error"] == "wrong_protocol"
    assert _upload_file(server, url).read_bytes() == b"draft bytes"


def test_draft_request_on_tus_upload_rejected(client: httpx.Client, server: Server) -> None:
    created = client.post(server.uploads_url, headers={**TUS, "Upload-Length": "100"})
    url = str(httpx.URL(server.uploads_url).join(created.headers["location"]))

    head = _head(client, url)
    patch = _append(client, url, 0, b"draft", complete=False)

    assert head.status_code == 400
    assert head.headers["boothsync-error"] == "wrong_protocol"
    assert patch.status_code == 400
    assert _problem(patch)["code"] == "wrong_protocol"
    tus_head = client.head(url, headers=TUS)
    assert tus_head.status_code == 200
    assert tus_head.headers["upload-offset"] == "0"


def test_tus_creation_for_draft_part_conflicts(client: httpx.Client, server: Server) -> None:
    data = _payload(5000, seed=14)
    capture_id = _announce(client, server, data)
    url = _new_upload(client, server, params={"capture_id": capture_id, "part": "original"})
    assert _append(client, url, 0, data[:2000], complete=False).status_code == 204
    metadata = encode_metadata({"capture_id": capture_id, "part": "original"})

    tus_created = client.post(
        server.uploads_url, headers={**TUS, "Upload-Length": str(len(data) + 1), "Upload-Metadata": metadata}
    )

    assert tus_created.status_code == 409
    assert tus_created.headers["boothsync-error"] == "part_upload_exists"
    assert _head(client, url).headers["upload-offset"] == "2000"
    finished = _append(client, url, 2000, data[2000:], complete=True)
    assert finished.status_code == 200, finished.text
    assert _stored_capture_file(client, server, capture_id).read_bytes() == data


def test_draft_creation_for_tus_part_conflicts(client: httpx.Client, server: Server) -> None:
    data = _payload(5000, seed=15)
    capture_id = _announce(client, server, data)
    metadata = encode_metadata({"capture_id": capture_id, "part": "original"})
    created = client.post(
        server.uploads_url, headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": metadata}
    )
    assert created.status_code == 201

    response = _create(client, server, True, data, params={"capture_id": capture_id, "part": "original"})

    assert response.status_code == 409
    assert _problem(response)["code"] == "part_upload_exists"
    assert "tus" in response.json()["detail"]
    assert _capture_part(client, server, capture_id)["state"] == "announced"


def test_filed_draft_part_sent_again_with_tus(client: httpx.Client, server: Server) -> None:
    data = _payload(3000, seed=16)
    capture_id = _announce(client, server, data)
    sent = _create(client, server, True, data, params={"capture_id": capture_id, "part": "original"})
    assert sent.status_code == 200, sent.text

    tus_url = _tus_upload(client, server, data, {"capture_id": capture_id, "part": "original"}, chunk=1000)

    assert not _upload_id(tus_url).startswith("ietf-")
    assert _stored_capture_file(client, server, capture_id).read_bytes() == data
