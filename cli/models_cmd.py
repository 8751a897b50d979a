"""``frametrans convert``, ``inspect`` and ``models``: checkpoints and the bundled model zoo."""

from __future__ import annotations

import json
from pathlib import Path

import click

from frametrans.cli.options import overwrite_option


@click.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False),
              help="Destination .safetensors file.")
@click.option("--config", "yaml_config", type=click.Path(exists=True, dir_okay=False),
              help="Upstream MUNIT YAML config (for activ/pad_type, which shapes cannot tell).")
@click.option("--fp16", is_flag=True, help="Store weights in float16 (half the size).")
@overwrite_option
def convert_cmd(src: str, dst: str, yaml_config: str | None, fp16: bool, overwrite: bool) -> None:
    """Convert a foreign checkpoint to a self-describing .safetensors file.

    \b
    frametrans convert latest_net_G_A.pth -o horse2zebra.safetensors
    frametrans convert gen_01000000.pt --config edges2shoes.yaml -o e2s.safetensors
    """
    import torch

    from frametrans.checkpoint import load_model, read_info, save_model

    if not dst.endswith(".safetensors"):
        raise click.BadParameter(f"output must end in .safetensors, got {dst!r}", param_hint="-o")
    if Path(dst).exists() and not overwrite:
        raise click.ClickException(f"{dst} exists; pass --overwrite to replace it")
    info = read_info(src)
    model = load_model(src, yaml_config=yaml_config)
    provenance = {"imported_from": info.source_format, "source_file": Path(src).name}
    save_model(model, dst, provenance=provenance, dtype=torch.float16 if fp16 else None)
    click.echo(f"{src} -> {dst}: {info.architecture} {json.dumps(info.config.to_dict())}", err=True)


@click.command("inspect")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_cmd(path: str, as_json: bool) -> None:
    """Print architecture, config, parameter count and I/O contract of a checkpoint.

    PATH: a .safetensors / .pth / .pt file or a bundled model name.
    """
    from frametrans.checkpoint import read_info, resolve

    info = read_info(resolve(path))
    record = {
        "path": info.path, "format": info.source_format, "architecture": info.architecture,
        "parameters": info.parameters, "dtype": info.dtype, "config": info.config.to_dict(),
        "contract": info.contract.to_dict(), "provenance": info.provenance,
    }
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    for key in ("path", "format", "architecture", "parameters", "dtype"):
        value = f"{record[key]:,}" if key == "parameters" else record[key]
        click.echo(f"{key + ':':14}{value}")
    for section in ("config", "contract", "provenance"):
        click.echo(f"{section}:")
        for k, v in record[section].items():
            click.echo(f"  {k + ':':22}{v}")


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_cmd(as_json: bool) -> None:
    """List the bundled models: name, task, training data, size and measured quality."""
    from frametrans import zoo
    from frametrans.checkpoint import read_info

    rows = []
    for name in zoo.names():
        path = zoo.path_of(name)
        info = read_info(path)
        p = info.provenance
        rows.append({
            "name": name, "architecture": info.architecture, "parameters": info.parameters,
            "size_mb": round(path.stat().st_size / 1e6, 2), "task": p.get("task", ""),
            "data": p.get("data", ""), "quality": p.get("quality", ""),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no bundled models in this installation", err=True)
    for r in rows:
        click.echo(f"{r['name']:10} {r['architecture']:10} {r['parameters']:>10,} params "
                   f"{r['size_mb']:>6} MB  {r['task']}")
        if r["data"]:
            click.echo(f"{'':10} data:    {r['data']}")
        if r["quality"]:
            click.echo(f"{'':10} quality: {r['quality']}")
