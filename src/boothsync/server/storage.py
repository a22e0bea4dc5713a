"""The contract between the tus endpoint and a store of upload bytes.

A store keeps uploads in progress and turns a complete one into a stored
part. The filesystem store implements it here; an S3 store can implement
the same methods. Everything a request needs is in the store, never in one
process's memory, so any server process can serve any request of an upload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class UploadInfo:
    """The store's record of one upload, apart from its bytes."""

    upload_id: str
    length: int | None  # None until a deferred length is declared
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    expires_at: float = 0.0
    partial: bool = False  # a partial upload, to be concatenated into a final one
    concat: list[str] | None = None  # for a final upload: the partial uploads' ids, in order
    final_path: str | None = None  # set once the upload has been finalized and moved

    @property
    def is_final(self) -> bool:
        return self.final_path is not None


@dataclass(frozen=True)
class Checksum:
    """An expected checksum of one request body."""

    algorithm: str
    digest: bytes


@dataclass(frozen=True)
class BlockChecksums:
    """The expected digest of each ``size``-byte block of one request body, in the body's checksum algorithm."""

    size: int
    digests: list[bytes]


class ChecksumMismatchError(Exception):
    """The body's checksum differs from the expected one; nothing of the body was kept."""


class BodyTooLongError(Exception):
    """The body runs past the upload's length; nothing of the body was kept."""


class BodyCutShortError(Exception):
    """The client stopped sending mid-body; ``kept`` bytes of it are stored."""

    def __init__(self, kept: int) -> None:
        super().__init__(f"body cut short after {kept} bytes")
        self.kept = kept


class UploadStore(Protocol):
    """The store operations the tus endpoint calls."""

    def create(self, upload_id: str, length: int | None, metadata: dict[str, str], ttl_s: float,
               *, partial: bool = False) -> UploadInfo: ...

    def get(self, upload_id: str) -> UploadInfo | None: ...

    def offset(self, info: UploadInfo) -> int:
        """Return how many bytes of the upload are durably stored or at least written."""
        ...

    async def append(self, info: UploadInfo, offset: int, body: AsyncIterator[bytes], limit: int,
                     checksum: Checksum | None, *, track_sha256: bool = False,
                     expected_bytes: int | None = None, blocks: BlockChecksums | None = None) -> int:
        """Append ``body`` at ``offset`` (at most ``limit`` bytes) and return how many were kept.

        ``track_sha256`` makes the store hash the upload as it arrives,
        because ``sha256()`` will be called at completion. ``expected_bytes``
        is the request's Content-Length, when it sent one, so the store can
        choose how to write a body of that size. ``blocks``, given only with
        ``checksum``, lets the store keep the checked whole blocks of a body
        that ends early.

        Raises ChecksumMismatchError or BodyTooLongError with nothing kept,
        and BodyCutShortError when the body ended early.
        """
        ...

    def declare_length(self, info: UploadInfo, length: int) -> UploadInfo: ...

    def touch(self, info: UploadInfo, ttl_s: float) -> UploadInfo:
        """Move the expiry ``ttl_s`` seconds past now, after the upload received bytes."""
        ...

    def concatenate(self, final: UploadInfo, partials: list[UploadInfo]) -> None:
        """Fill ``final`` with the partial uploads' bytes, in order."""
        ...

    def sha256(self, info: UploadInfo) -> str:
        """Return the hex sha256 of the upload's bytes."""
        ...

    def finalize(self, info: UploadInfo, dest: Path) -> UploadInfo:
        """Make a complete upload durable at ``dest``; afterwards ``is_final`` is True."""
        ...

    def delete(self, upload_id: str) -> None: ...

    def expired(self, now: float) -> list[UploadInfo]: ...
