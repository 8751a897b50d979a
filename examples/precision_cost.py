"""What keeping layers in fp32 costs in a bf16 run, and what it buys, on one device.

The session's careful low-precision copy keeps the normalization layers and the full-resolution
convolutions (not the output's) in fp32 (frametrans.engine.session; FRAMETRANS_KEEP_FP32=all: what
explicit bf16 and CUDA use; precision auto on the CPU takes the all-bf16 copy when it passes). That was
measured for picture quality on CPUs; on a GPU it adds casts around every norm of a memory-bound
network. This prints, per model and per FRAMETRANS_KEEP_FP32 mode (all, output, none): the model-only
rate (frames/s, batch B at SIZE) and the worst and mean PSNR of the uint8 output against fp32 on the
sample clip's frames.

    python examples/precision_cost.py --device cuda                      # ResNet-9 and U-Net-256 at 256
    python examples/precision_cost.py --device cpu --size 64 --batch 2 --calls 2 --frames 2   # smoke run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from frametrans.bench.models import prepare_model
from frametrans.checkpoint import load_model
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.engine.session import KEEP_FP32_MODES
from frametrans.io.video import iter_video_frames

CLIP = Path(__file__).parent / "data" / "clip.mp4"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def rate(runner: Runner, size: int, batch: int, calls: int) -> float:
    """Model-only frames/s: ``calls`` forwards of ``batch`` frames after three warm-up calls."""
    mult = runner.contract.size_multiple
    padded = -(-size // mult) * mult  # as the runner pads frames
    x = runner.model_input(batch, padded, padded)
    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    for _ in range(3):
        runner.model_forward(x)
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        runner.model_forward(x)
    sync()
    return calls * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--frames", type=int, default=8, help="sample-clip frames for the PSNR")
    args = ap.parse_args()
    frames = [f.image[:args.size, :args.size] for _, f in zip(range(args.frames), iter_video_frames(CLIP))]
    with tempfile.TemporaryDirectory() as work:
        for arch, name in (("resnet", "ResNet-9"), ("unet", "U-Net-256")):
            model = load_model(prepare_model(arch, Path(work)))
            opts = dict(device=args.device, compile="off", batch_size=args.batch)
            ref = Runner(model, RunnerOptions(precision="fp32", **opts))(frames)
            fp32 = rate(Runner(model, RunnerOptions(precision="fp32", **opts)), args.size, args.batch, args.calls)
            print(f"{name} {args.size}x{args.size}, batch {args.batch}, {args.device}: fp32 {fp32:.1f} frames/s")
            for mode in KEEP_FP32_MODES:
                os.environ["FRAMETRANS_KEEP_FP32"] = mode
                runner = Runner(model, RunnerOptions(precision="bf16", **opts))
                ps = [psnr(a, b) for a, b in zip(runner(frames), ref)]
                print(f"  bf16, keep {mode:6s}: {rate(runner, args.size, args.batch, args.calls):8.1f} frames/s, "
                      f"PSNR to fp32 worst {min(ps):.1f} dB, mean {np.mean(ps):.1f} dB", flush=True)
            os.environ.pop("FRAMETRANS_KEEP_FP32", None)


if __name__ == "__main__":
    main()
