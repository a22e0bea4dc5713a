"""An asyncio tus 1.0 client: creation (with upload), HEAD for the offset, checksummed PATCH, termination.

It makes one request per call and raises a typed error for each kind of
response, so the caller decides what to retry. It never retries on its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from boothsync.tus.protocol import (
    BLOCK_CHECKSUMS_HEADER,
    MAX_CHECKSUM_BLOCKS,
    OFFSET_CONTENT_TYPE,
    STATUS_CHECKSUM_MISMATCH,
    TUS_VERSION,
    ProtocolError,
    block_checksums_header,
    checksum_header,
    encode_metadata,
    parse_non_negative,
)


class TusError(Exception):
    """A server response that the caller must act on."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(TusError):
    """The request may succeed later: connection failures, timeouts, 423 and 5xx."""


class UploadGoneError(TusError):
    """The upload no longer exists (404 or 410): create a new one."""


class OffsetConflictError(TusError):
    """The server's offset differs from the one sent (409): HEAD and resume."""


class ChecksumMismatchError(TusError):
    """The server discarded the body because its checksum did not match (460)."""


class RejectedError(TusError):
    """A client error that will not change by retrying (400, 403, 413, 415 and others)."""


class TusClient:
    """Talks tus to one server through a shared ``httpx.AsyncClient``."""

    def __init__(self, http: httpx.AsyncClient, endpoint: str) -> None:
        self.http = http
        self.endpoint = endpoint

    async def create(self, length: int, metadata: dict[str, str], data: bytes | None = None, *,
                     checksum: str | None = None, body: AsyncIterator[bytes] | None = None) -> tuple[str, int]:
        """Create an upload and return its absolute URL and current offset.

        With ``data`` the request carries the upload's first bytes (the
        creation-with-upload extension), and the returned offset is the
        number of bytes the server has. A server that already has an upload
        for the same part may ignore them. ``checksum`` and ``body`` work
        as in ``patch``.
        """
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Length": str(length),
            "Upload-Metadata": encode_metadata(metadata),
        }
        content: bytes | AsyncIterator[bytes] | None = None
        if data is not None:
            headers["Content-Type"] = OFFSET_CONTENT_TYPE
            headers["Content-Length"] = str(len(data))
            if checksum:
                headers["Upload-Checksum"] = checksum_header(checksum, data)
            content = body if body is not None else data
        response = await self._send("POST", self.endpoint, headers=headers, content=content)
        if response.status_code != 201:
            raise _error_for(response, "create")
        location = response.headers.get("location")
        if not location:
            raise RejectedError("the server created an upload but sent no Location header", response.status_code)
        url = str(response.url.join(location))
        offset = _offset_of(response) if "upload-offset" in response.headers else 0
        return url, offset

    async def offset(self, url: str) -> int:
        """Return the number of bytes the server has of the upload (HEAD)."""
        response = await self._send("HEAD", url, headers={"Tus-Resumable": TUS_VERSION})
        if response.status_code not in (200, 204):
            raise _error_for(response, "HEAD")
        return _offset_of(response)

    async def patch(self, url: str, offset: int, data: bytes, *, checksum: str | None = "sha256",
                    body: AsyncIterator[bytes] | None = None, block_size: int | None = None) -> int:
        """Send ``data`` at ``offset``; return the server's new offset.

        ``body``, when given, yields the same bytes as ``data`` (for example
        paced by a bandwidth cap); ``data`` is still needed for the checksum.
        ``block_size``, with ``checksum``, adds the digest of each block of
        that size, so that a boothsync server keeps the checked blocks of a
        body that a dropped connection cuts short.
        """
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Offset": str(offset),
            "Content-Type": OFFSET_CONTENT_TYPE,
            "Content-Length": str(len(data)),
        }
        if checksum:
            headers["Upload-Checksum"] = checksum_header(checksum, data)
            if block_size is not None and len(data) > block_size:
                # A server takes at most MAX_CHECKSUM_BLOCKS digests, so a large body gets larger blocks.
                size = max(block_size, -(-len(data) // MAX_CHECKSUM_BLOCKS))
                headers[BLOCK_CHECKSUMS_HEADER] = block_checksums_header(checksum, data, size)
        response = await self._send("PATCH", url, headers=headers, content=body if body is not None else data)
        if response.status_code != 204:
            raise _error_for(response, "PATCH")
        return _offset_of(response)

    async def options(self) -> dict[str, str]:
        """Return the server's tus capabilities: Tus-Version, Tus-Extension, Tus-Checksum-Algorithm."""
        response = await self._send("OPTIONS", self.endpoint, headers={"Tus-Resumable": TUS_VERSION})
        if response.status_code not in (200, 204):
            raise _error_for(response, "OPTIONS")
        return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("tus-")}

    async def terminate(self, url: str) -> None:
        response = await self._send("DELETE", url, headers={"Tus-Resumable": TUS_VERSION})
        if response.status_code not in (204, 404, 410):
            raise _error_for(response, "DELETE")

    async def _send(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        try:
            return await self.http.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise TransientError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc


def _offset_of(response: httpx.Response) -> int:
    try:
        offset = parse_non_negative("Upload-Offset", response.headers.get("upload-offset"))
    except ProtocolError as exc:
        raise RejectedError(f"the server sent an invalid offset: {exc}", response.status_code) from None
    if offset is None:
        raise RejectedError("the server sent no Upload-Offset header", response.status_code)
    return offset


def _error_for(response: httpx.Response, action: str) -> TusError:
    status = response.status_code
    detail = response.text.strip()[:300] if response.content else ""
    message = f"{action} {response.request.url} returned {status}" + (f": {detail}" if detail else "")
    if status in (404, 410):
        return UploadGoneError(message, status)
    if status == 409:
        return OffsetConflictError(message, status)
    if status == STATUS_CHECKSUM_MISMATCH:
        return ChecksumMismatchError(message, status)
    if status in (408, 423, 429) or status >= 500:
        return TransientError(message, status)
    return RejectedError(message, status)
