"""``frametrans bench apply``: model-only against end-to-end throughput, and the reference loop.

:func:`bench_apply` measures, for one model, frame size, batch, device, precision and compile mode,
in one process and interleaved (``repeat`` rounds of every phase, medians reported):

- ``model only``: the runner's forward pass alone on a ready tensor (compiled when the runner's
  policy compiles), frames/s;
- ``apply video`` / ``apply folder``: :func:`frametrans.apply.apply_paths` on an H.264 clip and on a
  folder of PNG frames of that size (decode -> model -> encode, the threads included), frames/s and
  the ratio to model-only;
- ``reference loop``: what pytorch-CycleGAN-and-pix2pix's ``test.py`` does per image: PIL load,
  ToTensor + Normalize, one image per forward in fp32 eager, ``tensor2im``, PIL PNG save;

with each phase's peak memory (CPU: resident set size sampled every 5 ms; CUDA: the allocator's
peak) and the achieved FLOP/s against the device's peak (measured as dense matmul throughput in the
same dtype, since nominal peaks of virtual CPUs are not knowable).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from frametrans.bench.common import (
    Log,
    PeakMemory,
    device_name,
    device_peak_flops,
    make_folder,
    make_video,
    median,
    mib,
    model_flops,
    padded_size,
    sync,
    to_stderr,
    workdir,
)
from frametrans.bench.models import describe_model, prepare_model

# ------------------------------------------------------------------------------- reference loop


def reference_loop(model: torch.nn.Module, in_dir: Path, out_dir: Path, device: torch.device) -> int:
    """pytorch-CycleGAN-and-pix2pix ``test.py``, per image: PIL load, ToTensor + Normalize(0.5),
    one forward in fp32 without autograd, ``tensor2im`` ((y + 1) / 2 * 255, truncated to uint8),
    PIL PNG save. (Upstream also saves the input next to each output; that is left out, so the
    reference is if anything faster than the original.) Returns the number of images.

    The model runs through an fp32 :class:`~frametrans.engine.session.Session` in the default
    memory layout: its fp32 module, no autocast (upstream, like the session on CUDA, also turns on
    cuDNN autotuning), with torch's own InstanceNorm (:func:`with_torch_norms`). As its own process
    (``bench processes``) it keeps glibc's default heap; inside ``bench apply`` it shares the
    process, and the heap frametrans tunes (:mod:`frametrans.heap`)."""
    from PIL import Image
    from torchvision import transforms as T

    from frametrans.engine.session import Session

    transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    out_dir.mkdir(parents=True, exist_ok=True)
    session = Session(with_torch_norms(model), device, "fp32", channels_last=False)
    n = 0
    for path in sorted(p for p in Path(in_dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        img = Image.open(path).convert("RGB")
        x = transform(img).unsqueeze(0).to(session.device)
        with session.inference():
            y = session.source(x)
        image_numpy = (np.transpose(y[0].cpu().float().numpy(), (1, 2, 0)) + 1) / 2.0 * 255.0
        Image.fromarray(image_numpy.astype(np.uint8)).save(out_dir / f"{path.stem}_fake.png")
        n += 1
    return n


def with_torch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (changed in place) with frametrans' fast instance norms
    (:class:`frametrans.models.norms.InstanceNorm2d`) turned back into torch's ``nn.InstanceNorm2d``,
    as upstream builds them: same parameters, torch's own forward."""
    from frametrans.models.norms import InstanceNorm2d

    for m in model.modules():
        if type(m) is InstanceNorm2d:
            m.__class__ = torch.nn.InstanceNorm2d
    return model


# ------------------------------------------------------------------------------------- settings


@dataclass
class ApplyBench:
    """Settings of :func:`bench_apply`; see ``frametrans bench apply --help``."""

    model: str = "resnet"
    config: Dict[str, Any] = field(default_factory=dict)
    width: int = 256
    height: int = 256
    batch: int = 1
    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"
    frames: int = 16
    repeat: int = 3
    inputs: Tuple[str, ...] = ("video", "folder")
    reference: bool = True
    seed: int = 0
    workdir: Optional[str] = None
    cache_dir: Optional[str] = None


