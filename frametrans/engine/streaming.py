"""Exact whole-frame inference in bounded memory: the model runs layer group by layer group over
the whole frame, a band of rows at a time ("streaming").

Why: a model that normalizes with per-frame statistics (InstanceNorm, AdaIN, MUNIT's LayerNorm)
cannot be cut into independent tiles: each normalization layer needs the statistics of its whole
input. Tiles with exact statistics measured layer by layer (:mod:`frametrans.engine.tiledstats`)
recompute every layer before the one being measured, about ``L / 2`` tiled passes for ``L``
layers: 4.5-10x the untiled time. Streaming computes each layer once:

1. The forward is traced into row-band steps (:mod:`frametrans.engine.bandgraph`).
2. Some steps are *kept*: the input of every normalization layer, every tensor used twice (a
   residual or skip connection) and the output. The others are recomputed from the kept ones band
   by band (their halos: a few rows per convolution).
3. The kept steps are computed in graph order, band by band, each band pulled through the steps
   since the last kept ones. While a normalization layer's input is written, its per-channel
   moments are accumulated (Chan's parallel formula, float64), so its statistics are exact once the
   input is complete; after that it is a pointwise step.
4. A kept tensor lives in device memory while the live ones fit the budget; the others spill to
   a temporary file (CPU) or to host memory (GPU). A kept tensor is freed after its last reader.

The result equals the untiled forward up to float reassociation (the tests ask >= 80 dB). Memory:
at most ``budget`` bytes for the kept tensors in device memory plus the band being computed (a
half the budget, at least the rows one output row needs), besides the input and output
frames, which the runner holds anyway. Time: about the untiled compute, plus the halos, plus the
spill traffic (a sequential write and read per spilled tensor).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple, Union

import torch
from torch import Tensor, fx, nn

from frametrans.engine import device as devices
from frametrans.engine.bandgraph import BandGraph, Step, Unstreamable, _evaluate, _Root, trace_bands
from frametrans.engine.normstats import _adapter_for, _frozen_forward, _patched_forwards
from frametrans.engine.tiledstats import _reduce_dims

__all__ = ["Streamer", "Streamers", "Unstreamable", "stream_frame"]

log = logging.getLogger("frametrans")

#: A band's peak memory as a multiple of the tensors its steps produce (layout copies, the
#: convolution's workspace, the float32 copy for the moments).
BAND_FACTOR = 1.5
#: The share of the budget kept for the band being computed (the rest holds kept tensors).
BAND_SHARE = 0.5
ROW_ELEMENT = 4  # bytes per element assumed when planning (float32; bf16 tensors take half)

StatsFilter = Callable[[nn.Module, Tensor, Tensor], Tuple[Tensor, Tensor]]


class _Store:
    """The rows of one kept tensor ``[1, C, H, W]``, stored as ``[H, W, C]`` so that a band of rows
    is contiguous: in device memory, in host memory, or in a temporary file (``spill_dir``)."""

    def __init__(self, shape: Tuple[int, ...], device: torch.device, place: str, spill_dir: Optional[str]) -> None:
        _, self.channels, self.height, self.width = shape
        self.device, self.place, self.spill_dir = device, place, spill_dir
        self.rows: Optional[Tensor] = None  # [H, W, C] (device or host)
        self.file = None
        self.dtype: Optional[torch.dtype] = None

    def _allocate(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        if self.place == "file":
            self.file = tempfile.TemporaryFile(prefix="frametrans-stream-", dir=self.spill_dir)
            return
        device = self.device if self.place == "device" else torch.device("cpu")
        self.rows = torch.empty(self.height, self.width, self.channels, dtype=dtype, device=device)

    def write(self, a: int, band: Tensor) -> None:
        """``band`` [1, C, h, W]: rows ``a .. a + h``."""
        if self.dtype is None:
            self._allocate(band.dtype)
        hwc = band[0].permute(1, 2, 0)
        if self.file is None:
            self.rows[a : a + band.shape[2]].copy_(hwc)
            return
        data = hwc.contiguous().cpu().view(torch.uint8).numpy()
        self.file.seek(a * self._row_bytes())
        self.file.write(memoryview(data).cast("B"))

    def read(self, a: int, b: int) -> Tensor:
        """Rows ``[a, b)`` as ``[1, C, b - a, W]`` (channels-last memory; a view for device stores)."""
        if self.file is None:
            rows = self.rows[a:b]
            if rows.device != self.device:
                rows = rows.to(self.device)
            return rows.permute(2, 0, 1).unsqueeze(0)
        rows = torch.empty(b - a, self.width, self.channels, dtype=self.dtype)
        buffer = memoryview(rows.view(torch.uint8).numpy()).cast("B")
        self.file.seek(a * self._row_bytes())
        if self.file.readinto(buffer) != len(buffer):
            raise OSError("the stream's spill file came back short")
        return rows.to(self.device).permute(2, 0, 1).unsqueeze(0)

    def _row_bytes(self) -> int:
        return self.width * self.channels * self.dtype.itemsize

    def close(self) -> None:
        self.rows = None
        if self.file is not None:
            self.file.close()
            self.file = None


class _Moments:
    """Whole-frame statistics of one normalization layer's input, accumulated band by band.

    Per-channel (InstanceNorm, AdaIN) and per-sample (MUNIT's LayerNorm) statistics of a plain
    ``[1, C, h, W]`` input take the fast path: sums of the shifted values and their squares as
    matrix products over the ``[h * W, C]`` view (several times faster than a reduction over
    dimensions 2 and 3), accumulated in float64 around a shift fixed at the first band. Other
    layers (GroupNorm, views) combine each band's ``var_mean`` with Chan's parallel formula.
    """

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name, self.adapter = name, _adapter_for(module)
        self.dims: Optional[Tuple[int, ...]] = None
        self.count = 0
        self.shift: Optional[Tensor] = None  # fast path: [C] or [1] float32
        self.sums: Optional[Tuple[Tensor, Tensor]] = None  # fast path: float64 [C] sums of d and d^2
        self.mean: Optional[Tensor] = None  # general path: float64
        self.m2: Optional[Tensor] = None  # general path: float64 sum of squared deviations

    def add(self, band: Tensor) -> None:
        x = self.adapter.view(band) if self.adapter.view is not None else band
        x = x.float()
        if self.dims is None:
            probe = self.adapter.stats(band)[0] if self.adapter.dims is None else x
            self.dims = _reduce_dims(self.adapter, x, probe, self.name)
        if self.adapter.view is None and x.dim() == 4 and self.dims in ((0, 2, 3), (0, 1, 2, 3)):
            self._add_fast(x)
        else:
            self._add_general(x)

    def _add_fast(self, x: Tensor) -> None:
        rows = x[0].permute(1, 2, 0).reshape(-1, x.shape[1])  # [h * W, C], a view when channels-last
        if self.shift is None:
            mean = rows.mean(0)
            self.shift = mean if self.dims == (0, 2, 3) else mean.mean().view(1)
        d = rows - self.shift
        ones = torch.ones(1, rows.shape[0], dtype=d.dtype, device=d.device)
        s1, s2 = (ones @ d)[0].double(), (ones @ d.mul_(d))[0].double()
        self.sums = (s1, s2) if self.sums is None else (self.sums[0] + s1, self.sums[1] + s2)
        self.count += rows.shape[0]

    def _add_general(self, x: Tensor) -> None:
        var, mean = torch.var_mean(x, dim=self.dims, keepdim=True, correction=0)
        n = x.numel() // mean.numel()
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def result(self) -> Tuple[Tensor, Tensor]:
        """(mean, var) float32, shaped like the layer's statistics (``[1, C, 1, 1]``, ``[1, 1, 1, 1]``)."""
        if self.sums is not None:
            s1, s2, n = self.sums[0], self.sums[1], self.count
            if self.dims == (0, 1, 2, 3):
                s1, s2, n = s1.sum(), s2.sum(), n * self.sums[0].numel()
            delta = s1 / n
            mean, var = self.shift.double() + delta, (s2 / n - delta * delta).clamp_min(0)
            shape = (1, -1, 1, 1) if self.dims == (0, 2, 3) else (1, 1, 1, 1)
            mean, var = mean.view(shape), var.view(shape)
        else:
            mean, var, n = self.mean, self.m2 / self.count, self.count
        if self.adapter.unbiased:
            var = var * n / max(n - 1, 1)
        return mean.float(), var.float()


@dataclass(frozen=True)
class _Schedule:
    """The kept steps in order, each with its band height and the step index after which each
    kept tensor is no longer read (``last_use``), and where each lives (``place``)."""

    kept: List[str]
    band: Dict[str, int]
    last_use: Dict[str, int]
    place: Dict[str, str]
    peak: int  # planned peak bytes (kept tensors in device memory + the largest band)


class Streamer:
    """Runs one traced forward on frames of one size within ``budget`` bytes.

    graph: from :func:`frametrans.engine.bandgraph.trace_bands`. model, fn: what runs (the
    session's model, same structure as the traced one, and the forward ``fn(model, x)``).
    budget: bytes for the kept tensors and the band. spill_dir: where spilled tensors go
    (default: the system's temporary folder).
    """

    def __init__(self, graph: BandGraph, model: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor],
                 budget: int, device: torch.device, spill_dir: Optional[str] = None) -> None:
        self.graph, self.steps = graph, graph.steps
        self.root = _Root(model, fn)
        self.device, self.spill_dir = device, spill_dir
        self.kept = self._kept()
        self.reads = {name: self._stores_read(self.steps[name]) for name in self.kept}
        self.schedule = self._plan(budget)
        self.announced = False  # whether its log line was written (Streamers.run, on first use)

    # -- planning ------------------------------------------------------------------------------

    def _kept(self) -> List[str]:
        """Steps whose whole output is kept: the input, the output, tensors read by two steps,
        inputs of normalization layers; in graph order."""
        norm_inputs = {s.inputs[0] for s in self.steps.values() if s.kind == "norm"}
        users = self.graph.users
        return [n for n, s in self.steps.items()
                if s.kind == "input" or n == self.graph.output or len(users[n]) > 1 or n in norm_inputs]

    def _stores_read(self, step: Step) -> Set[str]:
        """The kept tensors that computing a band of ``step`` reads."""
        found: Set[str] = set()
        stack = list(step.inputs)
        while stack:
            name = stack.pop()
            if name in self.kept:
                found.add(name)
            else:
                stack.extend(self.steps[name].inputs)
        return found

    def _band_bytes(self, step: Step, a: int, b: int, top: bool = True) -> int:
        """Bytes the tensors of one band hold: rows ``[a, b)`` of ``step`` and the rows it pulls."""
        total = (b - a) * step.shape[1] * step.shape[3] * ROW_ELEMENT
        if not top and step.name in self.kept:
            return total
        if step.kind == "window":
            source = self.steps[step.inputs[0]]
            lo, hi, _ = step.source(a, b, source.height)
            return total + self._band_bytes(source, lo, hi, False)
        return total + sum(self._band_bytes(self.steps[n], a, b, False) for n in step.inputs)

    def _band_rows(self, step: Step, room: float) -> int:
        """The most rows of ``step`` one band may compute within ``room`` bytes (at least 1)."""
        height = step.height
        mid = height // 2

        def cost(h: int) -> float:
            a = min(mid, height - h)
            return self._band_bytes(step, a, a + h) * BAND_FACTOR

        lo, hi = 1, height
        while lo < hi:
            h = (lo + hi + 1) // 2
            if cost(h) <= room:
                lo = h
            else:
                hi = h - 1
        return lo

    def _plan(self, budget: int) -> _Schedule:
        order = [n for n in self.kept if self.steps[n].kind != "input"]
        last_use = {n: i for i, n in enumerate(order)}
        for i, name in enumerate(order):
            for read in self.reads[name]:
                last_use[read] = max(last_use.get(read, i), i)
        room = max(budget * BAND_SHARE, 1.0)
        band = {n: self._band_rows(self.steps[n], room) for n in order}
        need = self.minimum()
        if need > budget:
            raise Unstreamable(f"one row needs {need / 2**20:.1f} MiB, more than the budget")
        band_peak = max(self._band_bytes(self.steps[n], 0, band[n]) * BAND_FACTOR for n in order)
        place, live, peak = {}, {}, 0
        for i, name in enumerate(order):
            for gone in [n for n in live if last_use[n] < i]:
                del live[gone]
            size = self._size(name)
            resident = sum(s for n, s in live.items() if place[n] == "device")
            fits = resident + size + band_peak <= budget and name != self.graph.output
            place[name] = "device" if fits or name == self.graph.output else self._spill_place()
            live[name] = size
            peak = max(peak, resident + (size if fits else 0) + int(band_peak))
        return _Schedule(kept=order, band=band, last_use=last_use, place=place, peak=peak)

    def minimum(self) -> float:
        """The smallest budget this forward runs in: one row of output at a time, everything kept
        out of memory."""
        return max(self._band_bytes(self.steps[n], 0, 1) * BAND_FACTOR for n in self.kept
                   if self.steps[n].kind != "input")

    def _size(self, name: str) -> int:
        _, c, h, w = self.steps[name].shape
        return c * h * w * ROW_ELEMENT

    def _spill_place(self) -> str:
        return "file" if self.device.type == "cpu" else "host"

    def spilled_bytes(self) -> int:
        """Bytes (planned, float32) of the kept tensors that leave device memory."""
        return sum(self._size(n) for n, p in self.schedule.place.items() if p in ("file", "host"))

    # -- running -------------------------------------------------------------------------------

    def __call__(self, x: Tensor, stats_filter: Optional[StatsFilter] = None) -> Tensor:
        """``x`` [1, C, H, W] (the traced size) -> the forward's output [1, C', H', W'].
        ``stats_filter(module, mean, var)``: what each norm layer normalizes with instead of its
        input's exact statistics (``--temporal stats``)."""
        run = _Run(self, x, stats_filter)
        try:
            # cuDNN's heuristic algorithm choice, not its autotuner (which the session turns on for
            # whole frames): the autotuner tries every algorithm of each new band shape with workspaces
            # that the budget does not count. On an H200 (2026-11-30), bands planned within 4 MiB
            # peaked at 533 MiB with it on; test_row_bands_on_cuda checks the bound.
            with devices.no_conv_autotuning(self.device):
                return run.execute()
        finally:
            run.close()


