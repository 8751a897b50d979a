"""Log lines go to stderr, prefixed with the program name; stdout stays for data."""

from __future__ import annotations

import logging
import sys


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """INFO to stderr (WARNING with --quiet, DEBUG with --verbose)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    log = logging.getLogger("frametrans")
    log.setLevel(level)
    if not any(getattr(h, "_frametrans", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("frametrans: %(message)s"))
        handler._frametrans = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.propagate = False
