"""Normalization statistics smoothed across time (``--temporal stats``).

A model with per-frame normalization (``InstanceNorm2d`` in the CycleGAN ResNet, MUNIT's AdaIN and
LayerNorm) normalizes every frame with that frame's own statistics: when the content shifts a
little, each channel's mean and variance shift with it, and the whole frame pulses in brightness
and colour. :class:`NormSmoother` makes those layers normalize each frame with an exponential
moving average (EMA) of the statistics of the frames before it, per layer and per statistic
(channel, or sample, as the layer computes them)::

    s_t = m_t                               the first frame of a stream, or of a new scene
    s_t = a * s_{t-1} + (1 - a) * m_t       otherwise (a: the factor, in [0, 1))

for both the mean and the variance ``m_t`` the layer computes on frame ``t`` (the variance is
averaged as it is, not through the second moment: it stays positive, and a pan barely moves the
mean). Everything happens in the model's one forward pass: each patched layer computes its input's
per-sample statistics ``[B, ...]``, scans them in batch order through the state (the frames of a
batch are consecutive in time) with a ``[B, B + 1]`` weight matrix, and normalizes sample ``b``
with ``s_b``. Deeper layers see the smoothed output of the layers before them, as they should.

Scene cuts are found on the model input itself, cheaply: each frame is area-pooled to a
``THUMB`` thumbnail, whose per-channel histogram (``BINS`` bins over the model's value range) is
compared with the previous frame's (half the L1 distance, in [0, 1], the largest over the
channels); above ``CUT_DISTANCE`` the state restarts from that frame. A histogram ignores motion (a
fast pan is no cut) and changes with what the statistics change with. A change of frame size
restarts the state too (a memory probe, a new video).

State: one smoother per output stream (a MUNIT style, a video): call :meth:`NormSmoother.reset`
when a new one starts. Updates are transactional: the state moves on only when the whole forward
returned (an out-of-memory batch that is retried in halves is not counted twice). A batch the runner
runs again in fp32 after a half-precision overflow (rare) does enter the state twice: those frames
weigh a little more, nothing else changes. The runner's memory probe (a zero frame of 32 px) is
forgotten at the first frame of another size. A frame over the memory budget that runs in row
bands (:mod:`frametrans.engine.streaming`) is smoothed too: the bands compute each layer's exact
statistics and pass them through :meth:`NormSmoother.frame_stats`. Frames whose norm layers someone
else has patched already (the tiler freezing a tiled frame's whole-frame statistics, see
:mod:`frametrans.engine.normstats`) run with those, unsmoothed, and leave the state alone; a
warning says so once.

The layer adapters (which layers, how their statistics are computed and applied) are
:mod:`frametrans.engine.normstats`'s, so this handles what the tiler handles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frametrans.engine.normstats import _Adapter, _adapter_for, _patched_forwards

__all__ = ["NormSmoother", "Step", "ema", "ema_weights", "slot_key", "smoothed_forward", "CUT_DISTANCE", "THUMB", "BINS"]

log = logging.getLogger("frametrans")

ForwardFn = Callable[[nn.Module, Tensor], Tensor]

#: Thumbnail (height, width) whose histograms the scene-cut test compares.
THUMB = (36, 64)
#: Histogram bins per channel.
BINS = 16
#: Histogram distance (half the L1 distance, largest channel, in [0, 1]) above which a frame starts
#: a new scene. Measured at 640x360: consecutive frames of the sample clip 0.015 on average, 0.026
#: at most; its first and last frames (the same scene, panned across 3 s) 0.13; a frame of it and
#: the bundled astronaut or coffee photos 0.45 and 0.43, those two photos 0.32.
CUT_DISTANCE = 0.2


def ema_weights(cuts: list[bool], factor: float) -> Tensor:
    """The EMA scan as a matrix: row ``b`` holds the weights of (state before the batch, statistics
    of samples 0..B-1) in the smoothed statistics of sample ``b``. ``cuts[b]``: sample ``b`` starts
    over from its own statistics. Returns float64 ``[B, B + 1]``; each row sums to 1."""
    weights = torch.zeros(len(cuts), len(cuts) + 1, dtype=torch.float64)
    row = torch.zeros(len(cuts) + 1, dtype=torch.float64)
    row[0] = 1.0
    for b, cut in enumerate(cuts):
        if cut:
            row = torch.zeros_like(row)
            row[b + 1] = 1.0
        else:
            row = row * factor
            row[b + 1] += 1.0 - factor
        weights[b] = row
    return weights


class _Scan:
    """One forward's view of the state: whether it goes on from the frames before (``had_past``),
    which samples start a new scene (``cuts``), and the weight matrices."""

    def __init__(self, had_past: bool, cuts: list[bool], factor: float) -> None:
        self.had_past = had_past
        self.cuts = cuts
        self.factor = factor
        self._weights: dict[tuple, Tensor] = {}

    def fresh(self, has_past: bool) -> list[bool]:
        """Which samples start over from their own statistics; without a past, sample 0 does."""
        return self.cuts if has_past else [True] + self.cuts[1:]

    def weights(self, has_past: bool, device: torch.device) -> Tensor:
        """``[B, B + 1]`` float32 on ``device`` (:func:`ema_weights` of :meth:`fresh`)."""
        key = (has_past, device)
        if key not in self._weights:
            self._weights[key] = ema_weights(self.fresh(has_past), self.factor).to(device, torch.float32)
        return self._weights[key]


@dataclass(frozen=True)
class Step:
    """One forward of a batch against the state: its scene-cut scan, each frame's histograms
    ``[B, C, BINS]`` and the frame shape ``(C, H, W)``."""

    scan: _Scan
    hists: Tensor
    shape: tuple[int, ...]


class NormSmoother:
    """The EMA state of one output stream's normalization statistics.

    factor: the weight ``a`` of the past, in [0, 1) (0: each frame's own statistics).
    value_range: the model input's (lo, hi), for the histograms of the scene-cut test.
    cut_distance: the histogram distance that starts a new scene.

    ``cuts`` counts the scene cuts seen (the first frame of a stream is not one).
    """

    def __init__(self, factor: float, value_range: tuple[float, float] = (-1.0, 1.0),
                 cut_distance: float = CUT_DISTANCE) -> None:
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"the statistics' EMA factor must be in [0, 1), got {factor}")
        self.factor = float(factor)
        self.value_range = value_range
        self.cut_distance = cut_distance
        self.cuts = 0
        self._layers: dict[int, list[tuple[str, nn.Module, _Adapter]]] = {}
        self._warned_tiled = False
        self.reset()

    def reset(self) -> None:
        """A new stream: forget the statistics and the last frame."""
        self._state: dict[str, Tensor] = {}  # layer key -> [1, 2, ...] (mean, var) float32
        self._hist: Optional[Tensor] = None  # [1, C, BINS] float32: the last frame's histograms
        self._shape: Optional[tuple[int, ...]] = None  # (C, H, W) of the last frame

    def run(self, model: nn.Module, x: Tensor, call: Callable[[], Tensor]) -> Tensor:
        """``call()`` (a forward of ``model`` on ``x [B, C, H, W]``, B consecutive frames) with the
        frame-dependent norm layers of ``model`` smoothed; returns its output unchanged otherwise."""
        layers = self.layers(model)
        if not layers:
            return call()
        if any("forward" in module.__dict__ for _, module, _ in layers):
            self._warn_tiled()
            return call()
        step = self.begin(x)
        pending: dict[str, Tensor] = {}
        calls: dict[str, int] = {}
        patches = {module: self._layer_forward(name, module, adapter, step.scan, pending, calls)
                   for name, module, adapter in layers}
        with _patched_forwards(patches):
            y = call()
        self.commit(step, pending)
        return y

    def frame_stats(self, model: nn.Module, x: Tensor
                    ) -> tuple[Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]], Callable[[], None]]:
        """For one frame ``x [1, C, H, W]`` whose layers' whole-frame statistics are computed
        elsewhere (row bands, :mod:`frametrans.engine.streaming`): ``smooth(module, mean, var)`` ->
        the smoothed (mean, var), called in forward order, and ``commit()``, called once the frame
        is done (until then the state is unchanged)."""
        names = {id(m): name for name, m, _ in self.layers(model)}
        step = self.begin(x)
        pending: dict[str, Tensor] = {}
        calls: dict[str, int] = {}

        def smooth(module: nn.Module, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
            smoothed, _ = self._smooth(names[id(module)], torch.stack([mean.float(), var.float()], 1),
                                       step.scan, pending, calls)
            return smoothed[:, 0], smoothed[:, 1]

        return smooth, lambda: self.commit(step, pending)

    def begin(self, x: Tensor) -> "Step":
        """The scene-cut test of a batch ``x [B, C, H, W]`` of consecutive frames against the state:
        what a forward needs to smooth it (the state is not changed until :meth:`commit`)."""
        hists = self._histograms(x)
        shape = tuple(x.shape[1:])
        return Step(self._scan(hists, shape), hists, shape)

    def past(self, key: str, step: "Step") -> Optional[Tensor]:
        """The state of statistics slot ``key`` (``[1, 2, ...]`` float32) that ``step`` goes on
        from, or None (a new stream, a new frame size, a slot not seen yet)."""
        return self._state.get(key) if step.scan.had_past else None

    def commit(self, step: "Step", pending: dict[str, Tensor]) -> None:
        """The forward of ``step`` returned with the new states ``pending`` (slot key -> the last
        sample's smoothed statistics): the state moves on. A forward that raised (out of memory and
        retried in halves) never commits, so it changed nothing."""
        scan = step.scan
        self._state = {**self._state, **pending} if scan.had_past else pending
        self._hist, self._shape = step.hists[-1:], step.shape
        self.cuts += sum(scan.cuts[1:]) + int(scan.had_past and scan.cuts[0])

    # -- internals -------------------------------------------------------------------------------

    def layers(self, model: nn.Module) -> list[tuple[str, nn.Module, _Adapter]]:
        """(name, module, adapter) of each frame-dependent norm layer of ``model`` (cached)."""
        key = id(model)
        if key not in self._layers:
            self._layers[key] = [(name, m, a) for name, m in model.named_modules()
                                 if (a := _adapter_for(m)) is not None]
        return self._layers[key]

    def _warn_tiled(self) -> None:
        if not self._warned_tiled:
            self._warned_tiled = True
            log.warning("--temporal stats: tiled frames (larger than the memory budget) are normalized "
                        "with their own whole-frame statistics, not smoothed across time")

    def _histograms(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` -> per-channel histograms ``[B, C, BINS]`` float32 (each sums to 1) of
        its area-pooled ``THUMB`` thumbnail, over the value range."""
        lo, hi = self.value_range
        t = (F.adaptive_avg_pool2d(x, THUMB).float() - lo) / (hi - lo)  # [B, C, *THUMB] in [0, 1]
        bins = (t * BINS).long().clamp_(0, BINS - 1).flatten(2)  # [B, C, N]
        return F.one_hot(bins, BINS).float().mean(2)

    def _scan(self, hists: Tensor, shape: tuple[int, ...]) -> _Scan:
        """Which samples start a new scene: histograms far from the frame before, or the first frame
        (of the stream, or after a change of frame size)."""
        had_past = self._hist is not None and shape == self._shape
        first = self._hist.to(hists.device) if had_past else hists[:1]
        previous = torch.cat([first, hists[:-1]])
        distance = 0.5 * (hists - previous).abs().sum(-1).amax(-1)  # [B]
        cuts = (distance > self.cut_distance).tolist()
        cuts[0] = cuts[0] or not had_past
        return _Scan(had_past, cuts, self.factor)

    def _layer_forward(self, name: str, module: nn.Module, adapter: _Adapter, scan: _Scan,
                       pending: dict[str, Tensor], calls: dict[str, int]) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            smoothed, fresh = self._smooth(name, _sample_stats(adapter, x), scan, pending, calls)
            if adapter.kind == "instance" and any(fresh):
                return _own_where_fresh(module, adapter, x, smoothed, fresh)
            return adapter.apply(x, smoothed[:, 0], smoothed[:, 1])

        return forward

    def _smooth(self, name: str, stats: Tensor, scan: _Scan, pending: dict[str, Tensor],
                calls: dict[str, int]) -> tuple[Tensor, list[bool]]:
        """Layer ``name``'s statistics ``[B, 2, ...]`` float32 (mean, var per sample) -> smoothed,
        same shape, and which samples start over (their smoothed statistics are their own); the
        layer's new state goes to ``pending``."""
        key = slot_key(name, calls)
        past = self._state.get(key) if scan.had_past else None
        weights = scan.weights(past is not None, stats.device)  # [B, B + 1]
        fresh = scan.fresh(past is not None)
        past = torch.zeros_like(stats[:1]) if past is None else past.to(stats.device)
        smoothed = ema(weights, past, stats)
        pending[key] = smoothed[-1:]
        return smoothed, fresh


def slot_key(name: str, calls: dict[str, int]) -> str:
    """The state slot of layer ``name``'s next call in a forward (``calls`` counts them): a layer
    run twice per forward has two slots, ``name`` and ``name#1``."""
    n = calls[name] = calls.get(name, -1) + 1
    return name if n == 0 else f"{name}#{n}"


def ema(weights: Tensor, past: Tensor, stats: Tensor) -> Tensor:
    """One batch of the EMA scan: ``weights [B, B + 1]`` (:func:`ema_weights`), ``past [1, 2, ...]``
    (the state before the batch), ``stats [B, 2, ...]`` (each sample's own mean and variance) ->
    the smoothed statistics ``[B, 2, ...]`` float32. Traceable (the ONNX graph of a backend)."""
    series = torch.cat([past, stats])  # [B + 1, 2, ...]
    return (weights @ series.flatten(1)).view(stats.shape)


def _own_where_fresh(module: nn.Module, adapter: _Adapter, x: Tensor, smoothed: Tensor,
                     fresh: list[bool]) -> Tensor:
    """An InstanceNorm's output for ``x [B, C, H, W]``: samples that start over (``fresh``) through
    the layer's own forward, so that the first frame of a stream or scene comes out exactly as
    ``--temporal off`` makes it (the statistics computed here agree with the layer's to float
    rounding, not bit for bit); the others with their smoothed statistics."""
    own = type(module).forward
    if all(fresh):
        return own(module, x)
    return torch.cat([own(module, x[b:b + 1]) if new else
                      adapter.apply(x[b:b + 1], smoothed[b:b + 1, 0], smoothed[b:b + 1, 1])
                      for b, new in enumerate(fresh)])


def _sample_stats(adapter: _Adapter, x: Tensor) -> Tensor:
    """The statistics the layer computes, per sample: ``[B, 2, ...]`` float32 (mean, var).
    A batch-statistics layer (one set per batch) gets each sample's own."""
    mean, var = adapter.stats(x)
    if mean.shape[0] != x.shape[0]:
        pairs = [adapter.stats(x[b:b + 1]) for b in range(x.shape[0])]
        mean = torch.cat([m for m, _ in pairs])
        var = torch.cat([v for _, v in pairs])
    return torch.stack([mean.float(), var.float()], dim=1)


def smoothed_forward(forward: ForwardFn, smoother: NormSmoother) -> ForwardFn:
    """``forward(model, x)`` run with ``smoother``'s statistics. It has no ``cache_token``: the
    runner does not compile it (the state changes with every frame). An OpenVINO / ONNX Runtime
    backend runs it with the state as graph inputs and outputs
    (:mod:`frametrans.engine.backends.stateful`), named in the graph cache by the forward it wraps."""
    def smoothed(model: nn.Module, x: Tensor) -> Tensor:
        return smoother.run(model, x, lambda: forward(model, x))

    smoothed.smoother = smoother  # type: ignore[attr-defined]
    smoothed.__wrapped__ = forward  # type: ignore[attr-defined]  # row bands run it, with frame_stats
    return smoothed
