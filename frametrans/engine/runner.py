"""The runner: batching and streaming frames through a model, within a memory policy.

Batches of same-size integer images in, the model's output images out: convert on the device,
pad to the model's size multiple, run (whole; over the budget in row bands or tiles), crop, convert
back. Device, dtype, ``eval()``, ``inference_mode`` and weight copies belong to the
:class:`~frametrans.engine.session.Session`; batch and tile sizes and out-of-memory reactions to the
:class:`~frametrans.engine.memory.MemoryPolicy`. The frozen options are never written.

Fast paths (each checked against fp32 in ``tests/engine/test_fast_paths.py``):

- precision: see :mod:`frametrans.engine.session` (bf16 weight copy + autocast below fp32).
- channels_last: images arrive as [B, H, W, C] integers, which *is* the channels_last layout;
  they stay in it through conversion, the model and back.
- integers travel: uint8 goes to the device, is padded and converted there; the output is rounded
  to uint8 on the device and only then copied back.
- compilation (``compile`` = auto | on | off, :mod:`frametrans.engine.compile`): whole frames of
  a repeated shape run an AOTInductor-compiled forward (weights frozen, in the runner's dtype and
  layout) cached on disk; ``auto`` compiles only when the job is long enough to pay for it (on
  the CPU; on CUDA it uses a cached package only). Compiler and first load run in child processes
  (:mod:`frametrans.engine.package_child`).
  Tiled frames run eagerly (their normalization layers are patched per frame).
- CUDA (not run in this project's CI, which has no GPU): cudnn autotuning, pinned staging buffers,
  one batch in flight while the previous one is copied back, optional CUDA graphs per shape.

Out of memory: a batch is retried in halves (the policy keeps the smaller batch); one frame is
retried over a smaller budget until the smallest tiles fail (:class:`FrameOutOfMemory`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from frametrans.engine import backends
from frametrans.engine import compile as compiling
from frametrans.engine import device as devices
from frametrans.engine import transforms, yuv
from frametrans.engine.backends.serve import BackendServer
from frametrans.engine.forwards import ForwardFn, default_forward, forward_token
from frametrans.engine.inflight import Launched, Recheck, finite_flags
from frametrans.engine.memory import (Footprint, MemoryPolicy, Plan, format_size, frame_bytes_per_pixel,
                                      probe_footprint)
from frametrans.engine.normstats import frame_dependent_norms, has_frame_dependent_norm
from frametrans.engine.options import RunnerOptions
from frametrans.engine.pinned import PinnedBuffers
from frametrans.engine.padding import Pads, crop, min_side, pad_to_multiple
from frametrans.engine.session import Session
from frametrans.engine.streaming import Streamers
from frametrans.io.errors import first_line
from frametrans.io.frame import Frame, frame_label
from frametrans.io.planes import YUV420

log = logging.getLogger("frametrans")

class FrameOutOfMemory(RuntimeError):
    """One frame does not fit even in the smallest tiles."""


class NonFiniteOutput(RuntimeError):
    """The model's output has NaN or inf even in fp32 (names the frames); nothing is written."""


