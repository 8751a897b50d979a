"""``frametrans eval``: measures of what a model did to a video."""

from __future__ import annotations

import json
from typing import Optional

import click


@click.group("eval")
def eval_group() -> None:
    """Measure outputs: temporal consistency (flicker) of translated videos."""


@eval_group.command("temporal")
@click.argument("input_path", metavar="INPUT")
@click.argument("output", metavar="OUTPUT")
@click.argument("second", metavar="[OUTPUT2]", required=False)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the numbers as JSON.")
def temporal_cmd(input_path: str, output: str, second: Optional[str], json_out: Optional[str]) -> None:
    """Warping error of OUTPUT (a video or a folder of frames) against the motion of INPUT.

    \b
    frametrans eval temporal clip.mp4 painted.mp4
    frametrans eval temporal clip.mp4 painted.mp4 stabilized.mp4

    The mean over consecutive frames of the squared RGB difference (values in [0, 1]) between
    output frame t and output frame t-1 warped to t, over the pixels that are not occluded; the
    optical flow (OpenCV DIS) and the occlusions come from INPUT. The same measure of INPUT
    itself is what the scene's own motion leaves: the floor. With OUTPUT2, also its warping error
    and the mean PSNR between the two outputs. Numbers go to stdout.
    """
    from frametrans.consistency import temporal_consistency
    from frametrans.io.clips import iter_clip

    def images(path: str):
        return (f.image for f in iter_clip(path))

    report = temporal_consistency(images(input_path), images(output),
                                  images(second) if second else None)
    click.echo(f"warping error over {report.pairs} frame pairs (squared RGB difference, values in "
               f"[0, 1]; {report.occluded:.1%} of pixels occluded):")
    click.echo(f"  output  {report.output:.6f}  ({report.ratio:.2f}x the input's)")
    click.echo(f"  input   {report.input:.6f}  (the scene's own motion residual: the floor)")
    if report.second is not None:
        click.echo(f"  output2 {report.second:.6f}")
        click.echo(f"PSNR between the outputs: {report.psnr_between:.2f} dB")
    if json_out:
        with open(json_out, "w", encoding="utf-8") as f:
            json.dump({**report.__dict__, "ratio": report.ratio}, f, indent=2)
