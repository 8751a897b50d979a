"""How much of a predictor training step is spent making the data.

    python -m frametrans.train.data_bench                         # moving-digits, CPU, batch 16
    python -m frametrans.train.data_bench --data moving-mnist --mnist-dir DIR --device cuda --batch-size 64
    python -m frametrans.train.data_bench --device cuda --batch-size 64 --steps 10 --profile   # where it goes

Builds the data and the predictor exactly as ``frametrans train predictor`` does (same options,
same loader), then times ``--steps`` steps after ``--warmup``: the time to get each batch onto the
device (data) and the time of the training step itself (forward, backward, Adam), synchronised
on CUDA. Prints one line per part and the data's share of the step; ``--host`` also times the
host generator the trainer used before (numpy, one sequence per sample counter) for the same
batches. Run it alone on the machine: it measures time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(options: Dict[str, Any], iters: int) -> Tuple[Any, torch.device, Any, Any, Iterator[Dict[str, torch.Tensor]]]:
    """(options, device, data, predictor method, batch iterator), built as ``frametrans train
    predictor`` builds them."""
    from frametrans.engine.device import autotune_convolutions, resolve_device
    from frametrans.train.base import Amp, compile_nets
    from frametrans.train.datasets import make_loader
    from frametrans.train.options import resolve
    from frametrans.train.predictor import Predictor, build_data

    o, _ = resolve("predictor", dict(options, iters=iters))
    device = resolve_device(o.device)
    torch.manual_seed(o.seed)
    data, _, _ = build_data(o)
    method = Predictor(o, device, Amp(device, o.precision))
    autotune_convolutions(device)
    if o.compile:
        compile_nets(method, device)
    loader = make_loader(data, o.batch_size, 0, o.workers, pin_memory=device.type == "cuda", device=device)
    return o, device, data, method, loader


def measure(options: Dict[str, Any], steps: int = 20, warmup: int = 3, host: bool = False) -> Dict[str, Any]:
    """Seconds per step making data and training; ``options``: ``frametrans train predictor``
    options (names underscored) over its defaults."""
    o, device, data, method, loader = _setup(options, warmup + steps)
    data_s: List[float] = []
    step_s: List[float] = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in next(loader).items()}
        _sync(device)
        t1 = time.perf_counter()
        method.train()
        method.step(batch)
        _sync(device)  # the step's losses stay on the device: wait for its work
        t2 = time.perf_counter()
        if i >= warmup:
            data_s.append(t1 - t0)
            step_s.append(t2 - t1)
    result = {"device": str(device), "data": o.data, "batch_size": o.batch_size, "steps": steps, "compile": o.compile,
              "data_ms": 1e3 * float(np.mean(data_s)), "step_ms": 1e3 * float(np.mean(step_s))}
    result["data_share"] = result["data_ms"] / (result["data_ms"] + result["step_ms"])
    result["data_sequences_per_s"] = o.batch_size / float(np.mean(data_s))
    result["train_sequences_per_s"] = o.batch_size / float(np.mean(np.add(data_s, step_s)))
    if host and hasattr(data, "splits"):
        result["host_data_ms"] = 1e3 * _host_generator_seconds(data, o.batch_size, steps, warmup)
    return result


def profile_steps(options: Dict[str, Any], steps: int = 10, warmup: int = 3, rows: int = 15) -> str:
    """torch.profiler over ``steps`` training steps (data included) after ``warmup``: the ops and
    kernels that take the time, and how many launches a step makes (a small model on a GPU is
    bound by launches, not by arithmetic). Returns the printed table."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    o, device, _, method, loader = _setup(options, warmup + steps)

    def one_step() -> None:
        batch = {k: v.to(device, non_blocking=True) for k, v in next(loader).items()}
        method.train()
        method.step(batch)

    for _ in range(warmup):
        one_step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            one_step()
        _sync(device)
    wall_ms = 1e3 * (time.perf_counter() - t0) / steps
    events = prof.key_averages()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=rows)
    # the device's own events (kernels, copies), not the CPU ops they are also attributed to, nor annotations
    on_device = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    kernels = sum(e.count for e in on_device if not e.key.startswith(("Memcpy", "Memset")))
    busy_ms = sum(e.self_device_time_total for e in on_device) / 1e3 / steps
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    head = (f"predictor on {device}, batch {o.batch_size}, {o.precision}: {wall_ms:.2f} ms per step (profiled), "
            f"{ops / steps:.0f} aten ops per step"
            + (f", {kernels / steps:.0f} kernels per step, device busy {busy_ms:.2f} ms per step" if device.type == "cuda" else ""))
    return head + "\n" + table


def _host_generator_seconds(data: Any, batch: int, steps: int, warmup: int) -> float:
    """Seconds per batch of the previous host path: one numpy sequence per sample counter, then
    stacked into a float32 tensor (what the DataLoader collated)."""
    gen = data.splits.train
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        seqs = [gen.sample(1, np.random.default_rng([data.seed, 3, i * batch + j]))[0] for j in range(batch)]
        torch.from_numpy(np.stack(seqs))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.mean(times))


def format_result(r: Dict[str, Any]) -> str:
    lines = [f"predictor on {r['device']}, {r['data']}, batch {r['batch_size']}, {r['steps']} steps"
             f"{', compiled' if r.get('compile') else ''}:",
             f"  data  {r['data_ms']:9.2f} ms/step  ({r['data_sequences_per_s']:.0f} sequences/s made)",
             f"  step  {r['step_ms']:9.2f} ms/step",
             f"  data share of the step: {100 * r['data_share']:.1f}%; training {r['train_sequences_per_s']:.0f} sequences/s"]
    if "host_data_ms" in r:
        lines.append(f"  previous host generator: {r['host_data_ms']:.2f} ms/batch "
                     f"({r['batch_size'] / r['host_data_ms'] * 1e3:.0f} sequences/s)")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m frametrans.train.data_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="moving-digits", help="moving-digits or moving-mnist (or a video/folder)")
    p.add_argument("--mnist-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--host", action="store_true", help="also time the previous host generator")
    p.add_argument("--compile", action="store_true", help="compile the predictor (train --compile); the build "
                   "happens in the warm-up steps")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--profile", action="store_true",
                   help="instead: torch.profiler over --steps steps, the ops and kernels that take the time")
    a = p.parse_args(argv)
    options = {"data": a.data, "mnist_dir": a.mnist_dir, "device": a.device, "batch_size": a.batch_size,
               "precision": a.precision, "width": a.width, "compile": a.compile or None}
    given = {k: v for k, v in options.items() if v is not None}
    try:
        if a.profile:
            print(profile_steps(given, a.steps, a.warmup))
            return 0
        result = measure(given, a.steps, a.warmup, a.host)
    except ValueError as exc:  # bad options, no CUDA, no compiler: one line
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if a.json else format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
