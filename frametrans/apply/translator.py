"""The model side of ``apply``: a loaded model with its output variants, run with failures contained.

A :class:`Translator` holds one :class:`~frametrans.engine.runner.Runner` per output variant (one
for plain models; one per style for MUNIT), all on one shared
:class:`~frametrans.engine.session.Session` (one module, one weight copy), each with its own memory
policy: an out-of-memory reaction in one style does not change the others. For ``--temporal stats``
it also holds, made on first use, a second set of runners whose forward normalizes with statistics
smoothed across time (:mod:`frametrans.engine.smoothing`), one state per variant and stream.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from frametrans.engine.memory import MemoryBudgetError
from frametrans.engine.normstats import has_frame_dependent_norm
from frametrans.engine.padding import pad_to_multiple
from frametrans.engine.runner import FrameOutOfMemory, Runner, RunnerOptions
from frametrans.engine.session import Session
from frametrans.engine.smoothing import NormSmoother, smoothed_forward
from frametrans.io import images
from frametrans.io.errors import first_line
from frametrans.io.frame import Frame, frame_label

if TYPE_CHECKING:
    from frametrans.stabilize import Temporal

log = logging.getLogger("frametrans")


@dataclass
class Variant:
    """One output per input: ``suffix`` is added to output names when there are several."""

    suffix: str
    runner: Runner
    smoother: Optional[NormSmoother] = None  # --temporal stats: the stream's statistics


class FrameError(RuntimeError):
    """The model failed on one frame (after the out-of-memory fallbacks); names the frame."""


class Translator:
    """A loaded model ready to translate batches of images, with its output variants.

    options: how to run it (device, precision, memory...); never modified.
    direction, style_image, num_styles, seed: MUNIT only: translate a2b or b2a, with the style of
        an example image, or with ``num_styles`` random styles drawn from ``seed``.
    """

    def __init__(self, model: torch.nn.Module, options: Optional[RunnerOptions] = None,
                 direction: str = "a2b", style_image: Optional[str] = None, num_styles: int = 1,
                 seed: int = 0) -> None:
        self.model = model
        self.options = options or RunnerOptions()
        self.styles: List[torch.Tensor] = []  # MUNIT: the style code of each variant
        self.direction: Optional[str] = None  # MUNIT: a2b or b2a
        self._fingerprint: Optional[Dict[str, Any]] = None
        self._smoothed: Dict[float, List[Variant]] = {}  # --temporal stats, by EMA factor
        self._expected: Optional[tuple] = None  # (frames,) of the last expect(), for variants made later
        self._told_auto_compiled = False
        self._whole: Optional["Translator"] = None  # a subset's: the translator it is part of
        self.contract = model.config.contract()
        if self.contract.frames_in != 1:
            raise ValueError(
                f"{type(model).arch_name} predicts frames from {self.contract.frames_in} past frames;"
                " use `frametrans predict-next`"
            )
        if not self.contract.takes_style:
            if style_image or num_styles != 1:
                raise ValueError("--style/--num-styles need a MUNIT model")
            self.variants = [Variant("", Runner(model, self.options))]
            return
        if direction not in ("a2b", "b2a"):
            raise ValueError(f"--direction must be a2b or b2a, got {direction!r}")
        if num_styles < 1:
            raise ValueError(f"--num-styles must be >= 1, got {num_styles}")
        self.options.validate()
        styles = self._styles(direction, style_image, num_styles, seed)  # before the shared session
        self.styles = [s.detach().cpu() for s in styles]
        self.direction = direction
        session = Session(model, self.options.device, self.options.precision, self.options.channels_last)
        self.variants = [
            Variant(f"_style{i}" if len(styles) > 1 else "",
                    Runner(model, self.options, forward=_munit_forward(s, direction), session=session))
            for i, s in enumerate(styles)
        ]

    @classmethod
    def load(cls, model: str, options: Optional[RunnerOptions] = None,
             yaml_config: Optional[str] = None, **kwargs) -> "Translator":
        """A bundled model name or a checkpoint path (ours, or an imported upstream file)."""
        from frametrans.checkpoint import load_model

        return cls(load_model(model, yaml_config=yaml_config), options, **kwargs)

    def subset(self, suffixes: Iterable[str]) -> "Translator":
        """This translator with only the variants whose suffix is in ``suffixes`` (their order
        kept): the same model, session and runners (:meth:`stream_variants` too), and the same
        :meth:`fingerprint` (the pixels of a variant do not depend on which others run). ``self``
        when that is all of them; ValueError when it is none."""
        keep = set(suffixes)
        if all(v.suffix in keep for v in self.variants):
            return self
        if not any(v.suffix in keep for v in self.variants):
            raise ValueError(f"no output variant has a suffix in {sorted(keep)}")
        view = copy.copy(self)
        view._fingerprint = self.fingerprint()
        view.variants = [v for v in self.variants if v.suffix in keep]
        view.styles = [s for v, s in zip(self.variants, self.styles) if v.suffix in keep]
        view._whole = self._whole or self
        return view

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.variants[0].runner.device

    def expect(self, frames: Optional[int]) -> None:
        """The next job has ``frames`` frames (None: an open-ended stream); lets ``--compile auto``
        decide whether compiling pays for itself."""
        self._expected = (frames,)
        if self._whole is not None:  # for the smoothed variants it makes (it shares _smoothed)
            self._whole._expected = self._expected
        for v in self.variants + [v for vs in self._smoothed.values() for v in vs]:
            v.runner.expect(frames)

    def temporal(self, requested: "Temporal") -> "Temporal":
        """``requested`` (:mod:`frametrans.stabilize`) as it applies to this model and these options:
        no statistics to smooth for a model without per-frame normalization, and none for ``auto``
        under ``--compile on`` (a compiled forward cannot smooth them; said once). An explicit
        ``stats`` with ``--compile on`` stays, and :meth:`stream_variants` refuses it. The flow's
        ``auto`` estimator is made concrete for this model's device."""
        requested = requested.on_device(self.device.type)
        if requested.stats <= 0:
            return requested
        if not has_frame_dependent_norm(self.model):
            return dataclasses.replace(requested, stats=0.0)
        if requested.mode == "auto" and self.options.compile == "on":
            told = self._whole or self  # said once per job, not once per subset
            if not told._told_auto_compiled:
                told._told_auto_compiled = True
                log.info("--temporal auto with --compile on: flow only (the compiled forward cannot smooth "
                         "the normalization statistics)")
            return dataclasses.replace(requested, stats=0.0)
        return requested

    def stream_variants(self, stats_factor: float = 0.0) -> List[Variant]:
        """The variants to run one stream (a video, an animation, a raw stream) with, in frame order.

        ``stats_factor`` 0 (or a model without per-frame normalization): :attr:`variants` itself.
        Else variants whose forward normalizes each frame with statistics smoothed across time,
        an EMA with that factor (:mod:`frametrans.engine.smoothing`), made once per factor on the
        same session, their state reset: call this once per stream. They run uncompiled (the
        statistics change every frame), in torch or on the options' backend, which gets the state
        as graph inputs and outputs (:mod:`frametrans.engine.backends.stateful`); ValueError for
        ``compile="on"``.
        """
        if stats_factor <= 0 or not has_frame_dependent_norm(self.model):
            return self.variants
        if self._whole is not None:  # the whole translator's, made once for every job
            suffixes = {v.suffix for v in self.variants}
            return [v for v in self._whole.stream_variants(stats_factor) if v.suffix in suffixes]
        if stats_factor not in self._smoothed:
            self._smoothed[stats_factor] = self._smoothed_variants(stats_factor)
        for v in self._smoothed[stats_factor]:
            assert v.smoother is not None
            v.smoother.reset()
        return self._smoothed[stats_factor]

    def _smoothed_variants(self, factor: float) -> List[Variant]:
        o = self.options
        if o.compile == "on":
            raise ValueError("--temporal stats runs the model uncompiled (its statistics change every frame), "
                             "not with --compile on; use --compile auto or off")
        options = dataclasses.replace(o, compile="off", cuda_graphs=False)  # a graph would replay one state
        log.info("--temporal stats: normalization statistics smoothed across time (EMA factor %.2f); the "
                 "model runs uncompiled (OpenVINO and ONNX Runtime get the statistics as graph inputs)", factor)
        variants = []
        for v in self.variants:
            smoother = NormSmoother(factor, self.contract.value_range)
            runner = Runner(self.model, options, forward=smoothed_forward(v.runner.forward, smoother),
                            out_channels=v.runner.out_channels, session=v.runner.session)
            if self._expected is not None:
                runner.expect(self._expected[0])
            variants.append(Variant(v.suffix, runner, smoother))
        return variants

    def fingerprint(self) -> Dict[str, Any]:
        """What decides the pixels on the model side, as plain JSON values: a hash of the weights
        (and MUNIT style codes and direction) and the runner options that change outputs. Device,
        batch size, compiling and ``yuv`` are left out: they change nothing beyond float rounding
        (``yuv``: a grey level of the model's input)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, t in sorted(self.model.state_dict().items()):
                digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                digest.update(_tensor_bytes(t))
            for s in self.styles:
                digest.update(_tensor_bytes(s))
            o = self.options
            self._fingerprint = {
                "model": f"{type(self.model).arch_name}:{digest.hexdigest()[:32]}",
                "variants": len(self.variants), "direction": self.direction,
                "precision": str(getattr(self.variants[0].runner, "dtype", o.precision)).replace("torch.", ""),
                "tile": o.tile, "tile_overlap": o.tile_overlap,
                "tile_stats": o.tile_stats, "max_memory": o.max_memory,
                "backend": _backend_name(self.variants[0].runner)}
        return dict(self._fingerprint)

    def queue_bytes(self) -> Optional[int]:
        """Bytes each queue of frames between the stages (decode ahead, encode behind) may hold,
        from the memory budget; None: no bound beyond the queue's length (GPU jobs)."""
        limit = self.variants[0].runner.memory.queue_limit()
        return None if limit is None else limit // len(self.variants)

    def _styles(self, direction: str, style_image: Optional[str], k: int, seed: int
                ) -> List[torch.Tensor]:
        """Style codes [1, style_dim, 1, 1], fixed for a whole clip: encoded from ``style_image``
        (in fp32 through its own session, as upstream MUNIT does) or drawn from ``seed``, one
        after the other (style i of a seed is the same for any ``k`` > i)."""
        if style_image:
            frame = images.read_image(style_image)
            session = Session(self.model, self.options.device, "fp32", channels_last=False)
            x = torch.from_numpy(np.array(_rgb(frame.image, self.contract.in_channels))).permute(2, 0, 1)
            x, _ = pad_to_multiple(x[None].float() / 255.0 * 2 - 1, self.contract.size_multiple)
            target = "b" if direction == "a2b" else "a"
            with session.inference():
                return [session.source.encode_style(x.to(session.device), target)]
        gen = torch.Generator().manual_seed(seed)
        # one draw per code: code i is the same for every k > i. Drawn together they were not (torch's
        # CPU normal draws the last 16 values again when the count is no multiple of 16)
        return [torch.randn(1, self.contract.style_dim, 1, 1, generator=gen) for _ in range(k)]


