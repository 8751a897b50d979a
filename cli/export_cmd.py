"""``frametrans export``: a generator as an ONNX file with its I/O contract."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from frametrans.cli.options import overwrite_option


@click.command("export")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Destination .onnx file (written atomically).")
@click.option("--direction", type=click.Choice(["a2b", "b2a"]),
              help="MUNIT: the translation direction of this file [default: a2b].")
@click.option("--config", "yaml_config", type=click.Path(exists=True, dir_okay=False),
              help="Upstream MUNIT YAML for a MUNIT .pt file.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True, help="ONNX opset.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the file with ONNX Runtime (when installed) against torch fp32 on a test "
              "pattern at two sizes and batch sizes; fail above 1 grey level.")
@overwrite_option
def export_cmd(model: str, output: str, direction: Optional[str], yaml_config: Optional[str], opset: int,
               check: bool, overwrite: bool) -> None:
    """Export MODEL (bundled name, .safetensors, upstream .pth/.pt) to ONNX.

    \b
    Inputs: image float32 [batch, C, height, width] in the model's value range, height and width
    multiples of size_multiple (all three dynamic); MUNIT also takes style [batch or 1, style_dim,
    1, 1]. The contract is in the file's metadata_props.
    \b
    frametrans export cyclegan -o cyclegan.onnx
    frametrans export munit --direction b2a -o munit_b2a.onnx
    frametrans export latest_net_G_A.pth -o horse2zebra.onnx
    """
    import importlib.util

    if not output.endswith(".onnx"):
        raise click.BadParameter(f"output must end in .onnx, got {output!r}", param_hint="-o")
    if Path(output).exists() and not overwrite:
        raise click.ClickException(f"{output} exists; pass --overwrite to replace it")
    if importlib.util.find_spec("onnx") is None:
        raise click.UsageError("export needs the onnx package: pip install 'frametrans[onnx]'")

    from frametrans.checkpoint import load_model
    from frametrans.export import ExportError, check_exportable, export_onnx

    net = load_model(model, yaml_config=yaml_config)
    try:
        check_exportable(net, direction)
    except ExportError as exc:
        raise click.UsageError(str(exc)) from None
    result = export_onnx(net, output, direction=direction, opset=opset)
    meta = result.metadata
    click.echo(f"{model} -> {result.path}: {result.architecture}, inputs {', '.join(result.inputs)}, "
               f"range [{meta['value_range']}], size multiple {meta['size_multiple']}, "
               f"{result.size_bytes / 2**20:.1f} MiB", err=True)
    if check and importlib.util.find_spec("onnxruntime") is not None:
        worst = _check(result.path, net, direction)
        click.echo(f"checked with ONNX Runtime: at most {worst} grey level(s) from torch fp32", err=True)
        if worst > 1:
            raise click.ClickException(f"{result.path}: ONNX Runtime differs from torch by {worst} grey "
                                       "levels (more than 1)")


def _check(path: Path, net, direction: Optional[str]) -> int:
    """Worst grey-level difference on a smooth test pattern at two sizes and batch sizes."""
    import numpy as np

    from frametrans.export import check_onnx, photo_inputs

    m = net.config.contract().size_multiple
    worst = 0
    for batch, h, w in ((1, 3 * m, 5 * m), (2, max(64, 2 * m), max(96, 3 * m))):
        yy, xx = np.mgrid[0:h, 0:w]
        images = [np.clip(128 + 100 * np.sin(xx / 7.0 + i)[..., None] * np.cos(yy / 5.0 + i)[..., None]
                          * np.array([1.0, 0.5, -0.7]), 0, 255).astype(np.uint8) for i in range(batch)]
        worst = max(worst, check_onnx(path, net, photo_inputs(net, images), direction))
    return worst
