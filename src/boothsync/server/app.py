"""The ingest server: the tus endpoint, the manifest API, the capture listing and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from boothsync.config import ServerSettings
from boothsync.datalock import DataDirLock
from boothsync.manifest import ManifestError, is_capture_id, parse_manifest
from boothsync.server.errors import ServerError, bad_request
from boothsync.server.fastpath import TusFastPath
from boothsync.server.filing import PartFiler
from boothsync.server.ietf_endpoint import IetfDraftEndpoint
from boothsync.server.index import Index, PartConflictError
from boothsync.server.locks import UploadLocks
from boothsync.server.metrics import ServerCollector, render
from boothsync.server.storage import UploadInfo
from boothsync.server.store import FileStore
from boothsync.server.tus_endpoint import TusEndpoint

log = logging.getLogger("boothsync.server")

EXPIRY_SWEEP_S = 600.0

# Browsers let a page send and read only the headers CORS names.
CORS_REQUEST_HEADERS = [
    "Content-Type", "Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Metadata",
    "Upload-Defer-Length", "Upload-Concat", "Upload-Checksum", "X-HTTP-Method-Override",
    "X-Requested-With", "Authorization", "Upload-Complete", "Upload-Draft-Interop-Version", "Boothsync-Checksum-Blocks",
]
CORS_RESPONSE_HEADERS = [
    "Location", "Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm",
    "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Defer-Length", "Upload-Concat",
    "Upload-Expires", "Boothsync-Error", "Upload-Complete", "Upload-Draft-Interop-Version", "Upload-Limit",
]
MAX_MANIFEST_BYTES = 64 * 1024
# POST /v1/manifests also takes a JSON list of manifests, stored in one transaction.
MAX_MANIFESTS_PER_REQUEST = 100
MAX_MANIFEST_LIST_BYTES = 1024 * 1024


class IngestServer:
    """Owns the server's store, index and endpoint, and builds the ASGI app."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        root = settings.data_dir
        self.data_lock = DataDirLock(root, "server")
        self.files_dir = root / "files"
        self.store = FileStore(root, fsync_every_append=settings.fsync_every_patch, direct_io=settings.direct_io)
        self.index = Index(root / "index.sqlite3")
        self.filer = PartFiler(self.store, self.index, self.files_dir)
        self.tus = TusEndpoint(
            self.store,
            UploadLocks(),
            max_size=settings.max_upload_bytes,
            expiry_s=settings.upload_expiry_s,
            find_existing=self._find_existing,
            bind=self._bind,
            on_complete=self._on_complete,
            forget=self._forget,
        )
        self.ietf = IetfDraftEndpoint(self.tus)
        self.registry = CollectorRegistry()
        self.registry.register(ServerCollector(self.tus.counters, self.index))

    async def _find_existing(self, metadata: dict[str, str]) -> str | None:
        key = _capture_key(metadata)
        if key is None:
            return None
        if self.index.expected_part(*key) is None:
            raise bad_request(
                "no_manifest", f"capture {key[0]} part {key[1]} is not in any manifest: POST /v1/manifests first"
            )
        return self.index.find_upload(*key)

    async def _bind(self, upload_id: str, metadata: dict[str, str]) -> str:
        key = _capture_key(metadata)
        if key is None:
            return upload_id
        return await asyncio.to_thread(self.index.add_upload, upload_id, *key)

    async def _on_complete(self, info: UploadInfo) -> UploadInfo:
        loop = asyncio.get_running_loop()
        final = await loop.run_in_executor(self.store.sync_pool, self.filer.file, info)
        if "capture_id" not in info.metadata:
            log.debug("upload filed upload_id=%s bytes=%s", info.upload_id, info.length)
            return final
        log.info(
            "part synced upload_id=%s capture_id=%s part=%s bytes=%d",
            info.upload_id,
            info.metadata.get("capture_id"),
            info.metadata.get("part"),
            info.length,
        )
        return final

    async def _forget(self, upload_id: str) -> None:
        await asyncio.to_thread(self.index.forget_upload, upload_id)

    async def post_manifest(self, request: Request) -> Response:
        """Store one manifest (a JSON object) or several (a JSON list of objects) in one transaction."""
        body = await request.body()
        try:
            if len(body) > MAX_MANIFEST_LIST_BYTES:
                raise ManifestError(f"request of {len(body)} bytes exceeds {MAX_MANIFEST_LIST_BYTES}")
            data = json.loads(body)
            if isinstance(data, list):
                manifests = _parse_manifest_list(data)
            elif len(body) > MAX_MANIFEST_BYTES:
                raise ManifestError(f"manifest of {len(body)} bytes exceeds {MAX_MANIFEST_BYTES}")
            else:
                manifests = [parse_manifest(data)]
            await asyncio.to_thread(self.index.upsert_manifests, manifests)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return bad_request("invalid_json", "the manifest is not valid JSON").json_response()
        except ManifestError as exc:
            return ServerError(422, "invalid_manifest", str(exc)).json_response()
        except PartConflictError as exc:
            return ServerError(409, "part_conflict", str(exc)).json_response()
        for manifest in manifests:
            log.info("manifest stored capture_id=%s parts=%d", manifest["capture_id"], len(manifest["parts"]))
        results = [{"capture_id": m["capture_id"], "status": "announced"} for m in manifests]
        if isinstance(data, list):
            return JSONResponse({"manifests": results})
        return JSONResponse(results[0])

    async def list_captures(self, request: Request) -> Response:
        after = request.query_params.get("after", "")
        try:
            limit = min(int(request.query_params.get("limit", "1000")), 10_000)
        except ValueError:
            return bad_request("invalid_limit", "limit must be an integer").json_response()
        captures = await asyncio.to_thread(self.index.captures, limit, after)
        return JSONResponse({"captures": captures, "storage_dir": str(self.files_dir.resolve())})

    async def get_capture(self, request: Request) -> Response:
        capture_id = request.path_params["capture_id"]
        capture = self.index.capture(capture_id) if is_capture_id(capture_id) else None
        if capture is None:
            return ServerError(404, "capture_not_found", f"no capture {capture_id!r} in the index").json_response()
        return JSONResponse(capture)

    async def metrics(self, request: Request) -> Response:
        return Response(render(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", **self.index.counts()})

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        log.info("server started data_dir=%s", self.settings.data_dir)
        sweeper = asyncio.create_task(self._sweep_expired())
        try:
            yield
        finally:
            sweeper.cancel()
            self.store.close()
            self.index.close()
            log.info("server stopped")

    async def _sweep_expired(self) -> None:
        while True:
            try:
                await self.tus.expire()
            except OSError as exc:
                log.error("expiry sweep failed error=%s", exc)
            await asyncio.sleep(EXPIRY_SWEEP_S)

    def app(self) -> TusFastPath:
        methods = ["POST", "HEAD", "PATCH", "DELETE", "OPTIONS", "GET"]
        routes = [
            Route("/files/", self.ietf.dispatch, methods=methods, name="tus_collection"),
            Route("/files/{upload_id}", self.ietf.dispatch, methods=methods, name="tus_upload"),
            Route("/v1/manifests", self.post_manifest, methods=["POST"]),
            Route("/v1/captures", self.list_captures, methods=["GET"]),
            Route("/v1/captures/{capture_id}", self.get_capture, methods=["GET"]),
            Route("/v1/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]
        full = Starlette(routes=routes, lifespan=self.lifespan, middleware=self._middleware())
        return TusFastPath(full, self.tus)

    def _middleware(self) -> list[Middleware]:
        origins = [o.strip() for o in self.settings.cors_origins.split(",") if o.strip()]
        if not origins:
            return []
        return [Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["POST", "GET", "HEAD", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS,
            max_age=86400,
        )]


def _parse_manifest_list(data: list[Any]) -> list[dict[str, Any]]:
    """Validate every manifest of a list; the error names the first invalid one by its index."""
    if not data:
        raise ManifestError("the list of manifests is empty")
    if len(data) > MAX_MANIFESTS_PER_REQUEST:
        raise ManifestError(f"{len(data)} manifests exceed the maximum of {MAX_MANIFESTS_PER_REQUEST} per request")
    manifests = []
    for number, item in enumerate(data):
        try:
            size = len(json.dumps(item).encode())
            if size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"manifest of {size} bytes exceeds {MAX_MANIFEST_BYTES}")
            manifests.append(parse_manifest(item))
        except ManifestError as exc:
            raise ManifestError(f"manifest {number}: {exc}") from None
    return manifests


def _capture_key(metadata: dict[str, str]) -> tuple[str, str] | None:
    capture_id = metadata.get("capture_id")
    part = metadata.get("part")
    if capture_id and part:
        return capture_id, part
    return None


def build_app(settings: ServerSettings) -> TusFastPath:
    """Return the server's ASGI app for ``settings``."""
    return IngestServer(settings).app()


__all__ = ["IngestServer", "build_app"]
