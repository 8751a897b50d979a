"""Throughput benchmarks behind ``frametrans bench``: library code, no Click, logs to stderr.

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

:func:`bench_processes` compares whole processes (start-up, model load and compile/cache load
included): ``python -m frametrans.cli apply FOLDER`` against the reference loop run as
``python -m frametrans.bench reference``. :func:`bench_tiling` times tiled against untiled inference
of one large frame; :func:`bench_compile` measures cold and warm compilation and the break-even.

Models given by architecture name (``resnet``, ``unet``, with config overrides) are randomly
initialised with a fixed seed (``init_weights``, as upstream) and saved with
:func:`frametrans.checkpoint.save_model`, so every path loads the same file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- models


def prepare_model(model: str, workdir: Path, config: Optional[Dict[str, Any]] = None, seed: int = 0) -> Path:
    """A checkpoint path for ``model``: an architecture name (``resnet``, ``unet``...) is built with
    ``config`` overrides, initialised from ``seed`` and saved under ``workdir``; anything else is a
    checkpoint path or bundled name, returned resolved."""
    from frametrans import registry
    from frametrans.checkpoint import resolve, save_model
    from frametrans.models.layers import init_weights

    if model in registry.names():
        arch = registry.get(model)
        cfg = arch.config_from_dict(dict(config or {}))
        net = arch.build(cfg)
        init_weights(net, "normal", 0.02, generator=torch.Generator().manual_seed(seed))
        _calibrate_batch_norm(net, seed)
        tag = "_".join(f"{k}{v}" for k, v in sorted((config or {}).items()))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        path = Path(workdir) / f"{model}{'_' + tag if tag else ''}_seed{seed}.safetensors"
        save_model(net, path, provenance={"bench": f"random init, seed {seed}"})
        return path
    if config:
        raise ValueError("--config overrides apply to architecture names, not to checkpoints")
    return resolve(model)


def _calibrate_batch_norm(net: torch.nn.Module, seed: int, side: int = 256) -> None:
    """Give batch-norm layers the running statistics of real-looking frames (a few forwards in
    train mode), so a randomly initialised U-Net is not degenerate in eval mode: with N(0, 0.02)
    weights and unit running variances its activations shrink layer by layer to ~0 (a constant
    output, denormal floats), which says nothing about speed or precision."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    contract = net.config.contract()
    m = contract.size_multiple
    side = max(side, m) // m * m
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    net.train()
    frames = [torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1
              for img in make_frames(side, side, 4, seed)]
    with torch.no_grad():
        for i in range(0, len(frames), 2):  # batches of two different frames
            x = torch.stack(frames[i:i + 2])[:, : contract.in_channels]
            net(x.repeat(1, -(-contract.in_channels // x.shape[1]), 1, 1)[:, : contract.in_channels])
    for bn in norms:
        bn.momentum = 0.1
    net.eval()


def describe_model(model: torch.nn.Module) -> str:
    cfg = getattr(model, "config", None)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    fields = ", ".join(f"{k}={v}" for k, v in (cfg.to_dict().items() if cfg is not None else []))
    return f"{type(model).arch_name}({fields}), {params:.1f} M parameters"


def model_flops(model: torch.nn.Module, forward, channels: int, height: int, width: int) -> Optional[float]:
    """FLOPs (2 x multiply-adds) of one forward on one [1, C, H, W] frame, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            meta = type(model)(model.config).eval()
        x = torch.empty(1, channels, height, width, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            forward(meta, x)
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - a model the counter cannot follow: no FLOP figures
        return None


def device_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Dense matmul FLOP/s in ``dtype`` on ``device``: the best of several timed products."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = 0.0
    with torch.inference_mode():
        torch.mm(a, b)
        _sync(device)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            for _ in range(4 if device.type == "cuda" else 1):
                torch.mm(a, b)
            _sync(device)
            dt = time.perf_counter() - t0
            best = max(best, (4 if device.type == "cuda" else 1) * 2 * n**3 / dt)
    return best


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "cpu")
    except OSError:
        import platform

        return platform.processor() or "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{cpu_name()}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    return device.type


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory while the ``with`` block runs: CUDA allocator peak, else sampled CPU RSS.

    ``peak`` is bytes (absolute RSS on the CPU); ``added`` the rise over the start of the block.
    """

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def added(self) -> int:
        return max(0, self.peak - self.start)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ------------------------------------------------------------------------------------------ data


def make_frames(width: int, height: int, count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Moving colour gradients with a little noise (so codecs have real work), [H, W, 3] uint8."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        t = i / 10.0
        r = 127 + 120 * np.sin(xx / 23.0 + t)
        gch = 127 + 120 * np.sin(yy / 17.0 - 1.3 * t)
        b = 127 + 120 * np.sin((xx + yy) / 31.0 + 0.7 * t)
        img = np.stack([r, gch, b], axis=-1) + g.normal(0, 6, (height, width, 3))
        yield np.clip(img, 0, 255).astype(np.uint8)


def make_video(path: Path, width: int, height: int, count: int, fps: int = 25) -> Path:
    from frametrans.io.video import VideoWriter

    with VideoWriter(path, fps=fps) as writer:
        for img in make_frames(width, height, count):
            writer.write(img)
    return path


def make_folder(folder: Path, width: int, height: int, count: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(make_frames(width, height, count)):
        Image.fromarray(img).save(folder / f"frame_{i:05d}.png")
    return folder


# ------------------------------------------------------------------------------- reference loop


def reference_loop(model: torch.nn.Module, in_dir: Path, out_dir: Path, device: torch.device) -> int:
    """pytorch-CycleGAN-and-pix2pix ``test.py``, per image: PIL load, ToTensor + Normalize(0.5),
    one forward in fp32 under ``no_grad``, ``tensor2im`` ((y + 1) / 2 * 255, truncated to uint8),
    PIL PNG save. (Upstream also saves the input next to each output; that is left out, so the
    reference is if anything faster than the original.) Returns the number of images."""
    from PIL import Image
    from torchvision import transforms as T

    transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().to(device).eval()
    n = 0
    for path in sorted(p for p in Path(in_dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        img = Image.open(path).convert("RGB")
        x = transform(img).unsqueeze(0).to(device)
        with torch.no_grad():
            y = model(x)
        image_numpy = (np.transpose(y[0].cpu().float().numpy(), (1, 2, 0)) + 1) / 2.0 * 255.0
        Image.fromarray(image_numpy.astype(np.uint8)).save(out_dir / f"{path.stem}_fake.png")
        n += 1
    return n


# ------------------------------------------------------------------------------------- apply bench


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


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _phase_row(name: str, seconds: List[float], frames_per_sample: int, mem: List[PeakMemory],
               flops: Optional[float], peak: Optional[float], cpu: Sequence[float] = ()) -> Dict[str, Any]:
    med = _median(seconds)
    fps = frames_per_sample / med if med > 0 else float("nan")
    row: Dict[str, Any] = {
        "phase": name, "frames_per_s": fps, "s_per_frame": med / frames_per_sample,
        "samples_s": seconds, "frames_per_sample": frames_per_sample,
        "cpu_s_per_frame": _median(cpu) / frames_per_sample if cpu else None, "cpu_samples_s": list(cpu),
        "peak_mem_bytes": max((m.peak for m in mem), default=0),
        "added_mem_bytes": max((m.added for m in mem), default=0),
    }
    if flops:
        row["flop_per_s"] = flops * fps
        row["peak_fraction"] = flops * fps / peak if peak else None
    return row


def bench_apply(opts: ApplyBench, log: Log = _stderr) -> Dict[str, Any]:
    """Run the interleaved phases; returns a dict with ``setup`` and ``rows`` (see module doc)."""
    from frametrans.apply import OutputOptions, Translator, apply_paths
    from frametrans.checkpoint import load_model
    from frametrans.engine.padding import min_side
    from frametrans.engine.runner import RunnerOptions

    with _workdir(opts.workdir) as work:
        ckpt = prepare_model(opts.model, work, opts.config, opts.seed)
        model = load_model(ckpt)
        ropts = RunnerOptions(device=opts.device, precision=opts.precision, batch_size=opts.batch,
                              compile=opts.compile, cache_dir=opts.cache_dir)
        translator = Translator(model, ropts)
        runner = translator.variants[0].runner
        dev, dtype = runner.device, runner.dtype
        c = runner.contract
        m = c.size_multiple
        ph = max(min_side(m), -(-opts.height // m) * m)
        pw = max(min_side(m), -(-opts.width // m) * m)
        log(f"model {describe_model(model)}; {opts.width}x{opts.height} (padded {pw}x{ph}), batch "
            f"{opts.batch}, {dev} ({device_name(dev)}), {str(dtype).replace('torch.', '')}, compile {opts.compile}")

        flops = model_flops(model, runner.forward, c.in_channels * c.frames_in, ph, pw)
        peak = device_peak_flops(dev, dtype)
        log(f"model: {flops / 1e9:.2f} GFLOP/frame" if flops else "model: FLOPs not countable")
        log(f"device peak (dense matmul, {str(dtype).replace('torch.', '')}): {peak / 1e9:.1f} GFLOP/s")

        sources: Dict[str, Path] = {}
        if "video" in opts.inputs:
            sources["video"] = make_video(work / "in.mp4", opts.width, opts.height, opts.frames)
        if "folder" in opts.inputs or opts.reference:
            sources["folder"] = make_folder(work / "in_frames", opts.width, opts.height, opts.frames)
        out_opts = OutputOptions(overwrite=True, quiet=True)

        # warm-up: compile or load the compiled forward (auto decides as for a job of this length)
        x = runner.model_input(opts.batch, ph, pw, seed=opts.seed)
        calls = max(1, math.ceil(opts.frames / opts.batch))
        runner.expect(calls * opts.batch * (1 + len(opts.inputs)) * opts.repeat)
        t0 = time.perf_counter()
        for _ in range(2):  # the first eager call is timed by the auto policy, the second decides
            runner.model_forward(x)
        _sync(dev)
        warm = time.perf_counter() - t0
        compiled = bool(runner._compiled)
        log(f"warm-up {warm:.1f} s; forward: {'compiled' if compiled else 'eager'}"
            + (f" (compile/load {runner.compile_seconds:.1f} s)" if compiled else ""))

        ref_model = load_model(ckpt) if opts.reference else None  # fresh fp32, default layout
        samples: Dict[str, List[float]] = {k: [] for k in ("model", "video", "folder", "reference")}
        cpu: Dict[str, List[float]] = {k: [] for k in samples}  # process CPU seconds, all threads
        mems: Dict[str, List[PeakMemory]] = {k: [] for k in samples}
        for r in range(opts.repeat):
            with PeakMemory(dev) as mem:
                for _ in range(calls):
                    _sync(dev)
                    t, c0 = time.perf_counter(), time.process_time()
                    runner.model_forward(x)
                    _sync(dev)
                    samples["model"].append(time.perf_counter() - t)
                    cpu["model"].append(time.process_time() - c0)
            mems["model"].append(mem)
            for kind in ("video", "folder"):
                if kind not in opts.inputs:
                    continue
                dst = work / ("out.mp4" if kind == "video" else "out_frames")
                with PeakMemory(dev) as mem:
                    t, c0 = time.perf_counter(), time.process_time()
                    report = apply_paths([str(sources[kind])], str(dst), translator, out_opts)
                    samples[kind].append(time.perf_counter() - t)
                    cpu[kind].append(time.process_time() - c0)
                mems[kind].append(mem)
                if not report.ok or report.frames != opts.frames:
                    raise RuntimeError(f"apply on the {kind} failed: {report.failed or report.stopped}")
            if ref_model is not None:
                with PeakMemory(dev) as mem:
                    t, c0 = time.perf_counter(), time.process_time()
                    reference_loop(ref_model, sources["folder"], work / "ref_out", dev)
                    samples["reference"].append(time.perf_counter() - t)
                    cpu["reference"].append(time.process_time() - c0)
                mems["reference"].append(mem)
            peak = max(peak, device_peak_flops(dev, dtype, 0.5))  # the best seen: less hurt by other load
            log(f"round {r + 1}/{opts.repeat}: " + ", ".join(
                f"{k} {sum(v[-calls:]) if k == 'model' else v[-1]:.2f} s" for k, v in samples.items() if v))

        rows = [_phase_row("model only", samples["model"], opts.batch, mems["model"], flops, peak,
                           cpu["model"])]
        for kind in ("video", "folder"):
            if samples[kind]:
                rows.append(_phase_row(f"apply {kind}", samples[kind], opts.frames, mems[kind], flops, peak,
                                       cpu[kind]))
        if samples["reference"]:
            ref_peak = device_peak_flops(dev, torch.float32) if dtype != torch.float32 else peak
            rows.append(_phase_row("reference loop (fp32, batch 1)", samples["reference"], opts.frames,
                                   mems["reference"], flops, ref_peak, cpu["reference"]))
        base = rows[0]["frames_per_s"]
        ref = rows[-1]["frames_per_s"] if samples["reference"] else None
        for row in rows:
            row["vs_model"] = row["frames_per_s"] / base
            if ref:
                row["vs_reference"] = row["frames_per_s"] / ref
        setup = {
            "model": opts.model, "config": opts.config, "checkpoint": str(ckpt),
            "description": describe_model(model), "width": opts.width, "height": opts.height,
            "padded": [pw, ph], "batch": opts.batch, "device": str(dev), "device_name": device_name(dev),
            "dtype": str(dtype).replace("torch.", ""), "compile": opts.compile, "compiled": compiled,
            "compile_seconds": runner.compile_seconds, "warmup_seconds": warm, "frames": opts.frames,
            "repeat": opts.repeat, "flop_per_frame": flops, "device_peak_flop_per_s": peak,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
        }
        return {"setup": setup, "rows": rows}


def format_apply(result: Dict[str, Any]) -> str:
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
    for r in rows:
        vs_ref = f"{r['vs_reference']:.2f}x" if "vs_reference" in r else "-"
        gf = f"{r['flop_per_s'] / 1e9:.1f}" if r.get("flop_per_s") else "-"
        pf = f"{100 * r['peak_fraction']:.0f}%" if r.get("peak_fraction") else "-"
        cs = f"{r['cpu_s_per_frame']:.4f}" if r.get("cpu_s_per_frame") is not None else "-"
        lines.append(f"| {r['phase']:<32} | {r['frames_per_s']:>9.3f} | {r['s_per_frame']:>8.4f} | "
                     f"{r['vs_model']:>7.2f}x | {vs_ref:>7} | {_mib(r['peak_mem_bytes']):>9} | {gf:>8} | {pf:>7} "
                     f"| {cs:>11} |")
    return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "-"


@contextlib.contextmanager
def _workdir(path: Optional[str]) -> Iterator[Path]:
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="frametrans-bench-") as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------------- whole processes


@dataclass
class ProcessBench:
    """Settings of :func:`bench_processes`."""

    model: str = "resnet"
    config: Dict[str, Any] = field(default_factory=dict)
    width: int = 256
    height: int = 256
    frames: int = 96
    batch: Optional[int] = None
    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"
    repeat: int = 1
    seed: int = 0
    workdir: Optional[str] = None
    video: bool = False


def bench_processes(opts: ProcessBench, log: Log = _stderr) -> Dict[str, Any]:
    """Wall time of whole processes on the same folder (or video): ``frametrans apply`` against the
    reference loop, alternating, ``repeat`` times; start-up, model load and compile included."""
    with _workdir(opts.workdir) as work:
        ckpt = prepare_model(opts.model, work, opts.config, opts.seed)
        folder = make_folder(work / "in_frames", opts.width, opts.height, opts.frames)
        src = make_video(work / "in.mp4", opts.width, opts.height, opts.frames) if opts.video else folder
        dst = work / ("out.mp4" if opts.video else "out_frames")
        ours = [sys.executable, "-m", "frametrans.cli", "apply", str(src), "-o", str(dst), "-m", str(ckpt),
                "--device", opts.device, "--precision", opts.precision, "--compile", opts.compile,
                "--overwrite", "--quiet"]
        if opts.batch:
            ours += ["--batch-size", str(opts.batch)]
        ref = [sys.executable, "-m", "frametrans.bench", "reference", str(ckpt), str(folder),
               str(work / "ref_out"), opts.device if opts.device != "auto" else "auto"]
        times: Dict[str, List[float]] = {"frametrans apply": [], "reference loop": []}
        for r in range(opts.repeat):
            for name, cmd in (("frametrans apply", ours), ("reference loop", ref)):
                t = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                times[name].append(time.perf_counter() - t)
                if proc.returncode != 0:
                    raise RuntimeError(f"{name} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
            log(f"round {r + 1}/{opts.repeat}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()))
        med = {k: _median(v) for k, v in times.items()}
        return {"setup": {**asdict(opts), "checkpoint": str(ckpt), "command": " ".join(ours)},
                "seconds": times, "median": med,
                "speedup": med["reference loop"] / med["frametrans apply"]}


def format_processes(result: Dict[str, Any]) -> str:
    s, med = result["setup"], result["median"]
    src = "video" if s["video"] else "folder"
    lines = [f"whole processes, {s['frames']} frames {s['width']}x{s['height']} ({src}), model {s['model']}"
             f"{' ' + json.dumps(s['config']) if s['config'] else ''}, device {s['device']}, precision "
             f"{s['precision']}, compile {s['compile']}; median of {s['repeat']}"]
    for k, v in med.items():
        lines.append(f"  {k:<18} {v:8.2f} s   {s['frames'] / v:7.2f} frames/s")
    lines.append(f"  speed-up over the reference loop: {result['speedup']:.2f}x")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- tiling


@dataclass
class TilingBench:
    """Settings of :func:`bench_tiling`."""

    model: str = "resnet"
    config: Dict[str, Any] = field(default_factory=dict)
    width: int = 1920
    height: int = 1080
    tile: Optional[int] = None
    tile_overlap: Optional[int] = None
    max_memory: Optional[int] = None
    device: str = "auto"
    precision: str = "auto"
    repeat: int = 3
    seed: int = 0
    workdir: Optional[str] = None


def bench_tiling(opts: TilingBench, log: Log = _stderr) -> Dict[str, Any]:
    """One frame untiled and tiled (``tile`` or a ``max_memory`` budget), interleaved: time ratio,
    PSNR of the tiled output against the untiled one, tile plan and peak memory of each."""
    from frametrans.checkpoint import load_model
    from frametrans.engine.runner import Runner, RunnerOptions
    from frametrans.engine.tiling import plan_tiles

    if not opts.tile and not opts.max_memory:
        raise ValueError("give --tile or --max-memory (what makes the tiled run tile)")
    with _workdir(opts.workdir) as work:
        model = load_model(prepare_model(opts.model, work, opts.config, opts.seed))
        frame = next(make_frames(opts.width, opts.height, 1, opts.seed))
        whole = Runner(model, RunnerOptions(device=opts.device, precision=opts.precision, batch_size=1,
                                            compile="off", max_memory=2**50))
        tiled = Runner(model, RunnerOptions(device=opts.device, precision=opts.precision, batch_size=1,
                                            compile="off", tile=opts.tile, tile_overlap=opts.tile_overlap,
                                            max_memory=opts.max_memory))
        m = whole.contract.size_multiple
        ph, pw = -(-opts.height // m) * m, -(-opts.width // m) * m
        side = tiled._tile_size(opts.height, opts.width)
        if side is None:
            raise ValueError(f"the {opts.width}x{opts.height} frame fits the memory budget: nothing to tile")
        overlap = tiled.overlap(side)
        boxes = plan_tiles(ph, pw, side, overlap, m)
        area = sum(b.height * b.width for b in boxes) / (ph * pw)
        from frametrans.engine.normstats import has_frame_dependent_norm

        stats = ("none (no frame-dependent norm)" if not has_frame_dependent_norm(tiled.model)
                 else "full" if ph * pw <= tiled._pixels_that_fit() else "tiled")
        log(f"{opts.width}x{opts.height}: {len(boxes)} tiles of {side} px, overlap {overlap}, tile area "
            f"{area:.2f}x the frame; norm statistics: {stats}")
        tiled([frame])  # warm-up (and the receptive field probe)
        times: Dict[str, List[float]] = {"untiled": [], "tiled": []}
        mems: Dict[str, List[PeakMemory]] = {"untiled": [], "tiled": []}
        outs: Dict[str, np.ndarray] = {}
        dev = whole.device
        for r in range(opts.repeat):
            for name, runner in (("untiled", whole), ("tiled", tiled)):
                with PeakMemory(dev) as mem:
                    t = time.perf_counter()
                    outs[name] = runner([frame])[0]
                    times[name].append(time.perf_counter() - t)
                mems[name].append(mem)
            log(f"round {r + 1}/{opts.repeat}: untiled {times['untiled'][-1]:.2f} s, tiled {times['tiled'][-1]:.2f} s")
        mse = float(np.mean((outs["tiled"].astype(np.float64) - outs["untiled"].astype(np.float64)) ** 2))
        psnr = float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
        med = {k: _median(v) for k, v in times.items()}
        return {"setup": {**asdict(opts), "tile_used": side, "overlap": overlap, "tiles": len(boxes),
                          "tile_area_ratio": area, "stats": stats, "dtype": str(whole.dtype)},
                "seconds": times, "median": med, "ratio": med["tiled"] / med["untiled"], "psnr_db": psnr,
                "peak_mem_bytes": {k: max(x.peak for x in v) for k, v in mems.items()},
                "added_mem_bytes": {k: max(x.added for x in v) for k, v in mems.items()}}


def format_tiling(result: Dict[str, Any]) -> str:
    s, med = result["setup"], result["median"]
    return "\n".join([
        f"{s['width']}x{s['height']}, model {s['model']} {json.dumps(s['config']) if s['config'] else ''}, "
        f"{s['dtype'].replace('torch.', '')}: {s['tiles']} tiles of {s['tile_used']} px, overlap {s['overlap']} "
        f"(tile area {s['tile_area_ratio']:.2f}x the frame), norm statistics '{s['stats']}'",
        f"  untiled {med['untiled']:.3f} s, peak mem {_mib(result['peak_mem_bytes']['untiled'])} "
        f"(+{_mib(result['added_mem_bytes']['untiled'])})",
        f"  tiled   {med['tiled']:.3f} s, peak mem {_mib(result['peak_mem_bytes']['tiled'])} "
        f"(+{_mib(result['added_mem_bytes']['tiled'])})",
        f"  tiled / untiled: {result['ratio']:.2f}x time; PSNR tiled vs untiled {result['psnr_db']:.1f} dB",
    ])


# ---------------------------------------------------------------------------------------- compile


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


def bench_compile(opts: CompileBench, log: Log = _stderr) -> Dict[str, Any]:
    """Cold compile (empty cache), warm load (from that cache), eager vs compiled forward
    (interleaved), output PSNR against fp32 eager, and the break-even job lengths."""
    from frametrans.checkpoint import load_model
    from frametrans.engine.padding import min_side
    from frametrans.engine.runner import Runner, RunnerOptions

    with _workdir(opts.workdir) as work:
        model = load_model(prepare_model(opts.model, work, opts.config, opts.seed))
        cache = work / "cache"

        def runner(mode: str, precision: str = opts.precision) -> Runner:
            return Runner(model, RunnerOptions(device=opts.device, precision=precision, batch_size=opts.batch,
                                               compile=mode, cache_dir=str(cache)))

        eager, fp32 = runner("off"), runner("off", "fp32")
        m = eager.contract.size_multiple
        ph = max(min_side(m), -(-opts.height // m) * m)
        pw = max(min_side(m), -(-opts.width // m) * m)
        x = eager.model_input(opts.batch, ph, pw, opts.seed)
        ref = fp32.model_forward(fp32.model_input(opts.batch, ph, pw, opts.seed)).float()

        cold = runner("on")
        t = time.perf_counter()
        cold.model_forward(x)
        cold_s = time.perf_counter() - t
        warm = runner("on")
        t = time.perf_counter()
        y = warm.model_forward(x)
        warm_s = time.perf_counter() - t
        log(f"cold compile + first call {cold_s:.1f} s; warm load + first call {warm_s:.2f} s")
        eager.model_forward(x)
        times: Dict[str, List[float]] = {"fp32 eager": [], "eager": [], "compiled": []}
        runs = {"fp32 eager": (fp32, fp32.model_input(opts.batch, ph, pw, opts.seed)), "eager": (eager, x),
                "compiled": (warm, x)}
        for _ in range(opts.repeat):
            for name, (r, xx) in runs.items():
                _sync(r.device)
                t = time.perf_counter()
                r.model_forward(xx)
                _sync(r.device)
                times[name].append(time.perf_counter() - t)
        med = {k: _median(v) / opts.batch for k, v in times.items()}
        saving = med["eager"] - med["compiled"]
        call = med["compiled"] * opts.batch  # the first call's own forward is not overhead
        cold_over, warm_over = max(0.0, cold_s - call), max(0.0, warm_s - call)
        psnr = {
            "eager": _psnr(eager.model_forward(x).float(), ref, eager.contract.value_range),
            "compiled": _psnr(y.float(), ref, eager.contract.value_range),
        }
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


# ------------------------------------------------------------------------------------------- main


def _reference_main(argv: Sequence[str]) -> int:
    """``python -m frametrans.bench reference CKPT IN_DIR OUT_DIR [DEVICE]``: the reference loop as
    its own process (imports, model load and all), for whole-process comparisons."""
    if len(argv) < 3:
        print("usage: python -m frametrans.bench reference CKPT IN_DIR OUT_DIR [DEVICE]", file=sys.stderr)
        return 2
    from frametrans.checkpoint import load_model

    name = argv[3] if len(argv) > 3 else "auto"
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          ("cpu" if name == "auto" else name))
    n = reference_loop(load_model(argv[0]), Path(argv[1]), Path(argv[2]), device)
    print(f"{n} images", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "reference":
        sys.exit(_reference_main(sys.argv[2:]))
    print("usage: python -m frametrans.bench reference CKPT IN_DIR OUT_DIR [DEVICE]", file=sys.stderr)
    sys.exit(2)
