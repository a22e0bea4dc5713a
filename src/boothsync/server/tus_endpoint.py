"""A tus 1.0 upload endpoint with the creation, creation-with-upload,
creation-defer-length, expiration, checksum, termination and concatenation
extensions, on an UploadStore with per-upload locks.

The endpoint does not deal with captures. When an upload's last byte is
stored it calls ``on_complete``, which verifies and files the part. Only
after that returns does the client get its final 204, so a client that saw
the upload complete can count the part as stored.

Reference: the tus resumable upload protocol 1.0.0 (tus.io/protocols/resumable-upload).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from boothsync.ids import UploadIds
from boothsync.server.errors import ServerError, bad_request, upload_gone, upload_locked, upload_not_found
from boothsync.server.locks import LockBusyError, UploadLocks
from boothsync.server.storage import (
    BlockChecksums,
    BodyCutShortError,
    BodyTooLongError,
    Checksum,
    ChecksumMismatchError,
    UploadInfo,
    UploadStore,
)
from boothsync.tus.protocol import (
    BLOCK_CHECKSUMS_HEADER,
    CHECKSUM_ALGORITHMS,
    OFFSET_CONTENT_TYPE,
    STATUS_CHECKSUM_MISMATCH,
    TUS_VERSION,
    ProtocolError,
    decode_metadata,
    parse_block_checksums,
    parse_checksum,
    parse_non_negative,
)

log = logging.getLogger("boothsync.server.tus")

EXTENSIONS = (
    "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination,concatenation"
)

# Hooks into the rest of the server; see IngestServer for what each does.
FindHook = Callable[[dict[str, str]], Awaitable[str | None]]
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
        store: UploadStore,
        locker: UploadLocks,
        *,
        max_size: int,
        expiry_s: float,
        find_existing: FindHook,
        bind: BindHook,
        on_complete: CompleteHook,
        forget: ForgetHook,
    ) -> None:
        self.store = store
        self.locker = locker
        self.max_size = max_size
        self.expiry_s = expiry_s
        self.find_existing = find_existing
        self.bind = bind
        self.on_complete = on_complete
        self.forget = forget
        self.counters = UploadCounters()
        self.ids = UploadIds()

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
            if method in ("HEAD", "GET"):
                return await self._head(request, upload_id)
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

    # Creation

    async def _create(self, request: Request) -> Response:
        concat = request.headers.get("upload-concat")
        if concat is not None and concat.startswith("final;"):
            return await self._create_final(request, concat)
        if concat is not None and concat != "partial":
            raise bad_request("invalid_concat", f"invalid Upload-Concat {concat[:80]!r}: use 'partial' or 'final;<urls>'")
        length = self._creation_length(request)
        metadata = decode_metadata(request.headers.get("upload-metadata"))

        has_body = request.headers.get("content-type") == OFFSET_CONTENT_TYPE
        existing = await self._existing_upload(metadata, length)
        if existing is not None and not (has_body and not existing.is_final and self.store.offset(existing) == 0):
            return self._created(request, await self._complete_if_whole(existing))

        # A creation retried after its body was cut off finds its upload
        # still empty: the body goes there, so it crosses the link only once more.
        info = existing or await self._new_upload(length, metadata, partial=concat == "partial")
        if has_body:
            response = await self._append(request, info, 0)
            response.status_code = 201
            response.headers["Location"] = self._location(request, info.upload_id)
            return response
        if info.length == 0:
            info = await self._complete_if_whole(info)
        # A new upload without a body is empty, so its offset needs no stat.
        return self._created(request, info, offset=0)

    def _creation_length(self, request: Request) -> int | None:
        length = parse_non_negative("Upload-Length", request.headers.get("upload-length"))
        deferred = request.headers.get("upload-defer-length")
        if deferred is not None and deferred.strip() != "1":
            raise bad_request("invalid_header", f"invalid Upload-Defer-Length {deferred[:20]!r}: the only value is 1")
        if length is None and deferred is None:
            raise bad_request("missing_length", "Upload-Length is required, or Upload-Defer-Length: 1 to send it later")
        if length is not None and deferred is not None:
            raise bad_request("invalid_header", "send either Upload-Length or Upload-Defer-Length, not both")
        if length is not None and length > self.max_size:
            raise ServerError(413, "upload_too_large", f"Upload-Length {length} exceeds the maximum of {self.max_size} bytes")
        return length

    async def _existing_upload(self, metadata: dict[str, str], length: int | None) -> UploadInfo | None:
        """Return the live upload already bound to the metadata's (capture_id, part), if any."""
        existing = await self.find_existing(metadata)
        if existing is None:
            return None
        info = self.store.get(existing)
        if info is not None and info.length == length and (info.is_final or info.expires_at >= time.time()):
            log.debug("upload reused upload_id=%s capture_id=%s part=%s", existing, metadata.get("capture_id"), metadata.get("part"))
            return info
        # An expired upload, or one of another length, is replaced.
        if info is not None and info.is_final:
            await self.forget(existing)
        else:
            await self._terminate(existing)
        return None

    async def _new_upload(self, length: int | None, metadata: dict[str, str], *, partial: bool = False,
                          concat: list[str] | None = None) -> UploadInfo:
        upload_id = self.ids.new()
        info = self.store.create(upload_id, length, metadata, self.expiry_s, partial=partial)
        if concat is not None:
            info.concat = concat
        bound = await self.bind(upload_id, metadata)
        if bound != upload_id:
            # Another request created the same (capture_id, part) first.
            self.store.delete(upload_id)
            return self.store.get(bound) or info
        self.counters.created += 1
        # DEBUG, not INFO: a busy server creates thousands of uploads a minute,
        # and filing a capture part logs its own INFO line.
        log.debug(
            "upload created upload_id=%s length=%s partial=%s capture_id=%s part=%s",
            upload_id, length, partial, metadata.get("capture_id"), metadata.get("part"),
        )
        return info

    async def _create_final(self, request: Request, concat: str) -> Response:
        if request.headers.get("upload-length") is not None:
            raise bad_request("invalid_concat", "a final upload must not send Upload-Length: it is the sum of its parts")
        partials = [await self._load(_upload_id_of(url)) for url in concat[len("final;"):].split()]
        if not partials:
            raise bad_request("invalid_concat", "Upload-Concat: final; lists no partial uploads")
        for partial in partials:
            if not partial.partial:
                raise bad_request("invalid_concat", f"upload {partial.upload_id} is not a partial upload")
            if partial.length is None or self.store.offset(partial) != partial.length:
                raise bad_request("invalid_concat", f"partial upload {partial.upload_id} is not complete: finish it first")
        length = sum(p.length or 0 for p in partials)
        if length > self.max_size:
            raise ServerError(413, "upload_too_large", f"the partial uploads add up to {length} bytes, over the maximum of {self.max_size}")
        metadata = decode_metadata(request.headers.get("upload-metadata"))

        info = await self._new_upload(length, metadata, concat=[p.upload_id for p in partials])
        await asyncio.to_thread(self.store.concatenate, info, partials)
        info = await self._complete_if_whole(info)
        for partial in partials:
            self.store.delete(partial.upload_id)
        return self._created(request, info)

    def _created(self, request: Request, info: UploadInfo, offset: int | None = None) -> Response:
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Location": self._location(request, info.upload_id),
            "Upload-Offset": str(self.store.offset(info) if offset is None else offset),
        }
        if not info.is_final:
            headers["Upload-Expires"] = _http_date(info.expires_at)
        return Response(status_code=201, headers=headers)

    def _location(self, request: Request, upload_id: str) -> str:
        # Built by hand: Starlette's url_for costs more than the rest of a small PATCH.
        scheme = request.scope.get("scheme", "http")
        host = request.headers.get("host")
        if host is None:
            server = request.scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        root = request.scope.get("root_path", "")
        return f"{scheme}://{host}{root}/files/{upload_id}"

    # HEAD, PATCH, DELETE

    async def _load(self, upload_id: str) -> UploadInfo:
        if not _valid_upload_id(upload_id):
            raise upload_not_found(upload_id)
        info = self.store.get(upload_id)
        if info is None:
            raise upload_not_found(upload_id)
        if not info.is_final and info.expires_at < time.time():
            raise upload_gone(upload_id)
        return info

    async def _head(self, request: Request, upload_id: str) -> Response:
        info = await self._complete_if_whole(await self._load(upload_id))
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Offset": str(self.store.offset(info)),
            "Cache-Control": "no-store",
        }
        if info.length is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(info.length)
        if info.partial:
            headers["Upload-Concat"] = "partial"
        elif info.concat is not None:
            urls = " ".join(self._location(request, part) for part in info.concat)
            headers["Upload-Concat"] = f"final;{urls}"
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
        if info.concat is not None:
            raise ServerError(403, "upload_final", f"upload {upload_id} is a final concatenation: it takes no PATCH")
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
        if info.is_final:
            raise ServerError(
                409, "offset_mismatch",
                f"upload {info.upload_id} is complete at offset {current}: it takes no more bytes, nothing to resume",
            )
        if offset != current:
            raise ServerError(409, "offset_mismatch", f"Upload-Offset {offset} does not match the upload's offset {current}: send HEAD and resume from there")
        info = self._declare_length(request, info, offset)
        limit = (info.length if info.length is not None else self.max_size) - offset
        declared = parse_non_negative("Content-Length", request.headers.get("content-length"))
        if declared is not None and declared > limit:
            raise ServerError(
                413, "beyond_length",
                f"body of {declared} bytes at offset {offset} runs past the upload's length by {declared - limit} bytes:"
                f" send at most {limit} bytes",
            )
        checksum_header = request.headers.get("upload-checksum")
        checksum = Checksum(*parse_checksum(checksum_header)) if checksum_header else None
        blocks = self._block_checksums(request, checksum, declared)

        written = await self._write_body(request, info, offset, limit, checksum, blocks)
        new_offset = offset + written
        if new_offset == info.length:
            info = await self._complete(info)
        elif written:
            # Expiry counts from the last bytes received, so only abandoned uploads expire.
            info = self.store.touch(info, self.expiry_s)
        headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": str(new_offset)}
        if not info.is_final:
            headers["Upload-Expires"] = _http_date(info.expires_at)
        return Response(status_code=204, headers=headers)

    @staticmethod
    def _block_checksums(request: Request, checksum: Checksum | None, body_length: int | None) -> BlockChecksums | None:
        header = request.headers.get(BLOCK_CHECKSUMS_HEADER.lower())
        if header is None:
            return None
        if checksum is None:
            raise bad_request("invalid_header", f"{BLOCK_CHECKSUMS_HEADER} needs Upload-Checksum on the same request")
        return BlockChecksums(*parse_block_checksums(header, checksum.algorithm, body_length))

    def _declare_length(self, request: Request, info: UploadInfo, offset: int) -> UploadInfo:
        """Apply an Upload-Length sent on PATCH to an upload whose length was deferred."""
        length = parse_non_negative("Upload-Length", request.headers.get("upload-length"))
        if length is None:
            return info
        if info.length is not None:
            if length != info.length:
                raise bad_request("length_mismatch", f"Upload-Length {length} differs from the upload's length {info.length}")
            return info
        if length < offset or length > self.max_size:
            raise ServerError(413 if length > self.max_size else 400, "invalid_length",
                              f"Upload-Length {length} must be between the offset {offset} and the maximum {self.max_size}")
        return self.store.declare_length(info, length)

    async def _write_body(self, request: Request, info: UploadInfo, offset: int, limit: int,
                          checksum: Checksum | None, blocks: BlockChecksums | None = None) -> int:
        try:
            written = await self.store.append(
                info, offset, request.stream(), limit, checksum,
                track_sha256="capture_id" in info.metadata, expected_bytes=_content_length(request), blocks=blocks,
            )
        except BodyTooLongError:
            raise ServerError(413, "beyond_length", "the body runs past the upload's length: nothing of it was kept") from None
        except ChecksumMismatchError:
            self.counters.checksum_mismatches += 1
            log.warning("chunk checksum mismatch upload_id=%s offset=%d", info.upload_id, offset)
            raise ServerError(STATUS_CHECKSUM_MISMATCH, "checksum_mismatch", f"the {checksum.algorithm if checksum else ''} checksum of the body does not match Upload-Checksum: the chunk was discarded, send it again") from None
        except OSError as exc:
            log.error("writing the body failed upload_id=%s offset=%d: %s", info.upload_id, offset, exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ServerError(507, "insufficient_storage", "the server's disk is full: send HEAD for the offset and retry later") from None
            raise
        except BodyCutShortError as exc:
            self.counters.disconnects += 1
            self.counters.bytes_received += exc.kept
            log.info("client disconnected mid-body upload_id=%s kept_offset=%d", info.upload_id, offset + exc.kept)
            raise ServerError(400, "client_disconnected", "the request body ended early") from None
        self.counters.bytes_received += written
        return written

    # Completion

    async def _complete_if_whole(self, info: UploadInfo) -> UploadInfo:
        """File an upload whose bytes are all stored but that was never filed.

        That happens for an empty upload, a final concatenation, and when the
        server stopped after the last PATCH reached the disk but before the
        part was filed. A client must never see the full offset of an upload
        that is not filed.
        """
        if info.is_final or info.partial or info.length is None or self.store.offset(info) != info.length:
            return info
        try:
            with self.locker.hold(info.upload_id):
                return await self._complete(info)
        except LockBusyError:
            raise upload_locked(info.upload_id) from None

    async def _complete(self, info: UploadInfo) -> UploadInfo:
        if info.partial:
            # A partial upload is kept as it is until a final upload takes it.
            return info
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

    async def expire(self) -> int:
        """Delete incomplete uploads whose expiry has passed; return how many."""
        expired = self.store.expired(time.time())
        for info in expired:
            try:
                with self.locker.hold(info.upload_id):
                    await self._terminate(info.upload_id)
            except LockBusyError:
                continue
            log.info("upload expired upload_id=%s offset=%d length=%s", info.upload_id, self.store.offset(info), info.length)
        return len(expired)


def _require_tus_version(request: Request) -> None:
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        problem = "the Tus-Resumable header is missing" if version is None else f"Tus-Resumable {version!r} is not supported"
        raise ServerError(
            412, "unsupported_version", f"{problem}: send Tus-Resumable: {TUS_VERSION}",
            headers={"Tus-Version": TUS_VERSION},
        )


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def _upload_id_of(url: str) -> str:
    """Return the upload id at the end of an upload URL, absolute or a path."""
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


def _valid_upload_id(upload_id: str) -> bool:
    return len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id)


@functools.lru_cache(maxsize=64)
def _http_date_of_second(second: int) -> str:
    return formatdate(second, usegmt=True)


def _http_date(epoch: float) -> str:
    # Upload-Expires has one-second resolution, and formatting a date costs
    # more than a cache lookup, so nearby uploads share the string.
    return _http_date_of_second(int(epoch))
