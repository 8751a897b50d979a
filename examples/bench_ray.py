"""Wall time of a multi-video job: a local run vs ``ray_apply`` with N workers on a local Ray.

    python examples/bench_ray.py local            # apply_paths in this process
    python examples/bench_ray.py local --threads 1
    python examples/bench_ray.py 1                # ray.init(num_cpus=CPUS), 1 model replica
    python examples/bench_ray.py 2                # 2 replicas (1 CPU each)

Makes WORK/videos/clip{i}.mp4 (moving noise, --videos x --frames at --size) and a ResNet
generator (ngf 16, 3 blocks, random weights) once, then prints the wall time of the job
(including ``ray.init``, printed separately).
"""

import argparse
import shutil
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from frametrans.apply import OutputOptions, Translator, apply_paths
from frametrans.checkpoint import save_model
from frametrans.engine.runner import RunnerOptions
from frametrans.io.video import VideoWriter
from frametrans.models.resnet import ResnetConfig, ResnetGenerator


def make_inputs(work: Path, videos: int, frames: int, size: str) -> str:
    w, h = (int(v) for v in size.split("x"))
    (work / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w * 2, 3), dtype=np.uint8)
    for i in range(videos):
        path = work / "videos" / f"clip{i}.mp4"
        if path.exists():
            continue
        with VideoWriter(path, fps=25) as writer:
            for t in range(frames):
                writer.write(np.roll(base, 3 * t + i, axis=1)[:, :w], t, Fraction(1, 25))
    model = work / "rn16.safetensors"
    if not model.exists():
        torch.manual_seed(0)
        save_model(ResnetGenerator(ResnetConfig(ngf=16, n_blocks=3)), model)
    return str(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workers", help="'local', or the number of Ray workers")
    ap.add_argument("--work", default="/tmp/frametrans-bench-ray")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--size", default="256x144")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray")
    ap.add_argument("--threads", type=int, help="torch threads for the local run")
    args = ap.parse_args()
    work = Path(args.work)
    model = make_inputs(work, args.videos, args.frames, args.size)
    runner = RunnerOptions(device="cpu", precision="fp32")
    out = work / f"out_{args.workers}"
    shutil.rmtree(out, ignore_errors=True)
    opts = OutputOptions(quiet=True)
    start = time.perf_counter()
    if args.workers == "local":
        if args.threads:
            torch.set_num_threads(args.threads)
        report = apply_paths([str(work / "videos")], str(out), Translator.load(model, runner), opts)
        extra = f"torch threads {torch.get_num_threads()}"
    else:
        import ray

        from frametrans.scale import ray_apply

        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
        ready = time.perf_counter()
        report = ray_apply([str(work / "videos")], str(out), model, runner, opts,
                           num_workers=int(args.workers))
        extra = f"ray.init {ready - start:.1f} s"
    elapsed = time.perf_counter() - start
    print(f"{args.workers}: {elapsed:.1f} s for {report.frames} frames ({extra}), ok={report.ok}")


if __name__ == "__main__":
    main()
