"""``frametrans bench compile``: cold compilation (empty cache) and warm load (from that cache),
eager against compiled forward (interleaved), output PSNR against fp32 eager, and the break-even
job lengths beyond which compiling pays for itself."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from frametrans.bench.common import Log, device_name, median, padded_size, sync, to_stderr, workdir
from frametrans.bench.models import prepare_model


@dataclass
class CompileBench:
    """Settings of :func:`bench_compile`."""

    model: str = "resnet"
    config: Dict[str, Any] = field(default_factory=dict)
    width: int = 256
    height: int = 256
    batch: int = 1
    device: str = "auto"
    precision: str = "auto"
    repeat: int = 5
    seed: int = 0
    workdir: Optional[str] = None


def bench_compile(opts: CompileBench, log: Log = to_stderr) -> Dict[str, Any]:
    """Cold compile (empty cache), warm load (from that cache), eager vs compiled forward
    (interleaved), output PSNR against fp32 eager, and the break-even job lengths."""
    from frametrans.checkpoint import load_model

    with workdir(opts.workdir) as work:
        model = load_model(prepare_model(opts.model, work, opts.config, opts.seed))
        cache = work / "cache"
        eager, fp32 = _runner(model, opts, cache, "off"), _runner(model, opts, cache, "off", "fp32")
        contract = model.config.contract()
        ph, pw = padded_size(opts.height, opts.width, contract.size_multiple)
        x = eager.model_input(opts.batch, ph, pw, opts.seed)
        x32 = fp32.model_input(opts.batch, ph, pw, opts.seed)
        ref = fp32.model_forward(x32).float()
        cold_s, _ = _first_call(_runner(model, opts, cache, "on"), x)
        warm = _runner(model, opts, cache, "on")
        warm_s, y = _first_call(warm, x)
        log(f"cold compile + first call {cold_s:.1f} s; warm load + first call {warm_s:.2f} s")
        eager.model_forward(x)
        times = _interleaved(opts.repeat, {"fp32 eager": (fp32, x32), "eager": (eager, x), "compiled": (warm, x)})
        psnr = {
            "eager": _psnr(eager.model_forward(x).float(), ref, contract.value_range),
            "compiled": _psnr(y.float(), ref, contract.value_range),
        }
        return _result(opts, eager, cold_s, warm_s, times, psnr)


def _runner(model: torch.nn.Module, opts: CompileBench, cache: Path, mode: str,
            precision: Optional[str] = None) -> Any:
    """A runner of ``model`` with compile ``mode``, the packages cached under ``cache``."""
    from frametrans.engine.runner import Runner, RunnerOptions

    return Runner(model, RunnerOptions(device=opts.device, precision=precision or opts.precision,
                                       batch_size=opts.batch, compile=mode, cache_dir=str(cache)))


def _first_call(runner: Any, x: torch.Tensor) -> Tuple[float, torch.Tensor]:
    """(seconds, output) of the runner's first forward: compile or package load included."""
    t = time.perf_counter()
    y = runner.model_forward(x)
    return time.perf_counter() - t, y


def _interleaved(repeat: int, runs: Dict[str, Tuple[Any, torch.Tensor]]) -> Dict[str, List[float]]:
    """``repeat`` rounds of one forward per run, device synchronised: seconds per run name."""
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, (r, xx) in runs.items():
            sync(r.device)
            t = time.perf_counter()
            r.model_forward(xx)
            sync(r.device)
            times[name].append(time.perf_counter() - t)
    return times


def _result(opts: CompileBench, eager: Any, cold_s: float, warm_s: float, times: Dict[str, List[float]],
            psnr: Dict[str, float]) -> Dict[str, Any]:
    """Per-frame medians, speed-ups, overheads beyond one forward and the break-even lengths."""
    med = {k: median(v) / opts.batch for k, v in times.items()}
    saving = med["eager"] - med["compiled"]
    call = med["compiled"] * opts.batch  # the first call's own forward is not overhead
    cold_over, warm_over = max(0.0, cold_s - call), max(0.0, warm_s - call)
    return {
        "setup": {**asdict(opts), "dtype": str(eager.dtype).replace("torch.", ""),
                  "device_name": device_name(eager.device)},
        "cold_seconds": cold_s, "warm_seconds": warm_s, "seconds_per_frame": med, "samples": times,
        "speedup_vs_eager": med["eager"] / med["compiled"],
        "speedup_vs_fp32_eager": med["fp32 eager"] / med["compiled"],
        "psnr_vs_fp32_db": psnr,
        "cold_overhead_seconds": cold_over, "warm_overhead_seconds": warm_over,
        "break_even_frames_cold": cold_over / saving if saving > 0 else float("inf"),
        "break_even_frames_warm": warm_over / saving if saving > 0 else float("inf"),
    }


def _psnr(a: torch.Tensor, b: torch.Tensor, value_range: Tuple[float, float]) -> float:
    lo, hi = value_range
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10((hi - lo) ** 2 / mse)


def format_compile(result: Dict[str, Any]) -> str:
    """Five lines: setup, compile times, speeds, speed-ups with PSNR, overheads and break-even."""
    s, med = result["setup"], result["seconds_per_frame"]
    return "\n".join([
        f"model {s['model']} {json.dumps(s['config']) if s['config'] else ''}, {s['width']}x{s['height']}, batch "
        f"{s['batch']}, {s['dtype']} on {s['device_name']}",
        f"  cold compile + first call {result['cold_seconds']:.1f} s; warm (cached package) load + first call "
        f"{result['warm_seconds']:.2f} s",
        f"  s/frame: fp32 eager {med['fp32 eager']:.4f}, {s['dtype']} eager {med['eager']:.4f}, "
        f"compiled {med['compiled']:.4f}",
        f"  compiled vs {s['dtype']} eager {result['speedup_vs_eager']:.2f}x; vs fp32 eager "
        f"{result['speedup_vs_fp32_eager']:.2f}x; PSNR vs fp32: eager {result['psnr_vs_fp32_db']['eager']:.1f} dB, "
        f"compiled {result['psnr_vs_fp32_db']['compiled']:.1f} dB",
        f"  overhead beyond one forward: {result['cold_overhead_seconds']:.1f} s cold, "
        f"{result['warm_overhead_seconds']:.2f} s warm; break-even: {result['break_even_frames_cold']:.0f} "
        f"frames cold, {result['break_even_frames_warm']:.1f} frames warm",
    ])
