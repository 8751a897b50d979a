"""Measure a model's receptive field radius, to choose the tile overlap.

The radius ``r`` is how far (in input pixels) an output pixel can see: output pixel ``p`` depends on
input pixels within ``r`` of ``p``. It is measured, not derived from the layer list (skip
connections, upsampling and custom blocks make that fragile): take the gradient of a small block of
output pixels at the centre of a ``probe x probe`` random input with respect to the input, and find
how far the nonzero gradient reaches. Normalization layers that use input statistics would make every
output depend on every input; they are frozen to the probe's own statistics first
(:mod:`frametrans.engine.normstats`), which leaves the purely local part.

A radius at or beyond the probe's half-size means "at least this much" (e.g. a U-Net whose
bottleneck sees the whole input); the overlap is capped anyway.

It is a radius, not a width (the field is ``2r + 1`` pixels wide). Turn it into a tile overlap with
:func:`suggest_overlap`: exact tiling needs the blend window's zero margin to be ``>= r``, i.e. an
overlap of about ``4 r`` with the default ramp.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from frametrans.engine.normstats import collect_norm_stats, frozen_norm_stats

__all__ = ["receptive_field", "suggest_overlap"]

# model -> {(channels, multiple, probe, fn, max_radius, seed): radius}; entries go away with the model.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]]" = weakref.WeakKeyDictionary()


def _probe_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _measure(
    model: nn.Module,
    run: Callable[[Tensor], Tensor],
    channels: int,
    size: int,
    multiple: int,
    generator: torch.Generator,
) -> tuple[int, int]:
    """One random probe ``[1, channels, size, size]``: (radius seen, radius at which it saturates)."""
    device, dtype = _probe_device_dtype(model)
    block = min(multiple, 4, size)
    lo = (size // 2) // multiple * multiple  # block start, on the stride grid
    x = (torch.rand(1, channels, size, size, generator=generator) * 2 - 1).to(device, dtype)
    stats = collect_norm_stats(model, x, fn=run)
    x.requires_grad_(True)
    with frozen_norm_stats(model, stats):
        y = run(x)
    target = y[..., lo : lo + block, lo : lo + block].float().sum()
    (grad,) = torch.autograd.grad(target, x)
    reach = grad.abs().amax(dim=(0, 1)) > 0  # [size, size]
    rows = torch.nonzero(reach.any(dim=1)).flatten()
    cols = torch.nonzero(reach.any(dim=0)).flatten()
    if not rows.numel():
        return 0, lo
    hi = lo + block - 1
    radius = max(lo - int(rows.min()), int(rows.max()) - hi, lo - int(cols.min()), int(cols.max()) - hi)
    return radius, lo


def receptive_field(
    model: nn.Module,
    channels: int,
    multiple: int = 1,
    probe: int = 256,
    *,
    fn: Callable[[Tensor], Tensor] | None = None,
    max_radius: int | None = 64,
    seed: int = 0,
) -> int:
    """Receptive field radius of ``model`` in input pixels, measured on square random probes.

    Probes start at 64 px (rounded up to ``multiple``) and double while the gradient reaches the
    probe's border, up to ``probe``; so a small receptive field costs one small forward and backward
    pass, and only a large one pays for a ``probe``-sized pass.

    Args:
        model: the generator; its parameters, mode and buffers are not changed (the gradient is taken
            with ``torch.autograd.grad`` w.r.t. the input only; norm layers are frozen, so batch-norm
            running statistics are not updated). Runs on the model's device and dtype; a model on
            the CPU in float32 is the intended use (half precision may underflow at the fringes).
            Temporarily leaves ``inference_mode`` and enables grad, for the measurement only.
        channels: input channels.
        multiple: the model's size multiple; probes are rounded up to it, and the gradient is taken
            for a ``min(multiple, 4)``-pixel square block of outputs so every phase of the stride
            grid is covered.
        probe: the largest probe side in pixels.
        fn: what to differentiate, default ``model``; part of the cache key.
        max_radius: stop as soon as the radius is known to be at least this; the default 64 already
            asks for an overlap of 256 px (:func:`suggest_overlap` caps it at 128), and keeps a
            CycleGAN ResNet-9 to about 3 s on one CPU core instead of 22 s (``None``: up to
            ``probe``). Pass ``cap // 4`` of your overlap cap to pay only for what you can use.
        seed: seed of the random probes (an explicit ``torch.Generator``).

    Returns:
        ``r >= 0``. When the largest probe (or ``max_radius``) is reached, ``r`` is a lower bound
        (about ``probe / 2``, or ``>= max_radius``). Cached per model (weakly) and arguments.
    """
    if channels < 1 or multiple < 1 or probe < 1:
        raise ValueError(f"channels, multiple and probe must be positive, got {channels}, {multiple}, {probe}")
    key = (channels, multiple, probe, fn, max_radius, seed)
    cached = _CACHE.get(model, {})
    if key in cached:
        return cached[key]

    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False), torch.enable_grad():
        radius = _grow_probes(model, fn or model, channels, multiple, probe, max_radius, generator)
    _CACHE.setdefault(model, {})[key] = radius
    return radius


def _grow_probes(model: nn.Module, run: Callable[[Tensor], Tensor], channels: int, multiple: int,
                 probe: int, max_radius: int | None, generator: torch.Generator) -> int:
    """Probes of 64 px, doubling up to ``probe`` while the gradient reaches their border."""
    largest = math.ceil(probe / multiple) * multiple
    size = min(largest, math.ceil(64 / multiple) * multiple)
    while True:
        radius, border = _measure(model, run, channels, size, multiple, generator)
        saturated = radius >= border
        if not saturated:  # a second probe: a ReLU dead at one probe is rarely dead at both
            again, _ = _measure(model, run, channels, size, multiple, generator)
            radius = max(radius, again)
            saturated = radius >= border
        if not saturated or size >= largest or (max_radius is not None and radius >= max_radius):
            return radius
        size = min(largest, 2 * size)


def suggest_overlap(
    radius: int,
    tile: int,
    multiple: int = 1,
    *,
    ramp: float = 0.5,
    cap: int = 128,
) -> int:
    """The tile overlap for a model of receptive field ``radius``, for ``run_tiled(..., ramp=ramp)``.

    Tiling reproduces the full-frame output of a local model exactly when the zero margin of the
    blend window, ``floor(overlap * (1 - ramp) / 2)``, is at least ``radius``; this returns the
    smallest such overlap (``~ 2 * radius / (1 - ramp)``; ``4 * radius`` for the default ramp),
    capped at ``cap`` and at ``tile - multiple`` (so tiles still advance). A capped overlap is not
    exact: the blend hides the rest.
    """
    if radius < 0 or tile < 1 or multiple < 1 or not 0.0 <= ramp < 1.0:
        raise ValueError(f"bad arguments: radius={radius}, tile={tile}, multiple={multiple}, ramp={ramp}")
    overlap = math.ceil(2 * radius / (1.0 - ramp))
    while math.floor(overlap * (1.0 - ramp) / 2) < radius:
        overlap += 1
    return max(0, min(overlap, cap, tile - multiple))
