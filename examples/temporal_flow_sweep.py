"""Which optical flow the ``--temporal flow`` stabilizer should blend along: the README's "Why DIS
fast" table.

For the sample clip and the bundled cyclegan and munit (one sampled style), the per-frame outputs
are computed once; then, for each candidate flow, the input's motion (two flows + the occlusion
test) is timed on one OpenCV thread, the outputs are stabilized at strength 0.5, and the warping
error against the per-frame output is measured with three metric flows (DIS medium, the metric of
``frametrans eval temporal``; a finer DIS, the most accurate here; Farneback, independent of DIS),
so that a metric sharing the stabilizer's own flow cannot decide alone.

    python examples/temporal_flow_sweep.py            # ~10 minutes on 2 cores
"""

from __future__ import annotations

import time
from typing import Dict, List

import cv2
import numpy as np

import frametrans.consistency as consistency
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
        return d.calc(consistency._luma(src), consistency._luma(dst), None)
    return flow


def farneback(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(consistency._luma(src), consistency._luma(dst), None,
                                        0.5, 4, 21, 5, 7, 1.5, 0)


MEDIUM, FAST = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, cv2.DISOPTICAL_FLOW_PRESET_FAST
CANDIDATES: Dict[str, Flow] = {
    "DIS medium": dis(MEDIUM),
    "DIS medium, patch stride 5, 12 + 3 iterations": dis(MEDIUM, PatchStride=5, GradientDescentIterations=12,
                                                        VariationalRefinementIterations=3),
    "DIS fast": dis(FAST),
}
METRICS: Dict[str, Flow] = {
    "medium": dis(MEDIUM),
    "finer DIS": dis(MEDIUM, FinestScale=0, GradientDescentIterations=40, VariationalRefinementIterations=10),
    "Farneback": farneback,
}


def outputs(name: str, frames: List[np.ndarray]) -> List[np.ndarray]:
    t = Translator.load(name, RunnerOptions(device="cpu", batch_size=1), seed=0)
    return list(t.variants[0].runner(frames))


def stabilized(frames: List[np.ndarray], outs: List[np.ndarray], flow: Flow) -> tuple:
    """(ms per frame of the motion, stabilized outputs) with the stabilizer blending along ``flow``."""
    t0 = time.process_time()
    motions = [stabilize.input_motion(frames[i], frames[i - 1], flow) for i in range(1, len(frames))]
    ms = (time.process_time() - t0) / len(motions) * 1e3
    s = stabilize.FlowStabilizer(stabilize.AUTO_STRENGTH)
    out = [s.step(frames[0], outs[0])]
    out += [s.step(frames[i], outs[i], lambda a, b, m=motions[i - 1]: m) for i in range(1, len(frames))]
    return ms, out


def main() -> None:
    cv2.setNumThreads(1)
    frames = [f.image for f in iter_video_frames("examples/data/clip.mp4")]
    per_frame = {m: outputs(m, frames) for m in ("cyclegan", "munit")}
    print("| stabilizer's flow | ms a frame | " + " | ".join(f"metric {m}" for m in METRICS) +
          " | PSNR to per-frame |")
    print("|---" * (len(METRICS) + 3) + "|")
    metric_motions = {metric: [consistency.pair_motion(frames[i - 1], frames[i], mflow)
                               for i in range(1, len(frames))] for metric, mflow in METRICS.items()}
    for name, flow in CANDIDATES.items():
        cells: Dict[str, List[str]] = {m: [] for m in METRICS}
        psnr, ms = [], 0.0
        for model, outs in per_frame.items():
            ms, stable = stabilized(frames, outs, flow)
            for metric, motions in metric_motions.items():
                r = consistency.temporal_consistency(frames, stable, outs, motions)
                cells[metric].append(f"{(r.output / r.second - 1) * 100:+.0f}%")
            psnr.append(f"{r.psnr_between:.1f}")
        print(f"| {name} | {ms:.0f} | " + " | ".join(" / ".join(c) for c in cells.values()) +
              f" | {' / '.join(psnr)} dB |", flush=True)


if __name__ == "__main__":
    main()
