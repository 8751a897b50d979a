"""``frametrans bench pipeline``: the ceiling of the host side, measured without a GPU.

The whole apply path runs with the null model (:class:`~frametrans.bench.models.NullModel`: frames
come back unchanged, on the chosen device, through the real Translator and Runner), next to the
raw codec work on the same data in the same run, interleaved (``repeat`` rounds, medians):

- video (an H.264 clip): ``codec`` is PyAV decoding the clip and encoding it again with the
  settings ``frametrans apply`` uses for the output (libx264, CRF 18, preset medium for .mp4),
  frames handed from decoder to encoder as they are; ``codec + RGB`` converts each frame to an
  RGB array and back on the way, as any per-pixel model needs; ``apply`` is
  :func:`frametrans.apply.apply_paths` on the clip;
- folders (PNG, JPEG): ``codec`` is OpenCV reading and writing every file with the settings
  ``frametrans apply`` writes them with, on ``threads`` worker threads; ``apply`` is the image path
  of ``frametrans apply`` (:func:`frametrans.apply.images.apply_images`) with ``threads`` decode
  and encode threads.

A model on a GPU can never make ``apply`` faster than this: it is what the host side allows.
``threads`` may list several pool sizes; the scaling of the folder rows from the fewest to the
most threads is reported. ``runner`` (the null model's runner alone on frames in memory) shows
what the device side costs per frame: on a CPU it shares the cores with the codecs.

torch runs the null model with ``torch_threads`` intra-op threads (1 by default): its work is a few
elementwise passes per frame, and OpenMP threads that must meet at every pass only wait on each
other while the decode and encode threads hold the cores (measured on 2 busy cores: 1.7x more
frames/s through apply with one torch thread than with two).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from frametrans.bench.common import (Log, device_name, make_folder, make_frames, make_video, median, to_stderr,
                                     workdir)
from frametrans.bench.models import null_translator
from frametrans.engine.pipeline import default_workers

INPUTS = ("video", "png", "jpg")


@dataclass
class PipelineBench:
    """Settings of :func:`bench_pipeline`; see ``frametrans bench pipeline --help``.

    threads: decode/encode pool sizes to measure; empty: one per core.
    torch_threads: torch's intra-op threads for the null model's runner (None: torch's default).
    yuv: ``RunnerOptions.yuv`` of the null model's runner (video frames as planes, converted on the device).
    switch_interval: seconds of Python's thread switch interval during the run (None: the
        interpreter's, 0.005): a thread that gave the GIL away for a codec call or a syscall may
        wait that long to get it back while another thread runs Python; measures whether a
        many-core folder job is bound by those waits.
    """

    width: int = 1280
    height: int = 720
    frames: int = 48
    inputs: Tuple[str, ...] = INPUTS
    threads: Tuple[int, ...] = ()
    device: str = "auto"
    repeat: int = 3
    torch_threads: Optional[int] = 1
    workdir: Optional[str] = None
    yuv: str = "auto"
    switch_interval: Optional[float] = None


# ------------------------------------------------------------------------------------ raw codecs


def codec_video(src: Path, dst: Path, rgb: bool = False) -> int:
    """Decode ``src`` with PyAV (frame threads, as frametrans reads) and encode it into ``dst``
    with frametrans' default codec settings for that extension; with ``rgb``, each frame becomes
    an [H, W, 3] uint8 RGB array and back on the way. Returns the number of frames."""
    import av

    from frametrans.io import video

    codec, pix_fmt, options = video._WRITE_DEFAULTS[dst.suffix.lower()]
    n = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        stream.thread_type = "AUTO"
        rate = Fraction(stream.average_rate or 25)
        enc = out.add_stream(codec, rate=rate, options=dict(options))
        video.use_codec_threads(enc)
        enc.width, enc.height, enc.pix_fmt = stream.codec_context.width, stream.codec_context.height, pix_fmt
        enc.codec_context.time_base = 1 / rate
        for frame in inp.decode(stream):
            if rgb:
                frame = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            frame.pts, frame.time_base = n, 1 / rate
            for packet in enc.encode(frame):
                out.mux(packet)
            n += 1
        for packet in enc.encode(None):
            out.mux(packet)
    return n


def _encode_params(ext: str) -> List[int]:
    """OpenCV's settings for what frametrans writes: JPEG quality 95 with 4:4:4 chroma (Pillow's
    choice at that quality), PNG OpenCV's own default (frametrans writes PNGs through it)."""
    import cv2

    if ext in (".jpg", ".jpeg"):
        return [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    return []


def _codec_image(src: Path, dst: Path) -> None:
    import cv2

    image = cv2.imdecode(np.fromfile(src, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    ok, data = cv2.imencode(src.suffix, image, _encode_params(src.suffix.lower()))
    if not ok:
        raise RuntimeError(f"{src}: OpenCV could not encode it again")
    with open(dst, "wb") as f:
        f.write(data.tobytes())


def codec_folder(src: Path, dst: Path, threads: int) -> int:
    """Read every image of ``src`` and write it into ``dst`` in the same format with OpenCV, on
    ``threads`` threads (plain writes). Returns the number of files."""
    files = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
    dst.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda p: _codec_image(p, dst / p.name), files))
    return len(files)


# ------------------------------------------------------------------------------------ apply path


def apply_folder(src: Path, dst: Path, translator: Any, threads: int) -> Any:
    """``frametrans apply SRC -o DST --overwrite --io-threads THREADS`` for a folder of still
    images. Returns the report."""
    from frametrans.apply import OutputOptions, apply_paths

    return apply_paths([str(src)], str(dst), translator,
                       OutputOptions(overwrite=True, quiet=True, io_threads=threads))


def apply_video(src: Path, dst: Path, translator: Any) -> Any:
    """``frametrans apply SRC -o DST --overwrite`` for one video; returns the report."""
    from frametrans.apply import OutputOptions, apply_paths

    return apply_paths([str(src)], str(dst), translator, OutputOptions(overwrite=True, quiet=True))


# ----------------------------------------------------------------------------------- the bench


def _make_sources(opts: PipelineBench, work: Path) -> Dict[str, Path]:
    """The clip and the folders every phase reads."""
    sources: Dict[str, Path] = {}
    for kind in opts.inputs:
        if kind == "video":
            sources[kind] = make_video(work / "in.mp4", opts.width, opts.height, opts.frames)
        else:
            sources[kind] = make_folder(work / f"in_{kind}", opts.width, opts.height, opts.frames, kind)
    return sources


def run_null(translator: Any, frames: List[Any]) -> int:
    """The null model's runner alone on decoded frames (upload, conversions, batching, copy back;
    no codec): what the device side costs per frame. Returns the number of frames."""
    return sum(1 for _ in translator.variants[0].runner.run(frames))


def _phases(kind: str, src: Path, work: Path, translator: Any, threads: int) -> Dict[str, Any]:
    """The phases of one input kind: name -> a call returning the number of frames it did."""
    if kind == "video":
        return {"codec": lambda: codec_video(src, work / "codec.mp4"),
                "codec + RGB": lambda: codec_video(src, work / "codec_rgb.mp4", rgb=True),
                "apply": lambda: _frames_of(apply_video(src, work / "out.mp4", translator), kind)}
    return {"codec": lambda: codec_folder(src, work / f"codec_{kind}", threads),
            "apply": lambda: _frames_of(apply_folder(src, work / f"out_{kind}", translator, threads), kind)}


def _runner_phase(opts: PipelineBench, translator: Any) -> Dict[str, Any]:
    """The ``runner`` phase (``kind`` ``model``): the null model on frames held in memory."""
    from frametrans.io.frame import Frame

    frames = [Frame(f) for f in make_frames(opts.width, opts.height, opts.frames)]
    return {"runner": lambda: run_null(translator, frames)}


def _frames_of(report: Any, kind: str) -> Tuple[int, Dict[str, Any]]:
    """The frames an apply run did, and its stage times (:attr:`Report.stages`)."""
    if not report.ok:
        raise RuntimeError(f"apply on the {kind} input failed: {report.failed or report.stopped}")
    return report.frames, report.stages


def _rounds(opts: PipelineBench, work: Path, sources: Dict[str, Path], translator: Any, threads: int,
            log: Log) -> Dict[Tuple[str, str], Dict[str, List[Any]]]:
    """``repeat`` interleaved rounds at one pool size: (input, phase) -> wall and CPU seconds (and
    for apply, its stage times)."""
    samples: Dict[Tuple[str, str], Dict[str, List[Any]]] = {}
    calls = {kind: _phases(kind, sources[kind], work, translator, threads) for kind in opts.inputs}
    calls["model"] = _runner_phase(opts, translator)
    for r in range(opts.repeat):
        line = []
        for kind, phases in calls.items():
            for phase, call in phases.items():
                t, c = time.perf_counter(), time.process_time()
                n = call()
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                n, stages = n if isinstance(n, tuple) else (n, None)
                if n != opts.frames:
                    raise RuntimeError(f"{kind} {phase}: {n} frames, expected {opts.frames}")
                s = samples.setdefault((kind, phase), {"wall": [], "cpu": []})
                s["wall"].append(wall)
                s["cpu"].append(cpu)
                if stages:
                    s.setdefault("stages", []).append(stages)
                line.append(f"{kind} {phase} {wall:.2f} s")
        log(f"threads {threads}, round {r + 1}/{opts.repeat}: {', '.join(line)}")
    return samples


def _rows(opts: PipelineBench, threads: int, samples: Dict[Tuple[str, str], Dict[str, List[float]]]
          ) -> List[Dict[str, Any]]:
    """One row per input kind: codec and apply frames/s, their ratio, CPU seconds per frame, and
    the null model's runner alone (the same for every row of a pool size)."""
    runner = samples[("model", "runner")]
    rows = []
    for kind in opts.inputs:
        fps = {phase: opts.frames / median(s["wall"]) for (k, phase), s in samples.items() if k == kind}
        cpu = {phase: median(s["cpu"]) / opts.frames for (k, phase), s in samples.items() if k == kind}
        rows.append({
            "input": kind, "threads": threads, "codec_fps": fps["codec"], "apply_fps": fps["apply"],
            "ratio": fps["apply"] / fps["codec"], "codec_rgb_fps": fps.get("codec + RGB"),
            "runner_fps": opts.frames / median(runner["wall"]),
            "runner_cpu_s_per_frame": median(runner["cpu"]) / opts.frames,
            "apply_cpu_s_per_frame": cpu["apply"], "codec_cpu_s_per_frame": cpu["codec"],
            "samples_s": {phase: s["wall"] for (k, phase), s in samples.items() if k == kind},
            "stages": _stage_medians(samples[(kind, "apply")].get("stages", [])),
        })
    return rows


def _stage_medians(runs: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Per stage of apply: the median over the rounds of its CPU and busy (wall inside its work)
    milliseconds per item (a codec's own threads are not in a stage's CPU)."""
    out: Dict[str, Dict[str, float]] = {}
    for name in (runs[0] if runs else {}):
        times = [run[name] for run in runs if name in run and run[name].items]
        if times:
            out[name] = {"cpu_ms": 1000 * median([t.cpu / t.items for t in times]),
                         "busy_ms": 1000 * median([t.wall / t.items for t in times])}
    return out


def _scaling(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per folder input: apply frames/s at the most threads over the fewest (one pool size: none)."""
    out: Dict[str, Dict[str, Any]] = {}
    for kind in sorted({r["input"] for r in rows if r["input"] != "video"}):
        mine = sorted((r for r in rows if r["input"] == kind), key=lambda r: r["threads"])
        if len(mine) > 1:
            lo, hi = mine[0], mine[-1]
            out[kind] = {"from_threads": lo["threads"], "to_threads": hi["threads"],
                         "apply": hi["apply_fps"] / lo["apply_fps"], "codec": hi["codec_fps"] / lo["codec_fps"]}
    return out


def bench_pipeline(opts: PipelineBench, log: Log = to_stderr) -> Dict[str, Any]:
    """Run the rounds at every pool size; returns ``setup``, ``rows`` and ``scaling``."""
    unknown = set(opts.inputs) - set(INPUTS)
    if unknown or not opts.inputs:
        raise ValueError(f"inputs must be some of {', '.join(INPUTS)}, got {', '.join(opts.inputs) or 'none'}")
    counts = tuple(opts.threads) or (default_workers(),)
    torch_threads = torch.get_num_threads()
    with workdir(opts.workdir) as work:
        translator = null_translator(opts.device, yuv=opts.yuv)
        dev = translator.variants[0].runner.device
        sources = _make_sources(opts, work)
        log(f"null model on {dev} ({device_name(dev)}); {opts.frames} frames {opts.width}x{opts.height}; "
            f"pool sizes {', '.join(map(str, counts))}")
        rows: List[Dict[str, Any]] = []
        interval = sys.getswitchinterval()
        try:
            torch.set_num_threads(opts.torch_threads or torch_threads)
            sys.setswitchinterval(opts.switch_interval or interval)
            for n in counts:
                rows += _rows(opts, n, _rounds(opts, work, sources, translator, n, log))
        finally:
            torch.set_num_threads(torch_threads)
            sys.setswitchinterval(interval)
    setup = {**asdict(opts), "threads": list(counts), "device": str(dev), "device_name": device_name(dev),
             "cores": default_workers(), "torch": torch.__version__,
             "torch_threads": opts.torch_threads or torch_threads,
             "switch_interval": opts.switch_interval or interval}
    return {"setup": setup, "rows": rows, "scaling": _scaling(rows)}


def format_pipeline(result: Dict[str, Any]) -> str:
    """A markdown table of :func:`bench_pipeline`'s rows, the setup above, the scaling below."""
    s = result["setup"]
    lines = [f"host pipeline ceiling: null model on {s['device']} ({s['device_name']}; torch threads "
             f"{s['torch_threads']}; --yuv {s.get('yuv', 'auto')}; switch interval "
             f"{1000 * s.get('switch_interval', 0.005):g} ms), {s['width']}x{s['height']}, {s['frames']} frames, median of "
             f"{s['repeat']}; codec = PyAV (video) / OpenCV on the same threads (folders)", ""]
    head = ("| input | threads | codec frames/s | codec + RGB frames/s | apply frames/s | apply / codec "
            "| apply CPU s/frame | null runner alone frames/s (CPU s/frame) |")
    lines += [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        rgb = f"{r['codec_rgb_fps']:.1f}" if r.get("codec_rgb_fps") else "-"
        lines.append(f"| {r['input']} | {r['threads']} | {r['codec_fps']:.1f} | {rgb} | {r['apply_fps']:.1f} "
                     f"| {r['ratio']:.2f}x | {r['apply_cpu_s_per_frame']:.4f} | {r['runner_fps']:.1f} "
                     f"({r['runner_cpu_s_per_frame']:.4f}) |")
    staged = [r for r in result["rows"] if r.get("stages")]
    if staged:
        lines += ["", "apply by stage, ms per frame: CPU of the stage's threads (a codec's own threads not "
                  "counted) / busy (wall inside its work, summed over its threads: CPU + waiting for the "
                  "GIL, the disk, a turn, a codec's threads); main: the thread that batches and runs the model, busy = "
                  "from its first frame to its last (a video's encoder flush at the end counts as encode)",
                  "", "| input | threads | decode CPU / busy | main CPU / busy | encode CPU / busy |",
                  "|---|---:|---:|---:|---:|"]
        for r in staged:
            cells = [f"{r['stages'][n]['cpu_ms']:.2f} / {r['stages'][n]['busy_ms']:.2f}" if n in r["stages"] else "-"
                     for n in ("decode", "main", "encode")]
            lines.append(f"| {r['input']} | {r['threads']} | " + " | ".join(cells) + " |")
    for kind, sc in result["scaling"].items():
        lines.append(f"scaling {kind}, {sc['from_threads']} -> {sc['to_threads']} threads: apply "
                     f"{sc['apply']:.2f}x, codec {sc['codec']:.2f}x")
    return "\n".join(lines)
