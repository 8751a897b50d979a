"""Temporal windows: slide over a frame stream, stack frames for the next-frame predictor, roll out.

The predictor (:mod:`frametrans.models.predictor`) reads ``context`` frames stacked along channels,
oldest first, ``[B, context*C, H, W]`` in [0, 1], and writes ``horizon`` frames the same way. These
functions turn uint8 frames ``[H, W, C]`` into that tensor (matching channels: an RGB clip through
a grayscale model goes through BT.601 luma; a gray clip through an RGB model is repeated), pad to
the model's size multiple (reflect, bottom/right) and crop back, and predict more frames than one
pass gives by feeding predictions back (autoregressive rollout).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Iterable, Iterator, List, Optional, Sequence, TypeVar, Union

import numpy as np
import torch
from torch import nn

from frametrans.engine import transforms

if TYPE_CHECKING:
    from frametrans.engine.runner import Runner, RunnerOptions

__all__ = [
    "Window", "windows", "stack_frames", "unstack_frames", "rollout", "predict_clip", "predictor_runner",
    "to_model_channels",
]

T = TypeVar("T")


@dataclass
class Window(Generic[T]):
    """``context`` consecutive frames starting at ``start``, and the ``horizon`` frames after them."""

    start: int
    context: List[T]
    future: List[T]


def windows(frames: Iterable[T], context: int, horizon: int, stride: int = 1) -> Iterator[Window[T]]:
    """Slide over a stream: yield every window whose ``context + horizon`` frames all exist.

    Windows start at 0, stride, 2*stride, ...; only ``context + horizon`` frames are held in memory.
    With ``horizon=0`` the windows are context-only (``future`` empty).
    """
    if context < 1 or horizon < 0 or stride < 1:
        raise ValueError(f"need context >= 1, horizon >= 0, stride >= 1; got {context}, {horizon}, {stride}")
    span = context + horizon
    buf: collections.deque = collections.deque(maxlen=span)
    for index, frame in enumerate(frames):
        buf.append(frame)
        start = index - span + 1
        if start >= 0 and start % stride == 0:
            items = list(buf)
            yield Window(start, items[:context], items[context:])


def to_model_channels(images: Sequence[np.ndarray], channels: int) -> List[np.ndarray]:
    """uint8 images [H, W, C] -> uint8 images [H, W, channels] as the model sees them (luma for a
    grayscale model, repeated gray for an RGB one). For ground truth that must match predictions."""
    x = stack_frames(images, channels, torch.device("cpu"))
    return unstack_frames(x, channels)


def stack_frames(images: Sequence[np.ndarray], channels: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Same-size frames [H, W, C] (uint8, or uint16) -> [1, T*channels, H, W] in [0, 1], oldest
    first, on ``device``. C is adapted to ``channels`` (see :func:`transforms.match_channels`)."""
    if len(images) == 0:
        raise ValueError("no frames to stack")
    shape = images[0].shape
    for i, im in enumerate(images):
        if im.shape != shape:
            raise ValueError(f"frame {i} is {im.shape}, frame 0 is {shape}: frames must share one size")
    max_value = 65535.0 if images[0].dtype == np.uint16 else 255.0
    x = transforms.images_to_tensor(images, device)  # [T, C, H, W] integers
    x = transforms.to_model_range(x, (0.0, 1.0), max_value, dtype=dtype)
    x = transforms.match_channels(x, channels)  # [T, channels, H, W]
    return x.reshape(1, -1, *x.shape[-2:])


def unstack_frames(y: torch.Tensor, channels: int) -> List[np.ndarray]:
    """[1, K*channels, H, W] in [0, 1] -> K uint8 frames [H, W, channels] (rounded, clamped)."""
    if y.dim() != 4 or y.shape[0] != 1 or y.shape[1] % channels:
        raise ValueError(f"expected [1, K*{channels}, H, W], got {tuple(y.shape)}")
    frames = y.reshape(-1, channels, *y.shape[-2:])
    pixels = transforms.from_model_range(frames, (0.0, 1.0), 255.0)
    return transforms.tensor_to_images(pixels, np.dtype(np.uint8))


