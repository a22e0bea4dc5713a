"""Header formats of the tus 1.0 protocol, shared by the server and the client.

Reference: the tus resumable upload protocol 1.0.0 (tus.io/protocols/resumable-upload).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import zlib
from typing import Protocol

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

# 460 is the tus checksum extension's status for a body whose checksum does
# not match the Upload-Checksum header.
STATUS_CHECKSUM_MISMATCH = 460

CHECKSUM_ALGORITHMS = ("sha256", "sha1", "md5", "crc32")
_DIGEST_SIZES = {"sha256": 32, "sha1": 20, "md5": 16, "crc32": 4}


class Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class Crc32:
    """CRC-32 (the zlib polynomial) with the ``update``/``digest`` interface of hashlib.

    The digest is the 4-byte big-endian checksum, as tusd and tus-js-client encode it.
    """

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def new_digest(algorithm: str) -> Digest:
    """Return a fresh digest object for one of CHECKSUM_ALGORITHMS."""
    if algorithm == "crc32":
        return Crc32()
    return hashlib.new(algorithm)

_METADATA_KEY = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class ProtocolError(ValueError):
    """Raised when a tus header is malformed."""


def encode_metadata(metadata: dict[str, str]) -> str:
    """Encode ``Upload-Metadata``: comma-separated ``key base64(value)`` pairs."""
    pairs = []
    for key, value in metadata.items():
        if not _METADATA_KEY.match(key):
            raise ProtocolError(f"invalid Upload-Metadata key {key!r}: use ASCII letters, digits and -_.")
        encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
        pairs.append(f"{key} {encoded}" if value else key)
    return ",".join(pairs)


def decode_metadata(header: str | None) -> dict[str, str]:
    """Decode ``Upload-Metadata``; raise ProtocolError on a bad key, value or duplicate."""
    if header is None or header.strip() == "":
        return {}
    result: dict[str, str] = {}
    for item in header.split(","):
        parts = item.strip().split(" ")
        if len(parts) > 2 or not _METADATA_KEY.match(parts[0]):
            raise ProtocolError(f"invalid Upload-Metadata pair {item.strip()[:80]!r}")
        key = parts[0]
        if key in result:
            raise ProtocolError(f"duplicate Upload-Metadata key {key!r}")
        result[key] = _decode_value(key, parts[1]) if len(parts) == 2 else ""
    return result


def _decode_value(key: str, value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ProtocolError(f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text") from None


def parse_checksum(header: str) -> tuple[str, bytes]:
    """Parse ``Upload-Checksum: <algorithm> <base64 digest>`` into (algorithm, digest)."""
    parts = header.strip().split(" ")
    if len(parts) != 2:
        raise ProtocolError(f"invalid Upload-Checksum {header[:80]!r}: expected '<algorithm> <base64>'")
    algorithm, encoded = parts[0].lower(), parts[1]
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ProtocolError(f"unsupported checksum algorithm {algorithm!r}: use one of {', '.join(CHECKSUM_ALGORITHMS)}")
    try:
        digest = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ProtocolError("Upload-Checksum digest is not valid base64") from None
    if len(digest) != _DIGEST_SIZES[algorithm]:
        raise ProtocolError(f"Upload-Checksum digest has the wrong length for {algorithm}")
    return algorithm, digest


def checksum_header(algorithm: str, data: bytes) -> str:
    """Return the ``Upload-Checksum`` value for ``data``."""
    digest = new_digest(algorithm)
    digest.update(data)
    return f"{algorithm} {base64.b64encode(digest.digest()).decode('ascii')}"


# boothsync's own addition to the checksum extension: the digest of each
# block of a PATCH body, so that a server can keep the checked blocks of a
# body that a dropped connection cut short. Other tus servers ignore it.
BLOCK_CHECKSUMS_HEADER = "Boothsync-Checksum-Blocks"
MAX_CHECKSUM_BLOCKS = 256


def block_checksums_header(algorithm: str, data: bytes, block_size: int) -> str:
    """Return the ``Boothsync-Checksum-Blocks`` value for ``data``: the block size, then one base64 digest per block."""
    view = memoryview(data)
    encoded = []
    for start in range(0, len(data), block_size):
        digest = new_digest(algorithm)
        digest.update(view[start: start + block_size])
        encoded.append(base64.b64encode(digest.digest()).decode("ascii"))
    return " ".join([str(block_size), *encoded])


def parse_block_checksums(header: str, algorithm: str, body_length: int | None) -> tuple[int, list[bytes]]:
    """Parse ``Boothsync-Checksum-Blocks`` into (block size, digests), checked against the body's length."""
    parts = header.strip().split(" ")
    size_text = parts[0]
    if not (size_text.isascii() and size_text.isdigit()) or int(size_text) == 0:
        raise ProtocolError(f"invalid {BLOCK_CHECKSUMS_HEADER} block size {size_text[:20]!r}: expected a positive integer")
    block_size = int(size_text)
    if body_length is None:
        raise ProtocolError(f"{BLOCK_CHECKSUMS_HEADER} needs a Content-Length, to check the number of blocks")
    expected = -(-body_length // block_size)
    if len(parts) - 1 != expected or expected > MAX_CHECKSUM_BLOCKS:
        raise ProtocolError(
            f"{BLOCK_CHECKSUMS_HEADER} has {len(parts) - 1} digests, but {body_length} bytes in blocks of"
            f" {block_size} make {expected} (at most {MAX_CHECKSUM_BLOCKS})"
        )
    digests = []
    for encoded in parts[1:]:
        try:
            digest = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ProtocolError(f"{BLOCK_CHECKSUMS_HEADER} digest {encoded[:60]!r} is not valid base64") from None
        if len(digest) != _DIGEST_SIZES[algorithm]:
            raise ProtocolError(f"{BLOCK_CHECKSUMS_HEADER} digest has the wrong length for {algorithm}")
        digests.append(digest)
    return block_size, digests


class BlockVerifier:
    """Checks a body block by block as it arrives, against the digests of ``Boothsync-Checksum-Blocks``.

    ``verified_bytes`` counts the leading whole blocks that matched; it stops
    growing at the first block that does not. A short last block is never
    counted, because only a complete body, judged by Upload-Checksum, ends in one.
    """

    def __init__(self, algorithm: str, block_size: int, digests: list[bytes]) -> None:
        self.algorithm = algorithm
        self.block_size = block_size
        self._expected = digests
        self._digest = new_digest(algorithm)
        self._filled = 0
        self._index = 0
        self._mismatch = False
        self.verified_bytes = 0

    def update(self, data: bytes, /) -> None:
        view = memoryview(data)
        while view and not self._mismatch and self._index < len(self._expected):
            step = min(len(view), self.block_size - self._filled)
            self._digest.update(view[:step])
            self._filled += step
            view = view[step:]
            if self._filled == self.block_size:
                if self._digest.digest() == self._expected[self._index]:
                    self._index += 1
                    self.verified_bytes += self.block_size
                else:
                    self._mismatch = True
                self._digest = new_digest(self.algorithm)
                self._filled = 0


def parse_non_negative(name: str, value: str | None) -> int | None:
    """Parse a header that must be a non-negative decimal integer; None when absent."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise ProtocolError(f"invalid {name} {value[:40]!r}: expected a non-negative integer")
    return int(text)
