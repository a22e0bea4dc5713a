"""Identifiers: capture ids (ULID) and the short codes customers read aloud."""

from __future__ import annotations

import hashlib

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
