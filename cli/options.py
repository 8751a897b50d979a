"""Options shared by several commands, defined once."""

from __future__ import annotations

from typing import Any, Callable

import click

F = Callable[..., Any]

DEVICE_HELP = "auto (CUDA if present, else MPS, else CPU), cpu, cuda, cuda:N or mps."
PRECISION_HELP = ("auto (bf16 on CUDA and on CPUs where it measures faster: AMX, or AVX512-BF16 with a "
                  "convolution 1.25x as fast; else fp32), fp32, bf16 or fp16.")


def device_option(f: F) -> F:
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)(f)


def precision_option(f: F) -> F:
    return click.option(
        "--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
        show_default=True, help=PRECISION_HELP,
    )(f)


BACKEND_HELP = ("What runs the model: auto (per frame shape, from measurements: the compiled torch forward "
                "when --compile compiles it, else OpenVINO or ONNX Runtime when installed and the job pays "
                "for converting, else torch), torch, openvino (pip install 'frametrans[openvino]') or "
                "onnxruntime (pip install 'frametrans[onnx]'); the last two run on the CPU, their "
                "converted graphs cached in ~/.cache/frametrans.")


def backend_option(f: F) -> F:
    return click.option(
        "--backend", type=click.Choice(["auto", "torch", "openvino", "onnxruntime"]), default="auto",
        show_default=True, help=BACKEND_HELP,
    )(f)


def quiet_option(f: F) -> F:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar or log lines.")(f)


def model_option(default: str) -> Callable[[F], F]:
    def deco(f: F) -> F:
        return click.option(
            "--model", "-m", default=default, show_default=True,
            help="Bundled model name (see `frametrans models`), our .safetensors file, or a "
            "pytorch-CycleGAN-and-pix2pix .pth / MUNIT .pt file.",
        )(f)
    return deco


def overwrite_option(f: F) -> F:
    return click.option("--overwrite", is_flag=True, help="Replace existing outputs.")(f)


def positive(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """Click callback: the value must be > 0 (None passes)."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and value <= 0:
            raise click.BadParameter(f"must be > 0, got {value}", param_hint=f"--{name}")
        return value

    return check


def parse_size(value: str | None, name: str = "--size") -> tuple[int, int] | None:
    """'640x360' -> (640, 360); BadParameter otherwise."""
    if value is None:
        return None
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT like 640x360, got {value!r}", param_hint=name)
    if w <= 0 or h <= 0 or w > 65536 or h > 65536:
        raise click.BadParameter(f"width and height must be 1..65536, got {value!r}", param_hint=name)
    return w, h


def memory_options(f: F) -> F:
    """--tile, --tile-overlap, --tile-stats and --max-memory (apply and predict-next)."""
    f = click.option("--max-memory", help="Memory that inference may add to the process's peak, "
                     "e.g. 4G or 512M; larger frames are tiled (README: Memory).")(f)
    f = click.option("--tile-stats", type=click.Choice(["exact", "fast"]), default="exact",
                     show_default=True, help="Normalization statistics of tiled frames (InstanceNorm, "
                     "AdaIN models): exact (as untiled, slower) or fast (from a downscaled copy).")(f)
    f = click.option("--tile-overlap", type=int,
                     help="Tile overlap in pixels (default: the model's receptive field).")(f)
    f = click.option("--tile", type=int,
                     help="Run frames in tiles of this many pixels (default: only when needed).")(f)
    return f


def parse_memory_option(value: str | None) -> int | None:
    """--max-memory text -> bytes (None passes); BadParameter on a bad size."""
    from frametrans.engine.device import parse_memory

    try:
        return parse_memory(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-memory") from None
