"""Content classes and the order in which they reach HQ."""

from __future__ import annotations

# Most important first: a consent form must reach HQ before a product video.
CONTENT_CLASSES: tuple[str, ...] = ("consent", "receipt", "contract", "document", "media")
DEFAULT_CLASS = "document"

PRIORITY: dict[str, int] = {name: rank for rank, name in enumerate(CONTENT_CLASSES)}


class InvalidClassError(ValueError):
    """Raised when a capture names a content class that does not exist."""


def parse_class(value: str | None) -> str:
    """Return the content class named by ``value``, or the default class when empty."""
    if value is None or value.strip() == "":
        return DEFAULT_CLASS
    name = value.strip().lower()
    if name not in PRIORITY:
        allowed = ", ".join(CONTENT_CLASSES)
        raise InvalidClassError(f"unknown content class {value!r}: use one of {allowed}")
    return name


# When the original of a class may be sent: at once, only on an unmetered
# link (back at HQ), only after the operator ends the event, or never.
SYNC_POLICIES: tuple[str, ...] = ("immediate", "unmetered", "after_event", "local_only")