class _Phases:
    """The samples of the interleaved phases: wall seconds, process CPU seconds (all threads) and
    peak memory, per phase name (``model``, ``video``, ``folder``, ``reference``)."""

    NAMES = ("model", "video", "folder", "reference")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: Dict[str, List[float]] = {k: [] for k in self.NAMES}
        self.cpu: Dict[str, List[float]] = {k: [] for k in self.NAMES}
        self.mems: Dict[str, List[PeakMemory]] = {k: [] for k in self.NAMES}

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """One sample of ``name``: the block's wall and CPU time, its peak memory."""
        with PeakMemory(self.device) as mem:
            t, c0 = time.perf_counter(), time.process_time()
            yield
            self.seconds[name].append(time.perf_counter() - t)
            self.cpu[name].append(time.process_time() - c0)
        self.mems[name].append(mem)

    def model_round(self, runner: Any, x: torch.Tensor, calls: int) -> None:
        """``calls`` forwards, each one sample (device synchronised); one memory peak for all."""
        with PeakMemory(self.device) as mem:
            for _ in range(calls):
                sync(self.device)
                t, c0 = time.perf_counter(), time.process_time()
                runner.model_forward(x)
                sync(self.device)
                self.seconds["model"].append(time.perf_counter() - t)
                self.cpu["model"].append(time.process_time() - c0)
        self.mems["model"].append(mem)

    def round_line(self, calls: int) -> str:
        """The latest round's times, ``model 0.41 s, video 0.52 s, ...``."""
        return ", ".join(f"{k} {sum(v[-calls:]) if k == 'model' else v[-1]:.2f} s"
                         for k, v in self.seconds.items() if v)


# ----------------------------------------------------------------------------------- the bench


def bench_apply(opts: ApplyBench, log: Log = to_stderr) -> Dict[str, Any]:
    """Run the interleaved phases; returns a dict with ``setup`` and ``rows`` (see module doc)."""
    from frametrans.checkpoint import load_model

    with workdir(opts.workdir) as work:
        ckpt = prepare_model(opts.model, work, opts.config, opts.seed)
        model = load_model(ckpt)
        translator, runner = _translator(model, opts)
        dev, dtype = runner.device, runner.dtype
        ph, pw = padded_size(opts.height, opts.width, model.config.contract().size_multiple)
        log(f"model {describe_model(model)}; {opts.width}x{opts.height} (padded {pw}x{ph}), batch "
            f"{opts.batch}, {dev} ({device_name(dev)}), {_dtype_name(dtype)}, compile {opts.compile}")
        flops, peak = _flops_and_peak(model, runner, ph, pw, log)
        sources = _make_sources(opts, work)
        x = runner.model_input(opts.batch, ph, pw, seed=opts.seed)
        calls = max(1, math.ceil(opts.frames / opts.batch))
        warm, compiled = _warm_up(opts, runner, x, calls, log)
        ref_model = load_model(ckpt) if opts.reference else None  # fresh fp32, default layout
        phases = _Phases(dev)
        for r in range(opts.repeat):
            phases.model_round(runner, x, calls)
            _apply_round(phases, opts, work, sources, translator)
            if ref_model is not None:
                with phases.timed("reference"):
                    reference_loop(ref_model, sources["folder"], work / "ref_out", dev)
            peak = max(peak, device_peak_flops(dev, dtype, 0.5))  # the best seen: less hurt by other load
            log(f"round {r + 1}/{opts.repeat}: {phases.round_line(calls)}")
        rows = _rows(opts, phases, flops, peak, dev, dtype)
        setup = {
            "model": opts.model, "config": opts.config, "checkpoint": str(ckpt),
            "description": describe_model(model), "width": opts.width, "height": opts.height,
            "padded": [pw, ph], "batch": opts.batch, "device": str(dev), "device_name": device_name(dev),
            "dtype": _dtype_name(dtype), "compile": opts.compile, "compiled": compiled,
            "compile_seconds": runner.compile_seconds, "warmup_seconds": warm, "frames": opts.frames,
            "repeat": opts.repeat, "flop_per_frame": flops, "device_peak_flop_per_s": peak,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
        }
        return {"setup": setup, "rows": rows}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _translator(model: torch.nn.Module, opts: ApplyBench) -> Tuple[Any, Any]:
    """The translator ``apply`` would build for these options, and its (first) runner."""
    from frametrans.apply import Translator
    from frametrans.engine.runner import RunnerOptions

    ropts = RunnerOptions(device=opts.device, precision=opts.precision, batch_size=opts.batch,
                          compile=opts.compile, cache_dir=opts.cache_dir)
    translator = Translator(model, ropts)
    return translator, translator.variants[0].runner


