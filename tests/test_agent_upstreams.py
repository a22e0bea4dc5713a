"""The real agent uploading to tus 1.0 servers that are not boothsync's.

Each test starts a peer server on 127.0.0.1, @tus/server 2.4.5 with
@tus/file-store 2.1.1 on Node.js or tuspyserver 4.4.3 in FastAPI, and a
``boothsync agent run`` process with ``BOOTHSYNC_AGENT_UPSTREAM=tus`` that
uploads to it. scripts/setup installs the Node.js packages into
tests/interop/node_modules and tuspyserver into .venv-peers. Both peers store
each upload as a file named by their own upload id, next to a JSON file with
its metadata. Neither checks the sha256 that the agent sends as metadata, so
the tests compare the stored bytes with the originals themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import DATA, Agent, sha256_hex, wait_until

from boothsync.flakylink import FlakyLinkThread, LinkProfile
from boothsync.processes import free_port

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
INTEROP_DIR = ROOT / "tests" / "interop"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
MIB = 1024 * 1024
MEDIA_BYTES = 3 * MIB
UPSTREAM_ENV = {"BOOTHSYNC_AGENT_UPSTREAM": "tus", "BOOTHSYNC_AGENT_UPLOAD_PATH": "/files/"}
PEER_READY_TIMEOUT_S = 20.0
PEER_STOP_TIMEOUT_S = 10.0
SYNC_TIMEOUT_S = 40.0
# The link in the fault test resets every open connection at this period. At
# its rate the 3 MiB media original takes about 3 s to send, so resets land
# inside PATCH bodies.
DROP_EVERY_S = 0.5
FAULT_RATE_BYTES_PER_S = 1 * MIB
# A line the uploader logs when a PATCH fails on the connection, for example
# "sync failed, retrying attempt=1 ... error=PATCH http://.../files/ID failed: ReadError: ...".
CUT_PATCH_LINE = re.compile(r"sync failed, retrying .* error=PATCH \S+ failed: ")


def tus_node_server_command(port: int, store: Path) -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: run scripts/setup, which installs Node.js and npm")
    if not (INTEROP_DIR / "node_modules" / "@tus" / "server" / "package.json").is_file():
        pytest.fail("@tus/server is missing from tests/interop/node_modules: run scripts/setup")
    return [node, str(INTEROP_DIR / "tus_node_server.js"), "--port", str(port), "--dir", str(store)]


def tuspyserver_command(port: int, store: Path) -> list[str]:
    if not PEERS_PYTHON.is_file():
        pytest.fail(f"{PEERS_PYTHON} not found: run scripts/setup, which installs tuspyserver there")
    return [str(PEERS_PYTHON), str(INTEROP_DIR / "tuspy_server.py"), "--port", str(port), "--dir", str(store)]


@dataclass(frozen=True)
class PeerKind:
    """A tus server that the agent can upload to, and how its store is laid out."""

    name: str
    command: Callable[[int, Path], list[str]]
    """Return the command line that serves /files/ on a port of 127.0.0.1, storing into a directory."""
    sidecar_suffix: str
    """Suffix of the JSON file that the peer keeps beside each upload, with the upload's metadata."""


PEER_KINDS = {
    "tus-node-server": PeerKind("tus-node-server", tus_node_server_command, sidecar_suffix=".json"),
    "tuspyserver": PeerKind("tuspyserver", tuspyserver_command, sidecar_suffix=".info"),
}


class PeerServer:
    """A peer tus server process on 127.0.0.1, with its store directory and log file."""

    def __init__(self, kind: PeerKind, root: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = root / "peer-store"
        self.log = root / "peer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PeerServer:
        self.store.mkdir(parents=True, exist_ok=True)
        command = self.kind.command(self.port, self.store)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=INTEROP_DIR, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        wait_until(self._ready, PEER_READY_TIMEOUT_S, f"{self.kind.name} to answer OPTIONS (log: {self.log})")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            pytest.fail(f"{self.kind.name} exited with {self.proc.returncode} before it was ready:\n{tail}")
        try:
            response = httpx.options(self.url + "/files/", headers={"Tus-Resumable": "1.0.0"}, timeout=2)
        except httpx.TransportError:
            return False
        return response.status_code in (200, 204)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(PEER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def uploads(self) -> list[Path]:
        """Return the files that hold upload bytes, leaving out the metadata files and tuspyserver's .locks/."""
        suffix = self.kind.sidecar_suffix
        return sorted(p for p in self.store.iterdir() if p.is_file() and not p.name.endswith(suffix))

    def metadata_of(self, upload: Path) -> dict[str, str]:
        """Return the tus metadata that the peer stored for an upload."""
        sidecar = upload.with_name(upload.name + self.kind.sidecar_suffix)
        return json.loads(sidecar.read_text())["metadata"]

    def copies_of(self, sha256: str) -> list[Path]:
        """Return the stored uploads whose bytes have this sha256."""
        return [p for p in self.uploads() if file_sha256(p) == sha256]


@pytest.fixture(params=sorted(PEER_KINDS))
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PeerServer]:
    server = PeerServer(PEER_KINDS[request.param], tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def capture_ok(agent: Agent, data: bytes, filename: str, klass: str) -> dict[str, Any]:
    response = agent.capture(data, filename, klass)
    assert response.status_code == 201, f"capture of {filename} returned {response.status_code}: {response.text}"
    capture = response.json()
    assert capture["sha256"] == sha256_hex(data)
    return capture


def agent_log(agent: Agent) -> str:
    return agent.log.read_text(errors="replace")


def test_agent_syncs_captures_to_peer(peer: PeerServer, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(peer.url, env=UPSTREAM_ENV)
    originals = {
        "receipt": (DATA / "receipts" / "sroie_000_X00016469612.jpg").read_bytes(),
        "document": (DATA / "pdf" / "born_digital_form_sf424_page2.pdf").read_bytes(),
        "media": os.urandom(MEDIA_BYTES),
    }
    filenames = {"receipt": "receipt.jpg", "document": "form.pdf", "media": "clip.bin"}
    captures = {klass: capture_ok(agent, data, filenames[klass], klass) for klass, data in originals.items()}

    synced = {klass: agent.wait_synced(c["capture_id"], SYNC_TIMEOUT_S) for klass, c in captures.items()}
    status = agent.status()
    assert status["synced"] == len(captures)
    assert status["pending"]["items"] == 0
    assert status["parked_parts"] == 0

    for klass, data in originals.items():
        capture = captures[klass]
        copies = peer.copies_of(capture["sha256"])
        assert len(copies) == 1, f"{klass} original: expected 1 copy on {peer.kind.name}, found {copies}"
        assert copies[0].read_bytes() == data
        metadata = peer.metadata_of(copies[0])
        assert metadata["capture_id"] == capture["capture_id"]
        assert metadata["part"] == "original"
        assert metadata["sha256"] == capture["sha256"]
        assert metadata["filename"] == filenames[klass]
        assert metadata["filetype"], f"{klass} original was uploaded without filetype metadata"
        assert metadata["class"] == klass

    # Thumbnails and OCR text that the agent reports synced are on the peer too.
    for klass, capture in synced.items():
        for part in capture["parts"]:
            if part["state"] != "synced":
                continue
            copies = peer.copies_of(part["sha256"])
            assert len(copies) == 1, f"{klass} {part['part']}: expected 1 copy on {peer.kind.name}, found {copies}"
            assert peer.metadata_of(copies[0])["part"] == part["part"]

    log = agent_log(agent)
    assert "upstream=tus" in log
    # Both peers advertise creation-with-upload, so parts that fit in one
    # chunk (the thumbnails and OCR texts) go in the creation request.
    assert "creation_with_upload=True" in log
    assert "with_body=True" in log, f"no part was sent in its creation request (log: {agent.log})"
    assert "server rejected part" not in log, f"the agent logged a rejection (log: {agent.log})"


def test_agent_resumes_cut_patch_on_peer(peer: PeerServer, start_agent: Callable[..., Agent]) -> None:
    # After each cut the agent sends HEAD for the offset. tuspyserver 4.4.3
    # rejects that HEAD with 400 unless the upload has filename and filetype metadata.
    profile = LinkProfile(rate_bytes_per_s=FAULT_RATE_BYTES_PER_S, drop_every_s=DROP_EVERY_S)
    with FlakyLinkThread("127.0.0.1", peer.port, profile) as link:
        agent = start_agent(f"http://127.0.0.1:{link.port}", env=UPSTREAM_ENV)
        data = os.urandom(MEDIA_BYTES)
        capture = capture_ok(agent, data, "clip.bin", "media")
        agent.wait_synced(capture["capture_id"], SYNC_TIMEOUT_S)
        drops = link.stats.drops
    status = agent.status()
    assert status["synced"] == 1
    assert status["parked_parts"] == 0

    log = agent_log(agent)
    cut_patches = CUT_PATCH_LINE.findall(log)
    assert drops >= 1
    assert cut_patches, f"no PATCH was cut by the link ({drops} drops; log: {agent.log})"

    copies = peer.copies_of(capture["sha256"])
    assert len(copies) == 1, f"expected 1 whole copy on {peer.kind.name}, found {copies}"
    assert copies[0].read_bytes() == data

    # Every cut PATCH resumed the same upload, so no other upload of the
    # original contains any of its bytes. A POST cut after the peer created the
    # upload may leave an empty one behind, because tus creation is not
    # idempotent and the agent never learns its URL.
    uploads = [
        p for p in peer.uploads()
        if peer.metadata_of(p)["capture_id"] == capture["capture_id"] and peer.metadata_of(p)["part"] == "original"
    ]
    with_bytes = [p for p in uploads if p.stat().st_size > 0]
    sizes = {p.name: p.stat().st_size for p in uploads}
    assert with_bytes == copies, f"uploads of the original on {peer.kind.name}, in bytes: {sizes}"
