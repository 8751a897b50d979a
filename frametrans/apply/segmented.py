"""A video output written as closed segments in a working folder, so a killed job can resume.

One :class:`SegmentedWriter` per output variant takes frames exactly like
:class:`frametrans.io.video.VideoWriter` (``write(image, pts, time_base)``) and starts a new part
file (a new encode, hence a keyframe) whenever a frame's time crosses a multiple of the segment
length, counted from the first frame of the video. Every variant cuts at the same frames, so part
``k`` of every variant holds the same frames; the shared :class:`SegmentBook` records part ``k`` in
the manifest once every variant's file of it is closed. The parts are joined by stream copy at the
end (:func:`frametrans.io.segments.join_segments`, the joiner of the Ray segments).

The cuts depend only on the frames' timestamps, so an interrupted and resumed run cuts where an
uninterrupted one does, except right after the interruption (a part closed early on Ctrl-C).
"""

from __future__ import annotations

import math
import threading
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

import numpy as np

from frametrans.apply.manifest import TAIL, Manifest, Part, part_name
from frametrans.io.errors import OutputError
from frametrans.io.video import VideoWriter

#: Default length of a segment of output, in seconds: what a resumed job redoes at most.
SEGMENT_SECONDS = 10.0

WriterFactory = Callable[[Path], VideoWriter]


class SegmentBook:
    """The manifest of one job, updated as the variants' writers close their parts (thread-safe:
    each variant encodes on its own thread)."""

    def __init__(self, folder: Path, manifest: Manifest, variants: int) -> None:
        self.folder = folder
        self.manifest = manifest
        self.variants = variants
        self._lock = threading.Lock()
        self._closed: Dict[int, Set[int]] = {}

    def origin_seconds(self, pts: Optional[int], time_base: Optional[Fraction], index: int,
                       fps: Fraction) -> float:
        """The time of a frame in seconds, with the first frame of the video setting the origin
        (in the manifest, so a resumed run cuts where the first run did)."""
        with self._lock:
            m = self.manifest
            if pts is None or time_base is None:  # no timestamps: count frames
                return index / float(fps)
            if m.origin is None:
                m.origin, m.time_base = int(pts), str(Fraction(time_base))
            return float((pts - m.origin) * Fraction(m.time_base))

    def part_closed(self, variant: int, part: Part) -> None:
        """Variant ``variant`` closed its file of ``part``; record the part when all have."""
        with self._lock:
            done = self._closed.setdefault(part.index, set())
            done.add(variant)
            if len(done) == self.variants:
                del self._closed[part.index]
                self.manifest.parts.append(part)
                self.manifest.save(self.folder)

    def complete(self) -> None:
        """The whole input went through: only the join is left."""
        with self._lock:
            self.manifest.complete = True
            self.manifest.save(self.folder)


class SegmentedWriter:
    """Writes one output variant as parts ``folder/STEM.00000.EXT``, ``STEM.00001.EXT``...

    dst: the variant's final output (names the parts, and errors). open_part: makes the
    VideoWriter of one part file. The first part gets the number after the manifest's last.
    """

    def __init__(self, book: SegmentBook, variant: int, dst: Path, suffix: str,
                 open_part: WriterFactory, fps: Fraction) -> None:
        self.book, self.variant, self.path = book, variant, dst
        self.suffix, self.open_part, self.fps = suffix, open_part, fps
        self.seconds = book.manifest.segment_seconds
        self.next_index = (book.manifest.parts[-1].index + 1) if book.manifest.parts else 0
        self.frames_written = 0  # in this run
        self._writer: Optional[VideoWriter] = None
        self._window = -1
        self._pts: List[int] = []

    def write(self, image: np.ndarray, pts: Optional[int] = None,
              time_base: Optional[Fraction] = None) -> None:
        """One (H, W, 3) RGB uint8 frame with its source timestamp (see VideoWriter.write)."""
        t = self.book.origin_seconds(pts, time_base, self.frames_written, self.fps)
        window = math.floor(t / self.seconds + 1e-9)
        if self._writer is not None and window != self._window:
            self.close_part()
        if self._writer is None:
            path = self.book.folder / part_name(self.path, self.next_index, self.suffix)
            try:
                self._writer = self.open_part(path)
            except OSError as exc:
                raise OutputError.wrap(path, exc) from None
            self._window = window
        self._writer.write(image, pts, time_base)
        self._pts.append(self.frames_written if pts is None else int(pts))
        self.frames_written += 1

    def close_part(self) -> None:
        """Finish the part being written (if any) and report it to the book."""
        w, self._writer = self._writer, None
        if w is None or not w.frames_written:
            if w is not None:
                w.abort()
            return
        w.close()
        pts, self._pts = self._pts, []
        self.book.part_closed(self.variant, Part(self.next_index, pts[0], pts[-1], len(pts),
                                                 pts[-TAIL:]))
        self.next_index += 1

    def abort(self) -> None:
        """Drop the part being written (the closed ones stay listed in the manifest)."""
        w, self._writer = self._writer, None
        self._pts = []
        if w is not None:
            w.abort()
