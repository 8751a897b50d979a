"""Which optical flow the ``--temporal flow`` stabilizer should blend along: the README's "Why DIS
fast" table.

For the sample clip and the bundled cyclegan and munit (one sampled style), the per-frame outputs
are computed once; then, for each candidate flow, the input's motion (one flow + the brightness
test, ``frametrans.stabilize.tracked``; two flows and the forward-backward test until 2026-12-02,
when the README's table was measured) is timed on one OpenCV thread, the outputs are stabilized at strength 0.5, and the warping
error against the per-frame output is measured with three metric flows (DIS medium, the metric of
``frametrans eval temporal``; a finer DIS, the most accurate here; Farneback, independent of DIS),
so that a metric sharing the stabilizer's own flow cannot decide alone. The input residual is what
each flow leaves unexplained of the input itself (its warping error over all pixels: accuracy).
Candidates: OpenCV DIS settings, and the torch Farnebäck of ``--temporal-flow torch`` (run on the
CPU here: its time is a CPU's, not a GPU's).

    python examples/temporal_flow_sweep.py              # every candidate, ~12 minutes on 2 cores
    python examples/temporal_flow_sweep.py torch "DIS fast"   # the candidates whose name contains these
    python examples/temporal_flow_sweep.py "DIS fast"         # the brightness test against forward-backward
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
import torch

import frametrans.consistency as consistency
import frametrans.torchflow as torchflow
import frametrans.stabilize as stabilize
from frametrans.apply import Translator
from frametrans.engine.runner import RunnerOptions
from frametrans.io.video import iter_video_frames

Flow = consistency.FlowFn  # (src, dst) -> flow [H, W, 2]


def dis(preset: int, **settings: int) -> Flow:
    """An OpenCV DIS flow with ``preset`` and setters (``PatchStride=5`` calls ``setPatchStride(5)``)."""
    def flow(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        d = cv2.DISOpticalFlow_create(preset)
        for name, value in settings.items():
            getattr(d, "set" + name)(value)
        return d.calc(consistency.luma(src), consistency.luma(dst), None)
    return flow


def farneback(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(consistency.luma(src), consistency.luma(dst), None,
                                        0.5, 4, 21, 5, 7, 1.5, 0)


def forward_backward(image: np.ndarray, previous: np.ndarray, flow: Flow) -> stabilize.Motion:
    """The stabilizer's motion until 2026-12-02: the tracked pixels by forward-backward consistency
    (a second, backward flow; the metric's own occlusion test) instead of the brightness test."""
    fwd = flow(image, previous)
    points = consistency.sample_points(fwd)
    return points, consistency.non_occluded(fwd, flow(previous, image), points)


MEDIUM, FAST = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, cv2.DISOPTICAL_FLOW_PRESET_FAST
Rule = Callable[[np.ndarray, np.ndarray, Flow], stabilize.Motion]  # (image, previous, flow) -> motion
#: name -> (the flow, how the tracked pixels are found: stabilize.input_motion's brightness test)
CANDIDATES: Dict[str, Tuple[Flow, Rule]] = {
    "DIS medium": (dis(MEDIUM), stabilize.input_motion),
    "DIS medium, patch stride 5, 12 + 3 iterations": (dis(MEDIUM, PatchStride=5, GradientDescentIterations=12,
                                                         VariationalRefinementIterations=3), stabilize.input_motion),
    "DIS fast": (dis(FAST), stabilize.input_motion),
    "DIS fast, forward-backward test": (dis(FAST), forward_backward),
    "torch Farneback (--temporal-flow torch), on the CPU": (torchflow.frame_flow, stabilize.input_motion),
}
METRICS: Dict[str, Flow] = {
    "medium": dis(MEDIUM),
    "finer DIS": dis(MEDIUM, FinestScale=0, GradientDescentIterations=40, VariationalRefinementIterations=10),
    "Farneback": farneback,
}


def outputs(name: str, frames: List[np.ndarray]) -> List[np.ndarray]:
    t = Translator.load(name, RunnerOptions(device="cpu", batch_size=1), seed=0)
    return list(t.variants[0].runner(frames))


def input_motions(frames: List[np.ndarray], flow: Flow, rule: Rule) -> tuple:
    """(ms per frame, the input's motion of each frame after the first) along ``flow``, its tracked
    pixels found by ``rule``."""
    t0 = time.process_time()
    motions = [rule(frames[i], frames[i - 1], flow) for i in range(1, len(frames))]
    return (time.process_time() - t0) / len(motions) * 1e3, motions


def residual(frames: List[np.ndarray], flow: Flow) -> float:
    """What ``flow`` leaves unexplained of the input itself: its warping error over all pixels (no
    occlusion mask to hide behind; lower is a more accurate flow)."""
    everywhere = np.ones(frames[0].shape[:2], bool)
    return float(np.mean([consistency.pair_error(a, b, flow(b, a), everywhere) for a, b in zip(frames, frames[1:])]))


def stabilized(frames: List[np.ndarray], outs: List[np.ndarray], motions: list) -> List[np.ndarray]:
    """The outputs blended along the input's ``motions`` at the stabilizer's strength."""
    s = stabilize.FlowStabilizer(stabilize.AUTO_STRENGTH)
    out = [s.step(frames[0], outs[0])]
    out += [s.step(frames[i], outs[i], lambda a, b, m=motions[i - 1]: m) for i in range(1, len(frames))]
    return out


def main() -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    frames = [f.image for f in iter_video_frames("examples/data/clip.mp4")]
    chosen = {k: v for k, v in CANDIDATES.items() if not sys.argv[1:] or any(a in k for a in sys.argv[1:])}
    per_frame = {m: outputs(m, frames) for m in ("cyclegan", "munit")}
    print("| stabilizer's flow | ms a frame | input residual | " + " | ".join(f"metric {m}" for m in METRICS) +
          " | PSNR to per-frame |")
    print("|---" * (len(METRICS) + 4) + "|")
    metric_motions = {metric: [consistency.pair_motion(frames[i - 1], frames[i], mflow)
                               for i in range(1, len(frames))] for metric, mflow in METRICS.items()}
    for name, (flow, rule) in chosen.items():
        ms, motions = input_motions(frames, flow, rule)  # the input's: once for both models
        cells: Dict[str, List[str]] = {m: [] for m in METRICS}
        psnr = []
        for model, outs in per_frame.items():
            stable = stabilized(frames, outs, motions)
            for metric, along in metric_motions.items():
                r = consistency.temporal_consistency(frames, stable, outs, along)
                cells[metric].append(f"{(r.output / r.second - 1) * 100:+.0f}%")
            psnr.append(f"{r.psnr_between:.1f}")
        print(f"| {name} | {ms:.0f} | {residual(frames, flow):.5f} | " +
              " | ".join(" / ".join(c) for c in cells.values()) + f" | {' / '.join(psnr)} dB |", flush=True)


if __name__ == "__main__":
    main()
