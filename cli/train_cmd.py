"""``frametrans train pix2pix|cyclegan|munit|predictor``: parse options, call the trainer.

Options come from three places, highest priority first: flags given on the command line, the
``--config`` YAML file (keys = option names, dashes or underscores), and, with ``--resume``, the
run's own ``config.yaml``; then the method's defaults (:mod:`frametrans.train.defaults`, shown in
``--help``). Torch is imported only when a command runs.

Distributed data parallel: ``torchrun --nproc-per-node N -m frametrans.cli train METHOD ...`` (DDP
is on by itself when torchrun starts more than one process; ``--ddp`` says so explicitly), or
``frametrans train METHOD --ddp --nproc N ...`` to start N local processes without torchrun.
``--batch-size`` is always the global batch; see docs/cluster_training.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import click
from click.core import ParameterSource

from frametrans.cli.options import device_option, overwrite_option, quiet_option
from frametrans.train.defaults import defaults_for

F = Callable[..., Any]
Spec = Tuple[Tuple[str, ...], Dict[str, Any]]

# keys a --config file may not set (they describe this invocation, not the run)
NOT_IN_CONFIG = ("config", "resume", "overwrite", "ddp", "nproc")

COMMON: List[Spec] = [
    (("--data",), dict(help="Training data: a folder (layouts in the command help), a video, or a generated source.")),
    (("--val-data",), dict(help="Held-out data in the same layout (default: DIR/val or DIR/test when present).")),
    (("-o", "--output"), dict(help="Run folder: checkpoints, logs, samples (required; may come from --config).")),
    (("--config",), dict(type=click.Path(exists=True, dir_okay=False),
                         help="YAML file of options (keys = option names); flags given here win.")),
    (("--resume",), dict(is_flag=True, help="Continue the run in --output from its state.pt, exactly.")),
    (("--size",), dict(type=int, help="Load size: images are resized to this before cropping.")),
    (("--crop",), dict(type=int, help="Side of the random square crop the networks train on "
                                         "[default: min(--size, 256); the predictor: --size].")),
    (("--flip/--no-flip",), dict(default=None, help="Random horizontal flips.")),
    (("--resize",), dict(type=click.Choice(["square", "short-side", "none"]),
                         help="square: SIZE x SIZE (pix2pix/CycleGAN); short-side: short side = SIZE (MUNIT).")),
    (("--batch-size",), dict(type=int, help="Images (or windows) per step: the global batch, split evenly over the processes with --ddp/torchrun.")),
    (("--iters",), dict(type=int, help="Training steps (instead of --epochs).")),
    (("--epochs",), dict(type=float, help="Passes over the training set (instead of --iters).")),
    (("--lr",), dict(type=float, help="Base learning rate.")),
    (("--beta1",), dict(type=float, help="Adam beta1.")),
    (("--beta2",), dict(type=float, help="Adam beta2.")),
    (("--lr-policy",), dict(type=click.Choice(["linear", "constant", "step", "cosine"]),
                            help="linear: constant, then linear to 0 from --decay-start; step: x --gamma every --step-size steps.")),
    (("--decay-start",), dict(type=float, help="Fraction of the run after which linear/cosine decay starts.")),
    (("--step-size",), dict(type=int, help="Steps between learning-rate drops (--lr-policy step).")),
    (("--gamma",), dict(type=float, help="Learning-rate factor per drop (--lr-policy step).")),
    (("--precision",), dict(type=click.Choice(["fp32", "bf16", "fp16"]),
                            help="fp32; bf16 autocast (CPU or CUDA); fp16 autocast + loss scaling (CUDA).")),
    (("--seed",), dict(type=int, help="Seed of weights, data order and augmentation.")),
    (("--workers",), dict(type=int, help="Data loader processes (0: load in the training process).")),
    (("--save-every",), dict(type=int, help="Steps between checkpoints (exported generator(s) + state.pt).")),
    (("--sample-every",), dict(type=int, help="Steps between sample grids in RUN_DIR/samples.")),
    (("--val-every",), dict(type=int, help="Steps between validations on held-out data (val.jsonl).")),
    (("--log-every",), dict(type=int, help="Steps averaged into one losses.jsonl record.")),
    (("--sample-count",), dict(type=int, help="Rows in a sample grid.")),
    (("--val-count",), dict(type=int, help="Held-out samples used by a validation.")),
    (("--ema",), dict(type=float, help="EMA decay of the generator weights (e.g. 0.999; 0: off); exported when on.")),
    (("--ddp",), dict(is_flag=True, help="Distributed data parallel in the processes torchrun started (automatic when "
                                         "it started several), or in --nproc local ones; rank 0 writes the run folder.")),
    (("--nproc",), dict(type=click.IntRange(min=1), help="With --ddp outside torchrun: start N local processes "
                                                         "(gloo on the CPU, NCCL with one GPU each).")),
]

GAN: List[Spec] = [
    (("--gan-mode",), dict(type=click.Choice(["vanilla", "lsgan", "hinge", "wgan-gp"]), help="Adversarial loss.")),
    (("--gp-weight",), dict(type=float, help="Gradient-penalty weight (--gan-mode wgan-gp).")),
]

UNPAIRED: List[Spec] = [
    (("--data-a",), dict(help="Domain A: a folder of images, a folder of videos or a video.")),
    (("--data-b",), dict(help="Domain B: a folder of images, a folder of videos or a video.")),
    (("--frame-every",), dict(type=int, help="Use every Nth frame of videos.")),
    (("--max-frames",), dict(type=int, help="At most this many frames per domain from videos.")),
]

PATCH_NETS: List[Spec] = [
    (("--ngf",), dict(type=int, help="Generator width (channels of the first conv).")),
    (("--ndf",), dict(type=int, help="Discriminator width.")),
    (("--n-layers-d",), dict(type=int, help="PatchGAN stride-2 layers (3: 70x70 patches).")),
    (("--norm",), dict(type=click.Choice(["batch", "instance", "none"]), help="Normalisation in G and D.")),
    (("--dropout/--no-dropout",), dict(default=None, help="Dropout in the generator.")),
    (("--init",), dict(type=click.Choice(["normal", "xavier", "kaiming", "orthogonal"]), help="Weight init.")),
    (("--init-gain",), dict(type=float, help="Scale of the weight init.")),
]

PIX2PIX: List[Spec] = GAN + PATCH_NETS + [
    (("--direction",), dict(type=click.Choice(["AtoB", "BtoA"]), help="Which half of a pair is the input.")),
    (("--num-downs",), dict(type=int, help="U-Net downsamplings (8: U-Net-256, 7: U-Net-128); crop must be a "
                                           "multiple of 2**N [default: the deepest the crop allows, at most 8].")),
    (("--lambda-l1",), dict(type=float, help="Weight of the L1 loss.")),
]

CYCLEGAN: List[Spec] = GAN + UNPAIRED + PATCH_NETS + [
    (("--n-blocks",), dict(type=int, help="Residual blocks of the ResNet generators (9 or 6 upstream).")),
    (("--upsample",), dict(type=click.Choice(["transpose", "resize"]),
                           help="Generator upsampling: transposed conv (upstream) or nearest 2x + conv "
                                "(no checkerboard artifacts).")),
    (("--lambda-cycle",), dict(type=float, help="Weight of the cycle losses.")),
    (("--lambda-identity",), dict(type=float, help="Identity loss weight, relative to --lambda-cycle.")),
    (("--pool-size",), dict(type=int, help="Fake images kept for the discriminators (0: no pool).")),
]

MUNIT: List[Spec] = GAN + UNPAIRED + [
    (("--dim",), dict(type=int, help="Generator width.")),
    (("--style-dim",), dict(type=int, help="Length of the style code.")),
    (("--n-downsample",), dict(type=int, help="Content-encoder downsamplings.")),
    (("--n-res",), dict(type=int, help="Residual blocks in content encoder and decoder.")),
    (("--mlp-dim",), dict(type=int, help="Width of the style MLP.")),
    (("--activ",), dict(type=click.Choice(["relu", "lrelu", "prelu", "selu", "tanh", "none"]), help="Generator activation.")),
    (("--pad-type",), dict(type=click.Choice(["reflect", "replicate", "zero"]), help="Padding.")),
    (("--dis-dim",), dict(type=int, help="Discriminator width.")),
    (("--dis-layers",), dict(type=int, help="Stride-2 layers per discriminator scale.")),
    (("--dis-scales",), dict(type=int, help="Discriminator scales.")),
    (("--dis-norm",), dict(type=click.Choice(["none", "bn", "in", "ln"]), help="Discriminator norm.")),
    (("--gan-weight",), dict(type=float, help="Weight of the adversarial losses.")),
    (("--recon-x-weight",), dict(type=float, help="Weight of the image reconstruction losses.")),
    (("--recon-s-weight",), dict(type=float, help="Weight of the style reconstruction losses.")),
    (("--recon-c-weight",), dict(type=float, help="Weight of the content reconstruction losses.")),
    (("--cyc-weight",), dict(type=float, help="Weight of the explicit cycle losses (0: off).")),
    (("--vgg-weight",), dict(type=float, help="Weight of the VGG perceptual loss (with --vgg-weights).")),
    (("--vgg-weights",), dict(type=click.Path(dir_okay=False),
                              help="torchvision VGG16 state dict file; enables the perceptual loss (nothing is downloaded).")),
    (("--weight-decay",), dict(type=float, help="Adam weight decay.")),
]

PREDICTOR: List[Spec] = [
    (("--channels",), dict(type=int, help="Channels per frame (1: gray, 3: RGB).")),
    (("--context",), dict(type=int, help="Frames in.")),
    (("--horizon",), dict(type=int, help="Frames out.")),
    (("--width",), dict(type=int, help="U-Net width.")),
    (("--depth",), dict(type=int, help="U-Net downsamplings; frames must be multiples of 2**depth.")),
    (("--l1-weight",), dict(type=float, help="Weight of an L1 term added to the MSE.")),
    (("--stride",), dict(type=int, help="Keep every Nth frame of videos/frame folders (frame-rate stride).")),
    (("--max-frames",), dict(type=int, help="At most this many frames per video or folder.")),
    (("--mnist-dir",), dict(help="Folder holding t10k-images-idx3-ubyte.gz (--data moving-mnist).")),
    (("--num-digits",), dict(type=int, help="Digits per generated sequence.")),
]


def _options(method: str, specs: List[Spec]) -> Callable[[F], F]:
    """Decorator adding the common options and ``specs``, help showing ``method``'s defaults."""
    defaults = defaults_for(method)

    def deco(f: F) -> F:
        f = quiet_option(f)
        f = overwrite_option(f)
        f = device_option(f)
        for decls, kw in reversed(COMMON + specs):
            kw = dict(kw)
            key = decls[-1].split("/")[0].lstrip("-").replace("-", "_")
            if key in defaults and defaults[key] is not None and not kw.get("is_flag"):
                kw["help"] = f"{kw.get('help', '')} [default: {_show(defaults[key])}]"
            kw.setdefault("default", None)
            f = click.option(*decls, **kw)(f)
        return f

    return deco


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


