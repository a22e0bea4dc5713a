"""The agent's HTTP API: capture intake, capture lookup, status and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, BinaryIO

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from boothsync.agent.blobstore import BlobWriter, DiskReserveError
from boothsync.agent.intake import CaptureError, clean_metadata
from boothsync.agent.status import build_status
from boothsync.classes import InvalidClassError
from boothsync.manifest import is_capture_id

if TYPE_CHECKING:
    from boothsync.agent.service import Agent

log = logging.getLogger("boothsync.agent.api")

_COPY_BYTES = 1024 * 1024


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def build_routes(agent: Agent) -> list[Route]:
    """Return the routes of ``agent``'s HTTP API."""

    async def post_capture(request: Request) -> Response:
        try:
            confirmation = await _capture(agent, request)
        except ClientDisconnect:
            # Nothing was stored, and the client is gone, so it never reads this response.
            return _error(400, "client_disconnected", "the client disconnected before the body was complete")
        except (CaptureError, InvalidClassError) as exc:
            return _error(400, "invalid_capture", str(exc))
        except DiskReserveError as exc:
            log.error("capture rejected: %s", exc)
            agent.stats.last_capture_error = str(exc)
            return _error(507, "disk_reserve", str(exc))
        agent.stats.last_capture_error = None
        return JSONResponse(confirmation, status_code=201)

    async def get_capture(request: Request) -> Response:
        capture_id = request.path_params["capture_id"]
        if not is_capture_id(capture_id):
            # A customer reads out the short code, so it finds the capture too.
            capture_id = agent.journal.find_by_short_code(capture_id) or capture_id
        capture = agent.journal.capture(capture_id) if is_capture_id(capture_id) else None
        if capture is None:
            return _error(404, "capture_not_found", f"no capture {capture_id!r} on this device")
        capture["audit"] = agent.journal.audit_log(capture_id)
        return JSONResponse(capture)

    async def list_captures(request: Request) -> Response:
        return JSONResponse({"captures": agent.journal.captures()})

    async def status(request: Request) -> Response:
        body = build_status(
            agent.journal, agent.blobs, agent.stats, event=agent.settings.event, device_id=agent.device_id,
            control=agent.control, power=agent.power.check(),
        )
        return JSONResponse(body)

    async def get_link(request: Request) -> Response:
        return JSONResponse(vars(agent.control))

    async def post_link(request: Request) -> Response:
        try:
            changes = _parse_link_changes(await request.json())
        except (ValueError, CaptureError) as exc:
            return _error(400, "invalid_link_control", str(exc))
        return JSONResponse(vars(agent.update_control(changes)))

    async def get_parked(request: Request) -> Response:
        return JSONResponse({"parked": agent.journal.parked_parts()})

    async def retry_parked(request: Request) -> Response:
        count = agent.journal.retry_parked()
        log.info("parked parts queued again count=%d", count)
        agent.wake_uploader()
        return JSONResponse({"requeued": count})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(agent.registry), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/v1/captures", post_capture, methods=["POST"]),
        Route("/v1/captures", list_captures, methods=["GET"]),
        Route("/v1/captures/{capture_id}", get_capture, methods=["GET"]),
        Route("/v1/status", status, methods=["GET"]),
        Route("/v1/link", get_link, methods=["GET"]),
        Route("/v1/link", post_link, methods=["POST"]),
        Route("/v1/parked", get_parked, methods=["GET"]),
        Route("/v1/parked/retry", retry_parked, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


async def _capture(agent: Agent, request: Request) -> dict[str, Any]:
    """Store the request's file: a multipart form with a ``file`` field, or the raw body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _capture_form(agent, request)
    return await _capture_raw(agent, request)


async def _capture_form(agent: Agent, request: Request) -> dict[str, Any]:
    async with request.form(max_files=1, max_fields=20) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise CaptureError("the form has no file field named 'file'")
        metadata = _parse_metadata(form.get("metadata"))
        klass = form.get("class")
        writer = agent.intake.open_writer(upload.size)
        try:
            # The form parser has spooled the file to disk. Copying it in a thread keeps the event loop free.
            await asyncio.to_thread(_copy_to_writer, upload.file, writer)
        except BaseException:
            writer.abort()
            raise
        return await asyncio.to_thread(
            agent.intake.finish, writer, klass=klass if isinstance(klass, str) else None,
            filename=upload.filename, content_type=upload.content_type, metadata=metadata,
        )


async def _capture_raw(agent: Agent, request: Request) -> dict[str, Any]:
    metadata = _parse_metadata(request.headers.get("boothsync-metadata"))
    length = request.headers.get("content-length")
    writer: BlobWriter = agent.intake.open_writer(int(length) if length and length.isdigit() else None)
    try:
        async for chunk in request.stream():
            await writer.write_async(chunk)
    except ClientDisconnect:
        writer.abort()
        log.warning("capture dropped: the client disconnected after %d of %s bytes", writer.size, length or "unknown")
        raise
    except BaseException:
        writer.abort()
        raise
    return await asyncio.to_thread(
        agent.intake.finish, writer, klass=request.query_params.get("class"),
        filename=request.query_params.get("filename"), content_type=request.headers.get("content-type"),
        metadata=metadata,
    )


def _copy_to_writer(source: BinaryIO, writer: BlobWriter) -> None:
    source.seek(0)
    while block := source.read(_COPY_BYTES):
        writer.write(block)


def _parse_metadata(raw: Any) -> dict[str, str]:
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise CaptureError("metadata must be a JSON text field")
    try:
        return clean_metadata(json.loads(raw))
    except json.JSONDecodeError:
        raise CaptureError("metadata is not valid JSON") from None


def _parse_link_changes(body: Any) -> dict[str, Any]:
    """Validate a link control request: ``metered``, ``event_ended`` (booleans), ``bandwidth_cap_bytes_per_s``."""
    if not isinstance(body, dict) or not body:
        raise CaptureError("send a JSON object with metered, event_ended or bandwidth_cap_bytes_per_s")
    changes: dict[str, Any] = {}
    for name, value in body.items():
        if name in ("metered", "event_ended"):
            if not isinstance(value, bool):
                raise CaptureError(f"{name} must be true or false, got {value!r}")
            changes[name] = value
        elif name == "bandwidth_cap_bytes_per_s":
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1024):
                raise CaptureError(f"bandwidth_cap_bytes_per_s must be null (no cap) or at least 1024, got {value!r}")
            changes[name] = float(value) if value is not None else None
        else:
            raise CaptureError(f"unknown link setting {name!r}: use metered, event_ended or bandwidth_cap_bytes_per_s")
    return changes
