"""Tests for the tus 1.0 header formats: metadata, checksums and integer headers."""

from __future__ import annotations

import base64
import hashlib

import pytest

from boothsync.tus.protocol import (
    ProtocolError,
    checksum_header,
    decode_metadata,
    encode_metadata,
    parse_checksum,
    parse_non_negative,
)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# Upload-Metadata


def test_metadata_round_trip() -> None:
    metadata = {"filename": "receipt.jpg", "class": "receipt", "sha256": "ab" * 32}

    assert decode_metadata(encode_metadata(metadata)) == metadata


def test_metadata_unicode_round_trip() -> None:
    metadata = {"filename": "Quittung Müller 東京 🧾.pdf", "note": "a,b c"}

    assert decode_metadata(encode_metadata(metadata)) == metadata


def test_metadata_encoding_format() -> None:
    header = encode_metadata({"filename": "a.txt", "part": "original"})

    assert header == f"filename {_b64('a.txt')},part {_b64('original')}"


def test_metadata_empty_value_key_alone() -> None:
    header = encode_metadata({"is_confidential": "", "part": "original"})

    assert header.split(",")[0] == "is_confidential"
    assert decode_metadata(header) == {"is_confidential": "", "part": "original"}


def test_metadata_decode_key_alone() -> None:
    assert decode_metadata("flag") == {"flag": ""}


def test_metadata_decode_spaces_around_pairs() -> None:
    header = f" filename {_b64('x.jpg')} , part {_b64('thumbnail')} "

    assert decode_metadata(header) == {"filename": "x.jpg", "part": "thumbnail"}


@pytest.mark.parametrize("header", [None, "", "   "])
def test_metadata_decode_absent(header: str | None) -> None:
    assert decode_metadata(header) == {}


def test_metadata_encode_bad_key() -> None:
    with pytest.raises(ProtocolError) as info:
        encode_metadata({"file name": "x"})

    assert "file name" in str(info.value)


def test_metadata_decode_bad_base64() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_metadata("filename not*base64!")

    assert "filename" in str(info.value)


def test_metadata_decode_bad_padding() -> None:
    with pytest.raises(ProtocolError):
        decode_metadata("filename YWJj" + "ZA")


def test_metadata_decode_non_utf8() -> None:
    value = base64.b64encode(b"\xff\xfe\xfd").decode("ascii")

    with pytest.raises(ProtocolError) as info:
        decode_metadata(f"filename {value}")

    assert "UTF-8" in str(info.value)


def test_metadata_decode_duplicate_key() -> None:
    header = f"filename {_b64('a')},filename {_b64('b')}"

    with pytest.raises(ProtocolError) as info:
        decode_metadata(header)

    assert "duplicate" in str(info.value)


def test_metadata_decode_space_in_key() -> None:
    # "file name" splits into three tokens with the value.
    with pytest.raises(ProtocolError):
        decode_metadata(f"file name {_b64('x')}")


def test_metadata_decode_three_tokens() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_metadata(f"filename {_b64('a')} {_b64('b')}")

    assert "invalid Upload-Metadata pair" in str(info.value)


def test_metadata_decode_double_space() -> None:
    with pytest.raises(ProtocolError):
        decode_metadata(f"filename  {_b64('a')}")


@pytest.mark.parametrize("header", [",", "a,", ",a", f"fil\u00e9 {_b64('x')}"])
def test_metadata_decode_bad_key(header: str) -> None:
    with pytest.raises(ProtocolError):
        decode_metadata(header)


# Upload-Checksum


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_checksum_parse(algorithm: str) -> None:
    digest = hashlib.new(algorithm, b"chunk").digest()
    header = f"{algorithm} {base64.b64encode(digest).decode('ascii')}"

    assert parse_checksum(header) == (algorithm, digest)


def test_checksum_parse_upper_case_algorithm() -> None:
    digest = hashlib.sha256(b"chunk").digest()

    assert parse_checksum(f"SHA256 {base64.b64encode(digest).decode()}") == ("sha256", digest)


def test_checksum_parse_unsupported() -> None:
    digest = hashlib.sha512(b"chunk").digest()

    with pytest.raises(ProtocolError) as info:
        parse_checksum(f"sha512 {base64.b64encode(digest).decode()}")

    assert "unsupported" in str(info.value)
    assert "sha512" in str(info.value)
    assert "use one of sha256, sha1, md5, crc32" in str(info.value)


def test_checksum_parse_bad_base64() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_checksum("sha256 %%%not-base64%%%")

    assert "base64" in str(info.value)


def test_checksum_parse_wrong_length() -> None:
    sha1_digest = hashlib.sha1(b"chunk").digest()

    with pytest.raises(ProtocolError) as info:
        parse_checksum(f"sha256 {base64.b64encode(sha1_digest).decode()}")

    assert "wrong length" in str(info.value)


@pytest.mark.parametrize("header", ["sha256", "", "sha256 a b"])
def test_checksum_parse_wrong_token_count(header: str) -> None:
    with pytest.raises(ProtocolError):
        parse_checksum(header)


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_checksum_header_matches_hashlib(algorithm: str) -> None:
    data = bytes(range(256)) * 40
    expected = base64.b64encode(hashlib.new(algorithm, data).digest()).decode("ascii")

    assert checksum_header(algorithm, data) == f"{algorithm} {expected}"


def test_checksum_header_parses_back() -> None:
    data = b"resumable"

    assert parse_checksum(checksum_header("sha256", data)) == ("sha256", hashlib.sha256(data).digest())


def test_checksum_header_empty_data() -> None:
    expected = base64.b64encode(hashlib.sha256(b"").digest()).decode("ascii")

    assert checksum_header("sha256", b"") == f"sha256 {expected}"


# Integer headers


def test_non_negative_zero() -> None:
    assert parse_non_negative("Upload-Offset", "0") == 0


def test_non_negative_large() -> None:
    assert parse_non_negative("Upload-Length", "21474836480") == 21474836480


def test_non_negative_nineteen_digits() -> None:
    assert parse_non_negative("Upload-Length", "9" * 19) == int("9" * 19)


def test_non_negative_surrounding_spaces() -> None:
    assert parse_non_negative("Upload-Offset", " 42 ") == 42


def test_non_negative_absent() -> None:
    assert parse_non_negative("Upload-Offset", None) is None


@pytest.mark.parametrize("value", ["-1", "1.5", " ", "", "abc", "+1", "1e3", "0x10", "1_000", "1" * 20])
def test_non_negative_rejected(value: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_non_negative("Upload-Offset", value)

    assert "Upload-Offset" in str(info.value)


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9", "\u0663"])
def test_non_negative_non_ascii_digit(value: str) -> None:
    # str.isdigit() accepts these, but an HTTP integer header allows only ASCII
    # digits. Starlette decodes header bytes as Latin-1, so a byte 0xB2 arrives
    # as "\u00b2" (superscript two), which int() then rejects with ValueError.
    with pytest.raises(ProtocolError):
        parse_non_negative("Upload-Length", value)