# ---------------------------------------------------------------------------------------------


def _explicit(ctx: click.Context, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The options given on the command line (or environment), not click's defaults."""
    given = {}
    for name, value in kwargs.items():
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT):
            given[name] = value
    return given


def _read_config(ctx: click.Context, path: str, method: str) -> Dict[str, Any]:
    """YAML options, each value checked and converted by the matching click option."""
    from frametrans.train.trainer import read_config_file

    try:
        raw = read_config_file(Path(path))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    file_method = raw.pop("method", method)
    if file_method != method:
        raise click.ClickException(f"{path}: is a {file_method} config, not {method}")
    params = {p.name: p for p in ctx.command.params}
    out = {}
    for key, value in raw.items():
        param = params.get(key)
        if param is None or key in NOT_IN_CONFIG:
            known = ", ".join(sorted(k for k in params if k not in NOT_IN_CONFIG))
            raise click.ClickException(f"{path}: unknown option {key!r} for train {method} (known: {known})")
        if value is None:
            out[key] = None
            continue
        try:
            out[key] = param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise click.ClickException(f"{path}: {key}: {exc.message}") from None
    return out


def _run(method: str, ctx: click.Context, kwargs: Dict[str, Any]) -> None:
    explicit = _explicit(ctx, kwargs)
    file_opts = _read_config(ctx, kwargs["config"], method) if kwargs.get("config") else {}
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
    from frametrans.train.trainer import TrainingStopped, merge_layers, train

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
@_options("pix2pix", PIX2PIX)
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
@_options("cyclegan", CYCLEGAN)
@click.pass_context
def cyclegan_cmd(ctx: click.Context, **kwargs: Any) -> None:
    """CycleGAN on unpaired images: two ResNet generators, two PatchGANs, LSGAN + cycle + identity.

    \b
    --data DIR with trainA/ + trainB/ (or A/ + B/), or --data-a X --data-b Y (folders or videos).
    Exports RUN_DIR/G_A.safetensors (A -> B) and G_B.safetensors (B -> A).
    """
    _run("cyclegan", ctx, kwargs)


@train_group.command("munit")
@_options("munit", MUNIT)
@click.pass_context
def munit_cmd(ctx: click.Context, **kwargs: Any) -> None:
    """MUNIT on unpaired images: content/style auto-encoders, multi-scale LSGAN.

    \b
    Data as for cyclegan. Exports RUN_DIR/munit.safetensors (both directions).
    """
    _run("munit", ctx, kwargs)


@train_group.command("predictor")
@_options("predictor", PREDICTOR)
@click.pass_context
def predictor_cmd(ctx: click.Context, **kwargs: Any) -> None:
    """Next-frame predictor: CONTEXT frames in, HORIZON frames out (MSE).

    \b
    --data: moving-mnist (MNIST digits, --mnist-dir), moving-digits (bundled, any machine), a video,
    a folder of frames, or a folder of videos / frame folders. Exports RUN_DIR/predictor.safetensors.
    """
    _run("predictor", ctx, kwargs)
