"""Frame statistics for tiles: exact with tile-sized memory, and tiled runs with them frozen.

:func:`collect_norm_stats_tiled` measures the whole frame's normalization statistics (see
:mod:`frametrans.engine.normstats`) one layer at a time in tiles; :func:`run_tiled_frozen` runs a
frame in tiles with its statistics (from a full pass, a downscaled copy or the tiled measurement)
frozen, around :func:`frametrans.engine.tiling.run_tiled`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frametrans.engine.normstats import (NormStats, _Adapter, _adapter_for, _frozen_forward, _patched_forwards,
                                         _recording_forward, _unrecorded_forward, collect_norm_stats,
                                         frozen_norm_stats, has_frame_dependent_norm)
from frametrans.engine.tiling import blend_weight_sum, blend_window, iter_tile_batches, plan_tiles, run_tiled

__all__ = ["collect_norm_stats_tiled", "run_tiled_frozen"]

class _StopForward(Exception):
    """Raised by the layer being measured: nothing after it is needed in this pass."""


def _reduce_dims(adapter: _Adapter, xv: Tensor, mean: Tensor, name: str) -> tuple[int, ...]:
    """Dimensions of ``view(x)`` the statistics average over, batch (tiles of one frame) included."""
    if adapter.dims is not None:
        return (0, *adapter.dims)
    if mean.dim() != xv.dim() or any(m not in (1, s) for m, s in zip(mean.shape[1:], xv.shape[1:])):
        raise NotImplementedError(
            f"layer {name!r}: cannot tell which dimensions its statistics (shape {tuple(mean.shape)}) average "
            f"over for an input of shape {tuple(xv.shape)}; use collect_norm_stats on the whole frame"
        )
    spatial = {xv.dim() - 2, xv.dim() - 1}
    return (0, *sorted({d for d in range(1, xv.dim()) if mean.shape[d] == 1} | spatial))


class _ShareWeightedMoments:
    """Accumulates share-weighted first and second moments of one layer's input over all tiles."""

    def __init__(self, name: str, adapter: _Adapter) -> None:
        self.name, self.adapter = name, adapter
        self.shift: Tensor | None = None  # a rough mean, subtracted for numerical stability
        self.dims: tuple[int, ...] = ()
        self.sums: list[Tensor] = []

    def add(self, x: Tensor, share: Tensor) -> None:
        """``x [n, C, h, w]`` tiles of one frame; ``share [n, 1, h, w]`` their shares of each pixel."""
        xv = (self.adapter.view(x) if self.adapter.view is not None else x).float()
        if self.shift is None:
            probe = self.adapter.stats(x)[0] if self.adapter.dims is None else xv
            self.dims = _reduce_dims(self.adapter, xv, probe, self.name)
            self.shift = xv.mean(self.dims, keepdim=True)
        a = share.view(share.shape[0], *([1] * (xv.dim() - 3)), *share.shape[-2:])
        # two tile-sized temporaries (d, a*d), reused in place: the memory policy counts them
        d = xv - self.shift
        ad = a * d
        s0 = a.expand_as(d).sum(self.dims, keepdim=True, dtype=torch.float64)
        s1 = ad.sum(self.dims, keepdim=True, dtype=torch.float64)
        s2 = ad.mul_(d).sum(self.dims, keepdim=True, dtype=torch.float64)
        sums = [s0, s1, s2]
        self.sums = sums if not self.sums else [old + new for old, new in zip(self.sums, sums)]

    def result(self) -> tuple[Tensor, Tensor]:
        assert self.shift is not None, "no tiles were added"
        s0, s1, s2 = self.sums
        delta = s1 / s0
        var = (s2 / s0 - delta * delta).clamp_min(0)
        if self.adapter.unbiased:
            var = var * s0 / (s0 - 1).clamp_min(1)
        return (self.shift.double() + delta).float(), var.float()


