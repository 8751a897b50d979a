"""``frametrans train pix2pix|cyclegan|munit|predictor``: parse options, call the trainer.

The flags are generated from the method's options dataclass (:mod:`frametrans.train.options`: name,
type, default, help, choices and range in one place). Options come from three places, highest
priority first: flags given on the command line, the ``--config`` YAML file (keys = option names,
dashes or underscores; parsed and checked by the same schema), and, with ``--resume``, the run's own
``config.yaml``; then the method's defaults (shown in ``--help``). Torch is imported only when a
command runs.

Distributed data parallel: ``torchrun --nproc-per-node N -m frametrans.cli train METHOD ...`` (DDP
is on by itself when torchrun starts more than one process; ``--ddp`` says so explicitly), or
``frametrans train METHOD --ddp --nproc N ...`` to start N local processes without torchrun.
``--batch-size`` is always the global batch; see docs/cluster_training.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import click
from click.core import ParameterSource

from frametrans.cli.options import device_option, overwrite_option, quiet_option
from frametrans.train.options import options_class
from frametrans.train.schema import OptionSpec, parse_layer, read_config_file, specs

F = Callable[..., Any]

# keys a --config file may not set (they describe this invocation, not the run)
NOT_IN_CONFIG = ("config", "resume", "overwrite", "ddp", "nproc")


class SchemaValue(click.ParamType):
    """A flag's value, parsed and checked by its :class:`OptionSpec` (type, choices, range), so the
    command line, ``--config`` files and the Python API accept the same values."""

    def __init__(self, spec: OptionSpec) -> None:
        self.spec = spec
        self.name = spec.metavar()

    def get_metavar(self, param: click.Parameter, ctx: Optional[click.Context] = None) -> str:
        return self.spec.metavar()

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        try:
            return self.spec.parse(value)
        except ValueError as exc:
            self.fail(str(exc).removeprefix(f"{self.spec.flag} "), param, ctx)


def _shown_default(spec: OptionSpec, cls: type) -> Optional[str]:
    length_name, length_value = cls.DEFAULT_LENGTH  # type: ignore[attr-defined]
    if spec.name == length_name:
        other = "--epochs" if length_name == "iters" else "--iters"
        shown = int(length_value) if float(length_value).is_integer() else length_value
        return f"{shown} unless {other} is given"
    if spec.default_text is not None:
        return spec.default_text
    if spec.default is None:
        return None
    if isinstance(spec.default, bool):
        return "on" if spec.default else "off"
    return str(spec.default)


def _invocation_options(f: F) -> F:
    """The options of this invocation, not of the run (never in a config file, except -o)."""
    specs_: List[Tuple[Tuple[str, ...], Dict[str, Any]]] = [
        (("-o", "--output"), dict(help="Run folder: checkpoints, logs, samples (required; may come from --config).")),
        (("--config",), dict(type=click.Path(exists=True, dir_okay=False),
                             help="YAML file of options (keys = option names); flags given here win.")),
        (("--resume",), dict(is_flag=True, help="Continue the run in --output from its state.pt, exactly.")),
        (("--ddp",), dict(is_flag=True, help="Distributed data parallel in the processes torchrun started "
                          "(automatic when it started several), or in --nproc local ones; rank 0 writes the run folder.")),
        (("--nproc",), dict(type=click.IntRange(min=1), help="With --ddp outside torchrun: start N local "
                            "processes (gloo on the CPU, NCCL with one GPU each).")),
    ]
    for decls, kw in reversed(specs_):
        f = click.option(*decls, **kw)(f)
    return f


def _options(method: str) -> Callable[[F], F]:
    """Decorator: the method's options (generated from its dataclass), the invocation options and
    the shared --device/--quiet/--overwrite; every default None so that given flags are known."""
    cls = options_class(method)

    def deco(f: F) -> F:
        f = quiet_option(f)
        f = overwrite_option(f)
        f = device_option(f)
        for spec in reversed([s for s in specs(cls) if s.cli]):
            shown = _shown_default(spec, cls)
            help_text = spec.help + (f" [default: {shown}]" if shown is not None else "")
            if spec.kind is bool:
                f = click.option(f"{spec.flag}/--no-{spec.flag[2:]}", spec.name, default=None, help=help_text)(f)
            else:
                f = click.option(spec.flag, spec.name, type=SchemaValue(spec), default=None, help=help_text)(f)
        return _invocation_options(f)

    return deco


# ---------------------------------------------------------------------------------------------


def _explicit(ctx: click.Context, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The options given on the command line (or environment), not click's defaults."""
    given = {}
    for name, value in kwargs.items():
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT):
            given[name] = value
    return given


def _read_config(path: str, method: str) -> Dict[str, Any]:
    """YAML options, each value parsed and checked by the method's options schema; ``output`` may
    be set there too."""
    try:
        raw = read_config_file(Path(path))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    file_method = raw.pop("method", method)
    if file_method != method:
        raise click.ClickException(f"{path}: is a {file_method} config, not {method}")
    output = raw.pop("output", None)
    for key in raw:
        if key in NOT_IN_CONFIG:
            raise click.ClickException(f"{path}: {key!r} describes one invocation; give it as a flag")
    try:
        layer = parse_layer(options_class(method), raw, f"{path} (train {method})")
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return {**layer, "output": output} if output is not None else layer


