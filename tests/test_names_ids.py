"""Tests for file name sanitising, capture ids and short codes."""

from __future__ import annotations

import re
import time
import unicodedata

import pytest

from boothsync.ids import UploadIds, new_capture_id, short_code
from boothsync.manifest import is_capture_id
from boothsync.names import MAX_NAME_CHARS, sanitize_filename

# Crockford's base32 without I, L, O and U.
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SHORT_CODE = re.compile(rf"^[{CROCKFORD}]{{3}}-[{CROCKFORD}]{{3}}$")


# sanitize_filename


def test_sanitize_keeps_plain_name() -> None:
    assert sanitize_filename("receipt 2024-05-01.jpg") == "receipt 2024-05-01.jpg"


def test_sanitize_parent_traversal() -> None:
    assert sanitize_filename("../../etc/passwd") == "passwd"


def test_sanitize_absolute_path() -> None:
    assert sanitize_filename("/var/spool/scan/page1.pdf") == "page1.pdf"


def test_sanitize_backslash_path() -> None:
    assert sanitize_filename("C:\\Users\\stall\\Pictures\\IMG_0001.HEIC") == "IMG_0001.HEIC"


def test_sanitize_backslash_traversal() -> None:
    assert sanitize_filename("..\\..\\windows\\win.ini") == "win.ini"


def test_sanitize_newline_replaced() -> None:
    assert sanitize_filename("scan\nfake log line.pdf") == "scan_fake log line.pdf"


def test_sanitize_carriage_return_and_tab() -> None:
    assert sanitize_filename("a\rb\tc.txt") == "a_b_c.txt"


def test_sanitize_nul_and_escape() -> None:
    assert sanitize_filename("a\x00b\x1b[31mc.txt") == "a_b_[31mc.txt"


def test_sanitize_delete_character() -> None:
    assert sanitize_filename("a\x7fb") == "a_b"


@pytest.mark.parametrize("control", ["\x85", "\x9b", "\x80"])
def test_sanitize_c1_control_replaced(control: str) -> None:
    # U+0080 to U+009F are control characters too (category Cc). U+0085 is a
    # line break, and U+009B starts a terminal escape sequence.
    assert unicodedata.category(control) == "Cc"

    assert sanitize_filename(f"a{control}b.jpg") == "a_b.jpg"


def test_sanitize_reserved_characters() -> None:
    assert sanitize_filename('a:b*c?d"e<f>g|h.txt') == "a_b_c_d_e_f_g_h.txt"


def test_sanitize_leading_dots_stripped() -> None:
    assert sanitize_filename(".hidden") == "hidden"
    assert sanitize_filename("...config.toml") == "config.toml"


def test_sanitize_inner_dots_kept() -> None:
    assert sanitize_filename("archive.tar.gz") == "archive.tar.gz"


def test_sanitize_surrounding_spaces_stripped() -> None:
    assert sanitize_filename("  photo.jpg  ") == "photo.jpg"


@pytest.mark.parametrize("name", ["", None, ".", "..", "...", "   ", "dir/", "../.."])
def test_sanitize_empty_gives_fallback(name: str | None) -> None:
    assert sanitize_filename(name) == "capture"


def test_sanitize_custom_fallback() -> None:
    assert sanitize_filename("..", fallback="upload") == "upload"


def test_sanitize_long_name_truncated() -> None:
    name = "a" * (MAX_NAME_CHARS + 50) + ".jpg"

    result = sanitize_filename(name)

    assert len(result) == MAX_NAME_CHARS
    assert result == "a" * MAX_NAME_CHARS


def test_sanitize_name_at_limit_kept() -> None:
    name = "b" * MAX_NAME_CHARS

    assert sanitize_filename(name) == name


def test_sanitize_unicode_nfc() -> None:
    decomposed = "Cafe\u0301 re\u0301sume\u0301.pdf"

    result = sanitize_filename(decomposed)

    assert result == "Caf\u00e9 r\u00e9sum\u00e9.pdf"
    assert unicodedata.is_normalized("NFC", result)


def test_sanitize_unicode_kept() -> None:
    assert sanitize_filename("Quittung_Müller_東京.jpg") == "Quittung_Müller_東京.jpg"


def test_sanitize_nfc_counts_composed_chars() -> None:
    # Normalising first means each "é" counts as one character toward the limit.
    name = "e\u0301" * MAX_NAME_CHARS

    assert sanitize_filename(name) == "\u00e9" * MAX_NAME_CHARS


# new_capture_id


def test_capture_id_is_ulid() -> None:
    capture_id = new_capture_id()

    assert len(capture_id) == 26
    assert is_capture_id(capture_id)


def test_capture_ids_unique() -> None:
    ids = [new_capture_id() for _ in range(1000)]

    assert len(set(ids)) == 1000


def test_capture_ids_increase_in_sequence() -> None:
    ids = [new_capture_id() for _ in range(1000)]

    assert ids == sorted(ids)


def test_capture_ids_increase_over_time() -> None:
    first = new_capture_id()
    time.sleep(0.005)
    second = new_capture_id()

    # The first 10 characters encode the time in milliseconds.
    assert second[:10] > first[:10]
    assert second > first


# short_code


def test_short_code_format() -> None:
    for _ in range(200):
        code = short_code(new_capture_id())

        assert SHORT_CODE.match(code), code


def test_short_code_excludes_ambiguous_letters() -> None:
    codes = "".join(short_code(new_capture_id()) for _ in range(2000))

    for letter in "ILOU":
        assert letter not in codes


def test_short_code_deterministic() -> None:
    capture_id = "01HZX3K8Q7RM5V2N9T4B6C0D1E"

    assert short_code(capture_id) == short_code(capture_id)


def test_short_code_known_value() -> None:
    # Customers keep their codes, so the mapping must not change between releases.
    # Low 30 bits of the first 4 sha256 bytes, 5 bits per character: 12 7 17 2 17 7.
    assert short_code("01HZX3K8Q7RM5V2N9T4B6C0D1E") == "C7H-2H7"


def test_short_code_differs_within_millisecond() -> None:
    # Same time prefix, different random part.
    first = "01HZX3K8Q7" + "0" * 16
    second = "01HZX3K8Q7" + "0" * 15 + "1"

    assert short_code(first) != short_code(second)


def test_short_code_few_collisions() -> None:
    # 30 bits give about 0.05 expected collisions among 10,000 ids.
    codes = [short_code(new_capture_id()) for _ in range(10_000)]

    collisions = len(codes) - len(set(codes))

    assert collisions < 5


def test_upload_ids_unique_hex() -> None:
    ids = UploadIds()
    made = [ids.new() for _ in range(1000)]  # several refills of the random pool
    assert len(set(made)) == len(made)
    assert all(len(upload_id) == 32 and int(upload_id, 16) >= 0 for upload_id in made)
    assert made[0] != UploadIds().new(), "each pool starts from fresh random bytes"