def _measuring_forward(acc: _ShareWeightedMoments, share: dict) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        size = tuple(x.shape[-2:])
        if size not in share:  # the tiles' shares at this layer's resolution; they still sum to 1 per pixel
            share[size] = F.interpolate(share["input"], size=size, mode="area")
        acc.add(x, share[size])
        raise _StopForward

    return forward


def _out_of_order_forward(name: str) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        raise RuntimeError(f"normalization layer {name!r} ran out of the order seen on the first tile")

    return forward


def collect_norm_stats_tiled(
    model: nn.Module,
    x: Tensor,
    tile: int,
    overlap: int,
    multiple: int = 1,
    *,
    fn: Callable[[Tensor], object] | None = None,
    batch_tiles: int = 8,
    ramp: float = 0.5,
) -> NormStats:
    """The full-frame statistics of :func:`collect_norm_stats`, computed with tile-sized memory.

    Layer by layer in forward order: with the layers before it frozen to their (already measured)
    full-frame statistics, run the tiles up to the layer being measured, accumulate the mean and
    variance of its input over the frame (each pixel counted once: tiles are weighted by their share
    of the blend, which is zero next to cut edges), and stop the forward there. Exact wherever the
    part of the model before a layer has a receptive field radius within the blend's zero margin
    (see :func:`frametrans.engine.receptive.suggest_overlap`); beyond that, only a thin band along
    the seams is slightly off, which barely moves frame-wide averages.

    Cost: for ``L`` layers, one tiled pass of each prefix of the model, about ``L / 2`` full tiled
    passes (ResNet-9: about 9). Use it when the frame is too large to run whole and downscaled
    statistics are not accurate enough.

    Args:
        model, fn: as :func:`collect_norm_stats`; ``fn`` must run the normalization layers in the
            same order on every tile.
        x: ``[1, C, H, W]``, one padded frame.
        tile, overlap, multiple, batch_tiles, ramp: as :func:`frametrans.engine.tiling.run_tiled`.

    Returns:
        As :func:`collect_norm_stats` for this frame (population variances; unbiased for MUNIT's
        ``LayerNorm``).
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"collect_norm_stats_tiled takes one frame [1, C, H, W], got {tuple(x.shape)}")
    run = fn or model
    height, width = x.shape[-2:]
    boxes = plan_tiles(height, width, tile, overlap, multiple)
    if len(boxes) == 1:
        return collect_norm_stats(model, x, fn=run, multiple=multiple)
    modules = {name: m for name, m in model.named_modules()}
    adapters = {name: a for name, a in ((n, _adapter_for(m)) for n, m in modules.items()) if a is not None}
    if not adapters:
        return {}
    first = x[:, :, boxes[0].slices[0], boxes[0].slices[1]]
    order = _call_order(run, first, modules, adapters)
    weight_sum = blend_weight_sum(boxes, height, width, ramp=ramp).to(x.device)
    stats: NormStats = {}
    for name in order:
        stats[name] = _measure_layer(name, run, x, boxes, weight_sum, modules, adapters, stats, order,
                                     batch_tiles, ramp)
    return stats


def _call_order(run: Callable[[Tensor], object], first: Tensor, modules: dict, adapters: dict) -> list[str]:
    """The order the layers run in, from one tile (its statistics are thrown away)."""
    seen: NormStats = {}
    with _patched_forwards({modules[n]: _recording_forward(n, a, seen) for n, a in adapters.items()}):
        with torch.no_grad():
            run(first)
    return list(seen)  # dicts keep insertion order: the call order


def _measure_layer(name: str, run: Callable[[Tensor], object], x: Tensor, boxes: list, weight_sum: Tensor,
                   modules: dict, adapters: dict, stats: NormStats, order: list[str], batch_tiles: int,
                   ramp: float) -> tuple[Tensor, Tensor]:
    """The frame statistics of layer ``name``: the tiles run up to it, the layers before it frozen
    to ``stats``, each pixel weighted by its tile's share of the blend."""
    acc = _ShareWeightedMoments(name, adapters[name])
    share: dict = {}
    patches = {}
    for other, adapter in adapters.items():
        if other in stats:
            patches[modules[other]] = _frozen_forward(other, adapter, *stats[other])
        elif other == name:
            patches[modules[other]] = _measuring_forward(acc, share)
        elif other in order:
            patches[modules[other]] = _out_of_order_forward(other)
        else:
            patches[modules[other]] = _unrecorded_forward(other)
    with _patched_forwards(patches), torch.no_grad():
        for _, group, tiles in iter_tile_batches(x, boxes, batch_tiles):
            windows = [blend_window(b.height, b.width, *b.overlaps, ramp=ramp).to(x.device) for b in group]
            share.clear()
            share["input"] = torch.stack([w / weight_sum[b.slices] for w, b in zip(windows, group)])[:, None]
            try:
                run(tiles)
            except _StopForward:
                continue
            raise RuntimeError(f"normalization layer {name!r} did not run on a tile")
    return acc.result()


