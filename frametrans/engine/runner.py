"""The runner: the only stage that touches device, dtype, ``eval()`` and ``inference_mode()``.

It takes batches of same-size integer images and returns the model's output images at the same
size: convert on the device, pad to the model's size multiple, run (whole, or tiled when the frame
does not fit the memory budget), crop back, convert to integers.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from frametrans.engine import device as devices
from frametrans.engine import transforms
from frametrans.engine.padding import crop, min_side, pad_to_multiple
from frametrans.io.frame import Frame

log = logging.getLogger("frametrans")

ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass
class RunnerOptions:
    """How to run a model. None means: choose from the device, the model and the frame size."""

    device: str = "auto"
    precision: str = "auto"
    batch_size: Optional[int] = None
    tile: Optional[int] = None
    tile_overlap: Optional[int] = None
    max_memory: Optional[int] = None  # bytes of activations for one forward
    channels_last: bool = True

    def validate(self) -> None:
        """Reject impossible values before any work starts (one-line ValueError)."""
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.tile is not None and self.tile < 8:
            raise ValueError(f"--tile must be >= 8 pixels, got {self.tile}")
        if self.tile_overlap is not None and self.tile_overlap < 0:
            raise ValueError(f"--tile-overlap must be >= 0, got {self.tile_overlap}")
        if self.tile and self.tile_overlap is not None and self.tile_overlap >= self.tile:
            raise ValueError(
                f"--tile-overlap {self.tile_overlap} is too large for --tile {self.tile}: "
                "the overlap must be smaller than the tile"
            )


def default_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


class Runner:
    """Run a registered image-to-image model on batches of numpy images.

    model: a module from :mod:`frametrans.models` (it carries ``config.contract()``).
    forward: how to call it, e.g. ``lambda m, x: m.translate(x, style, "a2b")`` for MUNIT.
    """

    def __init__(self, model: nn.Module, options: Optional[RunnerOptions] = None,
                 forward: ForwardFn = default_forward) -> None:
        self.options = options or RunnerOptions()
        self.options.validate()
        self.device = devices.resolve_device(self.options.device)
        self.dtype = devices.resolve_precision(self.options.precision, self.device)
        self.contract = model.config.contract()
        self.forward = forward
        self.model = self._prepare(model)
        self.budget = self.options.max_memory or devices.default_memory_budget(self.device)
        self._bytes_per_pixel: Optional[float] = None
        self._radius: Optional[int] = None
        self.tiled_frames = 0

    def _prepare(self, model: nn.Module) -> nn.Module:
        model = model.eval().to(self.device)
        if self.options.channels_last and self.device.type != "mps":
            model = model.to(memory_format=torch.channels_last)
        return model

    # -- public ---------------------------------------------------------------------------------

    def run(self, frames: Iterable[Frame]) -> Iterator[Tuple[Frame, np.ndarray]]:
        """Yield ``(frame, output image)`` in input order; consecutive same-size frames are batched."""
        pending: List[Frame] = []
        source = iter(frames)
        while True:
            try:
                frame = next(source)
            except StopIteration:
                break
            except Exception:
                # the source failed (e.g. a truncated video): finish the frames read before it
                yield from self._flush(pending) if pending else ()
                raise
            if pending and not _same_kind(pending[0].image, frame.image):
                yield from self._flush(pending)
                pending = []
            pending.append(frame)
            if len(pending) >= self.batch_size_for(frame.image.shape):
                yield from self._flush(pending)
                pending = []
        if pending:
            yield from self._flush(pending)

    def _flush(self, frames: List[Frame]) -> Iterator[Tuple[Frame, np.ndarray]]:
        try:
            outs = self([f.image for f in frames])
        except torch.OutOfMemoryError:
            if len(frames) == 1:
                raise
            # retry smaller: halves of the batch (each may go on to tile), never dropping a frame
            log.warning("out of memory on a batch of %d; retrying in halves", len(frames))
            self._empty_cache()
            half = len(frames) // 2
            self.options.batch_size = max(1, half)
            yield from self._flush(frames[:half])
            yield from self._flush(frames[half:])
            return
        yield from zip(frames, outs)

    def _empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __call__(self, images: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Same-size images [H,W,C] uint8/uint16 -> output images [H,W,C_out] of the same dtype."""
        if not images:
            return []
        dtype = images[0].dtype
        max_value = 65535.0 if dtype == np.uint16 else 255.0
        h, w = images[0].shape[:2]
        with torch.inference_mode(), self._autocast():
            x = transforms.images_to_tensor(images, self.device)
            x = transforms.to_model_range(x, self.contract.value_range, max_value)
            x = transforms.match_channels(x, self.contract.in_channels * self.contract.frames_in)
            y = self._infer(x, h, w)
            y = transforms.from_model_range(y, self.contract.value_range, max_value)
        return transforms.tensor_to_images(y, dtype)

    def batch_size_for(self, shape: Tuple[int, ...]) -> int:
        """The batch size for frames of ``shape``: the option, else what fits the memory budget."""
        if self.options.batch_size:
            return self.options.batch_size
        h, w = shape[:2]
        per_frame = self.bytes_per_pixel() * _padded(h, w, self.contract.size_multiple)
        cap = 16 if self.device.type == "cuda" else 4
        return int(max(1, min(cap, self.budget // max(per_frame, 1))))

    # -- inference ------------------------------------------------------------------------------

    def _infer(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        tile = self._tile_size(h, w)
        x, pads = pad_to_multiple(x, self.contract.size_multiple,
                                  min_size=min_side(self.contract.size_multiple))
        if self.options.channels_last and self.device.type != "mps":
            x = x.contiguous(memory_format=torch.channels_last)
        if tile is None:
            y = self.forward(self.model, x)
        else:
            y = self._infer_tiled(x, tile)
        return crop(y, pads)

    def _infer_tiled(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        """Padded frames [B,C,H,W] through the model in overlapping tiles.

        Normalization statistics (InstanceNorm, AdaIN, LayerNorm, batch-stat BatchNorm) are taken
        over each whole frame and frozen while its tiles run, so tiles agree with the full-frame
        pass: exactly from a full pass when the frame fits the budget (the user asked for tiles),
        else exactly from a layer-by-layer tiled pass that needs only tile-sized memory.
        """
        from frametrans.engine.normstats import run_tiled_frozen

        self.tiled_frames += x.shape[0]
        fits = x.shape[-1] * x.shape[-2] <= self._pixels_that_fit()
        return run_tiled_frozen(
            self.model, x, tile=tile, overlap=self.overlap(tile), multiple=self.contract.size_multiple,
            fn=lambda t: self.forward(self.model, t), stats="full" if fits else "tiled",
            out_channels=self.contract.out_channels * self.contract.frames_out,
        )

    def _tile_size(self, h: int, w: int) -> Optional[int]:
        """None to run the whole frame, else the tile side (a multiple of the size multiple)."""
        m = self.contract.size_multiple
        if self.options.tile:
            return max(m, self.options.tile // m * m)
        fit = self._pixels_that_fit()
        if _padded(h, w, m) <= fit:
            return None
        side = int(fit ** 0.5) // m * m
        minimum = max(m, 2 * self.overlap(side) + m)
        if side < minimum:
            raise ValueError(
                f"--max-memory too small: a {minimum}x{minimum} tile does not fit "
                f"({self.bytes_per_pixel() * minimum * minimum / 2**20:.0f} MiB needed)"
            )
        log.info("frame %dx%d exceeds the memory budget: tiling with %d px tiles", w, h, side)
        return side

    def overlap(self, tile: int) -> int:
        """Tile overlap: the option, else enough for the model's receptive field (capped at 128)."""
        if self.options.tile_overlap is not None:
            return self.options.tile_overlap
        if self._radius is None:
            from frametrans.engine.receptive import receptive_field

            self._radius = receptive_field(
                self.model, self.contract.in_channels * self.contract.frames_in,
                self.contract.size_multiple, fn=lambda t: self.forward(self.model, t), max_radius=32)
        from frametrans.engine.receptive import suggest_overlap

        return suggest_overlap(self._radius, tile, self.contract.size_multiple, cap=128)

    def _pixels_that_fit(self) -> int:
        return int(self.budget / self.bytes_per_pixel())

    def bytes_per_pixel(self) -> float:
        """Estimated peak activation bytes per input pixel, measured once with a small probe."""
        if self._bytes_per_pixel is None:
            self._bytes_per_pixel = _probe_bytes_per_pixel(
                self.model, self.forward, self.contract, self.device, self.dtype)
        return self._bytes_per_pixel

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def _same_kind(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype


def _padded(h: int, w: int, m: int) -> int:
    return (-(-h // m) * m) * (-(-w // m) * m)


def _probe_bytes_per_pixel(model: nn.Module, forward: ForwardFn, contract, device: torch.device,
                           dtype: torch.dtype) -> float:
    """Run one small forward and record the largest layer output; peak ~ 4x that (skips, temps)."""
    side = max(64, contract.size_multiple)
    x = torch.zeros(1, contract.in_channels * contract.frames_in, side, side, device=device)
    largest = [x.numel()]

    def hook(_module: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            forward(model, x)
    finally:
        for h in handles:
            h.remove()
    element = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    return 4.0 * largest[0] * element / (side * side) + 4 * 4 * contract.in_channels
