"""The IETF "Resumable Uploads for HTTP" draft on the tus endpoint's path, store and locks.

This implements draft-ietf-httpbis-resumable-upload-12 (July 2026), whose
interop version is 8: upload creation (POST /files/ with Upload-Complete),
offset retrieval (HEAD), append (PATCH with application/partial-upload),
cancellation (DELETE), the Upload-Offset, Upload-Complete, Upload-Length and
Upload-Limit fields, and the draft's problem types. It shares the tus
endpoint's store, locks, counters and hooks, so a capture part sent with the
draft is verified and filed by the same completion hook as one sent with tus.

Draft uploads get ids of the form ``ietf-<32 hex digits>``. The tus endpoint
only accepts 32 hex digits, so it returns 404 for a draft upload URL and
can never write to one. ``dispatch`` rejects draft requests on tus uploads and
tus requests on draft uploads with a clear error.

docs/resumable-uploads-draft.md lists what is left out and why, including
the 104 (Upload Resumption Supported) interim response, which uvicorn cannot
send.
"""

from __future__ import annotations

import errno
import logging
import re
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from boothsync.manifest import PART_NAMES, is_capture_id
from boothsync.server.errors import ServerError
from boothsync.server.locks import LockBusyError
from boothsync.server.storage import BodyCutShortError, BodyTooLongError, UploadInfo
from boothsync.server.tus_endpoint import PartRejectedError, TusEndpoint

log = logging.getLogger("boothsync.server.ietf")

DRAFT_NAME = "draft-ietf-httpbis-resumable-upload-12"
INTEROP_VERSION = 8
PARTIAL_UPLOAD_TYPE = "application/partial-upload"
PROBLEM_JSON_TYPE = "application/problem+json"

# Problem types the draft registers with IANA, with their registered titles.
_PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = _PROBLEM_TYPES + "mismatching-upload-offset"
COMPLETED_UPLOAD = _PROBLEM_TYPES + "completed-upload"
INCONSISTENT_LENGTH = _PROBLEM_TYPES + "inconsistent-upload-length"
_PROBLEM_TITLES = {
    MISMATCHING_OFFSET: "Mismatching Upload Offset",
    COMPLETED_UPLOAD: "Upload Is Completed",
    INCONSISTENT_LENGTH: "Inconsistent Upload Length Values",
}

UPLOAD_ID_PREFIX = "ietf-"
_DRAFT_UPLOAD_ID = re.compile(r"ietf-[0-9a-f]{32}")
_TUS_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
# A Structured Field Integer has at most 15 digits (RFC 9651, section 3.3.1).
_SF_NON_NEGATIVE_INTEGER = re.compile(r"[0-9]{1,15}")
_CAPTURE_PARAMETERS = ("capture_id", "part")

# Seconds a client should wait before it retries a request on a busy upload.
RETRY_AFTER_BUSY_S = 1


class ProblemError(Exception):
    """An error that ends a draft request with problem details (RFC 9457).

    ``code`` is boothsync's stable error code, the same one the tus endpoint
    sends in Boothsync-Error. ``problem_type`` is "about:blank" unless the
    draft defines a problem type for the error.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        problem_type: str = "about:blank",
        headers: dict[str, str] | None = None,
        members: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.problem_type = problem_type
        self.headers = headers or {}
        self.members = members or {}

    @classmethod
    def from_server_error(cls, error: ServerError) -> ProblemError:
        return cls(error.status, error.code, error.message, headers=error.headers)

    def response(self) -> Response:
        title = _PROBLEM_TITLES.get(self.problem_type) or HTTPStatus(self.status).phrase
        body = {
            "type": self.problem_type,
            "title": title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            **self.members,
        }
        headers = {**_draft_headers(), "Boothsync-Error": self.code, **self.headers}
        return JSONResponse(body, status_code=self.status, headers=headers, media_type=PROBLEM_JSON_TYPE)


def inconsistent_length(detail: str, headers: dict[str, str] | None = None) -> ProblemError:
    return ProblemError(400, "inconsistent_length", detail, problem_type=INCONSISTENT_LENGTH, headers=headers)


# Structured Field values (RFC 9651). The draft requires a receiver to ignore
# a field whose value is not of its type, so each parser returns None then.


def _field(request: Request, name: str) -> str | None:
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None


def _bare_item(value: str) -> str:
    """Return an Item's bare item, without its parameters."""
    return value.split(";", 1)[0].strip(" \t")