class Runner:
    """Run a registered image-to-image model on batches of numpy images.

    model: a module from :mod:`frametrans.models` (it carries ``config.contract()``); its
        :class:`Session` moves it to the device and puts it in ``eval()`` mode, weights unchanged.
    forward: how to call it, e.g. ``lambda m, x: m.translate(x, style, "a2b")`` for MUNIT. A forward
        other than the default is compiled only if it has a ``cache_token`` attribute (a string that
        changes whenever its behaviour does).
    out_channels: channels the forward returns (default: the contract's channels x frames out).
    session: share an existing session (MUNIT variants); default: a new one from the options.
    """

    def __init__(self, model: nn.Module, options: Optional[RunnerOptions] = None,
                 forward: ForwardFn = default_forward, out_channels: Optional[int] = None,
                 session: Optional[Session] = None) -> None:
        self.options = options or RunnerOptions()
        self.options.validate()
        self.session = session or Session(model, self.options.device, self.options.precision,
                                          self.options.channels_last)
        self.contract = model.config.contract()
        self.forward = forward
        self.in_channels = self.contract.in_channels * self.contract.frames_in
        self.out_channels = out_channels or self.contract.out_channels * self.contract.frames_out
        self._frame_norms = has_frame_dependent_norm(self.source)
        self.memory = MemoryPolicy(
            budget=self.options.max_memory or devices.default_memory_budget(self.device),
            measure=self._measure_footprint, multiple=self.contract.size_multiple,
            overlap=self.overlap, frame_dependent_norm=self._frame_norms,
            batch_size=self.options.batch_size, tile=self.options.tile,
            tile_stats=self.options.tile_stats, cpu=self.device.type != "cuda", bands_need=self._bands_need)
        self._plans: Dict[tuple, Plan] = {}
        self._radius: Optional[int] = None
        self.streams = Streamers(self.source, forward, self.device)  # row-band runners per frame shape
        self.tiled_frames = 0
        self.policy = compiling.CompilePolicy(mode=compiling.validate_mode(self.options.compile))
        self._compiled: Dict[Tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]] = {}
        self._eager_seconds: Dict[Tuple[int, ...], float] = {}
        self._identity: Optional[str] = None
        self._signature: Optional[str] = None
        self._declined: set = set()  # shapes auto decided not to compile, until the next expect()
        self.compile_seconds = 0.0  # spent compiling or loading packages, for reports
        self._pinned = PinnedBuffers()  # CUDA staging buffers
        self._wide: Optional[Runner] = None  # fp32 twin for 16-bit inputs under precision auto
        self.backend = backends.choose(self.options.backend, self.device, self.dtype, self.options.precision,
                                       self.options.compile, self.session.all_low_db())
        token = forward_token(forward)
        self._server = BackendServer.serving(self.backend, self.source, forward, token, self._cache_root())
        if self.backend.explicit and self._server is not None:
            self.policy = compiling.CompilePolicy(mode="off")  # the backend asked for runs every frame
        if self.policy.mode == "on":
            reason = compiling.can_compile(self.device) or self._forward_uncompilable()
            if reason:
                raise ValueError(f"--compile on: {reason}; use --compile auto or off")

    # the session's facts, for callers and reports
    device = property(lambda self: self.session.device)
    dtype = property(lambda self: self.session.dtype)
    model = property(lambda self: self.session.model)
    source = property(lambda self: self.session.source)

    # -- public ---------------------------------------------------------------------------------

    @property
    def wants_planes(self) -> bool:
        """Whether video frames should reach this runner as YUV planes (``RunnerOptions.yuv``:
        ``on``, or ``auto`` on CUDA), converted on the device."""
        return self.options.yuv == "on" or (self.options.yuv == "auto" and self.device.type == "cuda")

    def expect(self, frames: Optional[int]) -> None:
        """Tell the ``compile=auto`` policy that the next ``frames`` frames are one job
        (None: an open-ended stream, which compiles only once the frames it has already run would
        have paid for it). Without a hint, auto only uses already-compiled packages."""
        p = self.policy
        self._declined.clear()
        p.open_ended_from = p.done_frames if frames is None else None
        if frames is not None:
            p.expected_frames = p.done_frames + max(0, int(frames))
        if self._wide is not None:  # 16-bit frames of the same job
            self._wide.expect(frames)

    def run(self, frames: Iterable[Frame]) -> Iterator[Tuple[Frame, np.ndarray]]:
        """Yield ``(frame, output image)`` in input order; consecutive same-size frames are batched
        (CUDA: one batch in flight while the previous one's outputs are copied back and yielded)."""
        pending: List[Frame] = []
        inflight: Optional[Launched] = None
        for frame in frames:
            if pending and not _same_kind(pending[0].image, frame.image):
                inflight = yield from self.for_depth(pending[0].image.dtype)._submit(pending, inflight)
                pending = []
            pending.append(frame)
            runner = self.for_depth(frame.image.dtype)
            if len(pending) >= runner.batch_size_for(frame.image.shape):
                inflight = yield from runner._submit(pending, inflight)
                pending = []
        if pending:
            inflight = yield from self.for_depth(pending[0].image.dtype)._submit(pending, inflight)
        if inflight is not None:
            yield from self._hand_out(inflight)

    def __call__(self, images: Sequence[np.ndarray], label: str = "image") -> List[np.ndarray]:
        """Same-size images [H,W,C] uint8/uint16 -> output images [H,W,C_out] of the same dtype. One
        image that runs out of memory is retried over a smaller budget (``label`` names it in the
        log); a batch that does is not (the caller splits it)."""
        if not images:
            return []
        if self.for_depth(images[0].dtype) is not self:
            return self.for_depth(images[0].dtype)(images, label)
        try:
            return self._finish(self._launch(None, images, label=label))
        except torch.OutOfMemoryError:
            if len(images) > 1:
                raise
        return [self._retry_in_tiles(images[0], label)]

    def for_depth(self, dtype: np.dtype) -> "Runner":
        """The runner for images of ``dtype``: with ``precision=auto``, 16-bit images run in fp32
        (a twin runner on the same fp32 weights, its own memory plan), so that their depth survives:
        bf16 keeps 8 significant bits, a 16-bit ramp of 2240 levels came back with 139."""
        if dtype != np.uint16 or self.options.precision != "auto" or self.dtype == torch.float32:
            return self
        if self._wide is None:
            log.info("16-bit input: running it in fp32 to keep its depth (--precision auto)")
            wide = dataclasses.replace(self.options, precision="fp32")
            self._wide = Runner(self.source, wide, forward=self.forward, out_channels=self.out_channels)
        return self._wide

    def plan(self, height: int, width: int) -> Plan:
        """The memory policy's plan for frames of ``height`` x ``width`` (cached per state)."""
        key = (height, width, self.memory.pixel_cap, self.memory.batch_cap)
        if key not in self._plans:
            if len(self._plans) > 64:
                self._plans.clear()
            plan = self._plans[key] = self.memory.plan(height, width)
            if plan.tile is not None and self.options.tile is None:  # (row bands log themselves)
                tiles = "" if self._bands_allowed(True) else \
                    f": tiling with {plan.tile} px tiles, statistics {plan.stats}"
                log.info("frame %dx%d exceeds the memory budget (%s)%s", width, height,
                         format_size(self.memory.budget), tiles)
        return self._plans[key]

    def batch_size_for(self, shape: Tuple[int, ...]) -> int:
        """Frames per forward for images of ``shape`` [H, W, C]: the option, else what the memory
        policy allows (on the CPU at most ``CPU_BATCH_PIXELS`` pixels: batching small frames
        amortizes per-call overhead, a batch of large ones only spills the caches)."""
        return self.plan(*shape[:2]).batch

    def model_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass alone, as the runner runs it on whole frames (compiled when the policy
        says so): ``x`` [B, C, H, W] padded, on the device, see :meth:`model_input`."""
        with self.session.inference():
            return self._forward_whole(x)

    def model_input(self, batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
        """A random model input [batch, C, H, W] in the model's range, dtype and layout (for benchmarks)."""
        lo, hi = self.contract.value_range
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, self.in_channels, height, width, generator=g) * (hi - lo) + lo
        return self.session.to_model_layout(x.to(self.device))

    def overlap(self, tile: int) -> int:
        """Tile overlap: the option, else enough for the model's receptive field (capped at 128)."""
        if self.options.tile_overlap is not None:
            return self.options.tile_overlap
        from frametrans.engine.receptive import receptive_field, suggest_overlap

        if self._radius is None:
            # measured on the fp32 weights: half precision may underflow at the field's fringes
            self._radius = receptive_field(
                self.source, self.in_channels, self.contract.size_multiple,
                fn=lambda t: self.forward(self.source, t), max_radius=32)
        return suggest_overlap(self._radius, tile, self.contract.size_multiple, cap=128)

    # -- batches --------------------------------------------------------------------------------

    def _submit(self, frames: List[Frame], inflight: Optional[Launched]
                ) -> Iterator[Tuple[Frame, np.ndarray]]:
        """Launch ``frames``; hand out ``inflight`` (the previous batch). Returns what is in flight."""
        try:
            launched = self._launch(frames, [f.image for f in frames])
        except torch.OutOfMemoryError:
            if inflight is not None:
                yield from self._hand_out(inflight)
            if len(frames) == 1:
                yield frames[0], self._retry_in_tiles(frames[0].image, frame_label(frames[0]))
                return None
            # retry smaller: halves of the batch (each may go on to tile), never dropping a frame
            log.warning("out of memory on a batch of %d; retrying in halves", len(frames))
            self.session.release_cached_memory()
            self.memory.after_batch_oom(len(frames))
            half = len(frames) // 2
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

    def _retry_in_tiles(self, image: np.ndarray, label: str, attempts: int = 12) -> np.ndarray:
        """Out of memory on one frame: halve the policy's tile budget until it fits or the tiles
        cannot get smaller. A smaller budget that worked stays for the rest of the run."""
        h, w = image.shape[:2]
        for attempt in range(attempts):
            self.session.release_cached_memory()
            plan = self.memory.after_frame_oom(h, w)
            if plan is None:
                break
            log.log(logging.WARNING if attempt == 0 else logging.INFO,
                    "%s: out of memory on a %dx%d frame; retrying in tiles (at most %d pixels "
                    "per forward)", label, w, h, self.memory.pixel_cap)
            try:
                return self._finish(self._launch(None, [image], plan, label))[0]
            except torch.OutOfMemoryError:
                continue
        self.session.release_cached_memory()
        self.memory.forgive()  # it did not help: the next frame starts over
        raise FrameOutOfMemory(f"out of memory even in the smallest tiles ({w}x{h} frame); "
                               "free device memory or use --device cpu")

    def _hand_out(self, launched: Launched) -> Iterator[Tuple[Frame, np.ndarray]]:
        yield from zip(launched.frames, self._finish(launched))

    def _launch(self, frames: Optional[List[Frame]], images: Sequence[np.ndarray],
                plan: Optional[Plan] = None, label: str = "image") -> Launched:
        """Upload, convert, run and convert back; on CUDA the copy back is queued, not awaited."""
        dtype = images[0].dtype
        max_value = 65535.0 if dtype == np.uint16 else 255.0
        plan = plan or self.plan(*images[0].shape[:2])
        with self.session.inference():
            x, pads = self._model_tensor(images, max_value)
            y = crop(self._infer(x, plan), pads)
            del x  # the input's memory is free for the conversion back
            labels = [frame_label(f) for f in frames] if frames else [label] * len(images)
            finite = finite_flags(y) if self._defers_finite_test() else None
            if finite is None:
                y = self._finite(y, images, max_value, plan, labels)
            y, planes = self._to_output(y, images, max_value)
            self.policy.done_frames += len(images)
            if self.device.type != "cuda":
                recheck = None if finite is None else Recheck(finite.cpu(), self, images, max_value, plan, labels)
                return Launched(frames, y.to("cpu"), np.dtype(dtype), planes=planes, recheck=recheck)
            out, event = self._pinned.get(tuple(y.shape), y.dtype)
            out.copy_(y, non_blocking=True)
            recheck = None
            if finite is not None:  # copied back with the outputs (pinned by torch's host cache): no wait
                recheck = Recheck(finite.to("cpu", non_blocking=True), self, images, max_value, plan, labels)
            event.record()
            return Launched(frames, out, np.dtype(dtype), event, planes, recheck)

    def _defers_finite_test(self) -> bool:
        """On CUDA the finite test of a batch is read when the batch is handed out, not when it is
        launched: reading it at once would wait for the forward and leave the GPU idle while the host
        hands out the batch before. Not for a forward that carries state (``--temporal stats``): its
        fp32 run must come before the next batch's."""
        return self.device.type == "cuda" and getattr(self.forward, "smoother", None) is None

    def _to_output(self, y: torch.Tensor, images: Sequence[np.ndarray], max_value: float
                   ) -> Tuple[torch.Tensor, bool]:
        """The model's output ``y`` [B, C, H, W] -> (integers [B, H, W, C] of the images' depth, or
        YUV 4:2:0 planes [B, H*3/2, W] uint8 for planes input; whether they are planes)."""
        # the output is the runner's to overwrite, unless its elements share memory (a model that
        # hands back its gray input expanded to RGB)
        in_place = not transforms.has_internal_overlap(y)
        if in_place and max_value == 255.0 and not isinstance(images[0], YUV420):
            pixels = transforms.model_output_to_bytes(y, self.contract.value_range)
            if pixels is not None:
                return pixels, False
        y = transforms.from_model_range(y, self.contract.value_range, max_value, in_place=in_place)
        planes = yuv.output_planes(images, y)
        if planes is not None:
            return planes, True
        return transforms.pixels_to_integers(y, images[0].dtype), False

    def _model_tensor(self, images: Sequence[np.ndarray], max_value: float, fp32: bool = False
                      ) -> Tuple[torch.Tensor, Pads]:
        """Integer images -> the padded model input [B, C, H', W'] in the model's range, dtype
        (float32 with ``fp32``) and layout. Padded while still integers (4x less to copy), each
        step freeing the one before."""
        m = self.contract.size_multiple
        x, pads = pad_to_multiple(self._upload(images), m, min_size=min_side(m))
        x = _to_model_range(x, self.contract.value_range, max_value)
        x = transforms.match_frame_channels(x, self.contract.frames_in, self.contract.in_channels)
        return (x if fp32 else self.session.to_model_input(x)), pads

    def _finite(self, y: torch.Tensor, images: Sequence[np.ndarray], max_value: float, plan: Plan,
                labels: List[str]) -> torch.Tensor:
        """``y`` when every output is finite. Else (a bf16/fp16 overflow) the batch once more in fp32
        on the fp32 weights, with a warning naming the frames; NonFiniteOutput when even that has
        NaN or inf, so that no black or garbage frame is ever written."""
        if bool(torch.isfinite(torch.sum(y, dtype=torch.float32))):
            return y  # one reduction (a NaN or inf anywhere makes the sum non-finite): ~30x cheaper
        bad = ~finite_flags(y)
        if not bool(bad.any()):  # finite values whose sum overflowed
            return y
        return self._rerun_fp32(images, max_value, plan, labels, bad)

    def _rerun_fp32(self, images: Sequence[np.ndarray], max_value: float, plan: Plan, labels: List[str],
                    bad: torch.Tensor) -> torch.Tensor:
        """The batch again in fp32 (``bad`` [B] bool: the frames with NaN or inf), warned; raises
        NonFiniteOutput when it ran in fp32 already, or still has NaN or inf."""
        names = ", ".join(labels[i] for i in bad.nonzero().flatten().tolist())
        served = self._server is not None and self._server.fn is not None  # may have run on the backend
        ran = self._server.choice.dtype if served else self.dtype
        if ran == torch.float32 and not served:
            raise NonFiniteOutput(f"{names}: the model's output has NaN or inf (in fp32)")
        log.warning("%s: NaN or inf in the %s output; running %s again in fp32", names,
                    backends.dtype_name(ran), "it" if len(images) == 1 else f"the batch of {len(images)}")
        x, pads = self._model_tensor(images, max_value, fp32=True)
        with self.session.full_precision():
            y = crop(self._infer(x, plan, self.source), pads)
        if not bool(torch.isfinite(y).all()):
            raise NonFiniteOutput(f"{names}: the model's output has NaN or inf, in fp32 too")
        return y

    def _finish(self, launched: Launched) -> List[np.ndarray]:
        if launched.event is not None:
            launched.event.synchronize()
        if launched.recheck is not None and not bool(launched.recheck.finite.all()):
            return self._finish(launched.recheck.runner._redo_in_fp32(launched))
        if launched.event is not None:
            arr = launched.out.numpy().copy()  # the pinned buffer is reused two batches later
        else:
            arr = np.ascontiguousarray(launched.out.numpy())
        if launched.planes:
            return [yuv.output_frame(a) for a in arr]
        return [a.astype(launched.dtype, copy=False) for a in arr]

    def _redo_in_fp32(self, launched: Launched) -> Launched:
        """A batch whose deferred finite test failed, run again in fp32 now (CPU outputs)."""
        r = launched.recheck
        assert r is not None
        with self.session.inference():
            try:
                y = self._rerun_fp32(r.images, r.max_value, r.plan, r.labels, ~r.finite)
            except torch.OutOfMemoryError:  # fp32 needs more than the plan of the batch: frame by frame
                if len(r.images) == 1:
                    raise
                self.session.release_cached_memory()
                y = torch.cat([self._rerun_fp32([im], r.max_value, r.plan, [label], ~r.finite[i:i + 1])
                               for i, (im, label) in enumerate(zip(r.images, r.labels))])
            y, planes = self._to_output(y, r.images, r.max_value)
            return Launched(launched.frames, y.to("cpu"), launched.dtype, planes=planes)

    def _upload(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Integer images onto the device as [B, C, H, W] (a view of [B, H, W, C]: channels_last);
        frames as YUV planes are converted there (:func:`frametrans.engine.yuv.upload`)."""
        if isinstance(images[0], YUV420):
            return yuv.upload(images, self.device, self._pinned)
        if self.device.type == "cuda" and images[0].dtype == np.uint8 and images[0].ndim == 3:
            return self._pinned.upload("in", images, self.device).permute(0, 3, 1, 2)
        return transforms.images_to_tensor(images, self.device)

    # -- inference ------------------------------------------------------------------------------

    def _infer(self, x: torch.Tensor, plan: Plan, fp32: Optional[nn.Module] = None) -> torch.Tensor:
        """The model's output for padded ``x``; ``fp32``: the fp32 module, run eagerly by torch."""
        if plan.tile is None:
            return self._forward_whole(x) if fp32 is None else self.forward(fp32, x)
        return self._infer_tiled(x, plan, fp32)

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
        server, eager = self._server, self._eager_seconds.get(shape)
        if server is not None and server.wants(shape, eager, self.policy.remaining()):
            y = server(x, eager)
            if y is not None:
                return y
        timed = (self.policy.mode == "auto" or server is not None) and eager is None
        if timed:
            self.session.sync()
            t0 = time.perf_counter()
        y = self.forward(self.model, x)
        if timed:
            self.session.sync()
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
        wait, rival = (False, None) if self._server is None or policy.mode != "auto" else \
            self._server.rival_seconds(shape, eager, policy.remaining())
        if wait:
            return None  # a backend may serve this shape: decide once torch and it are timed
        if not policy.should_compile(shape, cached, eager, self.device, self.dtype, rival):
            if eager is not None and policy.open_ended_from is None:  # a stream: ask again later
                self._declined.add(shape)
            return None
        try:
            with self.session.full_precision():
                fn, was_cached, seconds = compiling.get_compiled(self.model, self.forward, x, key, root)
        except Exception as exc:  # noqa: BLE001 - export/compile failures: eager still works
            policy.failed[shape] = f"{type(exc).__name__}: {first_line(exc)}"
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
        plain = self.forward is default_forward or getattr(self.forward, "cache_token", None)
        return None if plain else "a custom forward function without a cache_token"

    def _artifact_key(self, x: torch.Tensor) -> compiling.ArtifactKey:
        if self._identity is None:
            token = "" if self.forward is default_forward else str(self.forward.cache_token)
            self._identity = compiling.model_identity(self.model, self.source, token)
            if self.session.dtype != torch.float32:  # the input may be fp32 either way: say the copy
                self._identity += f"|{self.session.dtype}|keep_fp32={self.session.keep_fp32}"
        if self._signature is None:
            self._signature = compiling.device_signature(self.device)
        return compiling.ArtifactKey(
            model=self._identity, shape=tuple(x.shape), dtype=str(x.dtype),
            channels_last=self.session.channels_last, device=self._signature)

    def _infer_tiled(self, x: torch.Tensor, plan: Plan, fp32: Optional[nn.Module] = None) -> torch.Tensor:
        """Padded frames [B,C,H,W] over the budget: whole, in row bands, layer by layer (exact, see
        :mod:`frametrans.engine.streaming`), else in overlapping tiles, each frame's normalization
        statistics frozen (``plan.stats``: from a full pass when the frame fits, else measured layer
        by layer in tiles, or from a downscaled copy with ``tile_stats=fast``); such tiles run through
        torch, other tiles through the backend when it serves. Tiles run where the user chose them
        (``--tile``, fast statistics, ``row_bands=False``). ``fp32``: the fp32 module."""
        from frametrans.engine.tiledstats import run_tiled_frozen

        self.tiled_frames += x.shape[0]
        model = self.model if fp32 is None else fp32
        if self._bands_allowed(fp32 is None):  # else tiles
            streamer = self.streams.get(tuple(x.shape), model, int(self.memory.band_room(*x.shape[-2:])))
            if streamer is not None:  # None: the forward cannot run in bands
                return self.streams.run(streamer, x)
        return run_tiled_frozen(
            model, x, tile=plan.tile, overlap=plan.overlap, multiple=self.contract.size_multiple,
            fn=(lambda t: self.forward(model, t)) if self._server is None or fp32 is not None else
            self._server.tile_forward(lambda t: self.forward(model, t), self._frame_norms, self.policy.remaining),
            stats="full" if plan.stats == "none" else plan.stats, stats_scale=plan.stats_scale,
            out_channels=self.out_channels, batch_tiles=plan.batch_tiles,
        )

    def _bands_allowed(self, serve: bool) -> bool:
        """Row bands, unless the user chose tiles or a backend serves this model's tiles."""
        o = self.options
        return o.row_bands and o.tile is None and o.tile_stats == "exact" and not (
            self._server is not None and serve and not self._frame_norms)

    def _bands_need(self, h: int, w: int) -> Optional[float]:
        streamer = self._bands_allowed(True) and self.streams.get((1, self.in_channels, h, w), self.model, 2**62)
        return streamer.minimum() if streamer else None

    def _measure_footprint(self) -> Footprint:
        """The per-pixel memory costs of this model in this session (one small probe forward)."""
        with self.session.inference():
            activation, stats = probe_footprint(
                self.model, lambda t: self.forward(self.model, t), self.in_channels,
                self.contract.size_multiple, self.session, norms=frame_dependent_norms(self.model))
        element = torch.finfo(self.dtype).bits // 8
        frame, tiled = frame_bytes_per_pixel(self.in_channels, self.out_channels, element)
        return Footprint(activation, frame, tiled, stats)

    def _cache_root(self) -> Path:
        return Path(self.options.cache_dir) if self.options.cache_dir else compiling.cache_dir()


def _same_kind(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and type(a) is type(b)


def _to_model_range(x: torch.Tensor, value_range: Tuple[float, float], max_value: float) -> torch.Tensor:
    """Integers [0, max_value] -> float32 in ``value_range``, keeping the input's memory layout
    (:func:`transforms.to_model_range` makes it NCHW-contiguous: a full-frame transpose). On the
    CPU the integers become floats through numpy where that is faster
    (:func:`transforms.numpy_casts_faster`; its order="K" keeps the layout), and bytes by a table
    lookup (:func:`transforms.bytes_to_model_range`); exact either way."""
    lo, hi = value_range
    if max_value == 255.0:
        looked_up = transforms.bytes_to_model_range(x, value_range)
        if looked_up is not None:
            return looked_up
    if not x.is_floating_point() and transforms.numpy_casts_faster(x):
        f = torch.from_numpy(x.numpy().astype(np.float32))
    else:
        f = x.to(torch.float32)
    return f.mul_((hi - lo) / max_value).add_(lo)


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
