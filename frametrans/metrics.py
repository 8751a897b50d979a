"""Image and video-prediction metrics on float tensors, plus model size and cost.

All image metrics take ``pred`` and ``true`` of the same shape ``[N, C, H, W]`` (float, values in
[0, 1]) and return one value per frame, ``Tensor[N]`` (float64). Batched video tensors
``[B, T, C, H, W]`` are accepted too and flattened to ``N = B*T`` frames.

Definitions follow OpenSTL (``openstl/core/metrics.py``), the usual reference for Moving MNIST:

- MSE and MAE are *per-frame sums* over C, H, W, averaged over frames and sequences
  (``np.mean((pred - true)**2, axis=(0, 1)).sum()``), so Moving MNIST MSEs are in the tens.
- PSNR is ``-10 log10(mean squared error of the frame)`` for [0, 1] data, averaged over frames.
- SSIM is scikit-image's ``structural_similarity`` (uniform 7x7 window, K1 0.01, K2 0.03, sample
  covariance, mean over the valid region). OpenSTL calls it on float images without ``data_range``;
  the scikit-image versions it was written for then assumed the float dtype range [-1, 1], i.e.
  ``data_range = 2``, which inflates SSIM. :func:`openstl_metrics` reports both.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PSNR_CAP", "MetricAccumulator", "mse_per_frame", "mae_per_frame", "psnr", "ssim", "openstl_metrics", "count_params",
    "multiply_adds", "picture_scores",
]


#: Per-frame PSNR is capped here before averaging: one identical frame (a copy-last-frame baseline
#: can hit one when both digits bounce back to where they were) would make the mean infinite.
PSNR_CAP = 100.0


def _frames(pred: Tensor, true: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes and flatten to [N, C, H, W] float64 (float32 on MPS, which has no float64)."""
    if pred.shape != true.shape:
        raise ValueError(f"pred and true differ in shape: {tuple(pred.shape)} vs {tuple(true.shape)}")
    if pred.dim() < 3:
        raise ValueError(f"expected [N, C, H, W] or [B, T, C, H, W], got shape {tuple(pred.shape)}")
    if pred.dim() == 3:  # one [C, H, W] frame
        pred, true = pred[None], true[None]
    pred = pred.reshape(-1, *pred.shape[-3:])
    true = true.reshape(-1, *true.shape[-3:])
    dtype = torch.float32 if pred.device.type == "mps" else torch.float64
    return pred.to(dtype), true.to(dtype)


def mse_per_frame(pred: Tensor, true: Tensor) -> Tensor:
    """Sum over C, H, W of the squared error, per frame: [N, C, H, W] -> [N] (float64)."""
    p, t = _frames(pred, true)
    return (p - t).pow(2).flatten(1).sum(1)


def mae_per_frame(pred: Tensor, true: Tensor) -> Tensor:
    """Sum over C, H, W of the absolute error, per frame: [N, C, H, W] -> [N] (float64)."""
    p, t = _frames(pred, true)
    return (p - t).abs().flatten(1).sum(1)


