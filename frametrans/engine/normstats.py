"""Make tiled inference match the full-frame pass for models with frame-dependent normalization.

An ``InstanceNorm2d`` normalizes each channel with the mean and variance of the *whole* input it
sees. Run it on a tile and it normalizes with the tile's statistics instead: tiles get different
colours and the seams show, however large the overlap. The fix, in two steps:

1. :func:`collect_norm_stats` runs the model once over the whole (padded) frame and records, for
   every frame-dependent normalization layer, the statistics it used: exactly (``scale=1``), or from
   a downscaled copy of the frame (``scale < 1``, cheap, approximate). For frames too large to run
   whole, :func:`collect_norm_stats_tiled` gets the exact statistics with tile-sized memory, one
   layer at a time (slower: about ``L / 2`` tiled passes for ``L`` layers).
2. :func:`frozen_norm_stats` makes those layers normalize with the recorded statistics while the
   tiles run. Each layer then acts as a fixed per-channel affine map, the model becomes purely
   local, and tiles blended with a large enough overlap reproduce the full-frame output.

:func:`frametrans.engine.tiledstats.run_tiled_frozen` does both, frame by frame, around
:func:`frametrans.engine.tiling.run_tiled`; :mod:`frametrans.engine.tiledstats` also holds
:func:`~frametrans.engine.tiledstats.collect_norm_stats_tiled`.

Layers handled (everything else is left alone):

- ``torch.nn.BatchNorm2d`` using batch statistics (training mode, or ``track_running_stats=False``):
  per-channel statistics over the whole input batch (the frame, when run frame by frame). In eval
  mode with running statistics it is already frame-independent: nothing to do. The frozen and the
  recording forwards never update ``running_mean``/``running_var``.
- ``torch.nn.InstanceNorm2d`` using input statistics (``affine`` or not): per (sample, channel).
- ``torch.nn.GroupNorm``: per (sample, group).
- Any module implementing the protocol (checked first, so it also overrides the cases above)::

      norm_stats(x: Tensor) -> tuple[Tensor, Tensor]          # (mean, var), broadcastable to x
      forward_with_stats(x: Tensor, mean: Tensor, var: Tensor) -> Tensor

  ``var`` is whatever the layer's own forward uses (biased for instance/batch norm); the
  statistics must be averages over spatial positions (possibly also over channels), and
  ``forward_with_stats`` must accept statistics whose batch size is 1 or ``x``'s batch size (they
  are expanded along dim 0 before the call). :func:`collect_norm_stats_tiled` reads which
  dimensions are averaged from the mean's shape (its size-1 dimensions) and computes population
  variances.
- Without the protocol, MUNIT's ``LayerNorm`` (attributes ``num_features, eps, affine`` and
  ``gamma, beta`` when affine; per-sample mean and unbiased std over C, H, W, normalizing with
  ``(x - mean) / (std + eps)``) and ``AdaptiveInstanceNorm2d`` (attributes ``num_features, eps,
  weight, bias``; weight/bias of shape ``[B_style * C]`` assigned from the style code) are
  recognised by class name when those attributes line up. A module named like them whose
  attributes don't raises ``NotImplementedError``, as does a ``torch.nn.LayerNorm`` over more than
  the last dimension.

Batches of tiles: statistics recorded for a batch of ``B`` samples have batch size ``B`` (batch norm:
1). In the frozen forward, statistics with batch size 1 are repeated along the batch, so a batch of
tiles all cut from **one** frame works with that frame's statistics; statistics with batch size
``N`` are applied sample by sample to an input of batch ``N`` (the whole batch of frames at once).
Any other combination raises, except the one that cannot be told apart: statistics of ``B`` frames
with a batch of exactly ``B`` tiles would be applied tile by tile. So collect statistics per frame
(``x[b:b+1]``) when tiling, as :func:`run_tiled_frozen` does; ``run_tiled`` never mixes frames in a
batch of tiles.

Only normalization is made frame-global here. Other non-local operations (global pooling, MUNIT's
style encoder, attention over the whole image) still see one tile: compute such things on the whole
frame and pass them into ``fn`` (e.g. a MUNIT style code).

Mechanism: while a context is active, each handled module gets an instance attribute ``forward``
that shadows its class's ``forward`` (other hooks still run); on exit the previous state is
restored, on exceptions too. Apply it to the plain ``nn.Module``, not to a ``torch.compile``d or
scripted wrapper.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frametrans.models import norms


__all__ = [
    "NormStats",
    "collect_norm_stats",
    "frozen_norm_stats",
    "has_frame_dependent_norm",
    "frame_dependent_norm_layers",
    "frame_dependent_norms",
    "downscale_frame",
]

#: module name (as in ``model.named_modules()``) -> (mean, var), float32, detached.
NormStats = dict[str, tuple[Tensor, Tensor]]

_MISSING = object()


# --------------------------------------------------------------------------------------------------
# Adapters: how to compute and apply the statistics of one kind of layer.


@dataclass(frozen=True)
class _Adapter:
    """How one kind of layer computes and applies its statistics.

    ``view`` and ``dims`` describe the statistics for :func:`collect_norm_stats_tiled`: the statistics are
    means over ``dims`` (besides the batch) of ``view(x)``; ``dims=None`` means: infer them from the
    shape of the recorded mean (protocol layers).
    """

    kind: str
    stats: Callable[[Tensor], tuple[Tensor, Tensor]]
    apply: Callable[[Tensor, Tensor, Tensor], Tensor]
    dims: tuple[int, ...] | None = (2, 3)
    view: Callable[[Tensor], Tensor] | None = None
    unbiased: bool = False


def _per_channel_stats(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of ``x`` over ``dims``, float32, keeping dims."""
    if dims == (2, 3) and norms.fused_applies(x):
        return norms.channel_moments(x)
    var, mean = torch.var_mean(x.float(), dim=dims, keepdim=True, correction=0)
    return mean, var


