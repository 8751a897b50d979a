"""YUV 4:2:0 <-> RGB on the model's device, calibrated to give the host path's pixels.

Video frames can reach the runner as their decoder's planes (:class:`frametrans.io.planes.YUV420`):
the runner uploads the planes (1.5 bytes a pixel instead of 3) and converts them here, and
converts the model's RGB output back to planes for the encoder, so the host only copies planes.

The conversions reproduce FFmpeg's swscale as PyAV calls it on the RGB path (the "host path"),
measured rather than assumed:

- planes -> RGB: chroma repeated over its 2x2 pixels; BT.601 or BT.709 by the frame's tags,
  limited or full range; plus a small per-channel offset (swscale's fixed-point tables round
  down: about -0.9, -1.5, -0.9 grey levels on x86);
- RGB -> planes: luma per pixel; chroma from the pixel-wise U and V, averaged over column pairs
  and filtered over rows with taps 1, 3, 3, 1 (/8; edges repeated), as swscale's 2:1 vertical
  scaler does; BT.601 limited range, what the video writer tags.

Each conversion is calibrated once per (tags, pixel format) on a synthetic frame of random planes
(every combination of values, so no content can hide a difference) against swscale itself: the
offsets are measured there, and a conversion that then differs from swscale by more than one grey
level anywhere is not used; that stream stays on the host path (logged once). So the device path
never changes a picture by more than one grey level against the RGB path, whatever the FFmpeg build.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import av
import numpy as np
import torch

from frametrans.engine.pinned import PinnedBuffers
from frametrans.io.planes import YUV420

log = logging.getLogger("frametrans")

#: (kr, kb) luma weights of red and blue.
BT601 = (0.299, 0.114)
BT709 = (0.2126, 0.0722)
#: Tags of the planes the runner hands out (what :class:`frametrans.io.video.VideoWriter` writes:
#: AVCOL_SPC_SMPTE170M = BT.601, AVCOL_RANGE_MPEG = limited).
OUTPUT_TAGS = (6, 1)
_CALIBRATION_SIZE = 128  # pixels a side of the synthetic frame
#: Outputs smaller than this on a side go back as RGB: on frames 4 rows high swscale's chroma rows
#: differ from the 1-3-3-1 filter by up to 13 grey levels (the calibration frame cannot show it).
MIN_SIDE = 8


@dataclass(frozen=True)
class Conversion:
    """One YUV <-> RGB conversion: luma weights, range, and per-channel offsets in grey levels
    (R, G, B when decoding; Y, U, V when encoding) added before rounding."""

    kr: float
    kb: float
    full_range: bool
    offsets: Tuple[float, float, float] = (0.0, 0.0, 0.0)


# -- the conversions ----------------------------------------------------------------------------


def _split(data: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 I420 [B, H*3/2, W] -> Y [B, H, W], U and V [B, H/2, W/2] (views of the flat planes)."""
    b, h2, w = data.shape
    h = h2 * 2 // 3
    flat = data.reshape(b, -1)
    n, q = h * w, h * w // 4
    return (flat[:, :n].reshape(b, h, w), flat[:, n:n + q].reshape(b, h // 2, w // 2),
            flat[:, n + q:].reshape(b, h // 2, w // 2))


def _chroma_up(p: torch.Tensor, full_range: bool) -> torch.Tensor:
    """A chroma plane [B, H/2, W/2] uint8 -> [B, H, W] float32 centred on 0 (each sample over its 2x2)."""
    b, h, w = p.shape
    up = p[:, :, None, :, None].expand(b, h, 2, w, 2).reshape(b, 2 * h, 2 * w).float().sub_(128.0)
    return up if full_range else up.mul_(255.0 / 224.0)


def _rgb_float(data: torch.Tensor, c: Conversion) -> torch.Tensor:
    """I420 [B, H*3/2, W] uint8 -> unrounded RGB [B, H, W, 3] float32 in grey levels. Written channel
    by channel into the result: at most ~28 bytes a pixel alive (the runner's input phase plans 33)."""
    y8, u8, v8 = _split(data)
    y = y8.float()
    if not c.full_range:
        y.sub_(16.0).mul_(255.0 / 219.0)
    cb, cr = _chroma_up(u8, c.full_range), _chroma_up(v8, c.full_range)
    kg = 1.0 - c.kr - c.kb
    out = torch.empty((*y.shape, 3), dtype=torch.float32, device=data.device)
    torch.add(y, cr, alpha=2.0 * (1.0 - c.kr), out=out[..., 0])
    out[..., 1] = y - (2.0 * c.kb * (1.0 - c.kb) / kg) * cb - (2.0 * c.kr * (1.0 - c.kr) / kg) * cr
    torch.add(y, cb, alpha=2.0 * (1.0 - c.kb), out=out[..., 2])
    for k, offset in enumerate(c.offsets):  # scalars: a tensor from host memory would wait for the device
        out[..., k].add_(offset)
    return out


def planes_to_rgb(data: torch.Tensor, c: Conversion) -> torch.Tensor:
    """I420 planes [B, H*3/2, W] uint8 -> RGB [B, H, W, 3] uint8 (on the planes' device)."""
    return _rgb_float(data, c).round_().clamp_(0, 255).to(torch.uint8)


def _pair_rows_1331(p: torch.Tensor) -> torch.Tensor:
    """[B, H, W2] -> [B, H/2, W2]: rows filtered with 1, 3, 3, 1 (/8) at every second row, the
    first and last row repeated beyond the edges."""
    padded = torch.cat([p[:, :1], p, p[:, -1:]], dim=1)
    h = p.shape[1]
    return (padded[:, 0:h:2] + 3.0 * padded[:, 1:h + 1:2] + 3.0 * padded[:, 2:h + 2:2]
            + padded[:, 3:h + 3:2]) * 0.125


def _planes_float(x: torch.Tensor, c: Conversion) -> torch.Tensor:
    """RGB grey levels [B, 3, H, W] -> unrounded I420 planes [B, H*3/2, W] float32."""
    r, g, b = x[:, 0].float(), x[:, 1].float(), x[:, 2].float()
    kg = 1.0 - c.kr - c.kb
    luma = c.kr * r + kg * g + c.kb * b
    cb, cr = (b - luma) / (2.0 * (1.0 - c.kb)), (r - luma) / (2.0 * (1.0 - c.kr))
    if c.full_range:
        y, u, v = luma, cb + 128.0, cr + 128.0
    else:
        y, u, v = luma * (219.0 / 255.0) + 16.0, cb * (224.0 / 255.0) + 128.0, cr * (224.0 / 255.0) + 128.0
    n, h, w = y.shape

    def chroma(p: torch.Tensor) -> torch.Tensor:
        return _pair_rows_1331(p.reshape(n, h, w // 2, 2).mean(-1))

    planes = [y + c.offsets[0], chroma(u) + c.offsets[1], chroma(v) + c.offsets[2]]
    return torch.cat([p.reshape(n, -1) for p in planes], dim=1).reshape(n, h * 3 // 2, w)


def rgb_to_planes(x: torch.Tensor, c: Conversion) -> torch.Tensor:
    """RGB grey levels [B, 3, H, W] float (0-255, any layout; H and W even) -> I420 planes
    [B, H*3/2, W] uint8 (on ``x``'s device)."""
    return _planes_float(x, c).round_().clamp_(0, 255).to(torch.uint8)


# -- calibration against swscale ---------------------------------------------------------------


def _random_planes(pix_fmt: str, tags: Tuple[int, int]) -> YUV420:
    s = _CALIBRATION_SIZE
    data = np.random.default_rng(0).integers(0, 256, (s * 3 // 2, s), dtype=np.uint8)
    return YUV420(data, tags[0], tags[1], pix_fmt)


def _candidates(colorspace: int, color_range: int, pix_fmt: str) -> list:
    """Likely matrices first (BT.709 for a BT.709 tag, full range for a JPEG range or yuvj), then
    the rest: whichever matches swscale is used."""
    full = color_range == 2 or pix_fmt == "yuvj420p"
    first = BT709 if colorspace == 1 else BT601
    order = [(first, full), (BT601 if first == BT709 else BT709, full), (first, not full)]
    return [Conversion(m[0], m[1], f) for m, f in order]


def _offset(host: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean of ``host - exact`` (swscale's values less the unrounded conversion), in 1/64 grey
    levels; 0 when there is nothing to average."""
    return round(float((host.float() - exact).mean()) * 64) / 64 if exact.numel() else 0.0


@functools.lru_cache(maxsize=32)
def decode_conversion(colorspace: int, color_range: int, pix_fmt: str) -> Optional[Conversion]:
    """The planes -> RGB conversion that matches swscale for frames with these tags within one grey
    level, or None (then such frames are converted on the host)."""
    planes = _random_planes(pix_fmt, (colorspace, color_range))
    host = torch.from_numpy(planes.rgb())
    data = torch.from_numpy(planes.data)[None]
    for c in _candidates(colorspace, color_range, pix_fmt):
        exact = _rgb_float(data, c)[0]
        valid = (exact > 1) & (exact < 254)  # not clipped by the rounding to 0-255
        c = replace(c, offsets=tuple(_offset(host[..., k][valid[..., k]], exact[..., k][valid[..., k]])
                                     for k in range(3)))
        err = int((planes_to_rgb(data, c)[0].int() - host.int()).abs().max())
        if err <= 1:
            return c
    log.info("YUV %s (colorspace %d, range %d): no device conversion matches swscale within one "
             "grey level; converting on the host", pix_fmt, colorspace, color_range)
    return None


def _host_planes(rgb: np.ndarray) -> np.ndarray:
    """What the RGB path hands the encoder for ``rgb`` (H, W, 3) uint8: swscale's yuv420p."""
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()


@functools.lru_cache(maxsize=1)
def encode_conversion() -> Optional[Conversion]:
    """The RGB -> planes conversion that matches swscale (BT.601, limited range) within one grey
    level, or None (then outputs go back as RGB and the writer converts them)."""
    s = _CALIBRATION_SIZE
    rgb = np.random.default_rng(1).integers(0, 256, (s, s, 3), dtype=np.uint8)
    host = torch.from_numpy(_host_planes(rgb))[None]
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    c = Conversion(*BT601, full_range=False)
    exact = _split(_planes_float(x, c))
    wanted = _split(host)
    c = replace(c, offsets=tuple(_offset(w, e) for w, e in zip(wanted, exact)))
    err = int((rgb_to_planes(x, c).int() - host.int()).abs().max())
    if err <= 1:
        return c
    log.info("RGB -> yuv420p: no device conversion matches swscale within one grey level (%d); "
             "the encoder converts on the host", err)
    return None


# -- what the runner calls ----------------------------------------------------------------------


def upload(images: Sequence[YUV420], device: torch.device, pinned: PinnedBuffers) -> torch.Tensor:
    """Same-size frames as planes -> RGB [B, 3, H, W] uint8 on ``device`` (a channels_last view).

    The planes cross to the device (through ``pinned`` staging buffers on CUDA) and are converted
    there; frames whose tags have no matching conversion, or a batch with mixed tags, are converted
    on the host instead (the same pixels, the RGB path's cost)."""
    from frametrans.engine.transforms import images_to_tensor

    first = images[0]
    c = decode_conversion(*first.key())
    if c is None or any(im.key() != first.key() for im in images):
        return images_to_tensor([im.rgb() for im in images], device)
    if device.type == "cuda":
        data = pinned.upload("yuv", [im.data for im in images], device)
    else:
        data = torch.from_numpy(np.stack([im.data for im in images])).to(device)
    return planes_to_rgb(data, c).permute(0, 3, 1, 2)


def output_planes(images: Sequence[object], y: torch.Tensor) -> Optional[torch.Tensor]:
    """The model's output ``y`` (grey levels [B, C, H, W], rounded) as I420 planes [B, H*3/2, W]
    uint8 when the inputs came as planes, the output is RGB of their size and the encoder's
    conversion matches swscale; else None (the output goes back as RGB)."""
    first = images[0]
    if not isinstance(first, YUV420) or y.shape[1] != 3 or tuple(y.shape[-2:]) != first.shape[:2]:
        return None
    if min(first.shape[:2]) < MIN_SIDE:  # swscale's row filter differs at such tiny heights
        return None
    c = encode_conversion()
    return None if c is None else rgb_to_planes(y, c)


def output_frame(data: np.ndarray) -> YUV420:
    """One output's planes [H*3/2, W] uint8, tagged as the video writer tags its streams."""
    return YUV420(data, *OUTPUT_TAGS)
