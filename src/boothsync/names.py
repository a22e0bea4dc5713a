"""Sanitising of file names that arrive from devices, scanners and browsers."""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_CHARS = 200

# C0 and C1 control characters, DEL, and characters special on common file systems.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f/\\:*?\"<>|]")


def sanitize_filename(name: str | None, fallback: str = "capture") -> str:
    """Return a file name that is safe to store as metadata and to show.

    Only the last path component is kept, so ``../../etc/passwd`` becomes
    ``passwd``. Control characters and characters that are special on common
    file systems become ``_``. Leading dots are removed so that no name is
    hidden or means "this directory". The result is never used as a path on
    the device or the server: blobs are named by their sha256.
    """
    if not name:
        return fallback
    text = unicodedata.normalize("NFC", name)
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = _UNSAFE.sub("_", text).strip().lstrip(".").strip()
    text = text[:MAX_NAME_CHARS]
    return text or fallback
