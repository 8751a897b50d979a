"""Temporal stabilization of translated video: what ``--temporal`` means, and flow-guided blending.

``--temporal`` resolves to a :class:`Temporal`: the EMA factor of normalization statistics smoothed
across time (``stats``, inside the model's forward: :mod:`frametrans.engine.smoothing`) and the
strength of flow-guided blending (``flow``, after the model: :class:`FlowStabilizer`); ``auto`` is
the measured default.

A per-frame generator re-decides textures in every frame, so its output flickers (the bundled
cyclegan: 5x the input's own warping error on the sample clip, see :mod:`frametrans.consistency`).
:class:`FlowStabilizer` blends each output frame with the previous *stabilized* output warped along
the input's optical flow, where the flow is trustworthy:

    stabilized_t = (1 - w) * output_t + w * warp(stabilized_{t-1}, flow_{t -> t-1}),
    w = strength * tracked_t

with the flow and the tracked pixels from the INPUT frames (the model's input, after any resize):
a pixel is tracked when the flow brings it from inside frame t-1 with its brightness
(:func:`tracked`). Other pixels and the first frame take the model's output unchanged; a scene cut
(most pixels untracked: the picture changed too much) resets the state. One stabilizer per output stream:
frames must come in order; batching does not matter (it runs after the model).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import cv2
import numpy as np

from frametrans.consistency import FlowFn, flow, inside, luma, remap, sample_points

#: The strength ``--temporal auto`` uses, measured on the sample clip with the bundled cyclegan
#: (flow along DIS medium then):
#: 0.3 -> 46% less warping error at 43.0 dB from the per-frame output, 0.5 -> 68% at 37.9 dB,
#: 0.7 -> 85% at 33.9 dB, 0.8 -> 92% at 31.8 dB. 0.5 keeps moving objects crisp (no visible trail).
AUTO_STRENGTH = 0.5
#: The DIS preset of the stabilizer's flow (:data:`frametrans.consistency.DIS_PRESETS`). Measured on
#: the sample clip (640x360, strength 0.5, 2-core Xeon, one OpenCV thread, 2026-11-30), the input's
#: motion (two flows + the occlusion test) per frame and the warping error against per-frame output,
#: cyclegan / munit, with three metric flows: DIS medium (the metric's own), a finer DIS (finest
#: scale 0, 40 + 10 iterations: the lowest residual on the input, so the most accurate) and Farneback
#: (independent of DIS): ``medium`` 52-76 ms, -68/-63%, -64/-56%, -58/-42%; ``fast`` 14-20 ms, -62/-53%,
#: -60/-50%, -58/-44%. Medium's lead comes mostly from the metric sharing its flow; fast costs a
#: quarter. PSNR to per-frame: 36.9 / 42.5 dB (medium 37.6 / 43.6). ``examples/temporal_flow_sweep.py``.
FLOW_PRESET = "fast"
#: Where the stabilizer's flow runs (``--temporal-flow``): ``dis``, OpenCV DIS :data:`FLOW_PRESET`
#: on host threads; ``torch``, Farnebäck's method as torch ops on the model's device
#: (:mod:`frametrans.torchflow`: over the sample clip it leaves 0.00053 of the input unexplained
#: against DIS fast's 0.00081 and stabilizes as well by the sweep's metric flows other than DIS
#: medium: finer DIS -60/-48% (DIS fast -60/-50%), Farneback -58/-46% (-58/-44%), cyclegan/munit;
#: but it costs ~0.4 s a 640x360 frame on one CPU core, so it is for
#: GPUs; ``examples/temporal_flow_sweep.py``); ``auto``, :data:`AUTO_FLOW`.
FLOW_ESTIMATORS = ("auto", "dis", "torch")
#: What ``--temporal-flow auto`` runs, per device type of the model (others: dis). Empty: dis
#: everywhere, until the torch flow's speed on CUDA is measured against DIS on host threads
#: (``examples/gpu_check.sh`` times both at 1080p); {"cuda": "torch"} if it wins there.
AUTO_FLOW: Dict[str, str] = {}
#: A new scene: fewer than this fraction of pixels follow the flow from the previous frame.
CUT_TRACKED = 0.5
#: :func:`tracked`: a pixel the flow brings from frame t-1 is trusted when its luma changed by less
#: than this (of 255). It replaced forward-backward consistency (Sundaram et al. 2010, the metric's
#: occlusion test), which needs a second flow: on the sample clip with the bundled cyclegan
#: (strength 0.5, 640x360, Xeon with AMX, 2 threads, 2026-12-02) the input's motion took 3.9 ms a
#: frame against 8.1-8.3, for -61% warping error against -62% (with a light blinking in a corner
#: -61% / -62%), 36.9-37.1 dB from the per-frame output against 36.8; 24 levels: -55 / -59%, 48:
#: -61 / -63% at 36.7 dB. ``python examples/temporal_flow_sweep.py "DIS fast"`` compares the two
#: tests in one run (one OpenCV thread: 5 against 10 ms a frame, as steady by all three metric flows).
TRACKED_LUMA = 32
#: The EMA factor ``--temporal stats`` uses (the weight of the past statistics). Measured on the
#: sample clip with a light blinking in a corner (per-frame statistics pulse with it), warping error
#: against per-frame output and PSNR to it: cyclegan 0.8 -> -57% at 38.9 dB, 0.9 -> -58% at 37.7 dB,
#: 0.95 -> -59% at 36.6 dB; munit 0.8 -> -59% at 42.7 dB, 0.9 -> -65% at 41.0 dB. (On the plain
#: sample clip, whose statistics hardly move, it changes the warping error by < 2%.)
STATS_FACTOR = 0.9
#: What ``--temporal auto`` does besides the flow blend: the statistics' EMA factor (0: none).
#: Measured with ``frametrans bench temporal`` (640x360 sample clip, OpenVINO fp32, 2-core Xeon,
#: 2026-11-30): with a light blinking in a corner, flow 0.5 alone -62% warping error (cyclegan) and
#: -57% (munit), flow + stats 0.9 -67% and -66%, at 34.8 / 38.1 dB from the per-frame output; on
#: the plain clip stats changes the error by 0-1%. Stats costs 0.92-1.10x the per-frame time of off
#: now that OpenVINO / ONNX Runtime run it, 1.07x in torch eager against torch eager (auto left it
#: out when stats forced torch eager and off ran on OpenVINO: 1.6-2.1x). Its cost elsewhere: a
#: resumed job or a Ray segment warms up 51 frames instead of 16 (models with per-frame
#: normalization only: :meth:`frametrans.apply.translator.Translator.temporal`).
AUTO_STATS = 0.9
TEMPORAL_MODES = ("off", "stats", "flow", "auto")
#: A run that starts mid-video (a resume, a Ray segment) first runs frames before its start, unwritten,
#: until what its state would still remember of the frames before those weighs at most this (per
#: layer: the statistics of a deeper layer depend on the smoothed layers before it, so a difference
#: in the state fades more slowly than ``factor ** frames``; measured with a 7-layer ResNet).
WARM_RESIDUAL = 0.005
#: ... at least this many frames (the manifest keeps that many timestamps), at most ``MAX_WARM_FRAMES``.
MIN_WARM_FRAMES = 16
MAX_WARM_FRAMES = 128


@dataclass(frozen=True)
class Temporal:
    """What ``--temporal`` does: ``stats`` is the EMA factor of the normalization statistics (0:
    each frame's own), ``flow`` the blend strength along the flow (0: no blending)."""

    mode: str = "off"
    stats: float = 0.0
    flow: float = 0.0
    estimator: str = "auto"  # where the flow runs: FLOW_ESTIMATORS; auto is resolved per device

    def on_device(self, device_type: str) -> "Temporal":
        """``estimator`` ``auto`` made concrete for a model on ``device_type`` (:data:`AUTO_FLOW`),
        when there is a flow to blend along. ValueError for torch beside a model on MPS (torch's
        MPS backend does not take work from several threads)."""
        if self.flow <= 0:
            return self
        if self.estimator == "torch" and device_type == "mps":
            raise ValueError("--temporal-flow torch runs beside a model on CUDA or the CPU, not on MPS; "
                             "use --temporal-flow dis")
        if self.estimator != "auto":
            return self
        return dataclasses.replace(self, estimator=AUTO_FLOW.get(device_type, "dis"))

    def flow_name(self) -> str:
        """The flow the blend follows, as resume settings record it (``estimator`` resolved)."""
        return {"dis": f"dis-{FLOW_PRESET}-luma{TRACKED_LUMA}", "torch": "torch-farneback"}[self.estimator]

    @property
    def active(self) -> bool:
        """True when outputs depend on the frames before (a resume or a segment warms up)."""
        return self.stats > 0 or self.flow > 0

    def warm_frames(self) -> int:
        """Frames to run (not written) before a run that starts mid-video, so that its state matches
        an uninterrupted run's: both states forget the past by the factor (or the flow strength) per
        frame. 0 when off; 16 for flow 0.5; 51 for stats 0.9 (24 for 0.8)."""
        if not self.active:
            return 0
        memory = max(self.stats, self.flow)
        needed = math.ceil(math.log(WARM_RESIDUAL) / math.log(memory))
        return min(MAX_WARM_FRAMES, max(MIN_WARM_FRAMES, needed))


def resolve_temporal(mode: str, strength: Optional[float], estimator: str = "auto") -> Temporal:
    """``--temporal MODE`` with ``--temporal-strength`` (the EMA factor for ``stats``, the blend
    weight for ``flow``; ``auto`` takes none) and ``--temporal-flow`` (:data:`FLOW_ESTIMATORS`;
    for flow and auto). ValueError (one line) for values that cannot work."""
    if mode not in TEMPORAL_MODES:
        raise ValueError(f"--temporal must be one of {', '.join(TEMPORAL_MODES)}, got {mode!r}")
    if strength is not None and not 0.0 <= strength < 1.0:
        raise ValueError(f"--temporal-strength must be in [0, 1), got {strength}")
    if strength is not None and mode in ("off", "auto"):
        raise ValueError(f"--temporal-strength is for --temporal stats or flow, not {mode}")
    if estimator not in FLOW_ESTIMATORS:
        raise ValueError(f"--temporal-flow must be one of {', '.join(FLOW_ESTIMATORS)}, got {estimator!r}")
    if estimator != "auto" and mode in ("off", "stats"):
        raise ValueError(f"--temporal-flow is for --temporal flow or auto, not {mode}")
    if mode == "stats":
        return Temporal(mode, stats=STATS_FACTOR if strength is None else strength)
    if mode == "flow":
        return Temporal(mode, flow=AUTO_STRENGTH if strength is None else strength, estimator=estimator)
    if mode == "auto":
        return Temporal(mode, stats=AUTO_STATS, flow=AUTO_STRENGTH, estimator=estimator)
    return Temporal()


def resolve_strength(mode: str, strength: Optional[float]) -> float:
    """The flow-blend strength for ``--temporal MODE`` (0: none). ValueError for unknown values."""
    return resolve_temporal(mode, strength).flow


#: The input's motion from frame t to frame t-1: ((x, y): where each pixel of frame t was in frame
#: t-1, float32 [H, W] each, :func:`frametrans.consistency.sample_points`; tracked [H, W] bool).
Motion = Tuple[Tuple[np.ndarray, np.ndarray], np.ndarray]


def input_motion(image: np.ndarray, previous: np.ndarray, estimate: Optional[FlowFn] = None) -> Motion:
    """Where each pixel of ``image`` was in ``previous`` (input frames [H, W, C]; the flow between
    them, as sample points) and the pixels it tracks (:func:`tracked`); it depends on the input
    alone, so it can be computed before the model's output exists, and once for every variant. DIS
    :data:`FLOW_PRESET`, or ``estimate`` (to compare flows)."""
    now, before = luma(image), luma(previous)
    fwd = estimate(image, previous) if estimate is not None else flow(now, before, FLOW_PRESET)
    points = sample_points(fwd)
    return points, tracked(now, before, points)


def tracked(now: np.ndarray, before: np.ndarray, points: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """[H, W] bool: the pixels of frame t whose sample point in frame t-1 (``points``) lies inside
    it and shows the same brightness: luma (``now``, ``before``: [H, W] uint8) within
    :data:`TRACKED_LUMA` grey levels."""
    h, w = now.shape[:2]
    x, y = points
    keep = cv2.absdiff(now, remap(before, points)) < TRACKED_LUMA
    keep &= inside(x, y, h, w)
    return keep


class FlowStabilizer:
    """Stabilizes one stream of output frames; ``step`` in frame order."""

    def __init__(self, strength: float) -> None:
        self.strength = float(strength)
        self.prev_input: Optional[np.ndarray] = None
        self.prev_output: Optional[np.ndarray] = None  # float32, stabilized
        self.cuts = 0

    def step(self, model_input: np.ndarray, output: np.ndarray,
             motion: Optional[Callable[[np.ndarray, np.ndarray], Optional[Motion]]] = None) -> np.ndarray:
        """``model_input`` [H, W, C] (what the model saw) and its ``output`` [H, W, C'] (same H, W,
        uint8 or uint16) -> the stabilized output, same shape and dtype. ``motion(input, previous
        input)``: the :func:`input_motion` computed ahead, or None (then it is computed here)."""
        out = output.astype(np.float32)
        if self.prev_output is not None and self.prev_output.shape == out.shape:
            got = motion(model_input, self.prev_input) if motion is not None else None
            points, mask = got if got is not None else input_motion(model_input, self.prev_input)
            if mask.mean() < CUT_TRACKED:
                self.cuts += 1  # a new scene: start over from the model's output
            else:
                out = _blend(out, remap(self.prev_output, points).reshape(out.shape), mask, self.strength)
        self.prev_input, self.prev_output = model_input, out
        return _rounded(out, output.dtype)


#: :func:`_blend`'s weights sum to this, so that ``cv2.blendLinear``'s 1e-5 in the denominator
#: changes the result by 1e-10 of its value instead of 1e-5 (0.65 at the top of uint16).
_WEIGHT_SUM = 1e5


def _blend(out: np.ndarray, previous: np.ndarray, mask: np.ndarray, strength: float) -> np.ndarray:
    """``(1 - w) * out + w * previous``, ``w = strength * mask`` (float32 [H, W, C] arrays, bool
    [H, W] mask) -> float32 [H, W, C], a new array: one multithreaded OpenCV pass (4x numpy's time
    at 1080p otherwise)."""
    w = mask.astype(np.float32)
    w *= np.float32(strength * _WEIGHT_SUM)
    keep = np.float32(_WEIGHT_SUM) - w
    return cv2.blendLinear(out, previous, keep, w).reshape(out.shape)


def _rounded(out: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 grey levels -> ``dtype`` (uint8 or uint16), rounded to nearest, clipped to its range."""
    if dtype == np.uint8:
        return cv2.convertScaleAbs(out).reshape(out.shape)  # values are >= 0: |x| is x
    rounded = out + np.float32(0.5)
    return np.clip(rounded, 0, np.iinfo(dtype).max, out=rounded).astype(dtype)
