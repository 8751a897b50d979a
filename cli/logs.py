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
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("frametrans: %(message)s"))
        handler._frametrans = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.propagate = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not the one at setup):
    stays right when stderr is replaced (tests, notebooks) and never writes to a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass
