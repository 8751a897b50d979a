"""The runner: the only stage that touches device, dtype, ``eval()`` and ``inference_mode()``.

It takes batches of same-size integer images and returns the model's output images at the same
size: convert on the device, pad to the model's size multiple, run (whole, or tiled when the frame
does not fit the memory budget), crop back, convert to integers.

Fast paths (each checked against fp32 in ``tests/test_fast_paths.py``):

- precision: ``auto`` is bf16 on CPUs with bf16 units (AVX512-BF16 / AMX) and on CUDA GPUs with
  bf16, fp16 on MPS, else fp32. Below fp32 the runner keeps a low-precision copy of the weights
  (shared by every runner of the same module) and runs under autocast; the module given stays fp32.
- channels_last: images arrive as [B, H, W, C] integers, which *is* the channels_last layout;
  they stay in it through conversion, the model and back, so no full-frame transposes are paid.
- integers travel: uint8 goes to the device and is converted there; the output is rounded to uint8
  on the device and only then copied back.
- compilation (``compile`` = auto | on | off, :mod:`frametrans.engine.compile`): whole frames of
  a repeated shape run an AOTInductor-compiled forward (weights frozen, in the runner's dtype and
  layout) cached on disk; ``auto`` compiles only when the job is long enough to pay for it.
  Tiled frames run eagerly (their normalization layers are patched per frame).
- CUDA (not run in this project's CI, which has no GPU): cudnn autotuning, pinned staging buffers
  with asynchronous copies, one batch in flight while the previous one is copied back and handed
  on, optional CUDA graphs per static shape.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from frametrans.engine import compile as compiling
from frametrans.engine import device as devices
from frametrans.engine import transforms
from frametrans.engine.padding import crop, min_side, pad_to_multiple
from frametrans.io.frame import Frame

log = logging.getLogger("frametrans")

ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
# the CPU batches frames up to this many pixels in all (4 frames of 256x256; a 640x360 frame alone)
CPU_BATCH_PIXELS = 4 * 256 * 256


@dataclass
class RunnerOptions:
    """How to run a model. None means: choose from the device, the model and the frame size.

    compile: ``auto`` (compile a frame shape when a compiled package is cached, or when the job is
        long enough for compiling to pay; see :meth:`Runner.expect`), ``on`` (always; fails loudly
        if it cannot), ``off`` (eager only).
    cuda_graphs: replay CUDA graphs of the forward per static shape (CUDA only).
    cache_dir: where compiled packages go (default :func:`frametrans.engine.compile.cache_dir`).
    """

    device: str = "auto"
    precision: str = "auto"
    batch_size: Optional[int] = None
    tile: Optional[int] = None
    tile_overlap: Optional[int] = None
    max_memory: Optional[int] = None  # bytes of activations for one forward
    channels_last: bool = True
    compile: str = "auto"
    cuda_graphs: bool = False
    cache_dir: Optional[str] = None

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
        self.compile = compiling.validate_mode(self.compile)


def default_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


# One low-precision copy per (module, device, dtype, layout), shared by the runners built on it
# (MUNIT variants); it goes away with the module, and is rebuilt when the module's weights changed.
_PREPARED: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, Tuple[tuple, nn.Module]]]" = (
    weakref.WeakKeyDictionary())


def _weights_stamp(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``model`` is replaced or modified in place
    (optimizer steps, ``load_state_dict``): storage address and autograd version counter."""
    tensors = list(model.parameters()) + list(model.buffers())
    return tuple((t.data_ptr(), t._version) for t in tensors)


@dataclass
class _Launched:
    """A batch whose outputs are computed (CPU) or queued (CUDA) but not yet handed out."""

    frames: Optional[List[Frame]]
    out: torch.Tensor  # [B, H, W, C] integers, on the CPU (pinned on CUDA)
    dtype: np.dtype
    event: Optional["torch.cuda.Event"] = None


class Runner:
    """Run a registered image-to-image model on batches of numpy images.

    model: a module from :mod:`frametrans.models` (it carries ``config.contract()``); moved to the
        device and put in ``eval()`` mode in place, its weights stay as they are.
    forward: how to call it, e.g. ``lambda m, x: m.translate(x, style, "a2b")`` for MUNIT. A forward
        other than the default is compiled only if it has a ``cache_token`` attribute (a string that
        changes whenever its behaviour does).
    """

    def __init__(self, model: nn.Module, options: Optional[RunnerOptions] = None,
                 forward: ForwardFn = default_forward) -> None:
        self.options = options or RunnerOptions()
        self.options.validate()
        self.device = devices.resolve_device(self.options.device)
        self.dtype = devices.resolve_precision(self.options.precision, self.device)
        self.contract = model.config.contract()
        self.forward = forward
        self.source = model.eval().to(self.device)  # fp32 weights: receptive field, compile key
        self.model = self._prepare(self.source)
        self.budget = self.options.max_memory or devices.default_memory_budget(self.device)
        self._bytes_per_pixel: Optional[float] = None
        self._radius: Optional[int] = None
        self.tiled_frames = 0
        self.policy = compiling.CompilePolicy(mode=self.options.compile)
        self._compiled: Dict[Tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]] = {}
        self._eager_seconds: Dict[Tuple[int, ...], float] = {}
        self._identity: Optional[str] = None
        self._signature: Optional[str] = None
        self._declined: set = set()  # shapes auto decided not to compile, until the next expect()
        self.compile_seconds = 0.0  # spent compiling or loading packages, for reports
        self._pinned: Dict[tuple, List[Tuple[torch.Tensor, "torch.cuda.Event"]]] = {}
        self._pinned_turn: Dict[tuple, int] = {}
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes per job: autotune conv algorithms
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and not devices.cpu_has_bf16():
            log.warning("bf16 on a CPU without bf16 units is emulated and much slower than fp32 "
                        "(measured 60x on an AVX2 CPU); --precision auto picks fp32 here")
        if self.options.compile == "on":
            reason = compiling.can_compile(self.device) or self._forward_uncompilable()
            if reason:
                raise ValueError(f"--compile on: {reason}; use --compile auto or off")

    def _prepare(self, model: nn.Module) -> nn.Module:
        """The module that runs: the given one (fp32), or a shared low-precision copy of it."""
        channels_last = self._channels_last()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.dtype == torch.float32 or self.device.type == "mps":
            return model  # MPS: fp32 weights under fp16 autocast, as before
        key = (str(self.device), self.dtype, channels_last)
        copies = _PREPARED.setdefault(model, {})
        stamp = _weights_stamp(model)
        if key not in copies or copies[key][0] != stamp:
            low = copy.deepcopy(model).to(self.dtype)
            if channels_last:
                low = low.to(memory_format=torch.channels_last)
            copies[key] = (stamp, low.eval())
        return copies[key][1]

    def _channels_last(self) -> bool:
        return self.options.channels_last and self.device.type != "mps"

    # -- public ---------------------------------------------------------------------------------

    def expect(self, frames: Optional[int]) -> None:
        """Tell the ``compile=auto`` policy that the next ``frames`` frames are one job
        (None: an open-ended stream). Without a hint, auto only uses already-compiled packages."""
        p = self.policy
        self._declined.clear()
        if frames is None:
            p.expected_frames = p.done_frames + compiling.UNKNOWN_LENGTH
        else:
            p.expected_frames = p.done_frames + max(0, int(frames))

    def run(self, frames: Iterable[Frame]) -> Iterator[Tuple[Frame, np.ndarray]]:
        """Yield ``(frame, output image)`` in input order; consecutive same-size frames are batched.

        On CUDA one batch is in flight on the device while the previous one's outputs are copied
        back and yielded; elsewhere each batch is finished before the next is read.
        """
        pending: List[Frame] = []
        inflight: Optional[_Launched] = None
        for frame in frames:
            if pending and not _same_kind(pending[0].image, frame.image):
                inflight = yield from self._submit(pending, inflight)
                pending = []
            pending.append(frame)
            if len(pending) >= self.batch_size_for(frame.image.shape):
                inflight = yield from self._submit(pending, inflight)
                pending = []
        if pending:
            inflight = yield from self._submit(pending, inflight)
        if inflight is not None:
            yield from self._hand_out(inflight)

    def __call__(self, images: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Same-size images [H,W,C] uint8/uint16 -> output images [H,W,C_out] of the same dtype."""
        if not images:
            return []
        return self._finish(self._launch(None, images))

    def batch_size_for(self, shape: Tuple[int, ...]) -> int:
        """The batch size for frames of ``shape``: the option, else what fits the memory budget.

        On the CPU batches stop at ``CPU_BATCH_PIXELS`` pixels: batching small frames amortizes
        per-call overhead, but a batch of large ones only spills the caches (the bundled cyclegan,
        2 threads: 128x128 34 ms/frame at batch 4 vs 42 at 1; 640x360 495 vs 442).
        """
        if self.options.batch_size:
            return self.options.batch_size
        h, w = shape[:2]
        pixels = _padded(h, w, self.contract.size_multiple)
        per_frame = self.bytes_per_pixel() * pixels
        cap = 16 if self.device.type == "cuda" else min(4, CPU_BATCH_PIXELS // pixels)
        return int(max(1, min(cap, self.budget // max(per_frame, 1))))

    def model_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass alone, as the runner runs it on whole frames (compiled when the policy
        says so): ``x`` [B, C, H, W] padded, on the device, see :meth:`model_input`."""
        with torch.inference_mode(), self._autocast():
            return self._forward_whole(x)

    def model_input(self, batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
        """A random model input [batch, C, H, W] in the model's range, dtype and layout (for benchmarks)."""
        c = self.contract.in_channels * self.contract.frames_in
        lo, hi = self.contract.value_range
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, c, height, width, generator=g) * (hi - lo) + lo
        return self._to_model_layout(x.to(self.device))

    # -- batches --------------------------------------------------------------------------------

    def _submit(self, frames: List[Frame], inflight: Optional[_Launched]
                ) -> Iterator[Tuple[Frame, np.ndarray]]:
        """Launch ``frames``; hand out ``inflight`` (the previous batch). Returns what is in flight."""
        try:
            launched = self._launch(frames, [f.image for f in frames])
        except torch.OutOfMemoryError:
            if inflight is not None:
                yield from self._hand_out(inflight)
            if len(frames) == 1:
                raise
            # retry smaller: halves of the batch (each may go on to tile), never dropping a frame
            log.warning("out of memory on a batch of %d; retrying in halves", len(frames))
            self._empty_cache()
            half = len(frames) // 2
            self.options.batch_size = max(1, half)
            for part in (frames[:half], frames[half:]):
                rest = yield from self._submit(part, None)
                if rest is not None:
                    yield from self._hand_out(rest)
            return None
        if inflight is not None:
            yield from self._hand_out(inflight)
        if launched.event is None:  # finished already: nothing gained by holding it
            yield from self._hand_out(launched)
            return None
        return launched

    def _hand_out(self, launched: _Launched) -> Iterator[Tuple[Frame, np.ndarray]]:
        yield from zip(launched.frames, self._finish(launched))

    def _launch(self, frames: Optional[List[Frame]], images: Sequence[np.ndarray]) -> _Launched:
        """Upload, convert, run and convert back; on CUDA the copy back is queued, not awaited."""
        dtype = images[0].dtype
        max_value = 65535.0 if dtype == np.uint16 else 255.0
        h, w = images[0].shape[:2]
        with torch.inference_mode(), self._autocast():
            x = self._upload(images)  # [B, C, H, W] integers, channels_last strides
            x = _to_model_range(x, self.contract.value_range, max_value)
            x = transforms.match_channels(x, self.contract.in_channels * self.contract.frames_in)
            y = self._infer(x, h, w)
            y = transforms.from_model_range(y, self.contract.value_range, max_value)
            y = y.to(torch.int32 if dtype == np.uint16 else torch.uint8).permute(0, 2, 3, 1)
            self.policy.done_frames += len(images)
            if self.device.type != "cuda":
                return _Launched(frames, y.to("cpu"), np.dtype(dtype))
            out, event = self._pinned_buffer(tuple(y.shape), y.dtype)
            out.copy_(y, non_blocking=True)
            event.record()
            return _Launched(frames, out, np.dtype(dtype), event)

    def _finish(self, launched: _Launched) -> List[np.ndarray]:
        if launched.event is not None:
            launched.event.synchronize()
            arr = launched.out.numpy().copy()  # the pinned buffer is reused two batches later
        else:
            arr = np.ascontiguousarray(launched.out.numpy())
        return [a.astype(launched.dtype, copy=False) for a in arr]

    def _upload(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Integer images onto the device as [B, C, H, W] (a view of [B, H, W, C]: channels_last)."""
        if self.device.type == "cuda" and images[0].dtype == np.uint8 and images[0].ndim == 3:
            shape = (len(images), *images[0].shape)
            buf, event = self._pinned_buffer(("in", *shape), torch.uint8)
            np.stack(images, out=buf.numpy())
            t = buf.to(self.device, non_blocking=True)
            event.record()  # the buffer may be refilled once this copy is done
            return t.permute(0, 3, 1, 2)
        return transforms.images_to_tensor(images, self.device)

    def _pinned_buffer(self, key: tuple, dtype: torch.dtype) -> Tuple[torch.Tensor, "torch.cuda.Event"]:
        """A page-locked CPU buffer of shape ``key`` (two per shape, used in turn) and its event.

        Waits for the event of the buffer's previous use, so it is never overwritten while an
        asynchronous copy still reads or writes it.
        """
        shape = tuple(k for k in key if isinstance(k, int))
        full = (key, dtype)
        ring = self._pinned.get(full)
        if ring is None:
            ring = [(torch.empty(shape, dtype=dtype, pin_memory=True), torch.cuda.Event())
                    for _ in range(2)]
            self._pinned[full] = ring
            if len(self._pinned) > 16:  # many frame sizes: keep the newest few
                self._pinned.pop(next(iter(self._pinned)))
        turn = self._pinned_turn.get(full, 0)
        self._pinned_turn[full] = turn + 1
        buf, event = ring[turn % 2]
        event.synchronize()
        return buf, event

    def _empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- inference ------------------------------------------------------------------------------

    def _to_model_layout(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last():
            x = x.contiguous(memory_format=torch.channels_last)
        weights = _param_dtype(self.model)
        return x.to(weights) if weights is not None and x.is_floating_point() else x

    def _infer(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        tile = self._tile_size(h, w)
        x, pads = pad_to_multiple(x, self.contract.size_multiple,
                                  min_size=min_side(self.contract.size_multiple))
        x = self._to_model_layout(x)
        if tile is None:
            y = self._forward_whole(x)
        else:
            y = self._infer_tiled(x, tile)
        return crop(y, pads)

    def _forward_whole(self, x: torch.Tensor) -> torch.Tensor:
        """One padded batch through the compiled forward when there is (or should be) one."""
        shape = tuple(x.shape)
        fn = self._compiled.get(shape)
        bigger = self._compiled_for_larger_batch(shape) if fn is None else None
        if fn is None and bigger is None:
            fn = self._maybe_compile(x)
        if fn is not None:
            return fn(x)
        if bigger is not None:  # the last, short batch of a job: pad it to the compiled batch
            n, fn = bigger
            filler = x[-1:].expand(n - shape[0], *shape[1:])
            xp = torch.cat([x, filler]).contiguous(memory_format=_layout(x))
            return fn(xp)[: shape[0]]
        if self.options.cuda_graphs and self.device.type == "cuda":  # eager forward, replayed
            fn = compiling.CudaGraphForward(lambda t: self.forward(self.model, t), x)
            self._compiled[shape] = fn
            return fn(x)
        timed = self.policy.mode == "auto" and shape not in self._eager_seconds
        if timed:
            self._sync()
            t0 = time.perf_counter()
        y = self.forward(self.model, x)
        if timed:
            self._sync()
            self._eager_seconds[shape] = (time.perf_counter() - t0) / shape[0]
        return y

    def _compiled_for_larger_batch(self, shape: Tuple[int, ...]
                                   ) -> Optional[Tuple[int, Callable[[torch.Tensor], torch.Tensor]]]:
        for other, fn in self._compiled.items():
            if other[1:] == shape[1:] and other[0] > shape[0]:
                return other[0], fn
        return None

    def _maybe_compile(self, x: torch.Tensor) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        shape = tuple(x.shape)
        policy = self.policy
        if policy.mode == "off" or shape in policy.failed or shape in self._declined:
            return None
        reason = compiling.can_compile(self.device) or self._forward_uncompilable()
        if reason:
            policy.failed[shape] = reason
            log.info("not compiling: %s", reason)
            return None
        key = self._artifact_key(x)
        root = self._cache_root()
        cached = compiling.is_cached(key, root)
        eager = self._eager_seconds.get(shape)
        if not policy.should_compile(shape, cached, eager, self.device, self.dtype):
            if eager is not None:
                self._declined.add(shape)
            return None
        try:
            with torch.autocast(self.device.type, enabled=False):
                fn, was_cached, seconds = compiling.get_compiled(self.model, self.forward, x, key, root)
        except Exception as exc:  # noqa: BLE001 - export/compile failures: eager still works
            first = str(exc).strip().splitlines()
            policy.failed[shape] = f"{type(exc).__name__}: {first[0] if first else ''}"
            if policy.mode == "on":
                raise RuntimeError(f"--compile on: compiling the model failed "
                                   f"({policy.failed[shape]}); use --compile auto or off") from exc
            log.warning("compiling the model failed (%s); running it uncompiled", policy.failed[shape])
            return None
        self.compile_seconds += seconds
        log.info("%s compiled forward for %s in %.1f s", "loaded" if was_cached else "built", shape, seconds)
        if self.options.cuda_graphs and self.device.type == "cuda":
            fn = compiling.CudaGraphForward(fn, x)
        self._compiled[shape] = fn
        return fn

    def _forward_uncompilable(self) -> Optional[str]:
        if self.forward is default_forward or getattr(self.forward, "cache_token", None):
            return None
        return "a custom forward function without a cache_token"

    def _artifact_key(self, x: torch.Tensor) -> compiling.ArtifactKey:
        if self._identity is None:
            token = "" if self.forward is default_forward else str(self.forward.cache_token)
            self._identity = compiling.model_identity(self.model, self.source, token)
        if self._signature is None:
            self._signature = compiling.device_signature(self.device)
        return compiling.ArtifactKey(
            model=self._identity, shape=tuple(x.shape), dtype=str(x.dtype),
            channels_last=self._channels_last(), device=self._signature)

    def _cache_root(self):
        from pathlib import Path

        return Path(self.options.cache_dir) if self.options.cache_dir else compiling.cache_dir()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _infer_tiled(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        """Padded frames [B,C,H,W] through the model in overlapping tiles.

        Normalization statistics (InstanceNorm, AdaIN, LayerNorm, batch-stat BatchNorm) are taken
        over each whole frame and frozen while its tiles run, so tiles agree with the full-frame
        pass: exactly from a full pass when the frame fits the budget (the user asked for tiles),
        else exactly from a layer-by-layer tiled pass that needs only tile-sized memory.
        """
        from frametrans.engine.normstats import run_tiled_frozen

        self.tiled_frames += x.shape[0]
        height, width = x.shape[-2:]
        fit = self._pixels_that_fit()
        fits = height * width <= fit
        # as many tiles per forward as the budget holds (the budget is for one forward), at most 8
        batch_tiles = int(max(1, min(8, fit // (min(tile, height) * min(tile, width)))))
        return run_tiled_frozen(
            self.model, x, tile=tile, overlap=self.overlap(tile), multiple=self.contract.size_multiple,
            fn=lambda t: self.forward(self.model, t), stats="full" if fits else "tiled",
            out_channels=self.contract.out_channels * self.contract.frames_out, batch_tiles=batch_tiles,
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
        side = self._cheapest_tile(h, w, minimum, fit)
        log.info("frame %dx%d exceeds the memory budget: tiling with %d px tiles", w, h, side)
        return side

    def _cheapest_tile(self, h: int, w: int, minimum: int, fit: int) -> int:
        """The tile side whose plan computes the fewest pixels (overlaps included) among tiles that
        fit the budget. Tiles are clamped to the frame along a short axis, so a tile wider than
        sqrt(budget) can fit: for 3840x2160 in a 4.2 Mpx budget, 4 tiles of ~1990x1144 compute 1.1x
        the frame where 4 square 2048 px tiles would compute 2x."""
        from frametrans.engine.tiling import plan_tiles

        m = self.contract.size_multiple
        least = min_side(m)
        ph, pw = max(least, -(-h // m) * m), max(least, -(-w // m) * m)
        best: Optional[Tuple[int, int, int]] = None  # (pixels computed, tiles, -side)
        for side in range(minimum, max(ph, pw) + m, m):
            if min(side, ph) * min(side, pw) > fit:
                break
            boxes = plan_tiles(ph, pw, side, self.overlap(side), m)
            cost = (sum(b.height * b.width for b in boxes), len(boxes), -side)
            if best is None or cost < best:
                best = cost
        return -best[2] if best is not None else minimum

    def overlap(self, tile: int) -> int:
        """Tile overlap: the option, else enough for the model's receptive field (capped at 128)."""
        if self.options.tile_overlap is not None:
            return self.options.tile_overlap
        if self._radius is None:
            from frametrans.engine.receptive import receptive_field

            # measured on the fp32 weights: half precision may underflow at the field's fringes
            self._radius = receptive_field(
                self.source, self.contract.in_channels * self.contract.frames_in,
                self.contract.size_multiple, fn=lambda t: self.forward(self.source, t), max_radius=32)
        from frametrans.engine.receptive import suggest_overlap

        return suggest_overlap(self._radius, tile, self.contract.size_multiple, cap=128)

    def _pixels_that_fit(self) -> int:
        return int(self.budget / self.bytes_per_pixel())

    def bytes_per_pixel(self) -> float:
        """Estimated peak activation bytes per input pixel, measured once with a small probe."""
        if self._bytes_per_pixel is None:
            with self._autocast():
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
    least = min_side(m)
    return max(least, -(-h // m) * m) * max(least, -(-w // m) * m)


def _to_model_range(x: torch.Tensor, value_range: Tuple[float, float], max_value: float) -> torch.Tensor:
    """Integers [0, max_value] -> float32 in ``value_range``, keeping the input's memory layout
    (:func:`transforms.to_model_range` makes it NCHW-contiguous: a full-frame transpose)."""
    lo, hi = value_range
    return x.to(torch.float32).mul_((hi - lo) / max_value).add_(lo)


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


def _param_dtype(model: nn.Module) -> Optional[torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _probe_bytes_per_pixel(model: nn.Module, forward: ForwardFn, contract, device: torch.device,
                           dtype: torch.dtype) -> float:
    """Run one small forward and record the largest layer output; peak ~ 4x that (skips, temps).

    32 px probes (the model's minimum side if larger): layer outputs per input pixel do not depend
    on the frame size, and a 64 px probe of ResNet-9 costs a whole second at start-up.
    (The meta device would do it without arithmetic, but its first use imports dynamo: slower.)
    """
    side = max(32, min_side(contract.size_multiple))
    x = torch.zeros(1, contract.in_channels * contract.frames_in, side, side, device=device,
                    dtype=_param_dtype(model) or torch.float32)
    largest = _largest_output(model, forward, x)
    element = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    return 4.0 * largest * element / (side * side) + 4 * 4 * contract.in_channels


def _largest_output(model: nn.Module, forward: ForwardFn, x: torch.Tensor) -> int:
    """The most elements any leaf module outputs in ``forward(model, x)``."""
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
    return largest[0]
