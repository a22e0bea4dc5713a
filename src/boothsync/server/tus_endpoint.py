"""A tus 1.0 upload endpoint: core, creation, creation-with-upload, checksum,
expiration and termination, on a FileStore with per-upload locks.

The endpoint does not deal with captures. When an upload's last byte is on
disk it calls ``on_complete``, which verifies and files the part; only after
that returns does the client get its final 204, so a client that saw the
upload complete can count the part as synced.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from boothsync.server.errors import ServerError, bad_request, upload_gone, upload_locked, upload_not_found
from boothsync.server.locks import FileLocker, LockBusyError
from boothsync.server.store import FileStore, UploadInfo
from boothsync.tus.protocol import (
    CHECKSUM_ALGORITHMS,
    OFFSET_CONTENT_TYPE,
    STATUS_CHECKSUM_MISMATCH,
    TUS_VERSION,
    ProtocolError,
    decode_metadata,
    parse_checksum,
    parse_non_negative,
)

log = logging.getLogger("boothsync.server.tus")

EXTENSIONS = "creation,creation-with-upload,expiration,checksum,termination"

# Creation hook: given the upload's metadata, return the id of an existing
# upload for the same (capture_id, part), or None; raises ServerError to reject.
CreateHook = Callable[[dict[str, str]], Awaitable[str | None]]
BindHook = Callable[[str, dict[str, str]], Awaitable[str]]
CompleteHook = Callable[[UploadInfo], Awaitable[UploadInfo]]
ForgetHook = Callable[[str], Awaitable[None]]


class PartRejectedError(Exception):
    """Raised by a completion hook when a complete upload fails verification."""


class UploadCounters:
    """Plain counters the metrics endpoint reads."""

    def __init__(self) -> None:
        self.created = 0
        self.bytes_received = 0
        self.completed = 0
        self.checksum_mismatches = 0
        self.disconnects = 0


class TusEndpoint:
    """Handles the HTTP requests of the tus protocol for one store."""

    def __init__(
        self,
        store: FileStore,
        locker: FileLocker,
        *,
        base_path: str,
        max_size: int,
        expiry_s: float,
        find_existing: CreateHook,
        bind: BindHook,
        on_complete: CompleteHook,
        forget: ForgetHook,
    ) -> None:
        self.store = store
        self.locker = locker
        self.base_path = base_path
        self.max_size = max_size
        self.expiry_s = expiry_s
        self.find_existing = find_existing
        self.bind = bind
        self.on_complete = on_complete
        self.forget = forget
        self.counters = UploadCounters()

    async def handle(self, request: Request) -> Response:
        """Dispatch one request to the tus method it carries; translate errors to responses."""
        method = request.method
        override = request.headers.get("x-http-method-override")
        if method == "POST" and override:
            method = override.upper()
        upload_id = request.path_params.get("upload_id")
        try:
            if method == "OPTIONS":
                return self._options()
            _require_tus_version(request)
            if upload_id is None:
                if method != "POST":
                    raise ServerError(405, "method_not_allowed", f"{method} is not allowed on the upload collection")
                return await self._create(request)
            if method == "HEAD":
                return await self._head(upload_id)
            if method == "PATCH":
                return await self._patch(request, upload_id)
            if method == "DELETE":
                return await self._delete(upload_id)
            raise ServerError(405, "method_not_allowed", f"{method} is not allowed on an upload")
        except ProtocolError as exc:
            return bad_request("invalid_header", str(exc)).tus_response()
        except ServerError as exc:
            if exc.status >= 500:
                log.error("tus request failed upload_id=%s status=%s error=%s", upload_id, exc.status, exc.message)
            return exc.tus_response()

    def _options(self) -> Response:
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": EXTENSIONS,
            "Tus-Max-Size": str(self.max_size),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        }
        return Response(status_code=204, headers=headers)

    async def _create(self, request: Request) -> Response:
        length = parse_non_negative("Upload-Length", request.headers.get("upload-length"))
        if length is None:
            raise bad_request("missing_length", "Upload-Length is required: send the part's size in bytes")
        if length > self.max_size:
            raise ServerError(
                413, "upload_too_large", f"Upload-Length {length} exceeds the maximum of {self.max_size} bytes"
            )
        metadata = decode_metadata(request.headers.get("upload-metadata"))

        existing = await self.find_existing(metadata)
        if existing is not None:
            info = self.store.get(existing)
            if info is not None and info.length == length and (info.is_final or info.expires_at >= time.time()):
                log.info("upload reused upload_id=%s capture_id=%s part=%s", existing, metadata.get("capture_id"), metadata.get("part"))
                return self._created(request, await self._complete_if_whole(info))
            # An expired upload, or one of another length, is replaced.
            if info is not None and info.is_final:
                await self.forget(existing)
            else:
                await self._terminate(existing)

        upload_id = secrets.token_hex(16)
        info = await asyncio.to_thread(self.store.create, upload_id, length, metadata, self.expiry_s)
        bound = await self.bind(upload_id, metadata)
        if bound != upload_id:
            # Another request created the same (capture_id, part) first.
            self.store.delete(upload_id)
            info = self.store.get(bound) or info
        else:
            self.counters.created += 1
            log.info("upload created upload_id=%s length=%d capture_id=%s part=%s", upload_id, length, metadata.get("capture_id"), metadata.get("part"))

        if request.headers.get("content-type") == OFFSET_CONTENT_TYPE and info.length > 0:
            response = await self._append(request, info, 0)
            response.status_code = 201
            response.headers["Location"] = self._location(request, info.upload_id)
            return response
        return self._created(request, await self._complete_if_whole(info))

    def _created(self, request: Request, info: UploadInfo) -> Response:
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Location": self._location(request, info.upload_id),
            "Upload-Offset": str(self.store.offset(info)),
            "Upload-Expires": _http_date(info.expires_at),
        }
        return Response(status_code=201, headers=headers)

    def _location(self, request: Request, upload_id: str) -> str:
        return str(request.url_for("tus_upload", upload_id=upload_id))

    async def _load(self, upload_id: str) -> UploadInfo:
        if not _valid_upload_id(upload_id):
            raise upload_not_found(upload_id)
        info = self.store.get(upload_id)
        if info is None:
            raise upload_not_found(upload_id)
        if not info.is_final and info.expires_at < time.time():
            raise upload_gone(upload_id)
        return info

    async def _head(self, upload_id: str) -> Response:
        info = await self._complete_if_whole(await self._load(upload_id))
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Offset": str(self.store.offset(info)),
            "Upload-Length": str(info.length),
            "Cache-Control": "no-store",
        }
        if not info.is_final:
            headers["Upload-Expires"] = _http_date(info.expires_at)
        return Response(status_code=200, headers=headers)

    async def _patch(self, request: Request, upload_id: str) -> Response:
        if request.headers.get("content-type") != OFFSET_CONTENT_TYPE:
            raise ServerError(415, "wrong_content_type", f"PATCH needs Content-Type: {OFFSET_CONTENT_TYPE}")
        offset = parse_non_negative("Upload-Offset", request.headers.get("upload-offset"))
        if offset is None:
            raise bad_request("missing_offset", "Upload-Offset is required on PATCH")
        info = await self._load(upload_id)
        return await self._append(request, info, offset)

    async def _append(self, request: Request, info: UploadInfo, offset: int) -> Response:
        """Write one request body at ``offset`` under the upload's lock."""
        try:
            with self.locker.hold(info.upload_id):
                return await self._append_locked(request, info, offset)
        except LockBusyError:
            raise upload_locked(info.upload_id) from None

    async def _append_locked(self, request: Request, info: UploadInfo, offset: int) -> Response:
        current = self.store.offset(info)
        if info.is_final or offset != current:
            raise ServerError(409, "offset_mismatch", f"Upload-Offset {offset} does not match the upload's offset {current}: send HEAD and resume from there")
        declared = parse_non_negative("Content-Length", request.headers.get("content-length"))
        if declared is not None and offset + declared > info.length:
            raise ServerError(413, "beyond_length", f"body of {declared} bytes at offset {offset} exceeds Upload-Length {info.length}")
        checksum = request.headers.get("upload-checksum")
        expected = parse_checksum(checksum) if checksum else None

        written = await self._write_body(request, info, offset, expected)
        new_offset = offset + written
        if new_offset == info.length:
            info = await self._complete(info)
        headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": str(new_offset)}
        if not info.is_final:
            headers["Upload-Expires"] = _http_date(info.expires_at)
        return Response(status_code=204, headers=headers)

    async def _write_body(self, request: Request, info: UploadInfo, offset: int, expected: tuple[str, bytes] | None) -> int:
        """Stream the body to disk; keep nothing of it if a checksum fails or cannot be checked."""
        digest = hashlib.new(expected[0]) if expected else None
        written = 0
        with self.store.open_append(info) as handle:
            try:
                async for chunk in request.stream():
                    if offset + written + len(chunk) > info.length:
                        handle.flush()
                        self.store.truncate(info, offset)
                        raise ServerError(413, "beyond_length", f"body runs past Upload-Length {info.length}")
                    handle.write(chunk)
                    written += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
                self.store.sync_append(handle)
            except ClientDisconnect:
                self.counters.disconnects += 1
                handle.flush()
                if digest is not None:
                    # A partial body cannot be checked against its checksum.
                    self.store.truncate(info, offset)
                    written = 0
                log.info("client disconnected mid-body upload_id=%s kept_offset=%d", info.upload_id, offset + written)
                self.counters.bytes_received += written
                raise ServerError(400, "client_disconnected", "the request body ended early") from None
        if digest is not None and expected is not None and digest.digest() != expected[1]:
            self.store.truncate(info, offset)
            self.counters.checksum_mismatches += 1
            log.warning("chunk checksum mismatch upload_id=%s offset=%d bytes=%d", info.upload_id, offset, written)
            raise ServerError(STATUS_CHECKSUM_MISMATCH, "checksum_mismatch", f"the {expected[0]} of the body does not match Upload-Checksum: the chunk was discarded, send it again")
        self.counters.bytes_received += written
        return written

    async def _complete_if_whole(self, info: UploadInfo) -> UploadInfo:
        """File an upload whose bytes are all on disk but that was never filed.

        That happens for an empty upload, and when the server stopped after
        the last PATCH reached the disk but before the part was filed. A
        client must never see the full offset of an upload that is not filed.
        """
        if info.is_final or self.store.offset(info) != info.length:
            return info
        try:
            with self.locker.hold(info.upload_id):
                return await self._complete(info)
        except LockBusyError:
            raise upload_locked(info.upload_id) from None

    async def _complete(self, info: UploadInfo) -> UploadInfo:
        try:
            final = await self.on_complete(info)
        except PartRejectedError as exc:
            log.warning("upload rejected at completion upload_id=%s reason=%s", info.upload_id, exc)
            await self._terminate(info.upload_id)
            self.counters.checksum_mismatches += 1
            raise ServerError(STATUS_CHECKSUM_MISMATCH, "part_rejected", f"{exc}: the upload was discarded, create a new one") from None
        self.counters.completed += 1
        return final

    async def _delete(self, upload_id: str) -> Response:
        info = await self._load(upload_id)
        if info.is_final:
            raise ServerError(403, "upload_final", f"upload {upload_id!r} is complete and filed; it cannot be terminated")
        try:
            with self.locker.hold(upload_id):
                await self._terminate(upload_id)
        except LockBusyError:
            raise upload_locked(upload_id) from None
        log.info("upload terminated upload_id=%s", upload_id)
        return Response(status_code=204, headers={"Tus-Resumable": TUS_VERSION})

    async def _terminate(self, upload_id: str) -> None:
        await self.forget(upload_id)
        self.store.delete(upload_id)
        self.locker.forget(upload_id)

    async def expire(self) -> int:
        """Delete incomplete uploads whose expiry has passed; return how many."""
        expired = self.store.expired(time.time())
        for info in expired:
            try:
                with self.locker.hold(info.upload_id):
                    await self._terminate(info.upload_id)
            except LockBusyError:
                continue
            log.info("upload expired upload_id=%s offset=%d length=%d", info.upload_id, self.store.offset(info), info.length)
        return len(expired)


def _require_tus_version(request: Request) -> None:
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise ServerError(
            412, "unsupported_version", f"Tus-Resumable {version!r} is not supported: send Tus-Resumable: {TUS_VERSION}",
            headers={"Tus-Version": TUS_VERSION},
        )


def _valid_upload_id(upload_id: str) -> bool:
    return len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id)


def _http_date(epoch: float) -> str:
    return formatdate(epoch, usegmt=True)
