"""Raw rgb24 and y4m frame streams on stdin/stdout (shell pipes with ffmpeg)."""

from __future__ import annotations

import contextlib
import io
import os
import stat
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Optional, Tuple, Union

import numpy as np

from frametrans.apply.images import to_8bit
from frametrans.apply.report import progress_bar
from frametrans.apply.temporal import motion_estimator, stabilized_run
from frametrans.apply.translator import Translator, run_guarded
from frametrans.engine.pipeline import prefetch
from frametrans.io import raw
from frametrans.io.errors import InputError
from frametrans.stabilize import Temporal

DEFAULT_FPS = 25  # the rate of a raw stream's y4m output when --fps is not given


def check_stream_size(stdin: BinaryIO, size: Optional[Tuple[int, int]], channels: int = 3) -> None:
    """Before any work: a raw stream that is a regular file (``< frames.rgb``) must hold whole
    frames of ``size``; a stream that starts like y4m must not be read as raw (and vice versa).
    ValueError (one line) otherwise. Pipes are checked as they go (a cut last frame is reported).
    """
    head = _peek(stdin, 9)
    try:
        st = os.fstat(stdin.fileno())
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        st = None
    magic = b"YUV4MPEG2"
    if size is not None and head == magic:
        raise ValueError("stdin is a y4m stream, not raw rgb24: leave out --size")
    if size is None and head and not (head == magic or (len(head) < 9 and magic.startswith(head))):
        raise ValueError("stdin is not a y4m stream; for raw rgb24 frames give --size WIDTHxHEIGHT")
    if size is not None:
        raw.check_frame_size(size[0], size[1], "--size")
    elif head == magic:
        _check_y4m_header(stdin)
    if size is None or st is None or not stat.S_ISREG(st.st_mode):
        return
    frame_bytes = size[0] * size[1] * channels
    remaining = st.st_size - _tell(stdin)
    if remaining % frame_bytes:
        raise ValueError(
            f"--size {size[0]}x{size[1]}: stdin holds {remaining} bytes, not a whole number of "
            f"{frame_bytes}-byte rgb24 frames ({remaining / frame_bytes:.2f} frames); check the size")


def _peek(stdin: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes from the start of ``stdin`` without consuming them: what a buffered
    reader already holds (at most one read on a pipe), or read and seek back on a seekable stream."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        peek = getattr(stdin, "peek", None)
        if peek is not None:
            return peek(n)[:n]
        if stdin.seekable():
            pos = stdin.tell()
            try:
                return stdin.read(n)
            finally:
                stdin.seek(pos)
    return b""


def _check_y4m_header(stdin: BinaryIO) -> None:
    """A y4m header at hand (buffered, or a seekable stream) is checked now, before the model is
    loaded: InputError for a bad one (a size over the pixel bound...). A header that has not
    arrived yet is checked when it is read."""
    buffered = _peek(stdin, 4096)
    if b"\n" in buffered:
        raw.Y4MHeader(buffered.split(b"\n", 1)[0], raw.STDIN)


def _tell(stream: BinaryIO) -> int:
    try:
        return stream.tell()
    except (OSError, ValueError, AttributeError):
        return 0


def apply_stream(stdin: BinaryIO, stdout: BinaryIO, translator: Translator,
                 size: Optional[Tuple[int, int]], fps: Optional[float] = None, y4m_out: bool = False,
                 quiet: bool = False, temporal: Union[Temporal, float, None] = None) -> int:
    """Raw rgb24 (``size`` given) or y4m (``size`` None) frames in, raw rgb24 or y4m out.

    ``temporal`` (:class:`~frametrans.stabilize.Temporal`, or a flow-blend strength) makes the
    outputs consistent in time (``--temporal``); None: per frame.
    y4m output keeps a y4m input's frame rate, pixel aspect ratio and interlacing tag; ``fps``
    (None: from the input) overrides the rate, and is the rate of a raw input (default 25).
    Returns the number of frames written. ValueError for a translator with several styles (one
    stream, one output). A partial frame at the end raises InputError after the
    whole frames before it were written; so does an empty stream (an upstream failure would
    otherwise look like success). The reader of ``stdout`` going away raises BrokenPipeError.
    """
    if len(translator.variants) > 1:
        raise ValueError(f"a stream carries one output: the translator has {len(translator.variants)} "
                         "styles; load it with num_styles=1")
    check_stream_size(stdin, size)
    tags = _OutputTags(fps=Fraction(fps) if fps is not None else Fraction(DEFAULT_FPS))
    if size is None:
        header = raw.read_y4m_header(stdin)
        tags = _OutputTags(fps=tags.fps if fps is not None else (header.fps or tags.fps),
                           aspect=header.aspect, interlace=header.interlace)
        frames = raw.iter_y4m_frames(stdin, header=header)
    else:
        frames = raw.iter_raw_frames(stdin, size[0], size[1])
    progress = progress_bar(None, "frames", quiet)
    if not isinstance(temporal, Temporal):
        temporal = Temporal("flow" if temporal else "off", flow=float(temporal or 0.0))
    translator.expect(None)  # open-ended: --compile auto compiles when the model is slow enough
    decoded = prefetch(frames, depth=8, name="decode", max_bytes=translator.queue_bytes(),
                       size=lambda f: f.image.nbytes)
    n = 0
    try:
        temporal = translator.temporal(temporal)
        v = translator.stream_variants(temporal.stats)[0]
        runs = stabilized_run(decoded, lambda fed: ((f, [("", o)]) for f, o in run_guarded(v.runner, fed)),
                              temporal.flow, motion_estimator(temporal, translator.device))
        n = _write_stream(((f, outs[0][1]) for f, outs in runs), stdout, tags, y4m_out, progress)
    finally:
        progress.close()
        with contextlib.suppress(BrokenPipeError, ValueError):
            stdout.flush()
    if n == 0:
        raise InputError(raw.STDIN, "no frames: the stream is empty")
    return n


@dataclass(frozen=True)
class _OutputTags:
    """What a y4m output header says besides the size."""

    fps: Fraction
    aspect: Optional[Fraction] = None
    interlace: str = "p"


def _write_stream(results, stdout: BinaryIO, tags: _OutputTags, y4m_out: bool, progress) -> int:
    """Outputs (8-bit RGB) to ``stdout`` as raw rgb24 or y4m; returns how many were written."""
    y4m: Optional[raw.Y4MWriter] = None
    n = 0
    for _frame, out in results:
        out = to_8bit(out)
        out = out if out.shape[2] == 3 else np.repeat(out, 3, axis=2)
        if y4m_out:
            if y4m is None:
                interlace = tags.interlace if tags.interlace in ("p", "t", "b", "m") else "p"
                y4m = raw.Y4MWriter(stdout, out.shape[1], out.shape[0], tags.fps, aspect=tags.aspect,
                                    interlace=interlace)
            y4m.write(out)
        else:
            raw.write_raw_frame(stdout, out)
        n += 1
        progress.update(1)
    return n