def _backend_name(runner: Runner) -> str:
    """The backend that runs the frames (``--backend auto`` resolved: they differ in rounding)."""
    choice = getattr(runner, "backend", None)
    return getattr(choice, "name", None) or "torch"


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)  # 0-dim buffers too (BatchNorm's step count)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _munit_forward(style: torch.Tensor, direction: str) -> Callable:
    def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.translate(x, style=style.to(x.device), direction=direction)
    # names this forward in the caches of compiled packages and backend graphs
    forward.cache_token = f"munit:{direction}:" + hashlib.sha256(_tensor_bytes(style)).hexdigest()[:16]
    return forward


def _rgb(image: np.ndarray, channels: int) -> np.ndarray:
    image = image if image.ndim == 3 else image[..., None]
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.shape[2] == channels:
        return np.ascontiguousarray(image)
    if image.shape[2] == 1:
        return np.repeat(image, channels, axis=2)
    return np.ascontiguousarray(image[..., :channels])


# -- the model, with failures contained -------------------------------------------------------


def run_guarded(runner: Runner, frames: Iterable[Frame],
                on_error: Optional[Callable[[Frame, BaseException], None]] = None
                ) -> Iterator[Tuple[Frame, np.ndarray]]:
    """``runner.run(frames)`` that survives a failing batch.

    Out of memory is the runner's to handle (smaller batches, tiles). When a batch fails otherwise
    (an image the model cannot take), its frames are run one at a time. A frame that still fails
    goes to ``on_error`` (folder jobs: report the file, go on) or, without it, raises
    :class:`FrameError` (videos: a frame must never be dropped). Errors of the source itself (e.g. a
    truncated video) are re-raised after every frame read before them has come out.
    """
    source = iter(frames)
    pending: Deque[Frame] = deque()  # handed to the runner, not out yet
    source_error: List[BaseException] = []

    def feed() -> Iterator[Frame]:
        while True:
            try:
                frame = next(source)
            except StopIteration:
                return
            except BaseException as exc:
                source_error.append(exc)
                raise
            pending.append(frame)
            yield frame

    while True:
        try:
            for frame, out in runner.run(feed()):
                _remove(pending, frame)
                yield frame, out
            return
        except Exception as exc:  # noqa: BLE001 - sorted out below; KeyboardInterrupt passes
            if isinstance(exc, MemoryBudgetError):
                raise  # the budget is wrong for every frame: not this frame's failure
            if source_error and exc is source_error[0]:
                # the source failed (a cut video): the frames read before it still come out, in
                # batches, whether or not the runner flushed them itself
                rest = list(pending)
                pending.clear()
                yield from run_guarded(runner, rest, on_error)
                raise
            failed = list(pending)
            pending.clear()
            yield from _one_at_a_time(runner, failed, exc, on_error)
            if source_error:
                raise source_error[0]


