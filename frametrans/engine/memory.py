"""The memory policy: how many frames per forward, whole frames or tiles, and what to do after an
out-of-memory error. The one place that decides batch and tile sizes; it returns decisions
(:class:`Plan`) and never writes into anybody's options.

What the budget counts (``--max-memory X``): everything inference adds to the process's peak on
the device that runs the model, per frame shape:

- the activations of one forward (measured per input pixel with a small probe, see
  :func:`probe_footprint`), times the frames or tiles run together;
- the frame tensors the runner holds around the forward: the integer input, its float copy in
  the model's range, the padded copy in the model's dtype and layout, the output and its integer
  copy (:func:`frame_bytes_per_pixel`); when a frame is tiled, also the blend accumulators;
- on the CPU, where the frame queues live in the same memory: the decoded frames waiting for the
  model and the outputs waiting for the encoder (:meth:`MemoryPolicy.queue_depth`).

Not counted: the model's weights and the process itself (loaded before the first frame), the
codecs' own buffers (FFmpeg's decoded-picture pool, a few frames), the compiled-forward caches.

Out of memory anyway (the estimate is an estimate, other processes share the GPU): the runner asks
:meth:`MemoryPolicy.after_batch_oom` (halve the batch, for the rest of the run) and
:meth:`MemoryPolicy.after_frame_oom` (tile, then smaller tiles, for this frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from frametrans.engine.padding import min_side
from frametrans.engine.pipeline import default_workers
from frametrans.engine.tiling import plan_tiles

# the CPU batches frames up to this many pixels in all (4 frames of 256x256; a 640x360 frame alone)
CPU_BATCH_PIXELS = 4 * 256 * 256
MAX_CUDA_BATCH = 16
MAX_BATCH_TILES = 8
MAX_QUEUE_DEPTH = 8
# peak activations of a forward as a multiple of its largest layer output (inputs and outputs of
# the running layer, skip connections, oneDNN's layout copies on the CPU)
ACTIVATION_FACTOR = 3.2


def queue_items() -> int:
    """The most frames one queue between two stages holds: 8 for a video's decoder and encoder
    threads; a folder's pools of decode and encode threads (one per core) keep twice their
    threads, capped at this (see :func:`frametrans.apply.images.apply_images`)."""
    return max(MAX_QUEUE_DEPTH, 2 * default_workers())


if TYPE_CHECKING:
    from frametrans.engine.session import Session


class MemoryBudgetError(ValueError):
    """The budget cannot hold even one minimal tile of a frame; the message names the minimum.
    Not a per-file failure: the whole run stops (exit status 2, as for a bad option)."""

    exit_code = 2
    param_hint = "--max-memory"


@dataclass(frozen=True)
class Plan:
    """How to run frames of one shape.

    batch: frames per forward. tile: None to run whole frames, else the tile side (a multiple of
    the model's size multiple). overlap: tile overlap in pixels. stats: how the per-frame
    normalization statistics of a tiled frame are found: ``none`` (whole frames, or a model
    without frame-dependent normalization), ``full`` (one untiled statistics pass; the frame fits),
    ``tiled`` (exact, layer by layer in tiles), ``downscaled`` (approximate, from a smaller copy).
    stats_scale: the scale of the ``downscaled`` pass. batch_tiles: tiles per forward.
    """

    batch: int
    tile: Optional[int] = None
    overlap: int = 0
    stats: str = "none"
    stats_scale: float = 1.0
    batch_tiles: int = 1


@dataclass(frozen=True)
class Footprint:
    """Per-pixel memory costs of one model in one session, in bytes per padded input pixel.

    activation: peak activations of one forward. frame: the runner's frame tensors around it.
    tiled: what a tiled frame holds besides (blend accumulators, the padded frame kept whole).
    stats: what a statistics pass adds per pixel it runs on (float32 moments of the layer being
    measured, :func:`frametrans.engine.tiledstats.collect_norm_stats_tiled`, or the float32
    statistics of a downscaled pass).
    """

    activation: float
    frame: float
    tiled: float
    stats: float = 0.0


def frame_bytes_per_pixel(in_channels: int, out_channels: int, element: int) -> Tuple[float, float]:
    """(untiled, extra when tiled) bytes per pixel of the runner's own frame tensors, for 8-bit
    frames (16-bit ones count twice the integer bytes; the runner frees each step's input as it goes).

    Untiled, the largest of its phases: converting in (the decoded frame, its padded copy, the
    float32 copy in the model's range, the copy in the compute dtype of ``element`` bytes: 1 + 1 + 4
    + ``element`` per input channel, plus the decoded frame held meanwhile) and converting back
    (the output in the compute dtype, its float32 copy, the integer output and its host copy:
    ``element`` + 4 + 1 + 1 per output channel). Tiled, besides: the float32 blend accumulator and
    the output cast per output channel, the blend and statistics weight sums (4 + 4).
    """
    into = in_channels * (1 + 1 + 4 + element) + in_channels
    back = out_channels * (element + 4 + 1 + 1) + in_channels
    tiled = out_channels * (4 + element) + 8
    return float(max(into, back)), float(tiled)


@dataclass
class MemoryPolicy:
    """Batch and tile decisions for one runner, within ``budget`` bytes.

    footprint: measured lazily (a probe forward) by ``measure``. multiple: the model's size
    multiple. overlap: tile side -> overlap (from the receptive field, or the user's option).
    frame_dependent_norm: the model normalizes with per-frame statistics (InstanceNorm, AdaIN).
    batch_size / tile: the user's fixed choices (None: decide). tile_stats: ``exact`` or ``fast``.
    cpu: batches stop at :data:`CPU_BATCH_PIXELS`; queues count against the budget.
    bands_need: (padded height, width) -> the fewest bytes of activations in which such a frame runs
    whole in row bands (:mod:`frametrans.engine.streaming`), None where it cannot; a frame that
    fits them needs no tile, and the smallest budget named is the smaller of the two.

    State that out-of-memory errors change (the policy's own, never the options'): ``batch_cap``
    (frames per forward) and ``pixel_cap`` (input pixels per forward, tiles included).
    """

    budget: int
    measure: Callable[[], Footprint]
    multiple: int
    overlap: Callable[[int], int]
    frame_dependent_norm: bool
    batch_size: Optional[int] = None
    tile: Optional[int] = None
    tile_stats: str = "exact"
    cpu: bool = True
    bands_need: Optional[Callable[[int, int], Optional[float]]] = None
    batch_cap: Optional[int] = None
    pixel_cap: Optional[int] = None
    _footprint: Optional[Footprint] = field(default=None, repr=False)

    @property
    def footprint(self) -> Footprint:
        if self._footprint is None:
            self._footprint = self.measure()
        return self._footprint

    # -- sizes -----------------------------------------------------------------------------------

    def padded(self, h: int, w: int) -> Tuple[int, int]:
        """The padded frame size (height, width) the model sees for an ``h`` x ``w`` frame."""
        m, least = self.multiple, min_side(self.multiple)
        return max(least, -(-h // m) * m), max(least, -(-w // m) * m)

    def queue_limit(self) -> Optional[int]:
        """Bytes one queue between two stages (decode ahead, encode behind) may hold: a sixteenth
        of the budget on the CPU, so the two together stay within an eighth; None on a GPU (the
        queues are in host memory, bounded by their length alone)."""
        return self.budget // 16 if self.cpu else None

    def queue_depth(self, frame_bytes: int) -> int:
        """How many frames of ``frame_bytes`` a queue may hold within :meth:`queue_limit`: 1 to
        :func:`queue_items`."""
        limit = self.queue_limit()
        if limit is None:
            return queue_items()
        return int(max(1, min(queue_items(), limit // max(1, frame_bytes))))

    def queue_bytes(self, h: int, w: int, channels: int = 3, item: int = 1) -> int:
        """Bytes the two queues may hold for frames of this size (0 on a GPU: host memory)."""
        if not self.cpu:
            return 0
        frame = h * w * channels * item
        return 2 * self.queue_depth(frame) * frame

    def available(self, h: int, w: int, tiled: bool) -> float:
        """Bytes left for activations once the frame tensors and the queues of one frame are held."""
        ph, pw = self.padded(h, w)
        fp = self.footprint
        held = ph * pw * (fp.frame + (fp.tiled if tiled else 0.0)) + self.queue_bytes(h, w)
        return self.budget - held

    def pixels_that_fit(self, h: int, w: int, tiled: bool) -> float:
        """Input pixels one forward may take for frames of this size (tiles included); a tiled
        frame whose model normalizes per frame also holds the statistics temporaries (float32
        moments, exact; float32 statistics of a downscaled pass, fast)."""
        per_pixel = self.footprint.activation
        if tiled and self.frame_dependent_norm:
            per_pixel += self.footprint.stats
        fit = max(self.available(h, w, tiled), 0.0) / per_pixel
        return min(fit, self.pixel_cap) if self.pixel_cap else fit

    def band_room(self, h: int, w: int) -> float:
        """Bytes a frame over the budget may use for row bands: the activations of the pixels a
        tiled forward could take (:meth:`pixels_that_fit`)."""
        return self.pixels_that_fit(h, w, True) * self.footprint.activation

    # -- decisions -------------------------------------------------------------------------------

    def plan(self, h: int, w: int) -> Plan:
        """The plan for frames of ``h`` x ``w`` pixels (raises :class:`MemoryBudgetError` when not
        even the smallest tile fits)."""
        ph, pw = self.padded(h, w)
        if self.tile is None and ph * pw <= self.pixels_that_fit(h, w, False):
            return Plan(batch=self._batch(h, w))
        fit = self.pixels_that_fit(h, w, True)
        side = self._tile_side(h, w, fit)
        batch_tiles = int(max(1, min(MAX_BATCH_TILES, fit // (min(side, ph) * min(side, pw)))))
        return Plan(batch=1, tile=side, overlap=self.overlap(side), batch_tiles=batch_tiles,
                    **self._stats(ph, pw, fit))

    def _batch(self, h: int, w: int) -> int:
        if self.batch_size:
            return min(self.batch_size, self.batch_cap or self.batch_size)
        ph, pw = self.padded(h, w)
        per_frame = ph * pw * (self.footprint.activation + self.footprint.frame)
        room = self.budget - self.queue_bytes(h, w)
        cap = MAX_CUDA_BATCH if not self.cpu else min(4, CPU_BATCH_PIXELS // (ph * pw))
        if self.pixel_cap:
            cap = min(cap, self.pixel_cap // (ph * pw))
        batch = int(max(1, min(cap, room // max(per_frame, 1))))
        return min(batch, self.batch_cap) if self.batch_cap else batch

    def _tile_side(self, h: int, w: int, fit: float) -> int:
        """The tile side: the user's (smaller when ``pixel_cap`` says so), else the cheapest that
        fits ``fit`` pixels."""
        m = self.multiple
        if self.tile is not None:
            side = self.tile
            if self.pixel_cap:
                side = min(side, int(self.pixel_cap ** 0.5))
            side = max(m, side // m * m)
            if self.overlap(side) >= side:
                raise MemoryBudgetError(f"tile {side} px is too small for its overlap")
            return side
        side = int(fit ** 0.5) // m * m
        minimum = self.minimum_tile()
        if side < minimum:
            bands = self._bands_need(h, w)
            if bands is not None and self.band_room(h, w) >= bands:
                return minimum  # not used: the frame runs whole in row bands, which need less
            raise MemoryBudgetError(self._too_small(h, w, minimum))
        return self._cheapest_tile(h, w, minimum, fit)

    def minimum_tile(self) -> int:
        """The smallest tile side worth running: two overlaps and one multiple."""
        m = self.multiple
        side = max(m, min_side(m))
        while side < 2 * self.overlap(side) + m:
            side += m
        return side

    def minimum_budget(self, h: int, w: int) -> int:
        """The smallest budget that runs an ``h`` x ``w`` frame: in the smallest tiles, or in row
        bands where the frame can run in them and they need less."""
        return min(self._minimum_budgets(h, w).values())

    def _minimum_budgets(self, h: int, w: int) -> dict:
        ph, pw = self.padded(h, w)
        fp, side = self.footprint, self.minimum_tile()
        held = ph * pw * (fp.frame + fp.tiled) + self.queue_bytes(h, w)
        needs = {f"one {side} px tile": int(held + min(side, ph) * min(side, pw) * (fp.activation + fp.stats)) + 1}
        bands = self._bands_need(h, w)
        if bands is not None:  # the inverse of band_room
            needs["one band of rows"] = int(held + bands * (fp.activation + fp.stats) / fp.activation) + 1
        return needs

    def _bands_need(self, h: int, w: int) -> Optional[float]:
        return None if self.bands_need is None else self.bands_need(*self.padded(h, w))

    def _too_small(self, h: int, w: int, minimum: int) -> str:
        needs = self._minimum_budgets(h, w)
        what, need = min(needs.items(), key=lambda kv: kv[1])
        if need <= self.budget:  # the budget is fine; out-of-memory retries capped the tiles
            return f"tiles of {minimum} px are the smallest this model can take"
        return (f"{format_size(self.budget)} is too small for a {w}x{h} frame: it needs at least "
                f"{format_size(need)} (the frame's buffers and {what}); "
                f"use --max-memory {math.ceil(need / 2**20)}M or more")

    def _cheapest_tile(self, h: int, w: int, minimum: int, fit: float) -> int:
        """The tile side whose plan computes the fewest pixels (overlaps included) among tiles
        that fit: tiles are clamped to the frame along a short axis, so a tile wider than
        sqrt(budget) can fit (3840x2160 in 4.2 Mpx: 4 tiles of ~1990x1144 compute 1.1x the frame
        where square 2048 px tiles would compute 2x)."""
        m = self.multiple
        ph, pw = self.padded(h, w)
        best: Optional[Tuple[int, int, int]] = None  # (pixels computed, tiles, -side)
        for side in range(minimum, max(ph, pw) + m, m):
            if min(side, ph) * min(side, pw) > fit:
                break
            boxes = plan_tiles(ph, pw, side, self.overlap(side), m)
            cost = (sum(b.height * b.width for b in boxes), len(boxes), -side)
            if best is None or cost < best:
                best = cost
        return -best[2] if best is not None else minimum

    def _stats(self, ph: int, pw: int, fit: float) -> dict:
        """How a tiled frame's normalization statistics are found, within ``fit`` pixels."""
        if not self.frame_dependent_norm:
            return {"stats": "none"}
        if ph * pw <= fit:
            return {"stats": "full"}  # the user asked for tiles; the frame itself fits
        if self.tile_stats == "fast":
            scale = min(0.5, (fit / (ph * pw)) ** 0.5)
            return {"stats": "downscaled", "stats_scale": max(scale, 1e-3)}
        return {"stats": "tiled"}

    # -- out of memory ---------------------------------------------------------------------------

    def after_batch_oom(self, batch: int) -> int:
        """A batch of ``batch`` frames ran out of memory: the batch for the rest of the run."""
        self.batch_cap = max(1, batch // 2)
        return self.batch_cap

    def after_frame_oom(self, h: int, w: int) -> Optional[Plan]:
        """One frame ran out of memory alone: a plan with half the pixels per forward of the one
        that failed (whole frame -> tiles -> smaller tiles), or None when tiles cannot get smaller
        (then :meth:`forgive` before the next frame). The cap stays for the rest of the run."""
        try:
            failed = self.plan(h, w)
        except MemoryBudgetError:
            return None
        ph, pw = self.padded(h, w)
        if failed.tile is None:  # the frame ran whole, alone
            pixels = ph * pw
        else:
            pixels = failed.batch_tiles * min(failed.tile, ph) * min(failed.tile, pw)
        smallest = min(self.minimum_tile(), ph) * min(self.minimum_tile(), pw)
        if pixels <= smallest:
            return None
        self.pixel_cap = max(pixels // 2, smallest)  # the smallest tile gets its try too
        try:
            return self.plan(h, w)
        except MemoryBudgetError:
            return None

    def forgive(self) -> None:
        """Smaller tiles did not help this frame: the next frame starts from the full budget."""
        self.pixel_cap = None


def probe_footprint(model: nn.Module, run: Callable[[torch.Tensor], object], channels: int,
                    multiple: int, session: "Session", norms: Sequence[nn.Module] = ()
                    ) -> Tuple[float, float]:
    """(peak activation bytes, exact-statistics temporaries) per input pixel of ``run`` (a forward
    of ``model``), from one probe.

    Runs ``run`` once on a zero frame of 32 px (the model's minimum side if larger; layer outputs
    per input pixel do not depend on the frame size) inside the caller's inference context and
    records the largest leaf-module output (in bytes, actual dtypes: autocast keeps some layers in
    fp32) and the largest input of the frame-dependent normalization layers ``norms`` (elements);
    the peak is taken as ``ACTIVATION_FACTOR`` times the largest output, the statistics
    temporaries as three float32 copies of the largest norm input. On CUDA the allocator's own
    peak during the probe is measured too, and the larger of the two is used.
    """
    side = max(32, min_side(multiple))
    weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros(1, channels, side, side, device=session.device, dtype=weights)
    cuda = session.device.type == "cuda"
    if cuda:
        session.sync()
        torch.cuda.reset_peak_memory_stats(session.device)
        before = torch.cuda.memory_allocated(session.device)
    largest, elements = _largest_tensors(model, run, x, norms)
    measured = 0.0
    if cuda:
        session.sync()
        measured = float(torch.cuda.max_memory_allocated(session.device) - before)
    pixels = side * side
    return max(ACTIVATION_FACTOR * largest, measured) / pixels, 3 * 4 * elements / pixels


def _largest_tensors(model: nn.Module, run: Callable[[torch.Tensor], object], x: torch.Tensor,
                     norms: Sequence[nn.Module]) -> Tuple[int, int]:
    """(bytes of the largest leaf-module output, elements of the largest input of ``norms``) in
    ``run(x)``."""
    largest = [x.numel() * x.element_size(), 0]

    def output_hook(_module: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    def norm_hook(_module: nn.Module, inp: tuple) -> None:
        if inp and isinstance(inp[0], torch.Tensor):
            largest[1] = max(largest[1], inp[0].numel())

    handles = [m.register_forward_hook(output_hook) for m in model.modules() if not list(m.children())]
    handles += [m.register_forward_pre_hook(norm_hook) for m in norms]
    try:
        run(x)
    finally:
        for h in handles:
            h.remove()
    return largest[0], largest[1]


def format_size(n: float) -> str:
    """Bytes as people write them: 512 KiB, 13.9 MiB, 4.0 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 100 * scale else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} B"