def _instance_apply(module: nn.Module, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """InstanceNorm2d / BatchNorm2d with statistics ``[1 or B, C, 1, 1]``:
    :func:`frametrans.models.norms.normalize` with the module's affine parameters."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    return norms.normalize(x, mean, var, None if weight is None else weight.view(1, -1),
                           None if bias is None else bias.view(1, -1), module.eps)


def _instance_adapter(module: nn.Module) -> _Adapter:
    return _Adapter("instance", lambda x: _per_channel_stats(x, (2, 3)),
                    lambda x, mean, var: _instance_apply(module, x, mean, var))


def _batch_adapter(module: nn.Module) -> _Adapter:
    def apply(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return _instance_apply(module, x, mean, var)  # the same affine map, one set for the batch

    return _Adapter("batch", lambda x: _per_channel_stats(x, (0, 2, 3)), apply)


def _group_adapter(module: nn.GroupNorm) -> _Adapter:
    groups = module.num_groups

    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        n, c, h, w = x.shape
        return _per_channel_stats(x.reshape(n, groups, c // groups, h, w), (2, 3, 4))

    def apply(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        n, c, h, w = x.shape
        xg = x.reshape(n, groups, c // groups, h, w)
        y = norms.scale_shift(xg, torch.rsqrt(var + module.eps), -mean * torch.rsqrt(var + module.eps))
        y = y.reshape(n, c, h, w)
        if module.affine:
            y = y * module.weight.view(1, -1, 1, 1).to(y.dtype) + module.bias.view(1, -1, 1, 1).to(y.dtype)
        return y

    def view(x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, groups, c // groups, h, w)

    return _Adapter("group", stats, apply, dims=(2, 3, 4), view=view)


def _protocol_adapter(module: nn.Module) -> _Adapter:
    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = module.norm_stats(x)
        return mean.float(), var.float()

    return _Adapter("protocol", stats, module.forward_with_stats, dims=None)


def _munit_layernorm_adapter(module: nn.Module) -> _Adapter:
    """MUNIT ``LayerNorm``: per-sample mean and *unbiased* std over (C, H, W), ``/(std + eps)``."""

    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        if norms.fused_applies(x):
            return norms.sample_moments(x)
        var, mean = torch.var_mean(x.float().reshape(x.shape[0], -1), dim=1, correction=1)
        return mean.view(-1, 1, 1, 1), var.view(-1, 1, 1, 1)

    def apply(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:  # 1 / (std + eps) = rsqrt((std + eps)^2 + 0)
        gamma, beta = (module.gamma.view(1, -1), module.beta.view(1, -1)) if module.affine else (None, None)
        return norms.normalize(x, mean, (var.float().sqrt() + module.eps) ** 2, gamma, beta, 0.0)

    return _Adapter("munit_layernorm", stats, apply, dims=(1, 2, 3), unbiased=True)


def _munit_adain_adapter(module: nn.Module) -> _Adapter:
    """MUNIT ``AdaptiveInstanceNorm2d``: instance norm with weight/bias ``[B_style * C]`` from the style."""

    def apply(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        n, c = x.shape[:2]
        if module.weight is None or module.bias is None:
            raise RuntimeError("AdaptiveInstanceNorm2d: assign the AdaIN parameters (style code) before running")
        weight, bias = module.weight.view(-1, c), module.bias.view(-1, c)
        if weight.shape[0] not in (1, n):
            raise ValueError(
                f"AdaIN parameters are for {weight.shape[0]} samples but the input has {n}; repeat the "
                "style code once per tile, or use one style code"
            )
        return norms.normalize(x, mean, var, weight, bias, module.eps)

    return _Adapter("munit_adain", lambda x: _per_channel_stats(x, (2, 3)), apply)


def _has(module: nn.Module, *names: str) -> bool:
    return all(hasattr(module, n) for n in names)


def _adapter_for(module: nn.Module) -> _Adapter | None:
    """The adapter of a frame-dependent normalization layer, ``None`` for anything else."""
    if callable(getattr(module, "norm_stats", None)) and callable(getattr(module, "forward_with_stats", None)):
        return _protocol_adapter(module)
    if isinstance(module, nn.InstanceNorm2d):
        uses_input_stats = module.training or not module.track_running_stats or module.running_mean is None
        return _instance_adapter(module) if uses_input_stats else None
    if isinstance(module, nn.BatchNorm2d):
        uses_batch_stats = module.training or not module.track_running_stats or module.running_mean is None
        return _batch_adapter(module) if uses_batch_stats else None
    if isinstance(module, nn.GroupNorm):
        return _group_adapter(module)
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) == 1:
            return None  # per position (channels-last use): frame-independent
        raise NotImplementedError(
            f"torch.nn.LayerNorm over {tuple(module.normalized_shape)} depends on the frame size and "
            "cannot be tiled"
        )
    name = type(module).__name__
    if name == "LayerNorm":
        if _has(module, "num_features", "eps", "affine"):
            if not module.affine or _has(module, "gamma", "beta"):
                return _munit_layernorm_adapter(module)
    elif name == "AdaptiveInstanceNorm2d":
        if _has(module, "num_features", "eps", "weight", "bias"):
            return _munit_adain_adapter(module)
    else:
        return None
    raise NotImplementedError(
        f"{type(module).__module__}.{name} looks like a normalization layer but its attributes are not the "
        "MUNIT ones; give it norm_stats(x) -> (mean, var) and forward_with_stats(x, mean, var) to tile it"
    )


def frame_dependent_norm_layers(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_modules()``) of the layers whose output depends on the whole frame."""
    return [name for name, module in model.named_modules() if _adapter_for(module) is not None]


def frame_dependent_norms(model: nn.Module) -> list[nn.Module]:
    """The modules named by :func:`frame_dependent_norm_layers`."""
    return [module for module in model.modules() if _adapter_for(module) is not None]


def has_frame_dependent_norm(model: nn.Module) -> bool:
    """True if some layer normalizes with statistics of its input (so naive tiling changes the output).

    False for BatchNorm2d in eval mode (running statistics) and for models without normalization.
    Raises ``NotImplementedError`` for normalization layers it cannot handle (see the module doc).
    """
    return bool(frame_dependent_norm_layers(model))


# --------------------------------------------------------------------------------------------------
# Temporarily replacing forwards.


@contextlib.contextmanager
def _patched_forwards(patches: dict[nn.Module, Callable[..., Tensor]]) -> Iterator[None]:
    """Shadow each module's ``forward`` with an instance attribute; restore the previous state on exit."""
    saved: list[tuple[nn.Module, object]] = []
    try:
        for module, forward in patches.items():
            saved.append((module, module.__dict__.get("forward", _MISSING)))
            module.forward = forward
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is _MISSING:
                del module.forward
            else:
                module.forward = previous


def _expand(t: Tensor, n: int, name: str) -> Tensor:
    if t.shape[0] == n:
        return t
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    raise ValueError(
        f"statistics of layer {name!r} are for a batch of {t.shape[0]} but the input has {n} samples; "
        "collect statistics per frame (x[b:b+1]) to run tiles of that frame"
    )


def _fit_batch(adapter: _Adapter, mean: Tensor, var: Tensor, n: int, name: str) -> tuple[Tensor, Tensor]:
    """Statistics for an input batch of ``n``: repeated when recorded for one frame (see module doc)."""
    if adapter.kind == "batch":  # [1, C, 1, 1]: one set for the whole batch, broadcasts as it is
        return mean, var
    return _expand(mean, n, name), _expand(var, n, name)


def _frozen_forward(name: str, adapter: _Adapter, mean: Tensor, var: Tensor) -> Callable[[Tensor], Tensor]:
    cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def forward(x: Tensor) -> Tensor:
        key = (x.device, x.shape[0])
        if key not in cache:
            cache[key] = _fit_batch(adapter, mean.to(x.device), var.to(x.device), x.shape[0], name)
        return adapter.apply(x, *cache[key])

    return forward


def _unrecorded_forward(name: str) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        raise RuntimeError(
            f"normalization layer {name!r} ran while statistics were frozen, but no statistics were recorded "
            "for it; run collect_norm_stats with the same function as the tiles"
        )

    return forward


@contextlib.contextmanager
def frozen_norm_stats(model: nn.Module, stats: NormStats | None) -> Iterator[nn.Module]:
    """Within the block, ``model``'s frame-dependent norm layers normalize with ``stats``.

    Args:
        model: the module whose layers were recorded by :func:`collect_norm_stats`.
        stats: from :func:`collect_norm_stats`; ``None`` or ``{}`` for a model without
            frame-dependent normalization (then nothing changes).

    Yields ``model``. A frame-dependent layer with no recorded statistics raises if it runs. Statistics
    of batch size 1 are repeated along the input batch (tiles of one frame); see the module doc.
    The model's state (forwards, hooks, buffers, parameters) is the same after the block as before,
    also when the block raises.
    """
    stats = stats or {}
    modules = dict(model.named_modules())
    unknown = sorted(set(stats) - set(modules))
    if unknown:
        raise KeyError(f"statistics for layers that are not in the model: {', '.join(unknown[:5])}")
    patches: dict[nn.Module, Callable[[Tensor], Tensor]] = {}
    for name, module in modules.items():
        adapter = _adapter_for(module)
        if adapter is None:
            if name in stats:
                raise ValueError(
                    f"layer {name!r} does not normalize with input statistics (eval-mode batch norm?)"
                )
            continue
        if name in stats:
            mean, var = stats[name]
            patches[module] = _frozen_forward(name, adapter, mean, var)
        elif stats:
            patches[module] = _unrecorded_forward(name)
    with _patched_forwards(patches):
        yield model


# --------------------------------------------------------------------------------------------------
# Recording the statistics.


def _recording_forward(name: str, adapter: _Adapter, out: NormStats) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        if name in out:
            raise NotImplementedError(
                f"normalization layer {name!r} runs more than once per forward; its statistics cannot be frozen"
            )
        mean, var = adapter.stats(x)
        out[name] = (mean.detach(), var.detach())
        return adapter.apply(x, mean, var)

    return forward


def downscale_frame(x: Tensor, scale: float, multiple: int = 1) -> Tensor:
    """Area-downscale ``x [B, C, H, W]`` by ``scale`` to a size that is a multiple of ``multiple``.

    The target side is ``round(side * scale / multiple) * multiple``, at least ``multiple`` (the aspect
    ratio may shift by up to half a ``multiple``). Returns ``x`` itself for ``scale == 1``.
    """
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"stats scale must be in (0, 1], got {scale}")
    if scale == 1.0:
        return x
    size = [max(multiple, round(side * scale / multiple) * multiple) for side in x.shape[-2:]]
    if list(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="area")


