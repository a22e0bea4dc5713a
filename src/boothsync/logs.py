"""Logging set-up shared by the agent, the server and the demo.

Every line is one event: a timestamp, the level, the logger and a message
that carries its ids as ``key=value`` pairs, so that ``grep capture_id=...``
finds a capture's whole history across both programs.
"""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def configure_logging(level: str | None = None) -> None:
    """Send log lines to standard error at ``level`` (default: ``BOOTHSYNC_LOG_LEVEL`` or INFO).

    Raises ValueError for a level that is not one of LEVELS.
    """
    chosen = (level or os.environ.get("BOOTHSYNC_LOG_LEVEL") or "INFO").upper()
    if chosen not in LEVELS:
        raise ValueError(f"invalid log level {chosen!r} in BOOTHSYNC_LOG_LEVEL: use one of {', '.join(LEVELS)}")
    logging.basicConfig(level=chosen, format=_FORMAT, force=True)
    # One line per HTTP request from uvicorn and httpx would drown the events
    # that matter; their warnings and errors still show.
    for noisy in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