class _Run:
    """One frame through a :class:`Streamer`: the stores, the statistics, the constants."""

    def __init__(self, streamer: Streamer, x: Tensor, stats_filter: Optional[StatsFilter]) -> None:
        self.s = streamer
        self.x = x
        self.stats_filter = stats_filter
        self.stores: Dict[str, Union[_Store, _InputStore]] = {}
        self.stats: Dict[str, Tuple[Tensor, Tensor]] = {}
        self.values: Dict[str, object] = {}
        self.norms = {n: s for n, s in streamer.steps.items() if s.kind == "norm"}

    def execute(self) -> Tensor:
        s = self.s
        input_name = next(n for n, st in s.steps.items() if st.kind == "input")
        self.stores[input_name] = _InputStore(self.x)
        self._constants()
        with self._norms_patched():
            for i, name in enumerate(s.schedule.kept):
                self._materialize(s.steps[name], s.schedule.band[name], s.schedule.place[name])
                for gone in [n for n in list(self.stores) if s.schedule.last_use.get(n, len(s.schedule.kept)) <= i
                             and n != s.graph.output and n != input_name]:
                    self.stores.pop(gone).close()
        out = self.stores[s.graph.output]
        return out.rows.permute(2, 0, 1).unsqueeze(0).contiguous()

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        self.stores.clear()

    def _constants(self) -> None:
        """Evaluate, once, every node that does not depend on the frame's pixels."""
        steps, root = self.s.steps, self.s.graph.root
        for node in self.s.graph.graph.nodes:
            if node.op in ("placeholder", "output") or node.name in steps:
                continue
            if node.op == "get_attr":
                owner = self.s.root if node.target.startswith("m.") else root
                self.values[node.name] = _get_attr(owner, node.target)
                continue
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), self._fact)
            self.values[node.name] = _evaluate(self.s.root, node.op, node.target, args, kwargs)

    def _fact(self, node: fx.Node) -> object:
        """A constant's value, or a fact about an image tensor (its shape; the frame's device/dtype)."""
        if node.name in self.values:
            return self.values[node.name]
        if node.op == "placeholder":
            return self.x
        step = self.s.steps[node.name]
        return _ShapeOnly(step.shape, self.x.device)

    @contextlib.contextmanager
    def _norms_patched(self) -> Iterator[None]:
        patches = {}
        for name, step in self.norms.items():
            module = self.s.root.get_submodule(step.node.target)
            if module in patches:
                raise Unstreamable(f"normalization layer {step.node.target} runs twice in one forward")
            patches[module] = self._norm_forward(name, module)
        with _patched_forwards(patches):
            yield

    def _norm_forward(self, name: str, module: nn.Module) -> Callable[[Tensor], Tensor]:
        adapter = _adapter_for(module)
        frozen: Dict[str, Callable[[Tensor], Tensor]] = {}

        def forward(x: Tensor) -> Tensor:
            if name not in frozen:
                frozen[name] = _frozen_forward(name, adapter, *self.stats[name])
            return frozen[name](x)

        return forward

    def _materialize(self, step: Step, rows: int, place: str) -> None:
        store = _Store(step.shape, self.s.device, place, self.s.spill_dir)
        self.stores[step.name] = store
        readers = [_Moments(n, self.s.root.get_submodule(self.norms[n].node.target))
                   for n in self.s.graph.users[step.name] if n in self.norms]
        for a in range(0, step.height, rows):
            b = min(step.height, a + rows)
            band = self._compute(step, a, b)
            for moments in readers:
                moments.add(band)
            store.write(a, band)
            del band
        for moments in readers:
            stats = moments.result()
            if self.stats_filter is not None:
                stats = self.stats_filter(self.s.root.get_submodule(self.norms[moments.name].node.target), *stats)
            self.stats[moments.name] = stats

    def _rows(self, step: Step, a: int, b: int) -> Tensor:
        """Rows ``[a, b)`` of ``step``'s output, [1, C, b - a, W]."""
        store = self.stores.get(step.name)
        if store is not None:
            return store.read(a, b)
        return self._compute(step, a, b)

    def _compute(self, step: Step, a: int, b: int) -> Tensor:
        if step.kind == "window":
            source = self.s.steps[step.inputs[0]]
            lo, hi, origin = step.source(a, b, source.height)
            out = self._run(step, {source.name: self._rows(source, lo, hi)})
            return out[:, :, a - origin : b - origin]
        bands = {}
        for name in step.inputs:
            band = self._rows(self.s.steps[name], a, b)
            bands[name] = band.clone() if step.inplace and name in self.stores else band
        return self._run(step, bands)

    def _run(self, step: Step, bands: Dict[str, Tensor]) -> Tensor:
        def value(node: fx.Node) -> object:
            return bands[node.name] if node.name in bands else self._fact(node)

        args, kwargs = fx.node.map_arg((step.node.args, step.node.kwargs), value)
        return _evaluate(self.s.root, step.node.op, step.node.target, args, kwargs)