def psnr(pred: Tensor, true: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per frame for [0, 1] data: [N, C, H, W] -> [N] (float64).

    ``-10 log10(mean over C, H, W of the squared error)`` (OpenSTL's ``PSNR`` with
    ``min_max_norm``). Identical frames give ``+inf`` (no warning, no NaN).
    """
    p, t = _frames(pred, true)
    mse = (p - t).pow(2).flatten(1).mean(1)
    out = torch.full_like(mse, float("inf"))
    nonzero = mse > 0
    out[nonzero] = -10.0 * torch.log10(mse[nonzero])
    return out


def ssim(pred: Tensor, true: Tensor, data_range: float = 1.0, win_size: int = 7) -> Tensor:
    """Structural similarity per frame, as scikit-image computes it: [N, C, H, W] -> [N] (float64).

    Equals ``skimage.metrics.structural_similarity(p, t, win_size=win_size, data_range=data_range,
    channel_axis=-1)`` on each HxWxC frame: uniform ``win_size`` window, K1 0.01, K2 0.03, sample
    (N-1) covariance, SSIM map averaged over the window-valid region and then over channels.
    H and W must be at least ``win_size``; ``win_size`` must be odd.
    """
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be odd and positive, got {win_size}")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    p, t = _frames(pred, true)
    n, c, h, w = p.shape
    if h < win_size or w < win_size:
        raise ValueError(f"frames of {h}x{w} are smaller than the SSIM window {win_size}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    np_ = win_size * win_size
    cov_norm = np_ / (np_ - 1.0)

    def mean(x: Tensor) -> Tensor:  # mean over each fully-inside window: [N, C, H-w+1, W-w+1]
        return F.avg_pool2d(x, win_size, stride=1)

    ux, uy = mean(p), mean(t)
    vx = cov_norm * (mean(p * p) - ux * ux)
    vy = cov_norm * (mean(t * t) - uy * uy)
    vxy = cov_norm * (mean(p * t) - ux * uy)
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return (num / den).flatten(1).mean(1)


def picture_scores(outs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> Dict[str, float]:
    """Mean quality of 8-bit pictures against their targets (pairs of the same [H, W, C] shape).

    Returns ``{"l1": grey levels (0-255 scale), "psnr": dB, "ssim": data range 1}``, each the mean
    over the pairs of the per-picture value (pictures may differ in size). Computed in float64.
    """
    l1, ps, ss = [], [], []
    for out, target in zip(outs, targets):
        a = torch.tensor(out).permute(2, 0, 1)[None].double() / 255
        b = torch.tensor(target).permute(2, 0, 1)[None].double() / 255
        l1.append(float((a - b).abs().mean()) * 255)
        ps.append(float(psnr(a, b)[0]))
        ss.append(float(ssim(a, b)[0]))
    return {"l1": float(np.mean(l1)), "psnr": float(np.mean(ps)), "ssim": float(np.mean(ss))}


def openstl_metrics(pred: Tensor, true: Tensor) -> Dict[str, object]:
    """Moving-MNIST-style scores of a batch of predicted sequences.

    pred, true: [B, T, C, H, W] float in [0, 1] (T = predicted frames).
    Returns floats ``mse``, ``mae`` (per-frame sums averaged over B and T, as OpenSTL), ``psnr``
    (mean over frames, each capped at :data:`PSNR_CAP` dB, where OpenSTL would return inf), ``ssim`` (data_range 1.0, the honest value), ``ssim_dr2`` (data_range 2.0,
    what OpenSTL effectively reports), and ``mse_per_step`` (list of T floats: MSE at each horizon
    step, averaged over B). Like OpenSTL, MSE/MAE use ``pred`` as given and SSIM/PSNR use it
    clipped to [0, 1]. Sums of these over several batches must be weighted by B to stay exact; use
    :class:`MetricAccumulator` for a test set.
    """
    acc = MetricAccumulator()
    acc.update(pred, true)
    return acc.result()


class MetricAccumulator:
    """Running sums of :func:`openstl_metrics` over batches of [B, T, C, H, W] sequences."""

    def __init__(self) -> None:
        self.sequences = 0
        self._sums: Dict[str, float] = {"mse": 0.0, "mae": 0.0, "psnr": 0.0, "ssim": 0.0, "ssim_dr2": 0.0}
        self._per_step: Tensor | None = None

    def update(self, pred: Tensor, true: Tensor) -> None:
        """Add a batch: pred, true [B, T, C, H, W] float in [0, 1]."""
        if pred.dim() != 5 or pred.shape != true.shape:
            raise ValueError(
                f"expected pred and true [B, T, C, H, W] of one shape, got {tuple(pred.shape)} "
                f"and {tuple(true.shape)}"
            )
        b, t = pred.shape[:2]
        mse = mse_per_frame(pred, true).view(b, t)
        clipped = pred.clamp(0.0, 1.0)
        self._sums["mse"] += float(mse.sum()) / t
        self._sums["mae"] += float(mae_per_frame(pred, true).sum()) / t
        self._sums["psnr"] += float(psnr(clipped, true).clamp(max=PSNR_CAP).sum()) / t
        self._sums["ssim"] += float(ssim(clipped, true, data_range=1.0).sum()) / t
        self._sums["ssim_dr2"] += float(ssim(clipped, true, data_range=2.0).sum()) / t
        step = mse.sum(0).cpu()
        if self._per_step is None:
            self._per_step = step
        elif self._per_step.shape != step.shape:
            raise ValueError(f"batches differ in frames: {self._per_step.numel()} vs {t}")
        else:
            self._per_step = self._per_step + step
        self.sequences += b

    def result(self) -> Dict[str, object]:
        """Averages over every sequence added so far (see :func:`openstl_metrics`)."""
        if self.sequences == 0:
            raise ValueError("no sequences were added")
        out: Dict[str, object] = {k: v / self.sequences for k, v in self._sums.items()}
        assert self._per_step is not None
        out["mse_per_step"] = [float(v) / self.sequences for v in self._per_step]
        out["sequences"] = self.sequences
        return out


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def multiply_adds(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on a zero input of ``input_shape`` (batch included).

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls; elementwise
    ops, pooling and interpolation are not counted); MACs = FLOPs / 2. Runs on the model's device in
    eval mode under ``inference_mode``; the model's train/eval mode is restored.
    """
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros(tuple(input_shape), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2