def _one_at_a_time(runner: Runner, failed: List[Frame], exc: BaseException,
                   on_error: Optional[Callable[[Frame, BaseException], None]]
                   ) -> Iterator[Tuple[Frame, np.ndarray]]:
    """The frames of a failed batch, each alone; ``exc`` is the batch's error (not repeated for a
    batch of one)."""
    if len(failed) > 1:
        log.warning("model error (%s) on a batch of %d frames; running them one at a time",
                    first_line(exc), len(failed))
    for frame in failed:
        try:
            if len(failed) == 1:
                raise exc
            out = runner([frame.image], frame_label(frame))[0]
        except Exception as err:  # noqa: BLE001
            what = "" if isinstance(err, FrameOutOfMemory) else "model failed: "
            error = FrameError(f"{frame_label(frame)}: {what}{first_line(err)}")
            if on_error is None:
                raise error from err
            on_error(frame, error)
            continue
        yield frame, out


def _remove(pending: Deque[Frame], frame: Frame) -> None:
    if pending and pending[0] is frame:
        pending.popleft()
        return
    for i, f in enumerate(pending):
        if f is frame:
            del pending[i]
            return


def run_variants(frames: Iterable[Frame], translator: Translator,
                 on_error: Optional[Callable[[Frame, BaseException], None]] = None,
                 variants: Optional[List[Variant]] = None
                 ) -> Iterator[Tuple[Frame, List[Tuple[str, np.ndarray]]]]:
    """Each frame through every variant (MUNIT styles); one variant is the plain case.
    ``variants``: those to run (:meth:`Translator.stream_variants`), default the translator's."""
    variants = translator.variants if variants is None else variants
    if len(variants) == 1:
        v = variants[0]
        for frame, out in run_guarded(v.runner, frames, on_error):
            yield frame, [(v.suffix, out)]
        return
    for chunk in _batches(frames, variants[0].runner):
        outs: Dict[int, List[Tuple[str, np.ndarray]]] = {id(f): [] for f in chunk}
        for k, v in enumerate(variants):
            for frame, out in run_guarded(v.runner, [f for f in chunk if id(f) in outs], on_error):
                outs[id(frame)].append((v.suffix, out))
            for f in chunk:  # failed and reported: not run through the other variants
                if len(outs.get(id(f), ())) <= k:
                    outs.pop(id(f), None)
        for f in chunk:
            if id(f) in outs:
                yield f, outs[id(f)]


def _batches(frames: Iterable[Frame], runner: Runner) -> Iterator[List[Frame]]:
    """Consecutive frames of one size and depth, as many as ``runner`` batches: every variant runs
    the same batches, so a style's pixels do not depend on how many styles run. A failing source
    (a cut video) first gives the frames read before its error."""
    chunk: List[Frame] = []
    source = iter(frames)
    while True:
        try:
            frame = next(source)
        except StopIteration:
            break
        except Exception:  # noqa: BLE001 - re-raised once the frames before it are out
            if chunk:
                yield chunk
            raise
        if chunk and _kind(chunk[0]) != _kind(frame):
            yield chunk
            chunk = []
        chunk.append(frame)
        if len(chunk) >= runner.for_depth(frame.image.dtype).batch_size_for(frame.image.shape):
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _kind(frame: Frame) -> tuple:
    """What decides a batch: frames of one kind (array or YUV planes), size and depth batch together."""
    return type(frame.image), frame.image.shape, frame.image.dtype