def parse_sf_boolean(value: str | None) -> bool | None:
    if value is None:
        return None
    return {"?1": True, "?0": False}.get(_bare_item(value))


def parse_sf_non_negative_integer(value: str | None) -> int | None:
    if value is None:
        return None
    item = _bare_item(value)
    return int(item) if _SF_NON_NEGATIVE_INTEGER.fullmatch(item) else None


def _sf_boolean(value: bool) -> str:
    return "?1" if value else "?0"


def _draft_headers() -> dict[str, str]:
    return {"Upload-Draft-Interop-Version": str(INTEROP_VERSION)}


def is_draft_upload_id(upload_id: str) -> bool:
    return _DRAFT_UPLOAD_ID.fullmatch(upload_id) is not None


def is_draft_request(request: Request) -> bool:
    """Tell whether a request on /files/ follows the draft rather than tus.

    Draft clients send Upload-Draft-Interop-Version, and clients of the
    final RFC will send no Tus-Resumable but Upload-Complete or the
    application/partial-upload media type. Every other request stays with
    tus, so a tus request that lacks Tus-Resumable still gets tus's 412.
    """
    if "upload-draft-interop-version" in request.headers:
        return True
    if "tus-resumable" in request.headers:
        return False
    return "upload-complete" in request.headers or _media_type(request) == PARTIAL_UPLOAD_TYPE


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class IetfDraftEndpoint:
    """The draft's request handler on /files/, which routes every other request to the tus endpoint."""

    def __init__(self, tus: TusEndpoint) -> None:
        self.tus = tus
        self.store = tus.store
        self.locker = tus.locker
        self.counters = tus.counters
        self.max_size = tus.max_size
        self.expiry_s = tus.expiry_s
        self._find_existing = tus.find_existing
        # Without this guard, a tus creation for a capture part that a draft
        # upload carries would reuse that upload or delete it.
        tus.find_existing = self._find_existing_for_tus

    async def dispatch(self, request: Request) -> Response:
        """Route one request on /files/ to the draft or to tus."""
        upload_id = request.path_params.get("upload_id")
        if request.method == "OPTIONS":
            return self._advertise(await self.tus.handle(request))
        draft_upload = upload_id is not None and is_draft_upload_id(upload_id)
        if draft_upload and "tus-resumable" in request.headers and not is_draft_request(request):
            return ServerError(
                400, "wrong_protocol",
                f"upload {upload_id} was created with the IETF resumable upload draft: continue it without Tus-Resumable",
            ).tus_response()
        if draft_upload or is_draft_request(request):
            return await self.handle(request)
        return await self.tus.handle(request)

    async def handle(self, request: Request) -> Response:
        """Serve one draft request and turn its errors into problem details."""
        upload_id = request.path_params.get("upload_id")
        try:
            _require_interop_version(request)
            if upload_id is None:
                if request.method != "POST":
                    raise ProblemError(405, "method_not_allowed", f"{request.method} is not allowed on the upload collection: use POST",
                                       headers={"Allow": "POST, OPTIONS"})
                return await self._create(request)
            if request.method == "HEAD":
                return await self._head(upload_id)
            if request.method == "PATCH":
                return await self._append(request, upload_id)
            if request.method == "DELETE":
                return await self._cancel(upload_id)
            raise ProblemError(405, "method_not_allowed", f"{request.method} is not allowed on an upload: use HEAD, PATCH or DELETE",
                               headers={"Allow": "HEAD, PATCH, DELETE, OPTIONS"})
        except ServerError as exc:
            # Raised by the hooks shared with tus, such as a missing manifest.
            return ProblemError.from_server_error(exc).response()
        except ProblemError as exc:
            if exc.status >= 500:
                log.error("draft request failed upload_id=%s status=%s error=%s", upload_id, exc.status, exc.detail)
            else:
                log.debug("draft request rejected upload_id=%s status=%s code=%s", upload_id, exc.status, exc.code)
            return exc.response()

    def _advertise(self, response: Response) -> Response:
        """Add the draft's OPTIONS fields to the tus OPTIONS response."""
        response.headers["Accept-Patch"] = PARTIAL_UPLOAD_TYPE
        response.headers["Upload-Limit"] = self._upload_limit(None)
        return response

    def _upload_limit(self, info: UploadInfo | None) -> str:
        """Return the Upload-Limit value: max-size, and max-age for a live upload."""
        limits = f"max-size={self.max_size}"
        if info is not None and not info.is_final:
            limits += f", max-age={max(0, int(info.expires_at - time.time()))}"
        return limits

    def _location(self, request: Request, upload_id: str) -> str:
        return str(request.url_for("tus_upload", upload_id=upload_id))

    # Upload creation

    async def _create(self, request: Request) -> Response:
        complete = _require_upload_complete(request)
        content_length = _content_length(request)
        length = _resolve_length(None, parse_sf_non_negative_integer(_field(request, "upload-length")),
                                 complete, 0, content_length)
        self._check_max_size(length, content_length, 0)
        metadata = _capture_metadata(request)
        if metadata:
            await self._release_bound_upload(request, metadata)

        info = await self._new_upload(request, length, metadata)
        location = self._location(request, info.upload_id)
        try:
            with self.locker.hold(info.upload_id):
                return await self._write(request, info, 0, complete, created=True)
        except LockBusyError:
            raise _upload_busy(info.upload_id, {"Location": location}) from None
        except ProblemError as exc:
            # The upload exists now, so every error response carries its URL.
            exc.headers.setdefault("Location", location)
            raise

    async def _new_upload(self, request: Request, length: int | None, metadata: dict[str, str]) -> UploadInfo:
        upload_id = UPLOAD_ID_PREFIX + self.tus.ids.new()
        info = self.store.create(upload_id, length, metadata, self.expiry_s)
        bound = await self.tus.bind(upload_id, metadata)
        if bound != upload_id:
            # Another request created an upload for the same capture part first.
            self.store.delete(upload_id)
            raise self._part_upload_exists(request, metadata, bound)
        self.counters.created += 1
        log.info("draft upload created upload_id=%s length=%s capture_id=%s part=%s",
                 upload_id, length, metadata.get("capture_id"), metadata.get("part"))
        return info

    async def _release_bound_upload(self, request: Request, metadata: dict[str, str]) -> None:
        """Make way for a new upload of a capture part, or raise 409 while another upload carries it.

        An expired upload is deleted, as the tus endpoint does. A part already
        filed is uploaded, verified and filed again, where tus would reuse the
        filed upload, because this request's content starts at offset 0.
        """
        existing = await self._find_existing(metadata)
        if existing is None:
            return
        info = self.store.get(existing)
        if info is None or info.is_final:
            await self.tus.forget(existing)
            return
        if info.expires_at < time.time():
            try:
                with self.locker.hold(existing):
                    await self._terminate(existing)
            except LockBusyError:
                raise _upload_busy(existing) from None
            return
        raise self._part_upload_exists(request, metadata, existing)

    def _part_upload_exists(self, request: Request, metadata: dict[str, str], existing: str) -> ProblemError:
        part = f"capture {metadata['capture_id']} part {metadata['part']}"
        location = self._location(request, existing)
        if is_draft_upload_id(existing):
            return ProblemError(
                409, "part_upload_exists",
                f"{part} already has an incomplete upload at {location}: send HEAD there and resume with PATCH, or DELETE it to start over",
                headers={"Location": location},
            )
        return ProblemError(
            409, "part_upload_exists",
            f"{part} is being uploaded with tus 1.0 at {location}: finish or terminate it with tus",
        )

    async def _find_existing_for_tus(self, metadata: dict[str, str]) -> str | None:
        """Wrap the tus endpoint's find hook so that tus never takes over a draft upload.

        A tus creation for a part that a live draft upload carries gets 409.
        A filed draft upload is unbound, so tus creates its own upload. An
        expired one is returned, and tus deletes it.
        """
        existing = await self._find_existing(metadata)
        if existing is None or not is_draft_upload_id(existing):
            return existing
        info = self.store.get(existing)
        if info is None or info.is_final:
            await self.tus.forget(existing)
            return None
        if info.expires_at < time.time():
            return existing
        raise ServerError(
            409, "part_upload_exists",
            f"capture {metadata.get('capture_id')} part {metadata.get('part')} is being uploaded with the IETF"
            f" resumable upload draft as upload {existing}: finish or cancel it with that protocol",
        )

    # Offset retrieval, append and cancellation

    def _load(self, upload_id: str) -> UploadInfo:
        if not is_draft_upload_id(upload_id):
            if _TUS_UPLOAD_ID.fullmatch(upload_id) and self.store.get(upload_id) is not None:
                raise ProblemError(
                    400, "wrong_protocol",
                    f"upload {upload_id} was created with tus 1.0: continue it with Tus-Resumable: 1.0.0",
                )
            raise _upload_not_found(upload_id)
        info = self.store.get(upload_id)
        if info is None:
            raise _upload_not_found(upload_id)
        if not info.is_final and info.expires_at < time.time():
            raise ProblemError(410, "upload_expired", f"upload {upload_id} has expired: create a new upload")
        return info

    async def _head(self, upload_id: str) -> Response:
        self._load(upload_id)
        # The lock keeps a HEAD from reporting an offset that an append still running is about to change.
        try:
            with self.locker.hold(upload_id):
                info = self._load(upload_id)
                offset = self.store.offset(info)
        except LockBusyError:
            raise _upload_busy(upload_id) from None
        headers = {
            **_draft_headers(),
            "Upload-Offset": str(offset),
            "Upload-Complete": _sf_boolean(info.is_final),
            "Upload-Limit": self._upload_limit(info),
            "Cache-Control": "no-store",
        }
        if info.length is not None:
            headers["Upload-Length"] = str(info.length)
        return Response(status_code=204, headers=headers)

    async def _append(self, request: Request, upload_id: str) -> Response:
        if _media_type(request) != PARTIAL_UPLOAD_TYPE:
            raise ProblemError(415, "wrong_content_type", f"PATCH needs Content-Type: {PARTIAL_UPLOAD_TYPE}",
                               headers={"Accept-Patch": PARTIAL_UPLOAD_TYPE})
        complete = _require_upload_complete(request)
        offset = parse_sf_non_negative_integer(_field(request, "upload-offset"))
        if offset is None:
            raise ProblemError(400, "missing_offset", "Upload-Offset is missing or not a non-negative integer: send HEAD for the offset")
        self._load(upload_id)
        try:
            with self.locker.hold(upload_id):
                return await self._append_locked(request, self._load(upload_id), offset, complete)
        except LockBusyError:
            raise _upload_busy(upload_id) from None

    async def _append_locked(self, request: Request, info: UploadInfo, offset: int, complete: bool) -> Response:
        content_length = _content_length(request)
        if info.is_final:
            if await _has_content(request, content_length):
                raise inconsistent_length(
                    f"upload {info.upload_id} is complete with {info.length} bytes: it takes no more content",
                    headers={"Upload-Complete": "?1"},
                )
            raise ProblemError(400, "upload_completed", f"upload {info.upload_id} is already complete",
                               problem_type=COMPLETED_UPLOAD, headers={"Upload-Complete": "?1"})

        current = self.store.offset(info)
        if offset != current:
            raise ProblemError(
                409, "offset_mismatch",
                f"Upload-Offset {offset} does not match the upload's offset {current}: resume from {current}",
                problem_type=MISMATCHING_OFFSET,
                headers={"Upload-Offset": str(current)},
                members={"expected-offset": current, "provided-offset": offset},
            )
        length = _resolve_length(info.length, parse_sf_non_negative_integer(_field(request, "upload-length")),
                                 complete, offset, content_length)
        self._check_max_size(length, content_length, offset)
        if length is not None and info.length is None:
            info = self.store.declare_length(info, length)
        return await self._write(request, info, offset, complete, created=False)

    async def _cancel(self, upload_id: str) -> Response:
        self._load(upload_id)
        try:
            with self.locker.hold(upload_id):
                info = self._load(upload_id)
                if info.is_final:
                    raise ProblemError(403, "upload_final", f"upload {upload_id} is complete and filed: it cannot be cancelled")
                await self._terminate(upload_id)
        except LockBusyError:
            raise _upload_busy(upload_id) from None
        log.info("draft upload cancelled upload_id=%s", upload_id)
        return Response(status_code=204, headers=_draft_headers())

    async def _terminate(self, upload_id: str) -> None:
        await self.tus.forget(upload_id)
        self.store.delete(upload_id)

    # Writing and completion, under the upload's lock

    def _check_max_size(self, length: int | None, content_length: int | None, offset: int) -> None:
        end = length
        if end is None and content_length is not None:
            end = offset + content_length
        if end is not None and end > self.max_size:
            raise ProblemError(413, "upload_too_large", f"the upload's {end} bytes exceed the maximum of {self.max_size}",
                               headers={"Upload-Limit": self._upload_limit(None)})

    async def _write(self, request: Request, info: UploadInfo, offset: int, complete: bool, *, created: bool) -> Response:
        """Append the request content at ``offset``, then complete the upload if the client asked to."""
        limit = (info.length if info.length is not None else self.max_size) - offset
        length = request.headers.get("content-length")
        expected = int(length) if length is not None and length.isdigit() else None
        written = await self._receive(request.stream(), info, offset, limit, expected)
        new_offset = offset + written
        location = self._location(request, info.upload_id)

        if not complete:
            headers = {**_draft_headers(), "Upload-Complete": "?0", "Upload-Offset": str(new_offset)}
            if created:
                headers["Location"] = location
                headers["Upload-Limit"] = self._upload_limit(info)
            return Response(status_code=201 if created else 204, headers=headers)

        if info.length is not None and new_offset != info.length:
            raise inconsistent_length(
                f"the content ended at offset {new_offset}, but the upload's length is {info.length}:"
                f" the bytes are kept, send the rest from offset {new_offset}",
                headers={"Upload-Offset": str(new_offset)},
            )
        if info.length is None:
            info = self.store.declare_length(info, new_offset)
        info = await self._complete(info)
        body: dict[str, Any] = {"upload_id": info.upload_id, "size": info.length}
        body.update({key: info.metadata[key] for key in _CAPTURE_PARAMETERS if key in info.metadata})
        headers = {
            **_draft_headers(),
            "Location": location,
            "Upload-Complete": "?1",
            "Upload-Offset": str(new_offset),
            "Upload-Length": str(info.length),
        }
        return JSONResponse(body, status_code=200, headers=headers)

    async def _receive(self, body: AsyncIterator[bytes], info: UploadInfo, offset: int, limit: int,
                       expected_bytes: int | None) -> int:
        try:
            written = await self.store.append(info, offset, body, limit, None, expected_bytes=expected_bytes)
        except BodyTooLongError:
            if info.length is not None:
                raise inconsistent_length(
                    f"the content runs past the upload's length of {info.length} bytes: nothing of it was kept",
                    headers={"Upload-Offset": str(offset)},
                ) from None
            raise ProblemError(413, "upload_too_large", f"the content runs past the maximum of {self.max_size} bytes: nothing of it was kept",
                               headers={"Upload-Limit": self._upload_limit(None), "Upload-Offset": str(offset)}) from None
        except OSError as exc:
            log.error("writing the content failed upload_id=%s offset=%d: %s", info.upload_id, offset, exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ProblemError(507, "insufficient_storage", "the server's disk is full: request the offset and retry later",
                                   headers={"Upload-Offset": str(self.store.offset(info))}) from None
            raise
        except BodyCutShortError as exc:
            self.counters.disconnects += 1
            self.counters.bytes_received += exc.kept
            log.info("client disconnected mid-body upload_id=%s kept_offset=%d", info.upload_id, offset + exc.kept)
            raise ProblemError(400, "client_disconnected", "the request content ended early",
                               headers={"Upload-Offset": str(offset + exc.kept)}) from None
        self.counters.bytes_received += written
        return written

    async def _complete(self, info: UploadInfo) -> UploadInfo:
        """Run the completion hook the tus endpoint uses, which verifies and files the part."""
        try:
            final = await self.tus.on_complete(info)
        except PartRejectedError as exc:
            log.warning("draft upload rejected at completion upload_id=%s reason=%s", info.upload_id, exc)
            await self._terminate(info.upload_id)
            self.counters.checksum_mismatches += 1
            raise ProblemError(422, "part_rejected", f"{exc}: the upload was discarded, create a new one",
                               headers={"Upload-Complete": "?1"}) from None
        self.counters.completed += 1
        return final


def _require_interop_version(request: Request) -> None:
    value = _field(request, "upload-draft-interop-version")
    if value is None:
        return
    if parse_sf_non_negative_integer(value) != INTEROP_VERSION:
        raise ProblemError(
            400, "unsupported_interop_version",
            f"Upload-Draft-Interop-Version {value[:20]!r} is not supported: this server implements {DRAFT_NAME},"
            f" interop version {INTEROP_VERSION}",
        )


def _require_upload_complete(request: Request) -> bool:
    complete = parse_sf_boolean(_field(request, "upload-complete"))
    if complete is None:
        raise ProblemError(400, "missing_upload_complete", "Upload-Complete is missing or not a structured boolean: send ?0 or ?1")
    return complete


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def _resolve_length(recorded: int | None, upload_length: int | None, complete: bool, offset: int,
                    content_length: int | None) -> int | None:
    """Return the upload's length, or None while it is unknown, after checking that all stated lengths agree.

    The draft takes the length from Upload-Length, or from the offset plus
    Content-Length when Upload-Complete is ?1, and requires both to agree
    with each other and with the length recorded before.
    """
    stated: dict[str, int] = {}
    if recorded is not None:
        stated["the recorded length"] = recorded
    if upload_length is not None:
        stated["Upload-Length"] = upload_length
    if complete and content_length is not None:
        stated["the offset plus Content-Length"] = offset + content_length
    if len(set(stated.values())) > 1:
        listed = ", ".join(f"{name} {value}" for name, value in stated.items())
        raise inconsistent_length(f"the upload's length values differ: {listed}")
    length = next(iter(stated.values()), None)
    if length is not None and length < offset + (content_length or 0):
        raise inconsistent_length(f"the content from offset {offset} runs past the upload's length of {length} bytes")
    return length


def _capture_metadata(request: Request) -> dict[str, str]:
    """Return the capture part named by the query parameters capture_id and part, or {} for a plain upload."""
    names = [name for name, _ in request.query_params.multi_items()]
    unknown = sorted(set(names) - set(_CAPTURE_PARAMETERS))
    if unknown:
        raise ProblemError(400, "invalid_query", f"unknown query parameter {unknown[0]!r}: only capture_id and part are accepted")
    repeated = sorted(name for name in set(names) if names.count(name) > 1)
    if repeated:
        raise ProblemError(400, "invalid_query", f"query parameter {repeated[0]!r} is given more than once")
    capture_id = request.query_params.get("capture_id")
    part = request.query_params.get("part")
    if capture_id is None and part is None:
        return {}
    if capture_id is None or part is None:
        raise ProblemError(400, "invalid_query", "send both capture_id and part for a capture part, or neither for a plain upload")
    if not is_capture_id(capture_id):
        raise ProblemError(400, "invalid_capture_id", f"capture_id {capture_id[:40]!r} is not a ULID")
    if part not in PART_NAMES:
        raise ProblemError(400, "invalid_part", f"part {part[:40]!r} is not one of {', '.join(PART_NAMES)}")
    return {"capture_id": capture_id, "part": part}


async def _has_content(request: Request, content_length: int | None) -> bool:
    if content_length is not None:
        return content_length > 0
    async for chunk in request.stream():
        if chunk:
            return True
    return False


def _upload_not_found(upload_id: str) -> ProblemError:
    return ProblemError(404, "upload_not_found", f"no upload with id {upload_id[:80]!r}: create a new upload")


def _upload_busy(upload_id: str, headers: dict[str, str] | None = None) -> ProblemError:
    # 503 rather than tus's 423, because the draft lets a client retry after
    # a 5xx status but advises against retrying after most 4xx statuses.
    return ProblemError(
        503, "upload_locked",
        f"upload {upload_id} is busy with another request, perhaps an earlier append that is still running:"
        f" retry after {RETRY_AFTER_BUSY_S} s",
        headers={"Retry-After": str(RETRY_AFTER_BUSY_S), **(headers or {})},
    )


__all__ = ["INTEROP_VERSION", "IetfDraftEndpoint", "ProblemError", "is_draft_request", "is_draft_upload_id"]
