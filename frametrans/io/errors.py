"""Errors raised by the readers and writers in :mod:`frametrans.io`.

Messages are one line and name the file (or ``<stdin>``), so the CLI can print them as they are,
without a traceback: ``clip.mp4: no video stream (streams: audio aac)``.
"""

from __future__ import annotations

__all__ = ["InputError", "TruncatedInputError", "OutputError", "is_fatal_write_error"]

import errno as _errno


class InputError(Exception):
    """An input file or stream cannot be read: missing, empty, not an image or video, unsupported.

    ``source`` is the path or ``'<stdin>'``; the message is ``"{source}: {reason}"``.
    """

    def __init__(self, source: object, reason: str) -> None:
        self.source = str(source)
        self.reason = " ".join(str(reason).split())  # keep it on one line
        super().__init__(f"{self.source}: {self.reason}")

    def __reduce__(self):  # picklable across processes (decode threads, ray workers)
        return (type(self), (self.source, self.reason))


class TruncatedInputError(InputError):
    """The input ended early (cut file, broken pipe); ``frames_read`` frames were read before that.

    Readers that raise it have already yielded every frame they could decode, so a caller can
    finish writing what it got and then report the error.
    """

    def __init__(self, source: object, reason: str, frames_read: int) -> None:
        self.frames_read = int(frames_read)
        super().__init__(source, reason)

    def __reduce__(self):
        return (type(self), (self.source, self.reason, self.frames_read))


class OutputError(OSError):
    """An output could not be written (full disk, read-only or missing folder, permissions).

    Keeps the ``errno`` of the underlying error; the message is ``"{path}: cannot write: {reason}"``.
    Nothing is left under ``path`` when this is raised (writers write to a temporary name first).
    """

    def __init__(self, path: object, reason: str, errno: int | None = None) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(errno, f"{self.path}: cannot write: {self.reason}")
        self.errno = errno

    def __str__(self) -> str:
        return f"{self.path}: cannot write: {self.reason}"

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.errno))

    @classmethod
    def wrap(cls, path: object, exc: BaseException) -> "OutputError":
        if isinstance(exc, OutputError):
            return exc
        err = getattr(exc, "errno", None)
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return cls(path, reason, err if isinstance(err, int) else None)


#: errno values after which every further write to the same disk fails too: stop the job.
_FATAL_WRITE_ERRNOS = {e for e in (getattr(_errno, n, None) for n in ("ENOSPC", "EDQUOT", "EROFS"))
                       if e is not None}


def is_fatal_write_error(exc: BaseException) -> bool:
    """True for a full disk, an exceeded quota or a read-only file system."""
    return getattr(exc, "errno", None) in _FATAL_WRITE_ERRNOS


def first_line(exc: object) -> str:
    """The first non-empty line of an error message, whitespace collapsed (torch and FFmpeg errors
    run to pages); the exception's type name when it has no message."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    text = next((line for line in lines if line), "")
    if not text and isinstance(exc, BaseException):
        return type(exc).__name__
    return text
