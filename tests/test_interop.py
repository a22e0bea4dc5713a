"""Interop tests: real tus clients against a real ``boothsync server run`` process.

The clients are tus-js-client on Node.js, driven by the scripts in
tests/interop/ (scripts/setup installs their packages with ``npm ci``), and
tuspy, driven in-process. Uploads from plain tus clients name no capture, so
the server files each one as ``files/_uploads/<YYYY-MM-DD>/<upload id>``.
All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader import Uploader

from conftest import Server, wait_until

from boothsync.flakylink import FlakyLinkThread, LinkProfile

pytestmark = pytest.mark.timeout(120)

INTEROP_DIR = Path(__file__).parent / "interop"
MIB = 1024 * 1024
TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"
NODE_SCRIPT_TIMEOUT_S = 90
# Bandwidth cap, in bytes per second, of the link in front of the server in the kill test.
KILL_TEST_RATE = 16 * MIB
# Time that 1 MiB sent on 127.0.0.1 is given to reach the server before it is killed.
BODY_ARRIVAL_S = 0.5


@pytest.fixture(scope="session")
def node() -> str:
    """Return the path of ``node``, after checking that tus-js-client is installed for it."""
    path = shutil.which("node")
    if path is None:
        pytest.fail("node not found: run scripts/setup, which installs Node.js and npm")
    if not (INTEROP_DIR / "node_modules" / "tus-js-client" / "package.json").is_file():
        pytest.fail("tus-js-client is missing from tests/interop/node_modules: run scripts/setup")
    return path


def run_node(node: str, script: str, **options: object) -> dict[str, Any]:
    """Run a script from tests/interop/ with ``--name value`` options and return its JSON report."""
    args = [node, str(INTEROP_DIR / script)]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    result = subprocess.run(
        args, cwd=INTEROP_DIR, capture_output=True, text=True, timeout=NODE_SCRIPT_TIMEOUT_S, check=False
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"{script} printed no report (exit code {result.returncode})\nstderr:\n{result.stderr[-2000:]}"
    report = json.loads(lines[-1])
    exit_code = result.returncode
    assert exit_code == 0, f"{script} exited with {exit_code}: {report.get('error')}\nstderr:\n{result.stderr[-2000:]}"
    return report


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path`` and return their hex sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        remaining = size
        while remaining > 0:
            block = os.urandom(min(MIB, remaining))
            handle.write(block)
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def filed_uploads(server: Server) -> list[Path]:
    """Return the files the server filed for plain tus uploads."""
    return sorted(p for p in (server.data / "files" / "_uploads").rglob("*") if p.is_file())


def upload_id_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def head_offset(url: str) -> int:
    response = httpx.head(url, headers=TUS_HEADERS, timeout=10)
    assert response.status_code == 200, f"HEAD {url} returned {response.status_code}: {response.text}"
    return int(response.headers["Upload-Offset"])


# tus-js-client


def test_tus_js_resumes_after_two_aborts(server: Server, node: str, tmp_path: Path) -> None:
    size = 50 * MIB
    source = tmp_path / "source.bin"
    source_sha256 = write_random_file(source, size)

    report = run_node(
        node, "resume_upload.mjs",
        endpoint=server.url + "/files/", file=source, url_storage=tmp_path / "tus-urls.json",
        chunk_size=4 * MIB, abort_at="0.3,0.6", filename="booth-video.mp4", filetype="video/mp4",
    )
    attempts = report["attempts"]
    upload_url = report["uploadUrl"]

    assert [a["outcome"] for a in attempts] == ["aborted", "aborted", "success"]
    first, *resumed = attempts
    assert first["previousUploads"] == 0
    assert first["createdUrl"] == upload_url
    assert first["patchOffsets"][0] == 0
    for previous, attempt in zip(attempts[:-1], resumed, strict=True):
        # Each restart finds the upload through the URL storage and creates no new one.
        assert attempt["previousUploads"] == 1
        assert attempt["resumedUrl"] == upload_url
        assert attempt["createdUrl"] is None
        # It resumes at the offset the server reported after the abort, not at a chunk boundary it guessed.
        assert attempt["headOffset"] == previous["serverOffsetAfterAbort"]
        assert attempt["patchOffsets"][0] == attempt["headOffset"]
    for attempt in attempts:
        offsets = attempt["patchOffsets"]
        assert offsets == sorted(set(offsets)), f"a PATCH was sent twice at one offset: {offsets}"

    abort_offsets = [a["serverOffsetAfterAbort"] for a in attempts[:2]]
    assert 0 < abort_offsets[0] < abort_offsets[1] < size

    filed = filed_uploads(server)
    assert [p.name for p in filed] == [upload_id_of(upload_url)]
    assert filed[0].stat().st_size == size
    assert file_sha256(filed[0]) == source_sha256
    assert head_offset(upload_url) == size


def test_tus_js_parallel_upload_concatenates(server: Server, node: str, tmp_path: Path) -> None:
    size = 32 * MIB + 12345
    source = tmp_path / "source.bin"
    source_sha256 = write_random_file(source, size)

    report = run_node(
        node, "parallel_upload.mjs",
        endpoint=server.url + "/files/", file=source, parallel=4,
        chunk_size=4 * MIB, filename="booth-scan.pdf", filetype="application/pdf",
    )
    final_url = report["uploadUrl"]
    partial_urls = report["partialUrls"]

    assert len(partial_urls) == 4
    assert len(set(partial_urls)) == 4
    # The partial uploads are created concurrently, so the order of their responses is not the order of the parts.
    final_concat = report["finalConcat"]
    assert final_concat.startswith("final;")
    assert sorted(final_concat.removeprefix("final;").split(" ")) == sorted(partial_urls)

    head = httpx.head(final_url, headers=TUS_HEADERS, timeout=10)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == str(size)
    assert head.headers["Upload-Length"] == str(size)

    # Only the final upload is filed: the partial uploads are its pieces, not files of their own.
    filed = filed_uploads(server)
    assert [p.name for p in filed] == [upload_id_of(final_url)]
    assert filed[0].stat().st_size == size
    assert file_sha256(filed[0]) == source_sha256


def test_tus_js_deferred_length_stream(server: Server, node: str, tmp_path: Path) -> None:
    # NOTE: the size is deliberately not a multiple of the chunk size. With a
    # size that is, tus-js-client 4.3.1 stalls after the last chunk and never
    # sends Upload-Length, a bug still open upstream:
    # https://github.com/tus/tus-js-client/issues/779
    size = 6 * MIB + 777
    source = tmp_path / "source.bin"
    source_sha256 = write_random_file(source, size)

    report = run_node(
        node, "deferred_upload.mjs",
        endpoint=server.url + "/files/", file=source, chunk_size=MIB,
        filename="booth-audio.wav", filetype="audio/wav",
    )

    assert report["deferLengthOnCreate"] == "1"
    assert report["declaredLength"] == size
    filed = filed_uploads(server)
    assert [p.name for p in filed] == [upload_id_of(report["uploadUrl"])]
    assert file_sha256(filed[0]) == source_sha256


# tuspy


def test_tuspy_resumes_after_server_kill(server: Server, tmp_path: Path) -> None:
    size = 20 * MIB
    source = tmp_path / "source.bin"
    source_sha256 = write_random_file(source, size)
    url_storage = FileStorage(str(tmp_path / "tuspy-urls.json"))
    metadata = {"filename": "booth-photos.zip", "filetype": "application/zip"}

    # The rate cap makes each 1 MiB PATCH body take about 60 ms, so the kill
    # lands inside a request body rather than after the last chunk.
    with FlakyLinkThread("127.0.0.1", server.port, LinkProfile(rate_bytes_per_s=KILL_TEST_RATE)) as link:
        client = TusClient(f"http://127.0.0.1:{link.port}/files/")

        def new_uploader() -> Uploader:
            return client.uploader(
                file_path=str(source), chunk_size=MIB, metadata=metadata, store_url=True, url_storage=url_storage
            )

        first = new_uploader()
        failures: list[Exception] = []

        def upload_until_failure() -> None:
            try:
                first.upload()
            except (TusCommunicationError, TusUploadFailed) as exc:
                failures.append(exc)

        thread = threading.Thread(target=upload_until_failure, daemon=True)
        thread.start()
        wait_until(lambda: first.url is not None, 30, "tuspy to create the upload")
        upload_id = upload_id_of(first.url)
        direct_url = f"{server.url}/files/{upload_id}"
        wait_until(lambda: head_offset(direct_url) >= 5 * MIB, 30, "5 MiB to reach the server")
        server.kill()
        thread.join(30)

        assert not thread.is_alive()
        assert len(failures) == 1, "the upload did not fail when the server was killed"
        acknowledged = first.offset

        server.start()
        resumed = new_uploader()
        assert resumed.url == first.url
        assert resumed.offset == head_offset(direct_url)
        # Bytes the server acknowledged before it was killed are still there.
        assert acknowledged <= resumed.offset < size
        assert resumed.offset >= 5 * MIB

        resumed.upload()

    assert resumed.offset == size
    filed = filed_uploads(server)
    assert [p.name for p in filed] == [upload_id]
    assert file_sha256(filed[0]) == source_sha256


class CorruptOnceSha1:
    """A tuspy checksum algorithm: sha1, except for one wrong digest on the ``bad_call``-th chunk."""

    def __init__(self, bad_call: int) -> None:
        self.bad_call = bad_call
        self.calls = 0

    def __call__(self, chunk: bytes) -> Any:
        self.calls += 1
        if self.calls == self.bad_call:
            return hashlib.sha1(b"not the chunk")
        return hashlib.sha1(chunk)


def test_tuspy_checksum_mismatch_is_retried(server: Server, tmp_path: Path) -> None:
    size = 5 * MIB
    source = tmp_path / "source.bin"
    source_sha256 = write_random_file(source, size)
    corrupt = CorruptOnceSha1(bad_call=3)

    class CorruptingUploader(Uploader):
        CHECKSUM_ALGORITHM_PAIR = ("sha1", corrupt)

    uploader = CorruptingUploader(
        file_path=str(source), client=TusClient(server.url + "/files/"), chunk_size=MIB,
        metadata={"filename": "receipt.pdf", "filetype": "application/pdf"},
        upload_checksum=True, retries=1, retry_delay=0,
    )
    uploader.upload()

    # Five chunks and one re-send of the third, after the server rejected its checksum.
    assert corrupt.calls == 6
    assert server.metric("boothsync_server_checksum_mismatches") == 1
    filed = filed_uploads(server)
    assert [p.name for p in filed] == [upload_id_of(uploader.url)]
    assert file_sha256(filed[0]) == source_sha256


# Checksum extension, raw HTTP


def sha256_checksum(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def test_wrong_checksum_keeps_offset(server: Server) -> None:
    chunks = [os.urandom(MIB) for _ in range(3)]
    whole = b"".join(chunks)
    with httpx.Client(headers=TUS_HEADERS, timeout=30) as http:
        created = http.post(
            server.url + "/files/",
            headers={"Upload-Length": str(len(whole)), "Upload-Metadata": "filename " + base64.b64encode(b"checksum.bin").decode()},
        )
        assert created.status_code == 201
        url = created.headers["Location"]

        def patch(offset: int, body: bytes, checksum: str) -> httpx.Response:
            headers = {"Content-Type": OFFSET_TYPE, "Upload-Offset": str(offset), "Upload-Checksum": checksum}
            return http.patch(url, content=body, headers=headers)

        first = patch(0, chunks[0], sha256_checksum(chunks[0]))
        assert first.status_code == 204
        assert first.headers["Upload-Offset"] == str(MIB)

        wrong = patch(MIB, chunks[1], sha256_checksum(chunks[2]))
        assert wrong.status_code == 460
        assert head_offset(url) == MIB
        assert server.metric("boothsync_server_checksum_mismatches") == 1

        right = patch(MIB, chunks[1], sha256_checksum(chunks[1]))
        assert right.status_code == 204
        assert right.headers["Upload-Offset"] == str(2 * MIB)

        last = patch(2 * MIB, chunks[2], sha256_checksum(chunks[2]))
        assert last.status_code == 204
        assert last.headers["Upload-Offset"] == str(3 * MIB)

    filed = filed_uploads(server)
    assert [p.name for p in filed] == [upload_id_of(url)]
    assert file_sha256(filed[0]) == hashlib.sha256(whole).hexdigest()


def test_kill_mid_checksummed_body_keeps_nothing(server: Server) -> None:
    body = os.urandom(4 * MIB)
    created = httpx.post(server.url + "/files/", headers={**TUS_HEADERS, "Upload-Length": str(len(body))}, timeout=10)
    assert created.status_code == 201
    url = created.headers["Location"]
    path = "/files/" + upload_id_of(url)

    # Send the headers and 1 MiB of a 4 MiB body, then kill the server while it waits for the rest.
    request_head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: {OFFSET_TYPE}\r\nUpload-Offset: 0\r\nUpload-Checksum: {sha256_checksum(body)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(request_head.encode("ascii") + body[:MIB])
        # A HEAD cannot show when the bytes are in, because a correct server reports 0 here.
        time.sleep(BODY_ARRIVAL_S)
        server.kill()
    server.start()

    # None of the body was verified against its checksum, so none of it may count.
    assert head_offset(url) == 0