def run_tiled_frozen(
    model: nn.Module,
    x: Tensor,
    tile: int,
    overlap: int,
    multiple: int = 1,
    *,
    fn: Callable[[Tensor], Tensor] | None = None,
    stats: str = "full",
    stats_scale: float = 0.5,
    out_channels: int | None = None,
    batch_tiles: int = 8,
    ramp: float = 0.5,
) -> Tensor:
    """Tiled ``fn(x)`` (default ``model(x)``) with each frame's norm statistics frozen while its tiles run.

    For every frame ``x[b:b+1]``: collect its statistics, then
    :func:`frametrans.engine.tiling.run_tiled` inside :func:`frozen_norm_stats`. A model without
    frame-dependent normalization, or a frame that fits in one tile, runs without a statistics pass.
    Does not touch device, dtype or ``eval()``: the caller (the runner) owns those (the statistics
    passes run under ``torch.no_grad()``; wrap the call in ``inference_mode`` as usual).

    Args:
        stats: how to get each frame's statistics:
            ``"full"``: :func:`collect_norm_stats` on the whole frame: exact, one untiled forward
            (the memory of untiled inference);
            ``"downscaled"``: :func:`collect_norm_stats` at ``stats_scale``: approximate, cheap;
            ``"tiled"``: :func:`collect_norm_stats_tiled`: exact, tile-sized memory, about ``L / 2``
            extra tiled passes for ``L`` norm layers.
        stats_scale: the scale for ``stats="downscaled"``, in ``(0, 1]``.
        the rest: as :func:`frametrans.engine.tiling.run_tiled`; ``x`` is ``[B, C, H, W]``.
    """
    if stats not in ("full", "downscaled", "tiled"):
        raise ValueError(f"unknown stats method {stats!r}; use full, downscaled or tiled")
    fn = fn or model
    height, width = x.shape[-2:]
    single = len(plan_tiles(height, width, tile, overlap, multiple)) == 1
    if single or not has_frame_dependent_norm(model):
        return run_tiled(fn, x, tile, overlap, multiple, out_channels, batch_tiles, ramp=ramp)
    outs = []
    for b in range(x.shape[0]):
        frame = x[b : b + 1]
        if stats == "tiled":
            frame_stats = collect_norm_stats_tiled(
                model, frame, tile, overlap, multiple, fn=fn, batch_tiles=batch_tiles, ramp=ramp
            )
        else:
            scale = stats_scale if stats == "downscaled" else 1.0
            frame_stats = collect_norm_stats(model, frame, scale, fn=fn, multiple=multiple)
        with frozen_norm_stats(model, frame_stats):
            outs.append(run_tiled(fn, frame, tile, overlap, multiple, out_channels, batch_tiles, ramp=ramp))
    return torch.cat(outs)
