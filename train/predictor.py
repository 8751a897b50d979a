"""The multi-frame next-frame predictor: ``context`` frames in, ``horizon`` frames out, one U-Net.

Loss: MSE between predicted and true future frames (+ ``--l1-weight`` x L1), both in [0, 1].
Adam 1e-3 (0.9, 0.999), batch 16, constant learning rate by default. Data: windows of
context + horizon frames from videos or frame folders (``--stride`` keeps every Nth frame), or
the generated Moving MNIST / moving-digits sequences (two digits bouncing in --size x --size).
Validation: MSE, PSNR and SSIM of the predicted frames on held-out windows (the fixed validation
set of the generated sources, or ``--val-data``). Exports ``predictor.safetensors``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from frametrans.models.predictor import FramePredictor, PredictorConfig
from frametrans.train.base import Amp, Method, adam, eval_mode, image_grid
from frametrans.train.datasets import (GENERATED_SOURCES, DataError, TrainDataset, WindowDataset, data_path,
                                       load_sequences)
from frametrans.train.generated import GeneratedWindows
from frametrans.train.options import PredictorOptions


def build_data(o: PredictorOptions) -> Tuple[TrainDataset, List[Dict[str, torch.Tensor]], Optional[List[Dict[str, torch.Tensor]]]]:
    """(training windows, fixed windows for the sample grids, held-out windows or None)."""
    length = o.context + o.horizon
    crop = o.crop or o.size
    if o.data in GENERATED_SOURCES:
        if o.channels != 1:
            raise DataError(f"{o.data} is grayscale; use --channels 1")
        if crop != o.size:
            raise DataError(f"{o.data} frames are drawn at --size {o.size}; leave --crop unset or equal to it")
        if o.stride != 1:
            raise DataError(f"{o.data} has no frame rate to stride; leave --stride at 1")
        train = GeneratedWindows(o.data, o.size, length, o.seed, o.mnist_dir, o.num_digits)
        val = train.evaluation(o.val_count)
        return train, val[: o.sample_count], val
    path = data_path(o.data)
    if path is None:
        raise DataError("no training data: give --data (a video, a frame folder, or moving-mnist/moving-digits)")
    seqs = load_sequences(path, o.channels, o.size, o.max_frames)
    train = WindowDataset(seqs, length, o.stride, crop, o.seed, flip=o.flip, description=f"{path}")
    val = None
    if o.val_data:
        vpath = data_path(o.val_data)
        vseqs = load_sequences(vpath, o.channels, o.size, o.max_frames)  # type: ignore[arg-type]
        val = WindowDataset(vseqs, length, o.stride, crop, o.seed).evaluation(o.val_count)
    return train, (val or train.evaluation(o.sample_count))[: o.sample_count], val


def split_window(frames: torch.Tensor, context: int, horizon: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """[B, T, C, H, W] -> (input [B, context*C, H, W], target [B, horizon*C, H, W])."""
    b, t, c, h, w = frames.shape
    if t < context + horizon:
        raise ValueError(f"windows of {t} frames cannot hold {context} + {horizon}")
    x = frames[:, :context].reshape(b, context * c, h, w)
    y = frames[:, context : context + horizon].reshape(b, horizon * c, h, w)
    return x, y


class Predictor(Method):
    """Network ``P`` (FramePredictor)."""

    name = "predictor"

    options: PredictorOptions

    def __init__(self, options: PredictorOptions, device: torch.device, amp: Amp) -> None:
        super().__init__(options, device, amp)
        o = options  # the frames fit the U-Net (frametrans.train.sizes.check_fit, at resolution)
        net = FramePredictor(PredictorConfig(o.channels, o.context, o.horizon, o.width, o.depth))
        self.nets = {"P": net.to(device)}
        self.optimizers = {"P": adam(net.parameters(), o.lr, o.beta1, o.beta2)}
        self.exports = {"P": "predictor.safetensors"}

    def step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        o, amp = self.options, self.amp
        x, y = split_window(batch["frames"], o.context, o.horizon)  # in [0, 1]
        opt = self.optimizers["P"]
        opt.zero_grad(set_to_none=True)
        with amp.autocast():
            pred = self.nets["P"](x)
        losses = {"mse": F.mse_loss(pred.float(), y)}
        total = losses["mse"]
        if o.l1_weight > 0:
            losses["l1"] = F.l1_loss(pred.float(), y)
            total = total + o.l1_weight * losses["l1"]
        amp.backward(total)
        amp.step(opt)
        amp.update()
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        net = self.generators()["P"]
        with eval_mode([net]):
            return net(x.to(self.device)).float().cpu()

    def samples(self, batch: Dict[str, torch.Tensor]) -> np.ndarray:
        """Per window two rows: last context frame + true future | last context frame + predicted."""
        o = self.options
        frames = batch["frames"]
        x, y = split_window(frames, o.context, o.horizon)
        pred = self._predict(x)
        c = frames.shape[2]
        shown = min(o.horizon, 10)
        rows = []
        for i in range(frames.shape[0]):
            last = frames[i, o.context - 1]
            truth = [y[i, k * c : (k + 1) * c] for k in range(shown)]
            guess = [pred[i, k * c : (k + 1) * c] for k in range(shown)]
            rows += [[last] + truth, [last] + guess]
        return image_grid(rows, value_range=(0.0, 1.0))

    def validate(self, items: List[Dict[str, torch.Tensor]], batch_size: int) -> Optional[Dict[str, float]]:
        """Mean per-pixel MSE, PSNR (dB, capped at 100) and SSIM over all predicted frames."""
        from frametrans.metrics import psnr, ssim

        o = self.options
        mse, ps, ss = [], [], []
        for i in range(0, len(items), batch_size):
            frames = torch.stack([it["frames"] for it in items[i : i + batch_size]])
            x, y = split_window(frames, o.context, o.horizon)
            pred = self._predict(x)
            b, _, h, w = y.shape
            p = pred.reshape(b * o.horizon, -1, h, w)
            t = y.reshape(b * o.horizon, -1, h, w)
            mse.append((p - t).pow(2).flatten(1).mean(1))
            ps.append(psnr(p, t).clamp(max=100.0))
            ss.append(ssim(p, t, data_range=1.0))
        return {"mse": float(torch.cat(mse).mean()), "psnr": float(torch.cat(ps).mean()),
                "ssim": float(torch.cat(ss).mean())}
