"""``frametrans apply``: images, folders, videos and raw streams through a generator."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import List, Optional, Tuple

import click

from frametrans.cli import options as opt


@click.command("apply")
@click.argument("inputs", nargs=-1)
@click.option("-o", "--output", required=True,
              help="Output file or folder; '-' writes raw rgb24 (or --y4m) frames to stdout.")
@opt.model_option("cyclegan")
@click.option("--list", "list_file", type=click.File("r"),
              help="Read input paths from this file, one per line ('-' for stdin).")
@click.option("--recursive", "-r", is_flag=True, help="Include subfolders of input folders.")
@click.option("--ext", help="Image format for folder outputs, e.g. png or jpg (default: keep).")
@click.option("--size", help="Frame size WIDTHxHEIGHT of a raw rgb24 stream on stdin.")
@click.option("--fps", type=float, default=None, callback=opt.positive("fps"),
              help="Frame rate written into y4m output [default: a y4m input's rate, else 25].")
@click.option("--y4m", is_flag=True, help="Write YUV4MPEG2 instead of raw rgb24 to stdout.")
@click.option("--resize", help="Resize frames to WIDTHxHEIGHT before the model (output has that size).")
@click.option("--max-side", type=int, callback=opt.positive("max-side"),
              help="Downscale frames whose longer side exceeds this.")
@click.option("--codec", help="Video codec (default: h264 for mp4/mkv/mov/avi, vp9 for webm, gif); auto: "
              "NVIDIA's h264_nvenc where it opens, else the default (the log says which).")
@click.option("--crf", type=click.IntRange(0, 63), help="Video quality (lower is better).")
@click.option("--preset", help="Encoder preset, e.g. veryfast, medium, slow.")
@click.option("--pix-fmt", help="Output pixel format, e.g. yuv420p or yuv444p.")
@click.option("--no-audio", is_flag=True, help="Drop audio and subtitle streams.")
@click.option("--direction", type=click.Choice(["a2b", "b2a"]), default="a2b", show_default=True,
              help="MUNIT: translation direction.")
@click.option("--style", "style_image", type=click.Path(exists=True, dir_okay=False),
              help="MUNIT: take the style from this example image.")
@click.option("--num-styles", type=int, default=1, show_default=True, callback=opt.positive("num-styles"),
              help="MUNIT: outputs per input with sampled styles, named NAME_style0, NAME_style1... "
                   "(files only, not a stream).")
@click.option("--seed", type=int, default=0, show_default=True, help="MUNIT: seed for sampled styles.")
@click.option("--config", "yaml_config", type=click.Path(exists=True, dir_okay=False),
              help="Upstream MUNIT YAML for a MUNIT .pt file.")
@click.option("--batch-size", "-b", type=int, callback=opt.positive("batch-size"),
              help="Frames per forward pass (default: from device and frame size).")
@click.option("--io-threads", type=int, callback=opt.positive("io-threads"),
              help="Threads decoding and encoding still images, per pool [default: one per core].")
@click.option("--temporal", type=click.Choice(["off", "stats", "flow", "auto"]), default="off",
              show_default=True, help="Less flicker in videos, animations and streams: stats normalizes "
              "each frame with statistics smoothed across time (InstanceNorm, AdaIN); flow blends each "
              "output with the previous one warped along the input's optical flow; auto: the measured "
              "default (flow 0.5 + stats 0.9).")
@click.option("--temporal-strength", type=float,
              help="In [0, 1): the EMA factor of --temporal stats [0.9], the blend weight of flow [0.5].")
@click.option("--temporal-flow", type=click.Choice(["auto", "dis", "torch"]), default="auto", show_default=True,
              help="Where the flow of --temporal flow/auto runs: dis (OpenCV DIS on CPU threads), torch "
              "(on the model's device, for GPUs); auto: dis (on an H200 at 1080p, torch was 7% faster but "
              "stabilized less).")
@opt.memory_options
@opt.device_option
@opt.backend_option
@opt.precision_option
@click.option("--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="Compiled forward pass (AOTInductor, cached in ~/.cache/frametrans): "
              "auto compiles when the job is long enough to pay for it (on the CPU), or a compiled package "
              "is cached.")
@click.option("--skip-existing", is_flag=True,
              help="Skip inputs whose output exists; continue interrupted videos (as --resume).")
@click.option("--resume", is_flag=True,
              help="Finish an interrupted job: continue each video from its last closed segment "
              "(NAME.partial/), skip outputs that are complete.")
@click.option("--segment-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Write videos as closed segments of this length, so --resume redoes at most one "
              "(MP4/MOV/MKV/WebM); 0: in one piece.")
@click.option("--yuv", "yuv_mode", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Video frames travel to the model as the decoder's YUV 4:2:0 planes and back as the "
              "encoder's, converted on the model's device (within one grey level of converting on "
              "the host): auto on CUDA, on (also on the CPU), off.")
@click.option("--hwdec", type=click.Choice(["off", "cuda", "auto"]), default="off", show_default=True,
              help="Decode videos on the GPU (NVDEC, where the machine and FFmpeg have it; the same "
              "frames as software decoding): cuda, auto (when the model runs on CUDA), off.")
@opt.overwrite_option
@opt.quiet_option
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Spread the work over a Ray cluster: ADDRESS (auto, ray://HOST:10001), or alone: "
              "the cluster RAY_ADDRESS names or this machine runs, else a new local one. "
              "Needs pip install 'frametrans[ray]'.")
def apply_cmd(inputs: Tuple[str, ...], output: str, model: str, list_file, recursive: bool,
              ext: Optional[str], size: Optional[str], fps: Optional[float], y4m: bool, resize: Optional[str],
              max_side: Optional[int], codec, crf, preset, pix_fmt, no_audio: bool, direction: str,
              style_image, num_styles: int, seed: int, yaml_config, batch_size, tile, tile_overlap,
              temporal: str, temporal_strength: Optional[float], temporal_flow: str, tile_stats: str, max_memory,
              device: str, precision: str, skip_existing: bool, overwrite: bool,
              quiet: bool, ray_address: Optional[str] = None, compile_mode: str = "auto",
              resume: bool = False, segment_seconds: float = 10.0, backend: str = "auto",
              io_threads: Optional[int] = None, yuv_mode: str = "auto", hwdec: str = "off") -> None:
    """Run INPUTS (images, folders, videos, or '-' for a raw/y4m stream) through a generator.

    \b
    frametrans apply clip.mp4 -o clip_out.mp4 --model cyclegan
    frametrans apply photo.jpg -o out.png --model pix2pix
    frametrans apply photos/ -o out/ --recursive --ext png --skip-existing
    frametrans apply long.mp4 -o long_out.mp4 --resume      (after Ctrl-C or a crash)
    find . -name '*.jpg' | frametrans apply --list - -o out/
    ffmpeg -i in.mp4 -f rawvideo -pix_fmt rgb24 - | \\
      frametrans apply - --size 640x360 -o - | \\
      ffmpeg -f rawvideo -pix_fmt rgb24 -s 640x360 -r 25 -i - out.mp4
    """
    from frametrans.cli.logs import setup_logging

    ctx = click.get_current_context(silent=True)
    setup_logging(quiet, verbose=bool(ctx and (ctx.find_root().obj or {}).get("verbose")))
    paths = list(inputs)
    ray_address, paths = _ray_address_or_input(ray_address, paths)
    if list_file is not None:
        paths += [line.rstrip("\r\n") for line in list_file if line.strip()]
    if not paths:
        raise click.UsageError("no INPUTS given (paths, '-' for stdin, or --list FILE)")
    stream_in = paths == ["-"]
    if "-" in paths and not stream_in:
        raise click.UsageError("'-' (stdin) cannot be mixed with other inputs")
    if output == "-" and not stream_in:
        raise click.UsageError("-o - (stdout) needs '-' (a raw or y4m stream) as the input")
    if stream_in and output != "-":
        raise click.UsageError("a stream on stdin is written to stdout: use -o -")
    if stream_in and ray_address is not None:
        raise click.UsageError("--ray spreads files and folders over a cluster, not a stream on stdin")
    if not stream_in:
        for flag, given in (("--size", size), ("--y4m", y4m), ("--fps", fps is not None)):
            if given:
                raise click.UsageError(f"{flag} is for a raw stream on stdin ('-' as the input)")
    else:
        for flag, given in (("--resize", resize), ("--max-side", max_side), ("--ext", ext),
                            ("--recursive", recursive), ("--skip-existing", skip_existing),
                            ("--resume", resume)):
            if given:
                raise click.UsageError(f"{flag} does not apply to a stream on stdin")
        if num_styles > 1:  # one stream out: one style; files get NAME_style0, NAME_style1, ...
            raise click.UsageError(f"--num-styles {num_styles}: a stream on stdout carries one style; "
                                   "run once per --seed, or write files")
    raw_size = opt.parse_size(size)
    resize_wh = opt.parse_size(resize, "--resize")

    # Every option is checked before the model is loaded or any input is read (exit status 2).
    from frametrans.apply import (OutputOptions, Translator, apply_paths, apply_stream,
                                  check_stream_size)
    from frametrans.apply.jobs import OptionError, check_output_target, plan_jobs
    from frametrans.engine.device import resolve_device, resolve_precision
    from frametrans.engine.runner import RunnerOptions

    memory = opt.parse_memory_option(max_memory)
    runner_opts = RunnerOptions(device=device, precision=precision, batch_size=batch_size, tile=tile,
                                tile_overlap=tile_overlap, tile_stats=tile_stats, max_memory=memory,
                                compile=compile_mode, backend=backend, yuv=yuv_mode)
    try:
        runner_opts.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    try:
        resolve_precision(precision, dev)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--precision") from None
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    out_opts = OutputOptions(overwrite=overwrite, skip_existing=skip_existing or resume, recursive=recursive,
                             ext=ext, resize=resize_wh, max_side=max_side, codec=codec, crf=crf,
                             preset=preset, pix_fmt=pix_fmt, audio=not no_audio, quiet=quiet,
                             temporal=temporal, temporal_strength=temporal_strength, temporal_flow=temporal_flow,
                             segment_seconds=segment_seconds, io_threads=io_threads, hwdec=hwdec)
    try:
        out_opts.validate()  # opens --codec once: an encoder that cannot run here is refused now
    except ValueError as exc:  # OptionError too: its message names the option
        raise click.UsageError(str(exc)) from None
    _check_temporal(out_opts, runner_opts)
    if not stream_in:
        try:
            check_output_target(paths, output)
            if pix_fmt or crf is not None or preset:  # the encoder of each video output, opened once
                plan_jobs(paths, output, out_opts, problems=[])
        except OptionError as exc:
            raise click.UsageError(str(exc)) from None
    if stream_in:
        if sys.stdin.isatty():
            raise click.UsageError("'-' reads frames from stdin, but stdin is a terminal")
        try:
            check_stream_size(sys.stdin.buffer, raw_size)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--size") from None

    translator = None if ray_address is not None else Translator.load(  # --ray: loaded by workers
        model, runner_opts, yaml_config=yaml_config, direction=direction, style_image=style_image,
        num_styles=num_styles, seed=seed)
    if stream_in:
        n = apply_stream(sys.stdin.buffer, sys.stdout.buffer, translator, raw_size, fps=fps,
                         y4m_out=y4m, quiet=quiet, temporal=out_opts.temporal_settings())
        click.echo(f"{n} frames", err=True) if not quiet else None
        return
    if ray_address is not None:  # the Ray workers load the model themselves
        from frametrans.scale import ray_apply

        report = ray_apply(paths, output, model, runner_opts, out_opts, address=ray_address or None,
                           yaml_config=yaml_config, direction=direction, style_image=style_image,
                           num_styles=num_styles, seed=seed)
    else:
        report = apply_paths(paths, output, translator, out_opts)
    stages = report.describe_stages()
    if stages is not None:
        logging.getLogger("frametrans").debug("%s", stages)  # shown with -v
    if not quiet:
        parts = [f"{len(report.written)} written", f"{report.frames} frames"]
        if report.skipped:
            parts.append(f"{len(report.skipped)} skipped (exist)")
        click.echo("frametrans: " + ", ".join(parts), err=True)
    if report.failed or report.stopped:
        if report.failed:
            click.echo(f"frametrans: {len(report.failed)} input(s) failed:", err=True)
            for _src, msg in report.failed:
                click.echo(f"  {msg}", err=True)
        if report.stopped:
            click.echo(f"frametrans: stopped early ({report.stopped}); {len(report.not_done)} input(s) "
                       "not processed; rerun with --skip-existing to finish", err=True)
        sys.exit(1)


def _check_temporal(out_opts, runner_opts) -> None:
    """Statistics smoothed across time change every frame: such a forward is never compiled."""
    if out_opts.temporal_settings().mode == "stats" and runner_opts.compile == "on":  # auto drops stats
        raise click.BadParameter("--temporal stats runs the model uncompiled (its statistics change every "
                                 "frame); use --compile auto or off", param_hint="--compile")


_RAY_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[A-Za-z0-9_.\-\[\]:]+:\d+)$")


def _ray_address_or_input(address: Optional[str], paths: List[str]) -> Tuple[Optional[str], List[str]]:
    """``--ray`` takes an optional value, so Click reads the word after it as the address, even in
    ``--ray clip.mp4``. A value that is no Ray address (auto, local, HOST:PORT, ray://...) but an
    existing path is given back to the inputs; anything else is a usage error."""
    if not address or _RAY_ADDRESS.match(address):
        return address, paths
    if address == "-" or os.path.exists(address):
        return "", [address] + paths
    raise click.BadParameter(f"{address!r} is not a Ray address (auto, HOST:PORT or ray://HOST:PORT) "
                             "nor an existing input path", param_hint="--ray")