def _flops_and_peak(model: torch.nn.Module, runner: Any, ph: int, pw: int,
                    log: Log) -> Tuple[Optional[float], float]:
    """FLOPs of one padded frame (None when not countable) and the device's matmul peak."""
    c = model.config.contract()
    flops = model_flops(model, runner.forward, c.in_channels * c.frames_in, ph, pw)
    peak = device_peak_flops(runner.device, runner.dtype)
    log(f"model: {flops / 1e9:.2f} GFLOP/frame" if flops else "model: FLOPs not countable")
    log(f"device peak (dense matmul, {_dtype_name(runner.dtype)}): {peak / 1e9:.1f} GFLOP/s")
    return flops, peak


def _make_sources(opts: ApplyBench, work: Path) -> Dict[str, Path]:
    """The H.264 clip and the PNG folder the end-to-end phases (and the reference) read."""
    sources: Dict[str, Path] = {}
    if "video" in opts.inputs:
        sources["video"] = make_video(work / "in.mp4", opts.width, opts.height, opts.frames)
    if "folder" in opts.inputs or opts.reference:
        sources["folder"] = make_folder(work / "in_frames", opts.width, opts.height, opts.frames)
    return sources


def _warm_up(opts: ApplyBench, runner: Any, x: torch.Tensor, calls: int, log: Log) -> Tuple[float, bool]:
    """Compile or load the compiled forward (auto decides as for a job of this length); returns
    (seconds, whether the forward is compiled)."""
    runner.expect(calls * opts.batch * (1 + len(opts.inputs)) * opts.repeat)
    t0 = time.perf_counter()
    for _ in range(2):  # the first eager call is timed by the auto policy, the second decides
        runner.model_forward(x)
    sync(runner.device)
    warm = time.perf_counter() - t0
    compiled = runner.compile_seconds > 0  # time is spent compiling or loading only for a compiled forward
    log(f"warm-up {warm:.1f} s; forward: {'compiled' if compiled else 'eager'}"
        + (f" (compile/load {runner.compile_seconds:.1f} s)" if compiled else ""))
    return warm, compiled


def _apply_round(phases: _Phases, opts: ApplyBench, work: Path, sources: Dict[str, Path],
                 translator: Any) -> None:
    """One ``apply_paths`` run per input kind, as ``frametrans apply`` does it."""
    from frametrans.apply import OutputOptions, apply_paths

    out_opts = OutputOptions(overwrite=True, quiet=True)
    for kind in ("video", "folder"):
        if kind not in opts.inputs:
            continue
        dst = work / ("out.mp4" if kind == "video" else "out_frames")
        with phases.timed(kind):
            report = apply_paths([str(sources[kind])], str(dst), translator, out_opts)
        if not report.ok or report.frames != opts.frames:
            raise RuntimeError(f"apply on the {kind} failed: {report.failed or report.stopped}")


# ------------------------------------------------------------------------------------------ rows