def rollout(model: nn.Module, x: torch.Tensor, steps: int, horizon: Optional[int] = None) -> torch.Tensor:
    """Predict ``steps`` frames from ``x [B, context*C, H, W]`` -> ``[B, steps*C, H, W]`` in [0, 1].

    horizon: frames kept from each model pass before feeding them back (at most the model's
    horizon; default all of them). ``horizon=1`` rolls out one frame at a time. H and W must
    already be multiples of the model's size multiple.
    """
    cfg = model.config
    horizon = cfg.horizon if horizon is None else horizon
    if not 1 <= horizon <= cfg.horizon:
        raise ValueError(f"horizon {horizon} must be between 1 and the model's horizon {cfg.horizon}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if horizon == cfg.horizon:
        return model.rollout(x, steps) if steps > cfg.horizon else model(x)[:, : steps * cfg.channels]
    c = cfg.channels
    window, outputs, produced = x, [], 0
    while produced < steps:
        pred = model(window)[:, : horizon * c]
        outputs.append(pred)
        produced += horizon
        window = torch.cat([window, pred], dim=1)[:, -cfg.context * c :]
    return torch.cat(outputs, dim=1)[:, : steps * c]


def predict_clip(
    model: nn.Module,
    frames: Sequence[np.ndarray],
    start: Optional[int] = None,
    context: Optional[int] = None,
    horizon: Optional[int] = None,
    steps: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    precision: str = "fp32",
    options: Optional["RunnerOptions"] = None,
) -> List[np.ndarray]:
    """Predict the frames after ``frames[start : start + context]``.

    model: a :class:`~frametrans.models.predictor.FramePredictor` (its config gives the defaults).
    frames: uint8 [H, W, C] images of one size (C 1 or 3); only the context window is read.
    start: first context frame (default: the last ``context`` frames of ``frames``).
    context: must equal the model's (it reads a fixed number of frames); checked, not adaptable.
    horizon: frames kept per pass (<= the model's horizon, default all). steps: frames to predict
        (default ``horizon``); more than ``horizon`` rolls out autoregressively.
    device, precision: as ``--device`` / ``--precision``; ``options`` (a RunnerOptions) replaces
        both and adds the memory budget, tiling and compile choices.

    Returns ``steps`` uint8 frames [H, W, model channels]. Runs through a
    :class:`~frametrans.engine.runner.Runner`: a frame larger than the memory budget is tiled (the
    whole rollout runs per tile, with an overlap for its receptive field), and out of memory is
    retried in tiles, as ``apply`` does.
    """
    from frametrans.engine.runner import RunnerOptions

    cfg = model.config
    context, horizon, steps = check_window(cfg, context, horizon, steps)
    n = len(frames)
    start = n - context if start is None else start
    if start < 0 or start + context > n:
        raise ValueError(
            f"context window {start}..{start + context - 1} does not fit a clip of {n} frames "
            f"(the model needs {context} frames)"
        )
    window = list(frames[start : start + context])
    shape = window[0].shape
    for i, im in enumerate(window):
        if im.shape != shape:
            raise ValueError(f"frame {i} is {im.shape}, frame 0 is {shape}: frames must share one size")
    options = options or RunnerOptions(device=str(device), precision=precision, compile="off")
    runner = predictor_runner(model, steps, horizon, options)
    stacked = np.concatenate([im if im.ndim == 3 else im[..., None] for im in window], axis=2)
    out = runner([stacked], "context window")[0]  # [H, W, steps * channels]
    if out.dtype == np.uint16:
        out = ((out.astype(np.uint32) + 128) // 257).astype(np.uint8)
    c = cfg.channels
    return [np.ascontiguousarray(out[..., k * c:(k + 1) * c]) for k in range(steps)]


def check_window(cfg, context: Optional[int], horizon: Optional[int], steps: Optional[int]
                 ) -> tuple[int, int, int]:
    """(context, horizon, steps) for a predictor config, defaults filled in; ValueError (one line,
    naming the option) for values the model cannot take."""
    context = cfg.context if context is None else context
    if context != cfg.context:
        raise ValueError(f"--context {context}: this model reads exactly {cfg.context} frames")
    horizon = cfg.horizon if horizon is None else horizon
    if not 1 <= horizon <= cfg.horizon:
        raise ValueError(f"--horizon {horizon}: must be 1..{cfg.horizon} (the model's horizon)")
    steps = horizon if steps is None else steps
    if steps < 1:
        raise ValueError(f"--steps {steps}: must be >= 1")
    return context, horizon, steps


def predictor_runner(model: nn.Module, steps: int, horizon: int, options: "RunnerOptions") -> "Runner":
    """A runner whose forward is the rollout of ``steps`` frames, ``horizon`` per pass: context
    frames stacked along channels in, ``steps`` frames stacked along channels out."""
    from frametrans.engine.runner import Runner

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return rollout(m, x, steps, horizon)

    forward.cache_token = f"rollout steps={steps} horizon={horizon}"  # type: ignore[attr-defined]
    return Runner(model, options, forward=forward, out_channels=steps * model.config.channels)
