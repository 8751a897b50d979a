"""One decoded picture and where it came from.

Every reader yields :class:`Frame` objects and every writer accepts them, so names, timestamps and
alpha channels survive the trip through a model, and errors can say "frame 1832 of clip.mp4
(00:01:16.3)".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = ["Frame", "format_time", "frame_label"]


@dataclass(eq=False)  # frames hold arrays: compare images explicitly, not frames
class Frame:
    """A picture plus its metadata.

    image:     (H, W, C) uint8 RGB, or uint16 for 16-bit sources; C is 3 (RGB) or 1 (gray).
               A (H, W) array is accepted and stored as (H, W, 1).
    index:     0-based position in its source (frame number of a video, position in a stream,
               frame of an animated image; 0 for a still image).
    source:    the path it was read from, or ``'<stdin>'``.
    pts:       presentation timestamp in ``time_base`` units, or None when the source has no timing.
    time_base: seconds per ``pts`` unit, or None.
    alpha:     (H, W) opacity, same dtype as ``image``, or None. Models never see it; writers
               re-attach it.
    """

    image: np.ndarray
    index: int = 0
    source: str = "<memory>"
    pts: int | None = None
    time_base: Fraction | None = None
    alpha: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image.ndim == 2:
            self.image = self.image[:, :, None]
        if self.image.ndim != 3:
            raise ValueError(
                f"Frame.image must be (H, W, C) or (H, W), got shape {self.image.shape}"
            )
        if self.alpha is not None and self.alpha.shape != self.image.shape[:2]:
            raise ValueError(
                f"Frame.alpha must be (H, W) = {self.image.shape[:2]}, got {self.alpha.shape}"
            )
        if self.time_base is not None and not isinstance(self.time_base, Fraction):
            self.time_base = Fraction(self.time_base)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return self.height, self.width

    @property
    def time(self) -> float | None:
        """Presentation time in seconds (``pts * time_base``), or None without timing."""
        if self.pts is None or self.time_base is None:
            return None
        return float(self.pts * self.time_base)

    def describe(self) -> str:
        """Human description for messages, e.g. ``"frame 1832 of clip.mp4 (00:01:16.3)"``."""
        text = f"frame {self.index} of {self.source}"
        t = self.time
        if t is not None:
            text += f" ({format_time(t)})"
        return text

    def replace(self, **changes) -> "Frame":
        """A copy with some fields changed, e.g. ``frame.replace(image=output)``."""
        return dataclasses.replace(self, **changes)


def format_time(seconds: float) -> str:
    """``76.3`` -> ``"00:01:16.3"`` (tenths, rounded down so a frame never shows a later time)."""
    sign = "-" if seconds < 0 else ""
    tenths = int(abs(seconds) * 10 + 1e-6)
    s, tenth = divmod(tenths, 10)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{sign}{h:02d}:{m:02d}:{s:02d}.{tenth}"


def frame_label(frame: Frame) -> str:
    """The start of a message about ``frame``: ``photo.jpg`` for a still image,
    ``clip.mp4: frame 12 (00:00:00.4)`` for a frame of a video or stream."""
    if frame.pts is None and frame.index == 0:
        return frame.source
    text = f"{frame.source}: frame {frame.index}"
    if frame.time is not None:
        text += f" ({format_time(frame.time)})"
    return text
