"""``frametrans predict-next``: predict the next frames of a clip with a multi-frame U-Net."""

from __future__ import annotations

import sys

import click

from frametrans.cli.options import (
    device_option,
    memory_options,
    model_option,
    overwrite_option,
    parse_memory_option,
    positive,
    precision_option,
    quiet_option,
)


def _non_negative(ctx: click.Context, param: click.Parameter, value):
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0, got {value}", param_hint="--start")
    return value


@click.command("predict-next")
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", required=True,
              help="A video (.mp4, .gif, .webm, ...) or a folder for PNG frames.")
@model_option("predictor")
@click.option("--context", type=int, callback=positive("context"),
              help="Frames the model reads (default and only value: the model's).")
@click.option("--horizon", type=int, callback=positive("horizon"),
              help="Frames kept per model pass, at most the model's (default: all of them).")
@click.option("--start", type=int, callback=_non_negative,
              help="First context frame (0-based). Default: the last context frames of INPUT "
              "(with --eval: the last context+steps frames, so the real continuation is known).")
@click.option("--steps", type=int, callback=positive("steps"),
              help="Frames to predict (default: --horizon); more rolls out autoregressively.")
@click.option("--side-by-side", is_flag=True,
              help="Write context | prediction | ground truth (when known) per frame.")
@click.option("--eval", "evaluate", is_flag=True,
              help="Compare with the real following frames; print MSE, MAE, PSNR, SSIM.")
@device_option
@precision_option
@memory_options
@quiet_option
@overwrite_option
def predict_next_cmd(input_path: str, output: str, model: str, context: int | None,
                     horizon: int | None, start: int | None, steps: int | None,
                     side_by_side: bool, evaluate: bool, device: str, precision: str,
                     tile: int | None, tile_overlap: int | None, tile_stats: str,
                     max_memory: str | None, quiet: bool, overwrite: bool) -> None:
    """Predict the frames after a window of INPUT (a video or a folder of frames).

    \b
    frametrans predict-next clip.mp4 -o next.mp4 --model predictor.safetensors
    frametrans predict-next frames/ -o pred/ --start 40 --steps 20 --side-by-side
    frametrans predict-next clip.mp4 -o cmp.gif --eval --side-by-side
    frametrans predict-next big.mp4 -o next.mp4 --max-memory 512M   # tiles when needed

    Metrics (--eval) go to stdout; logs go to stderr. MSE and MAE are per-frame sums over all
    pixels (as OpenSTL reports Moving MNIST), also given per pixel.
    """
    from frametrans.predict_next import PredictOptions, predict_next

    opts = PredictOptions(model=model, context=context, horizon=horizon, steps=steps, start=start,
                          side_by_side=side_by_side, evaluate=evaluate, device=device,
                          precision=precision, max_memory=parse_memory_option(max_memory), tile=tile,
                          tile_overlap=tile_overlap, tile_stats=tile_stats, overwrite=overwrite,
                          quiet=quiet)
    try:
        opts.runner_options().validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    report = predict_next(input_path, output, opts, progress=_progress(quiet))
    if not quiet:
        h, w = report.size
        truth = f", ground truth for {report.truth_frames}" if side_by_side else ""
        click.echo(
            f"{input_path}: frames {report.start}..{report.start + report.context - 1} -> "
            f"{report.frames_written} predicted frame(s) {w}x{h}{truth} -> {report.output}",
            err=True,
        )
    if report.metrics is not None:
        m = report.metrics
        first = report.start + report.context
        click.echo(
            f"frames {first}..{first + report.steps - 1}: MSE {m['mse']:.4g} MAE {m['mae']:.4g} "
            f"(per frame, summed over pixels; per pixel {m['mse_per_pixel']:.4g} / "
            f"{m['mae_per_pixel']:.4g}) PSNR {m['psnr']:.2f} dB SSIM {m['ssim']:.4f}"
        )
        click.echo("MSE per step: " + " ".join(f"{v:.4g}" for v in m["mse_per_step"]))


def _progress(quiet: bool):
    """Wrap the input's frame iterator in a tqdm bar on stderr (only on a terminal)."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return lambda frames: tqdm(frames, desc="reading", unit="frame", file=sys.stderr, leave=False)
