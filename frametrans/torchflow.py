"""Dense optical flow as torch tensor ops, for the stabilizer's input motion on a GPU.

OpenCV's DIS runs on host threads: ~14 ms of one core for a 640x360 pair, ~9x that at 1080p, where
a GPU translates a frame in a few ms. This is Farnebäck's two-frame method (Farnebäck 2003,
"Two-frame motion estimation based on polynomial expansion"), coarse to fine, written with
convolutions, bilinear sampling and per-pixel 2x2 solves, so it runs wherever the model runs:

- polynomial expansion: each level's luma is fitted in every pixel's neighbourhood (Gaussian
  applicability, ``poly_n`` pixels each side, ``poly_sigma``) by ``x^T A x + b^T x + c``: one
  convolution with six least-squares filters (computed in float64, so TF32 convolutions cannot
  round them);
- with a displacement ``d`` so far, ``A = (A1(x) + A2(x + d)) / 2`` and
  ``db = -(b2(x + d) - b1(x)) / 2 + A d``; the new ``d`` solves ``sum(w A^T A) d = sum(w A^T db)``
  over a Gaussian window of ``winsize`` pixels; ``iters`` times per level;
- levels: the frames downscaled by ``scale`` (antialiased) until the shorter side would drop below
  ``min_side``, at most ``max_levels``; each level starts from the coarser level's flow.

Flow convention as :func:`frametrans.consistency.flow`: pixel ``p`` of ``src`` shows what ``dst``
shows at ``p + flow[p]``; x then y, in pixels.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from frametrans.consistency import luma
from frametrans.stabilize import TRACKED_LUMA

__all__ = ["DeviceMotion", "FlowParams", "farneback", "frame_flow", "levels_of", "poly_expand", "sample_at"]


@dataclass(frozen=True)
class FlowParams:
    """The method's settings (see the module doc); the defaults are the stabilizer's."""

    scale: float = 0.5
    min_side: int = 24
    max_levels: int = 6
    poly_n: int = 5
    poly_sigma: float = 1.1
    winsize: int = 15
    iters: int = 3


def farneback(src: torch.Tensor, dst: torch.Tensor, params: FlowParams = FlowParams()) -> torch.Tensor:
    """Flow from ``src`` to ``dst``: [B, 1, H, W] luma (any float or uint8 dtype, same shape and
    device) -> [B, 2, H, W] float32 (x, y displacements in pixels)."""
    if src.shape != dst.shape or src.dim() != 4 or src.shape[1] != 1:
        raise ValueError(f"farneback takes two [B, 1, H, W] tensors of one shape, got {tuple(src.shape)} "
                         f"and {tuple(dst.shape)}")
    flow = None
    for a, b in zip(_pyramid(src.float(), params), _pyramid(dst.float(), params)):
        flow = _level(a, b, _resized_flow(flow, a.shape[-2:]), params)
    assert flow is not None
    return flow


def _pyramid(image: torch.Tensor, p: FlowParams) -> List[torch.Tensor]:
    """Coarsest first: ``image`` downscaled by ``p.scale ** k`` (antialiased bilinear), k from the
    deepest level whose shorter side stays >= ``p.min_side`` down to 0 (the image itself)."""
    h, w = image.shape[-2:]
    out = [image]
    for k in range(1, levels_of(h, w, p)):
        size = (max(1, round(h * p.scale ** k)), max(1, round(w * p.scale ** k)))
        out.append(F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True))
    return out[::-1]


def _resized_flow(flow: torch.Tensor | None, size: torch.Size) -> torch.Tensor | None:
    """A coarser level's flow brought to ``size`` (H, W): resampled, and scaled to the new pixels."""
    if flow is None:
        return None
    h, w = flow.shape[-2:]
    up = F.interpolate(flow, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.stack([up[:, 0] * (size[1] / w), up[:, 1] * (size[0] / h)], 1)


def _level(src: torch.Tensor, dst: torch.Tensor, flow: torch.Tensor | None, p: FlowParams) -> torch.Tensor:
    """``p.iters`` updates of the flow at one level; ``flow`` None: start from zero."""
    r1 = poly_expand(src, p.poly_n, p.poly_sigma)
    r2 = poly_expand(dst, p.poly_n, p.poly_sigma)
    if flow is None:
        flow = torch.zeros_like(src).expand(-1, 2, -1, -1).contiguous()
    for _ in range(p.iters):
        flow = _update(r1, sample_at(r2, flow), flow, p.winsize)
    return flow


def _update(r1: torch.Tensor, r2: torch.Tensor, flow: torch.Tensor, winsize: int) -> torch.Tensor:
    """One solve: expansions ``r1`` of src at x and ``r2`` of dst at x + flow, [B, 6, H, W]
    (c, bx, by, axx, ayy, axy) -> the new flow [B, 2, H, W]."""
    a11 = (r1[:, 3] + r2[:, 3]) * 0.5
    a22 = (r1[:, 4] + r2[:, 4]) * 0.5
    a12 = (r1[:, 5] + r2[:, 5]) * 0.25  # the off-diagonal of A is axy / 2
    dx, dy = flow[:, 0], flow[:, 1]
    db1 = (r1[:, 1] - r2[:, 1]) * 0.5 + a11 * dx + a12 * dy
    db2 = (r1[:, 2] - r2[:, 2]) * 0.5 + a12 * dx + a22 * dy
    terms = torch.stack([a11 * a11 + a12 * a12, a12 * (a11 + a22), a12 * a12 + a22 * a22,
                         a11 * db1 + a12 * db2, a12 * db1 + a22 * db2], 1)
    g11, g12, g22, h1, h2 = _gaussian_blur(terms, winsize).unbind(1)
    det = g11 * g22 - g12 * g12 + 1e-3  # flat regions: h ~ 0, so the flow stays ~0 there
    return torch.stack([(g22 * h1 - g12 * h2) / det, (g11 * h2 - g12 * h1) / det], 1)


def sample_at(maps: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``maps`` [B, C, H, W] sampled at ``x + flow(x)`` (bilinear, edges replicated) -> [B, C, H, W]."""
    return _sample(maps, *_points(flow))


def _points(flow: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``flow`` [B, 2, H, W] -> where each pixel samples, x and y: float32 [B, H, W] each."""
    gy, gx = _coords(*flow.shape[-2:], flow.device)
    return gx + flow[:, 0], gy + flow[:, 1]


def _sample(maps: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``maps`` [B, C, H, W] sampled at pixel coordinates ``x``, ``y`` [B, H, W] (bilinear, edges
    replicated, as ``cv2.remap`` with BORDER_REPLICATE) -> [B, C, H, W]."""
    h, w = maps.shape[-2:]
    grid = torch.stack([x * (2.0 / max(w - 1, 1)) - 1.0, y * (2.0 / max(h - 1, 1)) - 1.0], -1)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _coords(h: int, w: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates y [H, 1] and x [1, W] (float32, broadcasting to [H, W]), made on the
    calling thread's stream: a tensor cached for all threads could be read by one stream before
    another stream has written it."""
    return (torch.arange(h, dtype=torch.float32, device=device).view(h, 1),
            torch.arange(w, dtype=torch.float32, device=device).view(1, w))


def poly_expand(image: torch.Tensor, n: int, sigma: float) -> torch.Tensor:
    """[B, 1, H, W] float -> [B, 6, H, W] float32: per pixel, the weighted least-squares fit of
    ``c + bx x + by y + axx x^2 + ayy y^2 + axy x y`` to the ``2n+1`` square neighbourhood
    (Gaussian weights of ``sigma`` pixels; edges replicated). x runs along columns, y along rows.

    The weights and the basis are separable, so the fit is six separable correlations (three along
    rows, then six along columns: 9 x (2n+1) multiply-adds a pixel) mixed by one constant 6x6
    matrix; in float64 (MPS: float32), so that no TF32 convolution rounds them."""
    exact = torch.float32 if image.device.type == "mps" else torch.float64
    taps, mix = _poly_kernels(n, sigma, image.device, exact)
    g = taps[0]
    rows = F.conv2d(F.pad(image.to(exact), (n, n, 0, 0), mode="replicate"), taps.view(3, 1, 1, -1))
    cols = F.pad(rows, (0, 0, n, n), mode="replicate")
    del rows
    b, _, h, w = image.shape
    sums = torch.empty(b, 6, h, w, dtype=exact, device=image.device)  # sum of w * basis_j * f
    sums[:, [0, 2, 4]] = F.conv2d(cols[:, 0:1], taps.view(3, 1, -1, 1))  # 1, y, y^2 (rows' g)
    sums[:, [1, 5]] = F.conv2d(cols[:, 1:2], taps[:2].view(2, 1, -1, 1))  # x, xy (rows' t g)
    sums[:, 3:4] = F.conv2d(cols[:, 2:3], g.view(1, 1, -1, 1))  # x^2 (rows' t^2 g)
    del cols
    return F.conv2d(sums, mix.view(6, 6, 1, 1)).float()


@functools.lru_cache(maxsize=8)
def _poly_kernels(n: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(g, t g, t^2 g) [3, 2n+1] over offsets t = -n..n, and the inverse of the normal equations'
    matrix [6, 6] (basis 1, x, y, x^2, y^2, xy under the weights g(x) g(y)); computed in float64 on
    the CPU, then ``dtype`` on ``device`` (cached: a blocking copy, made once, complete before any
    thread reads it)."""
    t = torch.arange(-n, n + 1, dtype=torch.float64)
    g = torch.exp(-t * t / (2 * sigma * sigma))
    y, x = torch.meshgrid(t, t, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    basis = torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y], 1)  # [K, 6]
    weights = torch.exp(-(x * x + y * y) / (2 * sigma * sigma))
    mix = torch.linalg.inv(basis.T @ (basis * weights[:, None]))
    return (torch.stack([g, t * g, t * t * g]).to(dtype).to(device), mix.to(dtype).to(device))


def _gaussian_blur(maps: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> the same, averaged over a ``size`` x ``size`` Gaussian window (separable,
    edges replicated; sigma as OpenCV's getGaussianKernel gives for that size)."""
    c = maps.shape[1]
    k = _gauss_kernel(size, maps.device)
    r = size // 2
    out = F.conv2d(F.pad(maps, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, size),
                   groups=c)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, size, 1),
                    groups=c)


@functools.lru_cache(maxsize=8)
def _gauss_kernel(size: int, device: torch.device) -> torch.Tensor:
    """The normalized 1-D Gaussian [size] float32 on ``device`` (cached like :func:`_poly_kernels`)."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-t * t / (2 * sigma * sigma))
    return (k / k.sum()).to(device)


def levels_of(height: int, width: int, params: FlowParams = FlowParams()) -> int:
    """How many pyramid levels :func:`farneback` uses for a frame of this size."""
    levels = 1
    while levels < params.max_levels and min(height, width) * params.scale ** levels >= params.min_side:
        levels += 1
    return levels


def frame_flow(src: np.ndarray, dst: np.ndarray, device: torch.device | str = "cpu",
               params: FlowParams = FlowParams()) -> np.ndarray:
    """:func:`farneback` on two frames as :func:`frametrans.consistency.flow` takes them ([H, W, C]
    uint8/uint16, their luma) -> flow [H, W, 2] float32 on the host: a
    :data:`frametrans.consistency.FlowFn`, e.g. ``input_motion``'s ``estimate``."""
    src_t, dst_t = (torch.from_numpy(luma(f))[None, None].to(device) for f in (src, dst))
    return farneback(src_t, dst_t, params)[0].permute(1, 2, 0).contiguous().cpu().numpy()


class DeviceMotion:
    """:func:`frametrans.stabilize.input_motion`'s result with the flow computed here, on a torch
    ``device`` (the model's GPU): the flow, the tracked pixels (:func:`frametrans.stabilize.tracked`'s
    rule) and the sample points on the device; only
    the luma goes up (1 byte a pixel) and the motion comes back (9 bytes a pixel). Thread-safe: on
    CUDA each calling thread queues its work on a stream of its own, beside the model's.
    ``workers``: the threads worth calling it from (:class:`frametrans.apply.temporal.MotionAhead`):
    one, since the device runs the flows one after another anyway, and each flow holds memory the
    model's ``--max-memory`` budget does not count (1.5 GB at 1080p when run on the CPU; on CUDA
    not measured yet)."""

    workers = 1

    def __init__(self, device: torch.device | str, params: FlowParams = FlowParams()) -> None:
        self.device = torch.device(device)
        self.params = params
        self._local = threading.local()

    def __call__(self, image: np.ndarray, previous: np.ndarray) -> Tuple[Tuple[np.ndarray, np.ndarray], np.ndarray]:
        """Input frames [H, W, C] (uint8/uint16, as the model saw them) -> ((x, y) float32 [H, W]
        each: where each pixel of ``image`` was in ``previous``; tracked [H, W] bool)."""
        with self._stream():
            cur, prev = (torch.from_numpy(luma(f)).to(self.device) for f in (image, previous))
            fwd = farneback(cur[None, None], prev[None, None], self.params)
            x, y, keep = _motion(fwd[0], cur, prev)
            points = torch.stack([x, y]).cpu().numpy()
            return (points[0], points[1]), keep.cpu().numpy()

    def _stream(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        if getattr(self._local, "stream", None) is None:
            self._local.stream = torch.cuda.Stream(self.device)
        return torch.cuda.stream(self._local.stream)


def _motion(fwd: torch.Tensor, cur: torch.Tensor, prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The flow [2, H, W] of frame t to t-1 and the two frames' luma (uint8 [H, W]) -> sample
    points x, y (float32 [H, W]) and the tracked pixels (bool [H, W]): from inside frame t-1, luma
    within :data:`frametrans.stabilize.TRACKED_LUMA` (:func:`frametrans.stabilize.tracked`)."""
    h, w = fwd.shape[-2:]
    x, y = _points(fwd[None])
    warped = _sample(prev[None, None].float(), x, y)[0, 0].round()
    x, y = x[0], y[0]
    keep = ((cur.float() - warped).abs() < TRACKED_LUMA) & (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return x, y, keep
