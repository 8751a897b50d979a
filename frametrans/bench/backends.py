"""``frametrans bench backends``: torch eager fp32 and bf16 against OpenVINO (fp32, bf16) and ONNX
Runtime (fp32) on one model and frame size: the first call (conversion, compile or load from the
cache), ms/frame (medians of interleaved rounds) and PSNR of the uint8 output against torch fp32
(worst and mean frame), plus what ``--backend auto`` would pick here. Paths that cannot run here
(bf16 without bf16 units, a backend not installed) are listed as skipped with the reason."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from frametrans.bench.common import Log, device_name, make_frames, median, psnr_uint8, to_stderr, workdir
from frametrans.bench.models import prepare_model

#: (name, backend, precision) of every path measured. ``torch auto``: what ``--precision auto`` runs in
#: torch here (fp32, or bf16 with the copy it picks: every layer bf16 where the model passes the probe
#: with room, else norms and frame in fp32, which is what ``torch bf16`` always runs).
PATHS = (("torch fp32", "torch", "fp32"), ("torch bf16", "torch", "bf16"), ("torch auto", "torch", "auto"),
         ("openvino fp32", "openvino", "fp32"), ("openvino bf16", "openvino", "bf16"),
         ("onnxruntime fp32", "onnxruntime", "fp32"))


@dataclass
class BackendsBench:
    """Settings of :func:`bench_backends`; ``frames``: frames whose PSNR is measured."""

    model: str = "resnet"
    config: Dict[str, Any] = field(default_factory=dict)
    width: int = 256
    height: int = 256
    batch: int = 1
    repeat: int = 5
    frames: int = 8
    seed: int = 0
    workdir: Optional[str] = None


def _skip_reason(backend: str, precision: str) -> Optional[str]:
    from frametrans.engine import backends
    from frametrans.engine.device import cpu_has_bf16

    if backend != "torch" and not backends.installed(backend):
        return f"{backends.PACKAGES[backend][0]} not installed ({backends.PACKAGES[backend][1]})"
    if precision == "bf16" and not cpu_has_bf16():
        return "no bf16 units on this CPU"
    return None


def _runner(model: torch.nn.Module, opts: BackendsBench, cache: Path, backend: str, precision: str) -> Any:
    from frametrans.engine.runner import Runner, RunnerOptions

    return Runner(model, RunnerOptions(device="cpu", precision=precision, batch_size=opts.batch, compile="off",
                                       backend=backend, cache_dir=str(cache)))


def bench_backends(opts: BackendsBench, log: Log = to_stderr) -> Dict[str, Any]:
    """Measure every path of :data:`PATHS` that can run here; see the module docstring."""
    from frametrans.checkpoint import load_model
    from frametrans.engine import backends
    from frametrans.engine.device import resolve_precision

    with workdir(opts.workdir) as work:
        model = load_model(prepare_model(opts.model, work, opts.config, opts.seed))
        images = list(make_frames(opts.width, opts.height, opts.frames, opts.seed))
        runners, first, skipped = {}, {}, {}
        for name, backend, precision in PATHS:
            reason = _skip_reason(backend, precision)
            if reason:
                skipped[name] = reason
                continue
            runners[name] = r = _runner(model, opts, work / "cache", backend, precision)
            t = time.perf_counter()
            r(images[:1])
            first[name] = time.perf_counter() - t
            log(f"{name}: first call {first[name]:.2f} s")
        ref = runners["torch fp32"](images)
        psnr = {name: _psnrs(r(images), ref) for name, r in runners.items() if name != "torch fp32"}
        times = _interleaved(opts, runners)
        auto = backends.choose("auto", torch.device("cpu"), resolve_precision("auto", torch.device("cpu")),
                               all_low_db=runners["torch auto"].session.all_low_db())
        med = {k: median(v) / opts.batch for k, v in times.items()}
        return {"setup": {**asdict(opts), "device_name": device_name(torch.device("cpu"))},
                "first_call_seconds": first, "seconds_per_frame": med, "samples": times,
                "speedup_vs_torch_fp32": {k: med["torch fp32"] / v for k, v in med.items()},
                "psnr_vs_fp32_db": psnr, "skipped": skipped,
                "torch_auto": {"dtype": backends.dtype_name(runners["torch auto"].dtype),
                               "keep_fp32": runners["torch auto"].session.keep_fp32},
                "auto": {"backend": auto.name, "dtype": backends.dtype_name(auto.dtype), "reason": auto.reason}}


def _psnrs(outs: List[np.ndarray], ref: List[np.ndarray]) -> Dict[str, float]:
    values = [psnr_uint8(a, b) for a, b in zip(outs, ref)]
    finite = [v for v in values if v != float("inf")]
    return {"worst": min(values), "mean": float(np.mean(finite)) if finite else float("inf")}


def _interleaved(opts: BackendsBench, runners: Dict[str, Any]) -> Dict[str, List[float]]:
    """``repeat`` rounds of one forward per path on the same random input: seconds per path."""
    inputs: Dict[str, Tuple[Any, torch.Tensor]] = {}
    for name, r in runners.items():
        m = r.contract.size_multiple
        h, w = -(-opts.height // m) * m, -(-opts.width // m) * m
        inputs[name] = (r, r.model_input(opts.batch, h, w, opts.seed))
        r.model_forward(inputs[name][1])  # warm: OpenVINO compiles each shape once
    times: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(opts.repeat):
        for name, (r, x) in inputs.items():
            t = time.perf_counter()
            r.model_forward(x)
            times[name].append(time.perf_counter() - t)
    return times


def format_backends(result: Dict[str, Any]) -> str:
    """One line of setup, one per path (ms/frame, speed-up, first call, PSNR), skips, auto's pick."""
    s = result["setup"]
    lines = [f"model {s['model']} {json.dumps(s['config']) if s['config'] else ''}, {s['width']}x{s['height']}, "
             f"batch {s['batch']}, on {s['device_name']}"]
    for name, sec in result["seconds_per_frame"].items():
        p = result["psnr_vs_fp32_db"].get(name)
        quality = f"; PSNR vs fp32 worst {p['worst']:.1f} dB, mean {p['mean']:.1f} dB" if p else ""
        lines.append(f"  {name:17s} {sec * 1e3:8.1f} ms/frame  {result['speedup_vs_torch_fp32'][name]:5.2f}x  "
                     f"first call {result['first_call_seconds'][name]:.2f} s{quality}")
    lines += [f"  {name:17s} skipped: {why}" for name, why in result["skipped"].items()]
    t, a = result["torch_auto"], result["auto"]
    lines.append(f"  torch auto here: {t['dtype']}" + (f", keep_fp32={t['keep_fp32']}" if t["dtype"] != "fp32" else ""))
    lines.append(f"  --backend auto here: {a['backend']} ({a['dtype']}): {a['reason']}")
    return "\n".join(lines)
