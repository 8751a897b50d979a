"""Temporal consistency of a translated video: the warping error of Lai et al. (ECCV 2018,
"Learning Blind Video Temporal Consistency"), with the flow and the occlusions taken from the input.

For each pair of consecutive frames (t-1, t) of the INPUT:

- ``F`` = optical flow from input frame t to input frame t-1 (OpenCV DIS, medium preset, on luma): where each
  pixel of frame t was in frame t-1; ``B`` = the flow from t-1 to t;
- ``M`` = the non-occluded pixels of frame t, by forward-backward consistency (Sundaram et al.
  2010): ``|F(x) + B(x + F(x))|^2 < 0.01 (|F(x)|^2 + |B(x + F(x))|^2) + 0.5``, and ``x + F(x)``
  inside frame t-1;
- the error of a video ``V`` (RGB in [0, 1]) at t is the mean over M of
  ``||V_t(x) - V_{t-1}(x + F(x))||^2``, the squared difference summed over the three channels,
  with ``V_{t-1}`` sampled bilinearly.

The warping error is the mean over all pairs: 0 for a video whose content moves exactly with the
input's motion; for the input itself it is what the flow cannot explain (the scene's own residual:
lighting, blur, flow errors), the floor for any output. Values are in [0, 3].
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["TemporalReport", "DIS_PRESETS", "flow", "inside", "luma", "non_occluded", "pair_motion",
           "sample_points", "remap", "warp", "pair_error", "temporal_consistency"]


def luma(image: np.ndarray) -> np.ndarray:
    """[H, W, C] uint8/uint16 -> [H, W] uint8 luma (BT.601) for the flow."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        return np.ascontiguousarray(image.reshape(image.shape[:2]))
    return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)


