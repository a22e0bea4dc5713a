"""The tus creation-defer-length and concatenation extensions, and CORS for browsers,
against a real server process."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server

from boothsync.ids import new_capture_id
from boothsync.tus.protocol import encode_metadata

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("extensions")).start()
    yield running
    running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def create(client: httpx.Client, headers: dict[str, str]) -> str:
    response = client.post("/files/", headers={**TUS, **headers})
    assert response.status_code == 201, response.text
    return response.headers["location"]


def patch(client: httpx.Client, url: str, offset: int, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    all_headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_TYPE, **(headers or {})}
    return client.patch(url, content=body, headers=all_headers)


def head(client: httpx.Client, url: str) -> httpx.Response:
    return client.head(url, headers=TUS)


def stored_plain_file(server: Server, url: str) -> Path:
    upload_id = url.rstrip("/").rsplit("/", 1)[-1]
    matches = list((server.data / "files" / "_uploads").rglob(upload_id))
    assert len(matches) == 1, matches
    return matches[0]


def test_options_lists_new_extensions(client: httpx.Client) -> None:
    extensions = client.options("/files/").headers["tus-extension"].split(",")

    assert "creation-defer-length" in extensions
    assert "concatenation" in extensions


def test_defer_length_then_declare(client: httpx.Client, server: Server) -> None:
    url = create(client, {"Upload-Defer-Length": "1"})

    first = head(client, url)
    assert first.headers["upload-defer-length"] == "1"
    assert "upload-length" not in first.headers

    assert patch(client, url, 0, b"a" * 100).status_code == 204
    done = patch(client, url, 100, b"b" * 50, {"Upload-Length": "150"})

    assert done.status_code == 204
    assert head(client, url).headers["upload-length"] == "150"
    assert stored_plain_file(server, url).read_bytes() == b"a" * 100 + b"b" * 50


@pytest.mark.parametrize(
    "headers",
    [{"Upload-Defer-Length": "2"}, {"Upload-Defer-Length": "1", "Upload-Length": "10"}, {}],
    ids=["bad-value", "both", "neither"],
)
def test_defer_length_invalid_creation(client: httpx.Client, headers: dict[str, str]) -> None:
    response = client.post("/files/", headers={**TUS, **headers})

    assert response.status_code == 400


def test_declared_length_below_offset_rejected(client: httpx.Client) -> None:
    url = create(client, {"Upload-Defer-Length": "1"})
    assert patch(client, url, 0, b"a" * 100).status_code == 204

    response = patch(client, url, 100, b"", {"Upload-Length": "50"})

    assert response.status_code == 400
    assert head(client, url).headers["upload-defer-length"] == "1"


def test_declared_length_cannot_change(client: httpx.Client) -> None:
    url = create(client, {"Upload-Length": "100"})

    response = patch(client, url, 0, b"a" * 10, {"Upload-Length": "200"})

    assert response.status_code == 400
    assert head(client, url).headers["upload-offset"] == "0"


def test_concatenation_builds_final_upload(client: httpx.Client, server: Server) -> None:
    pieces = [os.urandom(300_000), os.urandom(5), os.urandom(123_456)]
    partial_urls = []
    for piece in pieces:
        url = create(client, {"Upload-Length": str(len(piece)), "Upload-Concat": "partial"})
        assert head(client, url).headers["upload-concat"] == "partial"
        assert patch(client, url, 0, piece).status_code == 204
        partial_urls.append(url)
    # Relative paths are valid in Upload-Concat as well as absolute URLs.
    relative = partial_urls[1].split(server.url, 1)[1]

    final = create(client, {"Upload-Concat": f"final;{partial_urls[0]} {relative} {partial_urls[2]}"})

    described = head(client, final)
    assert described.headers["upload-offset"] == str(sum(map(len, pieces)))
    assert described.headers["upload-concat"].startswith("final;")
    assert stored_plain_file(server, final).read_bytes() == b"".join(pieces)
    assert patch(client, final, 0, b"x").status_code == 403


def test_concatenation_of_capture_part_is_verified(client: httpx.Client, server: Server) -> None:
    data = os.urandom(200_000)
    capture_id = new_capture_id()
    manifest = {
        "capture_id": capture_id, "event": "e1", "device_id": "d1", "class": "media",
        "captured_at": 1_800_000_000, "filename": "clip.mp4",
        "parts": [{"part": "original", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}],
    }
    assert client.post("/v1/manifests", json=manifest).status_code == 200
    urls = []
    for piece in (data[:150_000], data[150_000:]):
        url = create(client, {"Upload-Length": str(len(piece)), "Upload-Concat": "partial"})
        assert patch(client, url, 0, piece).status_code == 204
        urls.append(url)

    metadata = encode_metadata({"capture_id": capture_id, "part": "original"})
    create(client, {"Upload-Concat": f"final;{' '.join(urls)}", "Upload-Metadata": metadata})

    part = client.get(f"/v1/captures/{capture_id}").json()["parts"][0]
    assert part["state"] == "synced"
    assert (server.data / "files" / part["path"]).read_bytes() == data


def test_concatenation_rejects_incomplete_partial(client: httpx.Client) -> None:
    url = create(client, {"Upload-Length": "100", "Upload-Concat": "partial"})
    assert patch(client, url, 0, b"a" * 50).status_code == 204

    response = client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{url}"})

    assert response.status_code == 400
    assert response.headers["boothsync-error"] == "invalid_concat"


def test_concatenation_rejects_plain_upload(client: httpx.Client) -> None:
    url = create(client, {"Upload-Length": "3"})
    assert patch(client, url, 0, b"abc").status_code == 204

    response = client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{url}"})

    assert response.status_code in (400, 404)


@pytest.mark.parametrize(
    "value",
    ["partial;x", "final;", "whole"],
)
def test_concatenation_invalid_header(client: httpx.Client, value: str) -> None:
    response = client.post("/files/", headers={**TUS, "Upload-Length": "1", "Upload-Concat": value})

    assert response.status_code == 400


def test_final_upload_with_length_rejected(client: httpx.Client) -> None:
    url = create(client, {"Upload-Length": "1", "Upload-Concat": "partial"})
    assert patch(client, url, 0, b"a").status_code == 204

    response = client.post("/files/", headers={**TUS, "Upload-Length": "1", "Upload-Concat": f"final;{url}"})

    assert response.status_code == 400


def test_cors_preflight_allows_tus_headers(client: httpx.Client) -> None:
    response = client.options("/files/", headers={
        "Origin": "http://stall.test",
        "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "tus-resumable, upload-offset, upload-checksum, content-type",
    })

    assert response.status_code == 200
    assert "PATCH" in response.headers["access-control-allow-methods"]
    assert "upload-offset" in response.headers["access-control-allow-headers"].lower()


def test_cors_exposes_tus_headers(client: httpx.Client) -> None:
    response = client.post("/files/", headers={**TUS, "Upload-Length": "10", "Origin": "http://stall.test"})

    assert response.status_code == 201
    exposed = response.headers["access-control-expose-headers"].lower()
    for name in ("location", "upload-offset", "tus-resumable", "upload-expires"):
        assert name in exposed


def test_cors_origin_not_allowed(tmp_path: Path) -> None:
    server = Server(tmp_path, env={"BOOTHSYNC_SERVER_CORS_ORIGINS": "https://capture.example"}).start()
    try:
        allowed = httpx.options(server.url + "/files/", headers={
            "Origin": "https://capture.example", "Access-Control-Request-Method": "POST"})
        denied = httpx.options(server.url + "/files/", headers={
            "Origin": "http://elsewhere.test", "Access-Control-Request-Method": "POST"})
    finally:
        server.stop()

    assert allowed.status_code == 200
    assert denied.status_code == 400
