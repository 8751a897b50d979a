"""Errors raised by the readers and writers in :mod:`frametrans.io`.

Messages are one line and name the file (or ``<stdin>``), so the CLI can print them as they are,
without a traceback: ``clip.mp4: no video stream (streams: audio aac)``.
"""

from __future__ import annotations

__all__ = ["InputError", "TruncatedInputError"]


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
