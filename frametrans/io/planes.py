"""A video frame kept as its decoder's YUV 4:2:0 planes, for conversion on the model's device.

The usual video path converts each decoded frame to RGB on the host (FFmpeg's swscale) and each
output back to the encoder's YUV the same way. With ``RunnerOptions(yuv=...)`` on (by default on
CUDA) the reader hands the runner the planes instead: half the bytes of RGB cross the bus, and the
conversions run on the device (:mod:`frametrans.engine.yuv`). A :class:`YUV420` stands in for the
frame's RGB array where only its size is asked for (``shape``, ``dtype``, ``nbytes``); anything that
needs the pixels as RGB calls :meth:`YUV420.rgb`, which is exactly the host path's conversion.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import av
import numpy as np

__all__ = ["YUV420", "PLANE_FORMATS", "filled_frame"]

#: Decoder pixel formats whose frames can travel as planes (yuvj420p: the full-range JPEG variant).
PLANE_FORMATS = ("yuv420p", "yuvj420p")


def filled_frame(width: int, height: int, pix_fmt: str, planes: Sequence[np.ndarray]) -> Optional[av.VideoFrame]:
    """A new frame with each of ``planes`` (C-contiguous uint8 arrays, one per plane of the format)
    copied in at once; None where PyAV pads a plane's rows (its buffer is larger than the array),
    for ``from_ndarray``, which copies row by row (about 3x slower for unpadded rows)."""
    frame = av.VideoFrame(width, height, pix_fmt)
    if any(p.buffer_size != a.nbytes or not a.flags.c_contiguous for p, a in zip(frame.planes, planes)):
        return None
    for p, a in zip(frame.planes, planes):
        p.update(a)
    return frame


class YUV420:
    """One frame as I420 planes: ``data`` uint8 [H * 3 / 2, W] (Y rows, then U, then V, each chroma
    plane H/2 x W/2 packed row after row, as ``av.VideoFrame.to_ndarray()`` gives yuv420p).

    colorspace, color_range: the stream's tags as FFmpeg numbers (``av.VideoFrame.colorspace``,
    ``color_range``), kept so that :meth:`rgb` converts exactly as the source frame would.
    H and W are even. Duck-types the RGB array it stands for: ``shape`` (H, W, 3), ``ndim`` 3,
    ``dtype`` uint8.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, data: np.ndarray, colorspace: int = 2, color_range: int = 0,
                 pix_fmt: str = "yuv420p") -> None:
        h2, w = data.shape
        if data.dtype != np.uint8 or (h2 * 2) % 3 or (h2 * 2 // 3) % 2 or w % 2:
            raise ValueError(f"I420 planes must be uint8 [H*3/2, W] with even H and W, got "
                             f"{data.dtype} {data.shape}")
        self.data = data
        self.colorspace, self.color_range, self.pix_fmt = colorspace, color_range, pix_fmt

    @classmethod
    def from_av(cls, frame: av.VideoFrame) -> Optional["YUV420"]:
        """The planes of a decoded frame, or None when they cannot travel as planes (another pixel
        format, an odd size)."""
        name = frame.format.name
        if name not in PLANE_FORMATS or frame.width % 2 or frame.height % 2:
            return None
        data = frame.to_ndarray()
        return cls(np.ascontiguousarray(data), int(frame.colorspace or 2), int(frame.color_range or 0), name)

    @property
    def height(self) -> int:
        return self.data.shape[0] * 2 // 3

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.height, self.width, 3

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def bt601_limited(self) -> bool:
        """Tagged (or untagged, which FFmpeg converts the same) BT.601 limited range: what the video
        writer tags its streams, so such planes can be encoded as they are."""
        return self.colorspace in (2, 5, 6) and self.color_range in (0, 1)

    def key(self) -> Tuple[int, int, str]:
        """What the conversion depends on besides the size: the tags and the pixel format."""
        return self.colorspace, self.color_range, self.pix_fmt

    def to_av(self) -> av.VideoFrame:
        """The planes as an :class:`av.VideoFrame` with the tags: one copy per plane where the
        frame's rows are not padded (1.3 against 1.9 ms at 1920x1080 for ``from_ndarray``, which
        copies row by row; measured 2026-12-01), else ``from_ndarray``."""
        n, q = self.width * self.height, self.width * self.height // 4
        flat = self.data.reshape(-1)
        frame = filled_frame(self.width, self.height, self.pix_fmt, [flat[:n], flat[n:n + q], flat[n + q:]]) \
            if self.data.flags.c_contiguous else None
        if frame is None:
            frame = av.VideoFrame.from_ndarray(self.data, format=self.pix_fmt)
        frame.colorspace, frame.color_range = self.colorspace, self.color_range
        return frame

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, converted on the host exactly as the RGB video path converts."""
        return self.to_av().to_ndarray(format="rgb24")

    def __repr__(self) -> str:
        return f"YUV420({self.width}x{self.height}, {self.pix_fmt}, colorspace {self.colorspace}, range {self.color_range})"