#: OpenCV DIS presets by name. ``medium`` defines the metric; the stabilizer uses ``fast``
#: (:data:`frametrans.stabilize.FLOW_PRESET`).
DIS_PRESETS = {"medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST}


#: The smallest side DIS gets. OpenCV's DIS refuses frames under 8 px a side or under 12 on both,
#: and it crashes the process (a segfault, OpenCV 5.1) on wide frames less than ~32 px high: 12x40,
#: 28x80, 8x128 (every height 8-28 crashed from 80 px of width up; 32 and more never did, up to
#: 8000 wide). Frames with a side under this are padded with their edge pixels for it (:func:`flow`).
DIS_MIN_SIDE = 32


def flow(src: np.ndarray, dst: np.ndarray, preset: str = "medium") -> np.ndarray:
    """Optical flow [H, W, 2] (x, y in pixels) from ``src`` to ``dst`` (same-size images): pixel
    ``p`` of ``src`` shows what ``dst`` shows at ``p + flow[p]``. OpenCV DIS with ``preset`` (a
    key of :data:`DIS_PRESETS`; the metric's is ``medium``); a frame with a side under
    :data:`DIS_MIN_SIDE` is padded with its edge pixels for DIS and the flow cropped back."""
    a, b = luma(src), luma(dst)
    h, w = a.shape
    if min(h, w) >= DIS_MIN_SIDE:
        return _dis(preset, a.shape).calc(a, b, None)
    grow_h, grow_w = max(0, DIS_MIN_SIDE - h), max(0, DIS_MIN_SIDE - w)
    a, b = (cv2.copyMakeBorder(x, 0, grow_h, 0, grow_w, cv2.BORDER_REPLICATE) for x in (a, b))
    return np.ascontiguousarray(_dis(preset, a.shape).calc(a, b, None)[:h, :w])


_DIS = threading.local()
_DIS_KEPT = 8  # estimators kept per thread (preset x frame size)


def _dis(preset: str, shape: Tuple[int, ...]) -> "cv2.DISOpticalFlow":
    """This thread's DIS estimator for ``preset`` and frames of ``shape``: made once, since a new
    one allocates its pyramids again for every call (2.6 against 1.7 ms for DIS fast at 640x360).
    Without an initial flow a reused estimator gives the same flow as a new one, but only for
    frames of the size it last saw: after a smaller frame, the flow of a larger one differs (by
    0.17 px on a 128x96 pan after a 12x12 frame, OpenCV 5.1), so each size has its own."""
    cache = getattr(_DIS, "by_key", None)
    if cache is None:
        cache = _DIS.by_key = {}
    key = (preset, tuple(shape))
    if key not in cache:
        if len(cache) >= _DIS_KEPT:
            cache.clear()
        cache[key] = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    return cache[key]


def warp(image: np.ndarray, flow_to: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``p + flow_to[p]`` for every pixel ``p`` (bilinear, edges replicated):
    with ``flow_to`` = flow(t -> t-1), frame t-1 brought to frame t. float32 in, float32 out."""
    return remap(image, sample_points(flow_to))


def remap(image: np.ndarray, points: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``image`` sampled at ``points`` (:func:`sample_points`; bilinear, edges replicated)."""
    return cv2.remap(image, points[0], points[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def non_occluded(fwd: np.ndarray, bwd: np.ndarray,
                 points: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """[H, W] bool: pixels of frame t whose flow ``fwd`` (t -> t-1) is confirmed by ``bwd``
    (t-1 -> t) and lands inside frame t-1 (forward-backward consistency, Sundaram et al. 2010).
    ``points``: :func:`sample_points` of ``fwd`` when the caller has them already."""
    h, w = fwd.shape[:2]
    x, y = points if points is not None else sample_points(fwd)
    back = remap(bwd, (x, y))  # bwd at x + fwd(x)
    fx, fy, bx, by = (np.ascontiguousarray(c) for c in (fwd[..., 0], fwd[..., 1], back[..., 0], back[..., 1]))
    lhs = _square_sum(fx + bx, fy + by)  # |F + B|^2
    rhs = _square_sum(fx, fy)
    rhs += _square_sum(bx, by)
    rhs *= np.float32(0.01)
    rhs += np.float32(0.5)
    keep = lhs < rhs
    keep &= inside(x, y, h, w)  # lands inside frame t-1
    return keep


def inside(x: np.ndarray, y: np.ndarray, h: int, w: int) -> np.ndarray:
    """[H, W] bool: the sample points ``x``, ``y`` (float32 [H, W]) that lie inside an ``h`` x ``w``
    frame."""
    return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def _square_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a * a + b * b`` (float32 [H, W]), in place in ``a`` when it is a temporary of the caller's."""
    out = a * a
    out += b * b
    return out


def sample_points(flow_to: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(x + flow_x, y + flow_y): where each pixel samples, float32 [H, W] each."""
    gx, gy = _grid(*flow_to.shape[:2])
    return gx + flow_to[..., 0], gy + flow_to[..., 1]


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates x, y (float32 [H, W], read-only; cached per size)."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.flags.writeable = gy.flags.writeable = False
    return gx, gy


def _unit(image: np.ndarray) -> np.ndarray:
    """uint8/uint16 [H, W, C] -> float32 RGB in [0, 1] (gray repeated to 3 channels)."""
    top = 65535.0 if image.dtype == np.uint16 else 255.0
    x = image.astype(np.float32) / top
    if x.ndim == 2:
        x = x[..., None]
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x[..., :3]


def pair_error(prev: np.ndarray, cur: np.ndarray, flow_to_prev: np.ndarray, mask: np.ndarray,
               points: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> float:
    """The warping error of one pair: mean over ``mask`` of the squared RGB difference between
    ``cur`` and ``prev`` warped by ``flow_to_prev`` (values in [0, 1] per channel). ``points``:
    :func:`sample_points` of ``flow_to_prev`` when the caller has them already."""
    if not mask.any():
        return 0.0
    diff = _unit(cur) - remap(_unit(prev), points if points is not None else sample_points(flow_to_prev))
    return float((diff ** 2).sum(-1)[mask].mean())


@dataclass
class TemporalReport:
    """Warping errors (see the module doc) of an output and of its input, over ``pairs`` frame
    pairs; with a second output, its warping error and the mean PSNR (dB) between the outputs."""

    pairs: int  # psnr_between: mean over frames, identical frames counted as MAX_PSNR (100 dB)
    output: float
    input: float
    occluded: float  # mean fraction of pixels left out as occluded
    second: Optional[float] = None
    psnr_between: Optional[float] = None

    @property
    def ratio(self) -> float:
        """Output error over the input's own: how much flicker the output adds."""
        return self.output / self.input if self.input > 0 else math.inf


FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (src, dst) -> flow [H, W, 2], as flow()


def pair_motion(prev: np.ndarray, cur: np.ndarray, estimate: Optional[FlowFn] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(``F``, ``M``) of one pair of input frames, as the module doc defines them: the flow from
    ``cur`` to ``prev`` [H, W, 2] float32 and the non-occluded pixels of ``cur`` [H, W] bool.
    ``estimate``: another optical flow in place of the metric's DIS medium (to compare flows)."""
    estimate = estimate or flow
    fwd = estimate(cur, prev)
    return fwd, non_occluded(fwd, estimate(prev, cur))


def temporal_consistency(inputs: Iterable[np.ndarray], output: Iterable[np.ndarray],
                         second: Optional[Iterable[np.ndarray]] = None,
                         motions: Optional[Sequence[Tuple[np.ndarray, np.ndarray]]] = None) -> TemporalReport:
    """Warping errors of ``output`` (and ``second``) against the motion of ``inputs``; the three
    are sequences of same-size [H, W, C] frames of the same length (ValueError otherwise).
    ``motions``: the :func:`pair_motion` of each consecutive pair of ``inputs`` when the caller
    has them already (several outputs of one input: its flows are computed once)."""
    sums = np.zeros(4)  # output, input, second, occluded
    psnrs = []
    pairs = 0
    prev = None
    for i, frames in enumerate(_zipped(inputs, output, second)):
        _check_sizes(i, frames)
        if prev is not None:
            fwd, mask = _motion(motions, pairs, prev[0], frames[0])
            points = sample_points(fwd)  # once for the two or three videos
            sums[0] += pair_error(prev[1], frames[1], fwd, mask, points)
            sums[1] += pair_error(prev[0], frames[0], fwd, mask, points)
            if second is not None:
                sums[2] += pair_error(prev[2], frames[2], fwd, mask, points)
            sums[3] += 1.0 - float(mask.mean())
            pairs += 1
        if second is not None:
            psnrs.append(_psnr(frames[1], frames[2]))
        prev = frames
    if pairs == 0:
        raise ValueError("the videos need at least two frames")
    if motions is not None and len(motions) != pairs:
        raise ValueError(f"{len(motions)} motions given for {pairs} frame pairs")
    mean = sums / pairs
    return TemporalReport(pairs=pairs, output=float(mean[0]), input=float(mean[1]), occluded=float(mean[3]),
                          second=float(mean[2]) if second is not None else None,
                          psnr_between=float(np.mean(psnrs)) if psnrs else None)


def _motion(motions: Optional[Sequence[Tuple[np.ndarray, np.ndarray]]], k: int, prev: np.ndarray,
            cur: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Pair ``k``'s motion: given, or computed from the input frames ``prev`` and ``cur``."""
    if motions is None:
        return pair_motion(prev, cur)
    if k >= len(motions):
        raise ValueError(f"{len(motions)} motions given, but the videos have more frame pairs")
    return motions[k]


def _zipped(inputs: Iterable[np.ndarray], output: Iterable[np.ndarray],
            second: Optional[Iterable[np.ndarray]]) -> Iterator[Tuple[np.ndarray, ...]]:
    """Frames of the two (three) sequences together; ValueError when one ends before the others."""
    streams = [iter(inputs), iter(output)] + ([iter(second)] if second is not None else [])
    names = ["INPUT", "OUTPUT", "the second output"]
    index = 0
    while True:
        got = [next(s, None) for s in streams]
        if all(g is None for g in got):
            return
        if any(g is None for g in got):
            short = names[next(i for i, g in enumerate(got) if g is None)]
            raise ValueError(f"{short} ends after {index} frames, before the others; compare "
                             "videos of the same length")
        yield tuple(got)
        index += 1


def _check_sizes(index: int, frames: Tuple[np.ndarray, ...]) -> None:
    size = frames[0].shape[:2]
    for name, f in zip(("OUTPUT", "the second output"), frames[1:]):
        if f.shape[:2] != size:
            raise ValueError(f"frame {index}: {name} is {f.shape[1]}x{f.shape[0]}, INPUT is "
                             f"{size[1]}x{size[0]}; compare same-size videos")


MAX_PSNR = 100.0  # identical frames: a finite value, so one of them cannot make the mean infinite


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    x, y = _unit(a), _unit(b)
    mse = float(((x - y) ** 2).mean())
    return MAX_PSNR if mse == 0 else min(MAX_PSNR, 10 * math.log10(1.0 / mse))
