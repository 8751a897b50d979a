"""Pictures, encoded image bytes and small clips for tests (built independently of frametrans's writers)."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Optional
import av
import numpy as np
import skimage.data
from PIL import Image


def picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    base = skimage.data.astronaut()
    rows = (np.arange(h) * base.shape[0] // max(h, 1)) % base.shape[0]
    cols = (np.arange(w) * base.shape[1] // max(w, 1)) % base.shape[1]
    img = base[rows][:, cols].copy()
    img[..., 1] = (img[..., 1].astype(int) + 17 * seed) % 256
    return img


def png_bytes(image: np.ndarray, mode: Optional[str] = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_clip(path: Path, n: int = 6, h: int = 48, w: int = 64, *, faststart: bool = False,
              codec: str = "libx264", pix_fmt: str = "yuv420p", audio: bool = False) -> None:
    """A small clip written with PyAV directly (independent of our writer)."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        opts = {"preset": "ultrafast", "crf": "20"} if codec == "libx264" else {}
        s = c.add_stream(codec, rate=25, options=opts)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        a = c.add_stream("aac", rate=48000) if audio else None
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(picture(h, w, i), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            c.mux(s.encode(frame.reformat(format=pix_fmt)))
        c.mux(s.encode())
        if a is not None:
            _mux_silence(c, a, seconds=n / 25)


def _tiff(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="TIFF")
    return buf.getvalue()


def _png16(rgb16: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", rgb16[..., ::-1].copy())
    assert ok
    return data.tobytes()


def _exif_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _gif(frames) -> bytes:
    ims = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    buf = io.BytesIO()
    if len(ims) == 1:
        ims[0].save(buf, format="GIF")
    else:
        ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=80, loop=0)
    return buf.getvalue()


def _webp(frames) -> bytes:
    ims = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, format="WEBP", save_all=True, append_images=ims[1:], duration=[50, 60, 70, 80][: len(ims)],
                loop=0, lossless=True)
    return buf.getvalue()


def _mux_silence(c, a, seconds: float) -> None:
    samples = int(48000 * seconds)
    for start in range(0, samples, 1024):
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts, af.time_base = 48000, start, Fraction(1, 48000)
        c.mux(a.encode(af))
    c.mux(a.encode())
