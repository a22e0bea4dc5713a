"""Identifiers: capture ids (ULID) and the short codes customers read aloud."""

from __future__ import annotations

import hashlib
import os

from ulid import ULID

# Crockford's base32 alphabet leaves out I, L, O and U, so a code read aloud
# or copied from a screen cannot be mistaken for another.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_capture_id() -> str:
    """Return a new ULID: sortable by creation time and unique without a server."""
    return str(ULID())


def short_code(capture_id: str) -> str:
    """Return a six-character code, such as ``K7Q-2MX``, derived from a capture id.

    The code is a hash of the whole id, so captures made in the same
    millisecond still get different codes. Thirty bits make a collision
    between two captures of one event unlikely, but the capture id stays the
    key: the code only helps a person find a capture.
    """
    digest = int.from_bytes(hashlib.sha256(capture_id.encode()).digest()[:4], "big")
    chars = [_CROCKFORD[(digest >> shift) & 31] for shift in (25, 20, 15, 10, 5, 0)]
    return "".join(chars[:3]) + "-" + "".join(chars[3:])


class UploadIds:
    """Random 128-bit upload ids in hex, read from the OS random source 4 KiB at a time.

    One getrandom call per 256 ids instead of one per id: on some virtual
    machines each system call costs as much as the rest of creating an upload.
    """

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0

    def new(self) -> str:
        """Return an id that no one can guess: 32 lowercase hex digits."""
        if self._next + 16 > len(self._pool):
            self._pool = os.urandom(4096)
            self._next = 0
        start = self._next
        self._next += 16
        return self._pool[start: self._next].hex()
