"""A shortcut for plain tus requests past Starlette's middleware and router.

A 50 KB upload is two small requests, and for those the middleware stack,
the route matching and the wrapper around each endpoint cost about as much
CPU as the upload itself. Requests that need any of it (CORS, the IETF
draft, anything outside /files/) still take the full path.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from boothsync.server.tus_endpoint import TusEndpoint

_PREFIX = "/files/"
_HEX = frozenset("0123456789abcdef")


class TusFastPath:
    """Sends plain tus requests straight to the endpoint; everything else to ``app``."""

    def __init__(self, app: ASGIApp, tus: TusEndpoint) -> None:
        self.app = app
        self.tus = tus

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upload_id = self._plain_tus_upload(scope)
        if upload_id is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = {"upload_id": upload_id} if upload_id else {}
        response = await self.tus.handle(Request(scope, receive))
        await response(scope, receive, send)

    @staticmethod
    def _plain_tus_upload(scope: Scope) -> str | None:
        """Return the upload id ("" for the collection) of a plain tus request, or None."""
        if scope["type"] != "http" or not scope["path"].startswith(_PREFIX):
            return None
        upload_id = scope["path"][len(_PREFIX):]
        if upload_id and (len(upload_id) != 32 or not _HEX.issuperset(upload_id)):
            return None
        has_tus = False
        for name, _ in scope["headers"]:
            if name == b"origin" or name.startswith(b"upload-draft") or name == b"upload-complete":
                return None
            if name == b"tus-resumable":
                has_tus = True
        return upload_id if has_tus else None
