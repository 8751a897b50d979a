"""Training steps per second of one method, measured by the real trainer
(:func:`frametrans.train.trainer.train`) on synthetic data: ``warmup`` steps first (cuDNN
autotuning, allocator growth), then ``steps`` timed steps. The times are the trainer's own
``time`` column of ``losses.jsonl`` (training time, set-up excluded), logged every step.

Data: CycleGAN and the other image methods get two folders of :func:`make_frames` pictures
(``trainA/``, ``trainB/``; ``aligned`` pairs for pix2pix); the predictor uses ``moving-digits``
(scikit-learn's bundled digits: no download).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from frametrans.bench.common import Log, make_folder, make_frames, to_stderr, workdir


@dataclass
class TrainingBench:
    """Settings of :func:`bench_training`. options: the method's options (CLI names with
    underscores) over its defaults; ``data`` is filled in for the image methods."""

    method: str = "cyclegan"
    options: Dict[str, Any] = field(default_factory=dict)
    steps: int = 20
    warmup: int = 5
    device: str = "auto"
    images: int = 8  # pictures per domain for the image methods
    workdir: Optional[str] = None


def _image_data(method: str, root: Path, side: int, count: int) -> Path:
    """``root`` with trainA/ + trainB/ (unpaired) or train/ of A|B pairs (pix2pix), ``side`` px."""
    if method != "pix2pix":
        make_folder(root / "trainA", side, side, count)
        make_folder(root / "trainB", side, side, count)
        return root
    from frametrans.io.images import write_image

    for i, img in enumerate(make_frames(side, side, count)):
        write_image(root / "train" / f"{i:03d}.png", np.concatenate([img, img[::-1]], axis=1))
    return root


def bench_training(opts: TrainingBench, log: Log = to_stderr) -> Dict[str, Any]:
    """Train ``warmup + steps`` steps; returns steps/s and samples/s over the timed steps."""
    from frametrans.train.trainer import resolve_options, train

    with workdir(opts.workdir) as work:
        # records (each one waits for the device: the losses are read there) at the end of the
        # warm-up and at the end, so the timed steps run as training runs: queued, not waited for
        o = dict(opts.options, device=opts.device, iters=opts.warmup + opts.steps, log_every=max(1, opts.warmup),
                 quiet=True, save_every=10**9, sample_every=10**9, val_every=10**9)
        if opts.method != "predictor" and not o.get("data"):
            side = int(o.get("size") or resolve_options(opts.method, o).size)
            o["data"] = str(_image_data(opts.method, work / "data", side, opts.images))
        resolved = resolve_options(opts.method, o)
        log(f"training {opts.method}: {opts.warmup} + {opts.steps} steps, batch {resolved.batch_size}, "
            f"device {opts.device}")
        train(opts.method, o, work / "run", overwrite=True)
        times = _step_times(work / "run" / "losses.jsonl")
    first, last = times[opts.warmup], times[opts.warmup + opts.steps]
    seconds = last - first
    return {"setup": {**asdict(opts), "options": {k: v for k, v in o.items() if k != "data"},
                      "batch_size": resolved.batch_size},
            "warmup_seconds": first, "timed_seconds": seconds,
            "steps_per_s": opts.steps / seconds if seconds > 0 else float("inf"),
            "samples_per_s": opts.steps * resolved.batch_size / seconds if seconds > 0 else float("inf")}


def _step_times(path: Path) -> Dict[int, float]:
    """step -> the trainer's training time (s) when it was logged."""
    records: List[Dict[str, Any]] = [json.loads(line) for line in path.read_text().splitlines() if line]
    return {int(r["step"]): float(r["time"]) for r in records if "time" in r}


def format_training(result: Dict[str, Any]) -> str:
    """One line: method, batch, steps/s and samples/s."""
    s = result["setup"]
    return (f"{s['method']}, batch {s['batch_size']}, {s['device']}: {result['steps_per_s']:.2f} steps/s, "
            f"{result['samples_per_s']:.1f} samples/s ({s['steps']} steps after {s['warmup']} warm-up)")