def _run(method: str, ctx: click.Context, kwargs: Dict[str, Any]) -> None:
    explicit = _explicit(ctx, kwargs)
    file_opts = _read_config(kwargs["config"], method) if kwargs.get("config") else {}
    output = explicit.get("output") or file_opts.get("output")
    if not output:
        raise click.UsageError("give -o/--output RUN_DIR", ctx=ctx)
    resume, overwrite = bool(kwargs["resume"]), bool(kwargs["overwrite"])
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other", ctx=ctx)
    layers = [{k: v for k, v in layer.items() if k not in ("output", *NOT_IN_CONFIG)}
              for layer in (file_opts, explicit)]
    ddp, nproc = bool(kwargs.get("ddp")), kwargs.get("nproc")
    if nproc is not None and nproc > 1 and not ddp:
        raise click.UsageError(f"--nproc {nproc} starts DDP processes; add --ddp", ctx=ctx)

    from frametrans.checkpoint import CheckpointError
    from frametrans.train.schema import merge_layers
    from frametrans.train.trainer import TrainingStopped, train

    try:
        result = train(method, merge_layers(*layers), Path(output), resume=resume, overwrite=overwrite,
                       ddp=ddp, nproc=nproc)
    except (ValueError, TrainingStopped, CheckpointError, OSError) as exc:
        if getattr(exc, "reported_by_rank0", False):  # DDP: every rank stopped alike; rank 0 says why
            ctx.exit(1)
        from frametrans.io.errors import first_line

        raise click.ClickException(first_line(exc)) from None
    quiet = explicit.get("quiet") or file_opts.get("quiet")
    if not quiet and result.rank == 0:
        files = ", ".join(p.name for p in result.exports) or "nothing new"
        click.echo(f"{method}: step {result.step}/{result.total}; wrote {files} in {output}", err=True)


# ---------------------------------------------------------------------------------------------


@click.group("train")
def train_group() -> None:
    """Train pix2pix, CycleGAN, MUNIT or the next-frame predictor.

    \b
    Examples:
      frametrans train pix2pix --data facades -o runs/facades
      frametrans train cyclegan --data horse2zebra -o runs/h2z --iters 200000
      frametrans train cyclegan --data-a day.mp4 --data-b night.mp4 --frame-every 5 -o runs/dn
      frametrans train munit --data edges2shoes -o runs/e2s --vgg-weights vgg16.pth
      frametrans train predictor --data moving-mnist -o runs/mm
      frametrans train pix2pix --config run.yaml -o runs/a --lr 1e-4
      frametrans train pix2pix -o runs/facades --resume --iters 400000
      torchrun --nproc-per-node 4 -m frametrans.cli train cyclegan --data horse2zebra -o runs/h2z --batch-size 8
      frametrans train predictor --data moving-mnist -o runs/mm --ddp --nproc 2
    """


@train_group.command("pix2pix")
@_options("pix2pix")
@click.pass_context
def pix2pix_cmd(ctx: click.Context, **kwargs: Any) -> None:
    """pix2pix on paired images: U-Net + PatchGAN, GAN + 100 x L1.

    \b
    --data DIR with train/ (and val/ or test/) of A|B side-by-side images (the reference layout),
    A/ + B/ or trainA/ + trainB/ matched by file name, or A|B images directly in DIR.
    Exports RUN_DIR/G.safetensors.
    """
    _run("pix2pix", ctx, kwargs)


@train_group.command("cyclegan")
@_options("cyclegan")
@click.pass_context
def cyclegan_cmd(ctx: click.Context, **kwargs: Any) -> None:
    """CycleGAN on unpaired images: two ResNet generators, two PatchGANs, LSGAN + cycle + identity.

    \b
    --data DIR with trainA/ + trainB/ (or A/ + B/), or --data-a X --data-b Y (folders or videos).
    Exports RUN_DIR/G_A.safetensors (A -> B) and G_B.safetensors (B -> A).
    """
    _run("cyclegan", ctx, kwargs)


@train_group.command("munit")
@_options("munit")
@click.pass_context
def munit_cmd(ctx: click.Context, **kwargs: Any) -> None:
    """MUNIT on unpaired images: content/style auto-encoders, multi-scale LSGAN.

    \b
    Data as for cyclegan. Exports RUN_DIR/munit.safetensors (both directions).
    """
    _run("munit", ctx, kwargs)


@train_group.command("predictor")
@_options("predictor")
@click.pass_context
def predictor_cmd(ctx: click.Context, **kwargs: Any) -> None:
    """Next-frame predictor: CONTEXT frames in, HORIZON frames out (MSE).

    \b
    --data: moving-mnist (MNIST digits, --mnist-dir), moving-digits (bundled, any machine), a video,
    a folder of frames, or a folder of videos / frame folders. Exports RUN_DIR/predictor.safetensors.
    """
    _run("predictor", ctx, kwargs)
