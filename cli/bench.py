"""``frametrans bench``: throughput benchmarks that print numbers (tables on stdout, logs on stderr).

Subcommands: ``apply`` (model-only vs end-to-end vs the reference loop, in one process),
``processes`` (whole processes against the reference loop), ``tiling``, ``memory`` (the
``--max-memory`` bound, measured in fresh processes), ``compile``, ``pipeline`` (the host side's
ceiling: the apply path with a null model against the raw codec rate), ``gpu`` (the whole GPU
table in one call). Other benchmarks (``predict``) hang off the same group.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, Optional, Tuple

import click

from frametrans.cli import options as opt

_MODEL_HELP = ("Architecture name (resnet, unet...: random weights from --seed, see --config) or a "
               "checkpoint path / bundled name.")


def _parse_config(values: Tuple[str, ...]) -> Dict[str, Any]:
    """('ngf=8', 'norm=batch') -> {'ngf': 8, 'norm': 'batch'} (JSON values where they parse)."""
    out: Dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--config")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _parse_size(value: str) -> Tuple[int, int]:
    """'256' -> (256, 256); '640x360' -> (640, 360)."""
    if "x" not in value.lower():
        try:
            n = int(value)
        except ValueError:
            raise click.BadParameter(f"expected N or WIDTHxHEIGHT, got {value!r}", param_hint="--size")
        if n <= 0:
            raise click.BadParameter(f"must be > 0, got {n}", param_hint="--size")
        return n, n
    size = opt.parse_size(value)
    assert size is not None
    return size


def _common(f):
    f = click.option("--model", "-m", default="resnet", show_default=True, help=_MODEL_HELP)(f)
    f = click.option("--config", "config", multiple=True, metavar="KEY=VALUE",
                     help="Override a field of the architecture's config, e.g. ngf=16 (repeatable).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")(f)
    f = click.option("--workdir", type=click.Path(file_okay=False),
                     help="Keep inputs and outputs here (default: a temporary folder).")(f)
    f = click.option("--json", "json_out", type=click.Path(dir_okay=False),
                     help="Also write the results as JSON to this file.")(f)
    f = click.option("--threads", type=int, callback=opt.positive("threads"),
                     help="CPU threads for torch (default: one per core).")(f)
    return f


def _compile_option(f):
    return click.option("--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default="auto",
                        show_default=True, help="Compiled forward pass (AOTInductor, cached on disk).")(f)


def _start(threads: Optional[int]) -> None:
    from frametrans.cli.logs import setup_logging
    from frametrans.engine.device import set_cpu_threads

    setup_logging(False)
    set_cpu_threads(threads)


def _emit(result: Dict[str, Any], text: str, json_out: Optional[str]) -> None:
    click.echo(text)
    if json_out:
        with open(json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)


@click.group("bench")
def bench_group() -> None:
    """Measure throughput: model-only, end to end, tiling, compilation, and a reference loop.

    \b
    frametrans bench apply --model resnet --size 256 --batch 1 --frames 16
    frametrans bench processes --model resnet --frames 96
    frametrans bench tiling --model resnet --size 1920x1080 --tile 512
    frametrans bench memory --model cyclegan --image photo.png --max-memory 128M
    frametrans bench compile --model unet --size 256 --precision bf16
    frametrans bench pipeline --size 1280x720 --threads 1,2
    frametrans bench temporal --models cyclegan --modes off,stats,auto
    frametrans bench gpu
    """


@bench_group.command("apply")
@_common
@click.option("--size", default="256", show_default=True, help="Frame size: N or WIDTHxHEIGHT.")
@click.option("--batch", "-b", type=int, default=1, show_default=True, callback=opt.positive("batch"))
@click.option("--frames", "-n", type=int, default=16, show_default=True, callback=opt.positive("frames"),
              help="Frames per end-to-end run (video and folder).")
@click.option("--repeat", type=int, default=3, show_default=True, callback=opt.positive("repeat"),
              help="Interleaved rounds of every phase; medians are reported.")
@click.option("--inputs", type=click.Choice(["both", "video", "folder"]), default="both", show_default=True)
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Also time the reference loop (pytorch-CycleGAN-and-pix2pix test.py style).")
@opt.device_option
@opt.precision_option
@_compile_option
def bench_apply_cmd(model: str, config, seed: int, workdir, json_out, threads, size: str, batch: int,
                    frames: int, repeat: int, inputs: str, reference: bool, device: str, precision: str,
                    compile_mode: str) -> None:
    """Model-only vs end-to-end (video, folder) throughput and the reference loop, in one process."""
    _start(threads)
    from frametrans.bench import ApplyBench, bench_apply, format_apply

    w, h = _parse_size(size)
    result = bench_apply(ApplyBench(
        model=model, config=_parse_config(config), width=w, height=h, batch=batch, device=device,
        precision=precision, compile=compile_mode, frames=frames, repeat=repeat,
        inputs=("video", "folder") if inputs == "both" else (inputs,), reference=reference, seed=seed,
        workdir=workdir))
    _emit(result, format_apply(result), json_out)


@bench_group.command("processes")
@_common
@click.option("--size", default="256", show_default=True, help="Frame size: N or WIDTHxHEIGHT.")
@click.option("--frames", "-n", type=int, default=96, show_default=True, callback=opt.positive("frames"))
@click.option("--batch", "-b", type=int, callback=opt.positive("batch"),
              help="--batch-size for frametrans apply (default: its own choice).")
@click.option("--repeat", type=int, default=1, show_default=True, callback=opt.positive("repeat"))
@click.option("--video", is_flag=True, help="Give frametrans an H.264 clip of the frames instead of the folder.")
@click.option("--cold", is_flag=True, help="Give every frametrans run an empty cache folder (nothing compiled, "
              "converted or measured before; default: the user's cache, as a second run would find it).")
@opt.device_option
@opt.precision_option
@_compile_option
def bench_processes_cmd(model: str, config, seed: int, workdir, json_out, threads, size: str, frames: int,
                        batch, repeat: int, video: bool, cold: bool, device: str, precision: str,
                        compile_mode: str) -> None:
    """Whole processes (start-up included): `frametrans apply` vs the reference loop."""
    _start(threads)
    from frametrans.bench import ProcessBench, bench_processes, format_processes

    w, h = _parse_size(size)
    result = bench_processes(ProcessBench(
        model=model, config=_parse_config(config), width=w, height=h, frames=frames, batch=batch,
        device=device, precision=precision, compile=compile_mode, repeat=repeat, seed=seed,
        workdir=workdir, video=video, cold=cold))
    _emit(result, format_processes(result), json_out)


@bench_group.command("tiling")
@_common
@click.option("--size", default="1920x1080", show_default=True, help="Frame size: N or WIDTHxHEIGHT.")
@click.option("--tile", type=int, help="Tile side in pixels.")
@click.option("--tile-overlap", type=int, help="Tile overlap (default: from the receptive field).")
@click.option("--max-memory", help="Memory budget that forces tiling, e.g. 4G (instead of --tile).")
@click.option("--repeat", type=int, default=3, show_default=True, callback=opt.positive("repeat"))
@opt.device_option
@opt.precision_option
def bench_tiling_cmd(model: str, config, seed: int, workdir, json_out, threads, size: str, tile, tile_overlap,
                     max_memory, repeat: int, device: str, precision: str) -> None:
    """Tiled vs untiled time (and PSNR) for one large frame."""
    _start(threads)
    from frametrans.bench import TilingBench, bench_tiling, format_tiling
    from frametrans.engine.device import parse_memory

    w, h = _parse_size(size)
    result = bench_tiling(TilingBench(
        model=model, config=_parse_config(config), width=w, height=h, tile=tile, tile_overlap=tile_overlap,
        max_memory=parse_memory(max_memory), device=device, precision=precision, repeat=repeat, seed=seed,
        workdir=workdir))
    _emit(result, format_tiling(result), json_out)


@bench_group.command("memory")
@click.option("--model", "-m", default="cyclegan", show_default=True, help="Bundled name or checkpoint path.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False),
              help="A picture to run (default: a synthetic frame of --size).")
@click.option("--size", default="1024", show_default=True, help="Synthetic frame size: N or WIDTHxHEIGHT.")
@click.option("--max-memory", default="128M", show_default=True, help="The budget to measure.")
@click.option("--tile-stats", type=click.Choice(["exact", "fast"]), default="exact", show_default=True)
@click.option("--tiles", is_flag=True,
              help="Run the budgeted frame in overlapping tiles, not whole in row bands (to compare).")
@click.option("--threads", type=int, callback=opt.positive("threads"),
              help="CPU threads for torch (default: one per core).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Also write the results as JSON to this file.")
@opt.device_option
@opt.precision_option
def bench_memory_cmd(model: str, image, size: str, max_memory: str, tile_stats: str, tiles: bool, threads,
                     json_out, device: str, precision: str) -> None:
    """What one frame adds to the process's peak, untiled and under --max-memory (fresh processes)."""
    _start(threads)
    from frametrans.bench.memory import MemoryBench, bench_memory, format_memory

    w, h = _parse_size(size)
    result = bench_memory(MemoryBench(
        model=model, image=image, width=w, height=h, max_memory=opt.parse_memory_option(max_memory),
        tile_stats=tile_stats, row_bands=not tiles, device=device, precision=precision, threads=threads))
    _emit(result, format_memory(result), json_out)