class _InputStore:
    """The frame itself, already in memory ``[1, C, H, W]``: read like a :class:`_Store`."""

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def read(self, a: int, b: int) -> Tensor:
        return self.x[:, :, a:b]

    def close(self) -> None:
        pass


class _ShapeOnly:
    """Stands for an image tensor where only its shape or device is asked for (a shape check)."""

    def __init__(self, shape: Tuple[int, ...], device: torch.device) -> None:
        self.shape, self.device = torch.Size(shape), device

    def size(self, dim: Optional[int] = None):  # noqa: ANN201 - as Tensor.size
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    def __getattr__(self, name: str) -> object:
        raise Unstreamable(f"the forward reads {name!r} of an intermediate image tensor")


def _get_attr(owner: nn.Module, target: str) -> object:
    value: object = owner
    for atom in target.split("."):
        value = getattr(value, atom)
    return value


class Streamers:
    """One runner's :class:`Streamer` per frame shape, model and budget (None where the forward
    cannot stream: the runner then tiles). ``source``: the float32 model the forward is traced on;
    the streamers run whichever copy is asked for (the session's bf16 one, or the fp32 source)."""

    def __init__(self, source: nn.Module, forward: Callable[[nn.Module, Tensor], Tensor],
                 device: torch.device) -> None:
        # ``--temporal stats``' forward wraps another: stream that one, smoothing the exact statistics
        self.source, self.forward, self.device = source, getattr(forward, "__wrapped__", forward), device
        self.smoother = getattr(forward, "smoother", None)
        self.cache: Dict[tuple, Optional[Streamer]] = {}

    def run(self, streamer: Streamer, x: Tensor) -> Tensor:
        """Frames ``x`` [B, C, H, W] one by one through ``streamer``, in order (with ``--temporal
        stats``, each layer's exact statistics go through the stream's moving average)."""
        self._announce(streamer, tuple(x.shape))
        outs = []
        for b in range(x.shape[0]):
            if self.smoother is None:
                outs.append(streamer(x[b : b + 1]))
                continue
            smooth, commit = self.smoother.frame_stats(streamer.root.m, x[b : b + 1])
            outs.append(streamer(x[b : b + 1], smooth))
            commit()
        return torch.cat(outs)

    def get(self, shape: Tuple[int, ...], model: nn.Module, budget: int) -> Optional[Streamer]:
        """The streamer for frames of ``shape`` [B, C, H, W] within ``budget`` bytes, or None."""
        key = (tuple(shape[1:]), id(model), budget)
        if key not in self.cache:
            if len(self.cache) > 8:
                self.cache.clear()
            self.cache[key] = self._new(tuple(shape), model, budget)
        return self.cache[key]

    def _new(self, shape: Tuple[int, ...], model: nn.Module, budget: int) -> Optional[Streamer]:
        h, w = shape[-2:]
        try:
            graph = trace_bands(self.source, self.forward, (1, *shape[1:]))
            streamer = Streamer(graph, model, self.forward, budget, self.device)
        except Unstreamable as exc:
            log.info("frame %dx%d runs in overlapping tiles, not in row bands: %s", w, h, exc)
            return None
        return streamer

    def _announce(self, streamer: Streamer, shape: Tuple[int, ...]) -> None:
        """One log line per streamer, when it first runs (the memory policy may build it earlier)."""
        if streamer.announced:
            return
        streamer.announced = True
        spilled = streamer.spilled_bytes()
        where = f"{spilled / 2**20:.0f} MiB of activations kept on disk" if self.device.type == "cpu" \
            else f"{spilled / 2**20:.0f} MiB of activations kept in host memory"
        log.info("frame %dx%d runs whole, in row bands layer by layer (exact; %s)", shape[-1], shape[-2],
                 where if spilled else "all in memory")


def stream_frame(model: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor], x: Tensor, budget: int,
                 traced: Optional[nn.Module] = None, spill_dir: Optional[str] = None) -> Tensor:
    """``fn(model, x)`` for one frame ``x`` [1, C, H, W] in row bands within ``budget`` bytes.

    traced: the float32 module to trace (default ``model``; the session's fp32 source when
    ``model`` is its low-precision copy). Raises :class:`Unstreamable` when the forward has a step
    that does not run in bands.
    """
    graph = trace_bands(traced if traced is not None else model, fn, tuple(x.shape))
    return Streamer(graph, model, fn, budget, x.device, spill_dir)(x)
