"""``--temporal``: the model's outputs of a video, animation or stream, made consistent in frame
order: normalization statistics smoothed across time inside the model (``stats``,
:mod:`frametrans.engine.smoothing`), then blended along the input's flow (``flow``,
:mod:`frametrans.stabilize`); one state per output variant (MUNIT style), reset per stream."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from frametrans.apply.translator import Translator, run_variants
from frametrans.engine.pipeline import default_workers
from frametrans.io.frame import Frame
from frametrans.stabilize import FlowStabilizer, Motion, Temporal, input_motion

if TYPE_CHECKING:
    import torch

Results = Iterable[Tuple[Frame, List[Tuple[str, np.ndarray]]]]
MotionFn = Callable[[np.ndarray, np.ndarray], Optional[Motion]]
#: (image, previous input frame) -> the motion: stabilize.input_motion or torchflow.DeviceMotion.
EstimateFn = Callable[[np.ndarray, np.ndarray], Motion]
#: Bytes the motion computed ahead may hold (sample points + mask: 9 bytes a pixel).
MOTION_BUDGET = 256 * 2**20


def translate_stream(frames: Iterable[Frame], translator: Translator, temporal: Temporal,
                     on_error: Optional[Callable[[Frame, BaseException], None]] = None
                     ) -> Iterator[Tuple[Frame, List[Tuple[str, np.ndarray]]]]:
    """One stream's frames, in order -> ``(frame, [(suffix, output)...])`` for every variant, with
    ``temporal`` applied (nothing changes when it is off). A new stream starts from no past."""
    temporal = translator.temporal(temporal)
    variants = translator.stream_variants(temporal.stats)
    yield from stabilized_run(frames, lambda fed: run_variants(fed, translator, on_error, variants), temporal.flow,
                              motion_estimator(temporal, translator.device))


def motion_estimator(temporal: Temporal, device: "torch.device") -> EstimateFn:
    """The input's motion for ``temporal``'s resolved estimator (:meth:`Temporal.on_device`):
    :func:`frametrans.stabilize.input_motion` (OpenCV DIS on host threads) or a
    :class:`frametrans.torchflow.DeviceMotion` on ``device`` (a torch device or its name)."""
    if temporal.estimator == "torch":
        from frametrans.torchflow import DeviceMotion

        return DeviceMotion(device)
    return input_motion


def stabilized_run(frames: Iterable[Frame], run: Callable[[Iterable[Frame]], Results], strength: float,
                   estimate: EstimateFn = input_motion) -> Iterator[Tuple[Frame, List[Tuple[str, np.ndarray]]]]:
    """``run(frames)`` (the model: frames in order -> ``(frame, [(suffix, output)...])``) blended
    along the flow, the input's motion (``estimate``) computed ahead while the model runs
    (:class:`MotionAhead`, on ``estimate.workers`` threads when it says how many, e.g.
    :class:`frametrans.torchflow.DeviceMotion`); ``run(frames)`` itself when ``strength`` is 0."""
    if strength <= 0:
        yield from run(frames)
        return
    with MotionAhead(workers=getattr(estimate, "workers", None), estimate=estimate) as ahead:
        yield from stabilized(run(ahead.feed(frames)), strength, ahead.motion, estimate)


def stabilized(results: Results, strength: float, motion: Optional[MotionFn] = None,
               estimate: EstimateFn = input_motion) -> Iterator[Tuple[Frame, List[Tuple[str, np.ndarray]]]]:
    """``(frame, [(suffix, output)...])`` in frame order -> the same with the outputs blended along
    the flow (unchanged when ``strength`` is 0). ``motion``: :meth:`MotionAhead.motion`, or None;
    what it does not have is computed here with ``estimate``, once per frame for all variants."""
    if strength <= 0:
        yield from results
        return
    stabilizers: Dict[str, FlowStabilizer] = {}
    for frame, outs in results:
        memo = _Memo(motion, estimate)
        yield frame, [(suffix, stabilizers.setdefault(suffix, FlowStabilizer(strength)).step(frame.image, out, memo))
                      for suffix, out in outs]


class _Memo:
    """One frame's motion for all its variants: from ``ahead`` when it has it, else computed once
    with ``estimate``."""

    def __init__(self, ahead: Optional[MotionFn], estimate: EstimateFn = input_motion) -> None:
        self.ahead = ahead
        self.estimate = estimate
        self.got: Dict[Tuple[int, int], Motion] = {}

    def __call__(self, image: np.ndarray, previous: np.ndarray) -> Motion:
        key = (id(image), id(previous))
        if key not in self.got:
            found = self.ahead(image, previous) if self.ahead is not None else None
            self.got[key] = found if found is not None else self.estimate(image, previous)
        return self.got[key]


def flow_workers() -> int:
    """Threads for the motion computed ahead: a quarter of the cores this process may use (the
    fewer of its CPU affinity and torch's threads: a Ray worker set to one thread gets one), 1 to
    4: 1 on a 2-core CPU, where the model keeps both cores busy; 4 on a 16-core GPU host, where
    one thread's flow at 1080p would fall behind the GPU. OpenCV's DIS also splits each flow over
    its own threads, so more workers than that only contend."""
    import torch

    return max(1, min(4, min(default_workers(), torch.get_num_threads()) // 4))


class MotionAhead:
    """The input's motion between consecutive frames, computed on worker threads as the frames go
    into the model (:meth:`feed`), so that the flow (``estimate``: a DIS flow and the brightness
    test, ~4 ms of one core a 640x360 frame on the AMX Xeon, ~9x that at 1080p; or the same on the GPU,
    :class:`frametrans.torchflow.DeviceMotion`) overlaps the forward instead of following it:
    on a GPU, or on a CPU with cores the model leaves idle. Each frame's motion depends on its own
    pair of inputs only, so ``workers`` threads (default :func:`flow_workers`) compute several
    frames at once, with the same results. The results waiting take at most ``budget`` bytes (9
    bytes a pixel: 2 MB at 640x360, 75 MB at 4K; at least 2 frames, so at 4K and above some workers
    idle); frames beyond that, or whose previous frame did not reach the stabilizer (it failed), get
    theirs computed in the stabilizer."""

    def __init__(self, budget: int = MOTION_BUDGET, workers: Optional[int] = None,
                 estimate: EstimateFn = input_motion) -> None:
        self.budget = budget
        self.estimate = estimate
        self.workers = max(1, workers if workers is not None else flow_workers())
        self.limit = 2
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="frametrans-flow")
        self._pending: Dict[int, Tuple[np.ndarray, np.ndarray, Future]] = {}  # id(image) -> job

    def __enter__(self) -> "MotionAhead":
        return self

    def __exit__(self, *exc: object) -> None:
        for _, _, job in self._pending.values():
            job.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def feed(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        """``frames`` unchanged; each RGB frame after the first starts its motion job."""
        previous: Optional[np.ndarray] = None
        for frame in frames:
            image = frame.image if isinstance(frame.image, np.ndarray) else None
            if image is not None and (previous is None or previous.shape != image.shape):
                self.limit = max(2, self.budget // (9 * image.shape[0] * image.shape[1]))
            if (image is not None and previous is not None and previous.shape == image.shape
                    and len(self._pending) < self.limit):
                self._pending[id(image)] = (image, previous, self._pool.submit(self.estimate, image, previous))
            previous = image
            yield frame

    def motion(self, image: np.ndarray, previous: np.ndarray) -> Optional[Motion]:
        """The motion from ``image`` to ``previous`` if it was computed ahead, else None. Jobs of
        frames before ``image`` (frames that failed) are dropped."""
        job = self._pending.get(id(image))
        if job is None or job[0] is not image:
            return None
        for key in list(self._pending):  # in feeding order: the ones before, then this one
            done = self._pending.pop(key)
            if key == id(image):
                break
            done[2].cancel()
        return job[2].result() if job[1] is previous else None