@bench_group.command("compile")
@_common
@click.option("--size", default="256", show_default=True, help="Frame size: N or WIDTHxHEIGHT.")
@click.option("--batch", "-b", type=int, default=1, show_default=True, callback=opt.positive("batch"))
@click.option("--repeat", type=int, default=5, show_default=True, callback=opt.positive("repeat"))
@opt.device_option
@opt.precision_option
def bench_compile_cmd(model: str, config, seed: int, workdir, json_out, threads, size: str, batch: int,
                      repeat: int, device: str, precision: str) -> None:
    """Cold and warm compile times, compiled vs eager speed and PSNR, break-even job length."""
    _start(threads)
    from frametrans.bench import CompileBench, bench_compile, format_compile

    w, h = _parse_size(size)
    result = bench_compile(CompileBench(
        model=model, config=_parse_config(config), width=w, height=h, batch=batch, device=device,
        precision=precision, repeat=repeat, seed=seed, workdir=workdir))
    _emit(result, format_compile(result), json_out)


def _parse_threads(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Tuple[int, ...]:
    """'2' -> (2,); '1,2,4' -> (1, 2, 4); None -> () (one per core)."""
    if value is None:
        return ()
    try:
        counts = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected N or N,M,..., got {value!r}") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"thread counts must be >= 1, got {value!r}")
    return counts


def _parse_list(ctx: click.Context, param: click.Parameter, value: str) -> Tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c'); at least one value."""
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("give at least one value", param=param)
    return items


def _parse_inputs(ctx: click.Context, param: click.Parameter, value: str) -> Tuple[str, ...]:
    """'video,png' -> ('video', 'png'), each one of video, png, jpg."""
    kinds = _parse_list(ctx, param, value)
    if any(k not in ("video", "png", "jpg") for k in kinds):
        raise click.BadParameter(f"expected some of video, png, jpg (comma-separated), got {value!r}")
    return kinds


@bench_group.command("pipeline")
@click.option("--size", default="1280x720", show_default=True, help="Frame size: N or WIDTHxHEIGHT.")
@click.option("--frames", "-n", type=int, default=48, show_default=True, callback=opt.positive("frames"))
@click.option("--inputs", default="video,png,jpg", show_default=True, callback=_parse_inputs,
              help="Comma-separated: video (H.264 clip), png, jpg (folders).")
@click.option("--threads", callback=_parse_threads, metavar="N[,M...]",
              help="Decode/encode threads of the folder path and of the raw codec; several sizes "
                   "measure the scaling (default: one per core).")
@click.option("--torch-threads", type=int, default=1, show_default=True, callback=opt.positive("torch-threads"),
              help="torch's threads for the null model (its few elementwise passes per frame).")
@click.option("--repeat", type=int, default=3, show_default=True, callback=opt.positive("repeat"))
@click.option("--workdir", type=click.Path(file_okay=False),
              help="Keep inputs and outputs here (default: a temporary folder).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Also write the results as JSON to this file.")
@click.option("--yuv", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Video frames as YUV planes converted on the device (as apply --yuv).")
@click.option("--switch-interval", type=click.FloatRange(min=1e-6, max=1.0), metavar="SECONDS",
              help="Python's thread switch interval during the run (default: the interpreter's, 0.005).")
@opt.device_option
def bench_pipeline_cmd(size: str, frames: int, inputs: Tuple[str, ...], threads: Tuple[int, ...],
                       torch_threads: int, repeat: int, workdir, json_out, device: str, yuv: str = "auto",
                       switch_interval: Optional[float] = None) -> None:
    """The host side's ceiling: apply with a null model vs the raw codec rate, in one run."""
    _start(None)
    from frametrans.bench.pipeline import PipelineBench, bench_pipeline, format_pipeline

    w, h = _parse_size(size)
    result = bench_pipeline(PipelineBench(width=w, height=h, frames=frames, inputs=inputs, threads=threads,
                                          torch_threads=torch_threads, device=device, repeat=repeat,
                                          workdir=workdir, yuv=yuv, switch_interval=switch_interval))
    _emit(result, format_pipeline(result), json_out)


def _gpu_refusal(device: str, quick: bool) -> Optional[str]:
    """Why ``bench gpu`` cannot run with these settings here (None: it can)."""
    import torch

    if device == "cpu":
        return None if quick else ("bench gpu --device cpu runs only with --quick (tiny sizes, a smoke run); "
                                   "the full table needs a CUDA GPU")
    if device != "cuda" and not device.startswith("cuda:"):
        return f"bench gpu --device {device}: use cuda, cuda:N, or cpu with --quick"
    if not torch.cuda.is_available():
        return ("bench gpu needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); "
                "for a smoke run on the CPU: frametrans bench gpu --device cpu --quick")
    return None


@bench_group.command("gpu")
@click.option("--device", default="cuda", show_default=True,
              help="cuda or cuda:N; cpu only with --quick (a smoke run).")
@click.option("--quick", is_flag=True,
              help="Tiny sizes, frame counts and models: the same code in well under a minute on a CPU "
                   "(compiles skipped).")
@click.option("--budget", type=float, default=330.0, show_default=True,
              help="Seconds for the whole table; rows that no longer fit are listed as skipped.")
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32"]),
              help="Inference precision (default: bf16 on CUDA, fp32 on the CPU).")
@click.option("--out", "out_prefix", default="frametrans-bench-gpu", show_default=True,
              help="Writes OUT.json and OUT.md.")
def bench_gpu_cmd(device: str, quick: bool, budget: float, precision: Optional[str],
                  out_prefix: str) -> None:
    """The whole GPU table in one call: model only, video, folder (256 and 1080p, ResNet and U-Net),
    the host ceiling, 4K within --max-memory 4G, training steps/s, compile on; one JSON, one Markdown."""
    _start(None)
    why = _gpu_refusal(device, quick)
    if why:  # one line, exit status 2 (a bad option for this machine)
        click.echo(f"frametrans: error: {why}", err=True)
        sys.exit(2)
    from frametrans.bench.gpu import GpuBench, bench_gpu, format_gpu

    precision = precision or ("fp32" if device == "cpu" else "bf16")
    result = bench_gpu(GpuBench(device=device, quick=quick, budget_s=budget, precision=precision))
    text = format_gpu(result)
    from frametrans.atomic import atomic_write_text

    atomic_write_text(f"{out_prefix}.json", json.dumps(result, indent=2, default=str))
    atomic_write_text(f"{out_prefix}.md", text)
    click.echo(text)
    click.echo(f"wrote {out_prefix}.json and {out_prefix}.md", err=True)


@bench_group.command("resume")
@click.option("--model", "-m", default="cyclegan", show_default=True,
              help="Bundled name, checkpoint path or architecture name.")
@click.option("--size", default="256", show_default=True, help="Frame size: N or WIDTHxHEIGHT.")
@click.option("--seconds", type=float, default=60.0, show_default=True, callback=opt.positive("seconds"),
              help="Length of the synthetic clip (25 fps, with audio).")
@click.option("--segment-seconds", type=float, default=10.0, show_default=True,
              callback=opt.positive("segment-seconds"))
@click.option("--repeat", type=int, default=2, show_default=True, callback=opt.positive("repeat"))
@click.option("--kill-at", type=click.FloatRange(0.05, 0.95), default=0.6, show_default=True,
              help="Fraction of the clip at which the child job is killed (SIGKILL).")
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep the files here (default: a temporary folder).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@opt.device_option
@opt.precision_option
def bench_resume_cmd(model: str, size: str, seconds: float, segment_seconds: float, repeat: int,
                     kill_at: float, workdir, json_out, device: str, precision: str) -> None:
    """What writing videos in resumable segments costs, and a job killed with SIGKILL and resumed."""
    _start(None)
    from frametrans.bench.resume import ResumeBench, bench_resume, format_resume

    w, h = _parse_size(size)
    result = bench_resume(ResumeBench(model=model, width=w, height=h, seconds=seconds,
                                      segment_seconds=segment_seconds, repeat=repeat, kill_at=kill_at,
                                      device=device, precision=precision, workdir=workdir))
    _emit(result, format_resume(result), json_out)


@bench_group.command("backends")
@_common
@click.option("--size", default="256", show_default=True, help="Frame size: N or WIDTHxHEIGHT.")
@click.option("--batch", "-b", type=int, default=1, show_default=True, callback=opt.positive("batch"))
@click.option("--repeat", type=int, default=5, show_default=True, callback=opt.positive("repeat"))
@click.option("--frames", "-n", type=int, default=8, show_default=True, callback=opt.positive("frames"),
              help="Frames whose PSNR against torch fp32 is measured.")
def bench_backends_cmd(model: str, config, seed: int, workdir, json_out, threads, size: str, batch: int,
                       repeat: int, frames: int) -> None:
    """ms/frame and PSNR vs torch fp32 of every backend and precision this machine has (torch fp32
    and bf16, OpenVINO fp32 and bf16, ONNX Runtime fp32), and what --backend auto picks."""
    _start(threads)
    from frametrans.bench.backends import BackendsBench, bench_backends, format_backends

    w, h = _parse_size(size)
    result = bench_backends(BackendsBench(model=model, config=_parse_config(config), width=w, height=h,
                                          batch=batch, repeat=repeat, frames=frames, seed=seed,
                                          workdir=workdir))
    _emit(result, format_backends(result), json_out)


@bench_group.command("temporal")
@click.option("--clip", type=click.Path(exists=True, dir_okay=False), default="examples/data/clip.mp4",
              show_default=True, help="The video to run.")
@click.option("--frames", "-n", type=int, callback=opt.positive("frames"), help="Its first N frames (default: all).")
@click.option("--size", help="Resize the frames to N or WIDTHxHEIGHT after decoding, e.g. 1920x1080 "
                             "(default: the clip's size).")
@click.option("--models", default="cyclegan,munit", show_default=True, callback=_parse_list,
              help="Comma-separated bundled names or checkpoint paths.")
@click.option("--modes", default="off,stats,auto", show_default=True, callback=_parse_list,
              help="Comma-separated --temporal modes (off is the reference for ratios and PSNR).")
@click.option("--repeat", type=int, default=3, show_default=True, callback=opt.positive("repeat"))
@click.option("--backend", type=click.Choice(["auto", "torch", "openvino", "onnxruntime"]), default="auto",
              show_default=True, help="As apply --backend.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="As apply --precision.")
@click.option("--blink", is_flag=True, help="Paint a 64 px light blinking in a corner (4 frames on, 4 off).")
@click.option("--temporal-flow", "flow", type=click.Choice(["auto", "dis", "torch"]), default="auto",
              show_default=True, help="As apply --temporal-flow: where the flow of flow and auto runs.")
@click.option("--device", default="cpu", show_default=True, help=opt.DEVICE_HELP)
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Also write the results as JSON to this file.")
@click.option("--threads", type=int, callback=opt.positive("threads"),
              help="CPU threads for torch (default: one per core).")
def bench_temporal_cmd(clip: str, frames: Optional[int], size: Optional[str], models: Tuple[str, ...],
                       modes: Tuple[str, ...], repeat: int, backend: str, precision: str, blink: bool,
                       flow: str, device: str, json_out, threads) -> None:
    """What each --temporal mode costs (ms/frame, ratio to off) and buys (warping error, PSNR to off)."""
    wh = _parse_size(size) if size is not None else None
    _start(threads)
    from frametrans.bench.temporal import MODES, TemporalBench, bench_temporal, format_table

    bad = [m for m in modes if m not in MODES]
    if "off" not in modes or bad:
        raise click.BadParameter(f"use modes among {', '.join(MODES)}, off included", param_hint="--modes")
    result = bench_temporal(TemporalBench(clip=clip, frames=frames, models=models, modes=modes, repeat=repeat,
                                          backend=backend, precision=precision, blink=blink, device=device,
                                          size=wh, flow=flow))
    _emit(result, format_table(result), json_out)