def _phase_row(name: str, seconds: List[float], frames_per_sample: int, mem: List[PeakMemory],
               flops: Optional[float], peak: Optional[float], cpu: Sequence[float] = ()) -> Dict[str, Any]:
    med = median(seconds)
    fps = frames_per_sample / med if med > 0 else float("nan")
    row: Dict[str, Any] = {
        "phase": name, "frames_per_s": fps, "s_per_frame": med / frames_per_sample,
        "samples_s": seconds, "frames_per_sample": frames_per_sample,
        "cpu_s_per_frame": median(cpu) / frames_per_sample if cpu else None, "cpu_samples_s": list(cpu),
        "peak_mem_bytes": max((m.peak for m in mem), default=0),
        "added_mem_bytes": max((m.added for m in mem), default=0),
    }
    if flops:
        row["flop_per_s"] = flops * fps
        row["peak_fraction"] = flops * fps / peak if peak else None
    return row


def _rows(opts: ApplyBench, phases: _Phases, flops: Optional[float], peak: float, dev: torch.device,
          dtype: torch.dtype) -> List[Dict[str, Any]]:
    """One row per phase, with its ratios to model-only and to the reference loop."""
    s = phases.seconds

    def row(name: str, key: str, frames: int, phase_peak: float) -> Dict[str, Any]:
        return _phase_row(name, s[key], frames, phases.mems[key], flops, phase_peak, phases.cpu[key])

    rows = [row("model only", "model", opts.batch, peak)]
    rows += [row(f"apply {kind}", kind, opts.frames, peak) for kind in ("video", "folder") if s[kind]]
    if s["reference"]:
        ref_peak = device_peak_flops(dev, torch.float32) if dtype != torch.float32 else peak
        rows.append(row("reference loop (fp32, batch 1)", "reference", opts.frames, ref_peak))
    base = rows[0]["frames_per_s"]
    ref = rows[-1]["frames_per_s"] if s["reference"] else None
    for r in rows:
        r["vs_model"] = r["frames_per_s"] / base
        if ref:
            r["vs_reference"] = r["frames_per_s"] / ref
    return rows


def format_apply(result: Dict[str, Any]) -> str:
    """The table of :func:`bench_apply`'s result (markdown, with a few lines of setup above)."""
    s, rows = result["setup"], result["rows"]
    lines = [
        f"{s['description']}",
        f"{s['width']}x{s['height']}, batch {s['batch']}, {s['device']} ({s['device_name']}), "
        f"{s['dtype']}, compile {s['compile']} -> {'compiled' if s['compiled'] else 'eager'}; "
        f"{s['frames']} frames x {s['repeat']} rounds, medians",
    ]
    if s.get("flop_per_frame"):
        lines.append(f"{s['flop_per_frame'] / 1e9:.2f} GFLOP/frame; device peak (matmul, {s['dtype']}) "
                     f"{s['device_peak_flop_per_s'] / 1e9:.1f} GFLOP/s")
    head = f"| {'phase':<32} | {'frames/s':>9} | {'s/frame':>8} | {'vs model':>8} | {'vs ref':>7} | " \
           f"{'peak mem':>9} | {'GFLOP/s':>8} | {'of peak':>7} | {'CPU s/frame':>11} |"
    lines += ["", head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    lines += [_table_line(r) for r in rows]
    return "\n".join(lines)


def _table_line(r: Dict[str, Any]) -> str:
    vs_ref = f"{r['vs_reference']:.2f}x" if "vs_reference" in r else "-"
    gf = f"{r['flop_per_s'] / 1e9:.1f}" if r.get("flop_per_s") else "-"
    pf = f"{100 * r['peak_fraction']:.0f}%" if r.get("peak_fraction") else "-"
    cs = f"{r['cpu_s_per_frame']:.4f}" if r.get("cpu_s_per_frame") is not None else "-"
    return (f"| {r['phase']:<32} | {r['frames_per_s']:>9.3f} | {r['s_per_frame']:>8.4f} | "
            f"{r['vs_model']:>7.2f}x | {vs_ref:>7} | {mib(r['peak_mem_bytes']):>9} | {gf:>8} | {pf:>7} "
            f"| {cs:>11} |")