def collect_norm_stats(
    model: nn.Module,
    x: Tensor,
    scale: float = 1.0,
    *,
    fn: Callable[[Tensor], object] | None = None,
    multiple: int = 1,
) -> NormStats:
    """Run ``model`` over the whole frame and record each frame-dependent norm layer's statistics.

    Args:
        model: the module whose layers are recorded (its state is not changed: batch-norm running
            statistics are not updated).
        x: ``[B, C, H, W]``, the padded full frame(s), on the model's device and dtype. Use ``B == 1``
            (one frame) for tiling, see the module doc.
        scale: ``1.0`` records the exact statistics of the full-frame pass. ``< 1`` records them on
            an area-downscaled copy (see :func:`downscale_frame`): cheap, but only approximate,
            since convolutions respond differently to the same content at another scale (fine
            detail averaged away, features smaller). Measured on small random-weight nets: about
            25-30 dB PSNR against the full-frame output at 0.5x, versus 15-18 dB for naive tiling.
            For exact statistics with tile-sized memory use :func:`collect_norm_stats_tiled`.
        fn: what to run on the frame, default ``model``; e.g. ``lambda t: gen.decode(gen.encode(t),
            style)`` when ``model`` is not called directly. Use the same function for the tiles.
        multiple: the model's size multiple, for the downscaled size.

    Returns:
        ``{module_name: (mean, var)}``, float32, detached, shaped to broadcast against the layer's
        input (e.g. ``[B, C, 1, 1]``; ``[1, C, 1, 1]`` for batch norm). Empty if the model has no
        frame-dependent normalization (then ``fn`` is not run).
    """
    adapters = {}
    for name, module in model.named_modules():
        adapter = _adapter_for(module)
        if adapter is not None:
            adapters[name] = (module, adapter)
    if not adapters:
        return {}
    x = downscale_frame(x, scale, multiple)
    recorded: NormStats = {}
    patches = {
        module: _recording_forward(name, adapter, recorded) for name, (module, adapter) in adapters.items()
    }
    with _patched_forwards(patches), torch.no_grad():
        (fn or model)(x)
    return recorded
