"""The server's catalogue of errors: each has a stable code, an HTTP status and a message."""

from __future__ import annotations

from starlette.responses import JSONResponse, PlainTextResponse, Response

from boothsync.tus.protocol import TUS_VERSION


class ServerError(Exception):
    """An error that ends a request with ``status``; ``code`` is stable for scripts."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def tus_response(self) -> Response:
        """Return the error as tus clients expect it: plain text and the Tus-Resumable header."""
        return PlainTextResponse(
            f"{self.code}: {self.message}\n",
            status_code=self.status,
            headers={"Tus-Resumable": TUS_VERSION, "Boothsync-Error": self.code, **self.headers},
        )

    def json_response(self) -> Response:
        """Return the error as a JSON object for the boothsync APIs."""
        return JSONResponse({"error": self.code, "message": self.message}, status_code=self.status)


def bad_request(code: str, message: str) -> ServerError:
    return ServerError(400, code, message)


def upload_not_found(upload_id: str) -> ServerError:
    return ServerError(404, "upload_not_found", f"no upload with id {upload_id!r}: create a new upload")


def upload_gone(upload_id: str) -> ServerError:
    return ServerError(410, "upload_expired", f"upload {upload_id!r} has expired: create a new upload")


def upload_locked(upload_id: str) -> ServerError:
    return ServerError(
        423, "upload_locked", f"upload {upload_id!r} is busy with another request: retry after it ends"
    )
