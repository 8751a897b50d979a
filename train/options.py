"""The options of every training method: one frozen dataclass per method, the single source of
names, types, defaults, help, choices and ranges (no torch here).

    TrainOptions       what every method shares: data, sizes, run length, optimiser, machinery
    Pix2PixOptions     + GAN loss, PatchGAN nets, U-Net depth, L1 weight
    CycleGANOptions    + GAN loss, unpaired data, PatchGAN nets, ResNet generators, cycle losses
    MUNITOptions       + GAN loss, unpaired data, MUNIT auto-encoders and losses
    PredictorOptions   + frame windows and the predictor's U-Net

Defaults are those of the reference implementations (pytorch-CycleGAN-and-pix2pix for pix2pix and
CycleGAN, NVlabs/MUNIT for MUNIT). A few are derived from the data when left unset (None):
``crop`` (``min(size, 256)``), pix2pix's ``num_downs`` (the deepest the crop allows) and the run
length (``DEFAULT_LENGTH``: pix2pix/CycleGAN 200 epochs, MUNIT 1M iterations, the predictor 20k);
:func:`resolve` fills them in and returns the notes to log. The command line (``cli/train_cmd.py``)
generates its flags from these fields; ``--config`` files and a run's saved ``config.yaml`` are
parsed by them (:func:`frametrans.train.schema.parse_layer`).

Python API::

    from frametrans.train import CycleGANOptions, train
    train("cyclegan", CycleGANOptions(data="horse2zebra", iters=1000, batch_size=4), "runs/h2z")
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

from dataclasses import dataclass

from frametrans.train.schema import (OptionsBase, check_layer, merge_layers, option, option_like, spec_of)
from frametrans.train.sizes import MAX_UNET_DEPTH, check_fit, default_crop, largest_unet_depth

GAN_MODES = ("vanilla", "lsgan", "hinge", "wgan-gp")
LR_POLICIES = ("linear", "constant", "step", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
RESIZE_MODES = ("square", "short-side", "none")

POSITIVE = dict(low=0, low_open=True)
AT_LEAST_0 = dict(low=0)
AT_LEAST_1 = dict(low=1)


@dataclass(frozen=True)
class TrainOptions(OptionsBase):
    """Options every method shares."""

    DEFAULT_LENGTH = ("epochs", 200.0)  # (option, value) when neither iters nor epochs is given

    data: Optional[str] = option(None, "Training data: a folder (layouts in the command help), a video, or a generated source.")
    val_data: Optional[str] = option(None, "Held-out data in the same layout (default: DIR/val or DIR/test when present).")
    size: int = option(286, "Load size: images are resized to this before cropping.", **POSITIVE)
    crop: Optional[int] = option(None, "Side of the random square crop the networks train on.", **POSITIVE,
                                 default_text="min(--size, 256)")
    flip: bool = option(True, "Random horizontal flips.")
    resize: str = option("square", "square: SIZE x SIZE (pix2pix/CycleGAN); short-side: short side = SIZE (MUNIT).",
                         choices=RESIZE_MODES)
    batch_size: int = option(1, "Images (or windows) per step: the global batch, split evenly over the processes "
                             "with --ddp/torchrun.", **POSITIVE)
    iters: Optional[int] = option(None, "Training steps (instead of --epochs).", **POSITIVE)
    epochs: Optional[float] = option(None, "Passes over the training set (instead of --iters).", **POSITIVE)
    lr: float = option(2e-4, "Base learning rate.", **POSITIVE)
    beta1: float = option(0.5, "Adam beta1.", low=0, high=1, high_open=True)
    beta2: float = option(0.999, "Adam beta2.", low=0, high=1, high_open=True)
    lr_policy: str = option("linear", "linear: constant, then linear to 0 from --decay-start; step: x --gamma every "
                            "--step-size steps.", choices=LR_POLICIES)
    decay_start: float = option(0.5, "Fraction of the run after which linear/cosine decay starts.", low=0, high=1)
    step_size: int = option(100_000, "Steps between learning-rate drops (--lr-policy step).", **POSITIVE)
    gamma: float = option(0.5, "Learning-rate factor per drop (--lr-policy step).", **POSITIVE)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps.", cli=False)
    precision: str = option("fp32", "fp32; bf16 autocast (CPU or CUDA); fp16 autocast + loss scaling (CUDA).",
                            choices=PRECISIONS)
    compile: bool = option(False, "Compile the networks with torch.compile (inductor): fused kernels, fewer launches "
                           "(for GPUs, where small models wait on launches; on a 2-core CPU the predictor ran "
                           "0.9-1.0x eager). The first step and the first validation wait for the build (about "
                           "a minute each on a CPU). Needs a C++ compiler on the CPU.")
    seed: int = option(0, "Seed of weights, data order and augmentation.", **AT_LEAST_0)
    workers: int = option(0, "Data loader processes (0: load in the training process; the generated sources are "
                          "made on the training device and need none).", **AT_LEAST_0)
    save_every: int = option(5000, "Steps between checkpoints (exported generator(s) + state.pt).", **POSITIVE)
    sample_every: int = option(1000, "Steps between sample grids in RUN_DIR/samples.", **POSITIVE)
    val_every: int = option(5000, "Steps between validations on held-out data (val.jsonl).", **POSITIVE)
    log_every: int = option(10, "Steps averaged into one losses.jsonl record.", **POSITIVE)
    sample_count: int = option(4, "Rows in a sample grid.", **AT_LEAST_0)
    val_count: int = option(50, "Held-out samples used by a validation.", **AT_LEAST_0)
    ema: float = option(0.0, "EMA decay of the generator weights (e.g. 0.999; 0: off); exported when on.",
                        low=0, high=1, high_open=True)
    quiet: bool = option(False, "No progress bar or log lines.", cli=False)

    def check_together(self) -> None:
        if self.iters is not None and self.epochs is not None:
            raise ValueError("give --iters or --epochs, not both")


@dataclass(frozen=True)
class GANOptions(TrainOptions):
    gan_mode: str = option("lsgan", "Adversarial loss.", choices=GAN_MODES)
    gp_weight: float = option(10.0, "Gradient-penalty weight (--gan-mode wgan-gp).", **AT_LEAST_0)


@dataclass(frozen=True)
class UnpairedOptions(TrainOptions):
    data_a: Optional[str] = option(None, "Domain A: a folder of images, a folder of videos or a video.")
    data_b: Optional[str] = option(None, "Domain B: a folder of images, a folder of videos or a video.")
    frame_every: int = option(1, "Use every Nth frame of videos.", **AT_LEAST_1)
    max_frames: Optional[int] = option(None, "At most this many frames per domain from videos.", **AT_LEAST_1)


@dataclass(frozen=True)
class PatchNetOptions(TrainOptions):
    ngf: int = option(64, "Generator width (channels of the first conv).", **AT_LEAST_1)
    ndf: int = option(64, "Discriminator width.", **AT_LEAST_1)
    n_layers_d: int = option(3, "PatchGAN stride-2 layers (3: 70x70 patches).", **AT_LEAST_1)
    norm: str = option("batch", "Normalisation in G and D.", choices=("batch", "instance", "none"))
    dropout: bool = option(False, "Dropout in the generator.")
    init: str = option("normal", "Weight init.", choices=("normal", "xavier", "kaiming", "orthogonal"))
    init_gain: float = option(0.02, "Scale of the weight init.", **POSITIVE)


@dataclass(frozen=True)
class Pix2PixOptions(GANOptions, PatchNetOptions):
    """pix2pix: U-Net + PatchGAN on paired images, GAN + 100 x L1."""

    gan_mode: str = option_like(GANOptions, "gan_mode", "vanilla")
    norm: str = option_like(PatchNetOptions, "norm", "batch")
    dropout: bool = option_like(PatchNetOptions, "dropout", True)
    direction: str = option("AtoB", "Which half of a pair is the input.", choices=("AtoB", "BtoA"))
    num_downs: Optional[int] = option(None, "U-Net downsamplings (8: U-Net-256, 7: U-Net-128); crop must be a "
                                      "multiple of 2**N.", low=2, default_text="the deepest the crop allows, at most 8")
    lambda_l1: float = option(100.0, "Weight of the L1 loss.", **AT_LEAST_0)


@dataclass(frozen=True)
class CycleGANOptions(GANOptions, UnpairedOptions, PatchNetOptions):
    """CycleGAN: two ResNet generators, two PatchGANs, LSGAN + cycle + identity. The released
    CycleGAN models were trained without dropout (their test command: --no_dropout)."""

    norm: str = option_like(PatchNetOptions, "norm", "instance")
    n_blocks: int = option(9, "Residual blocks of the ResNet generators (9 or 6 upstream).", **AT_LEAST_0)
    upsample: str = option("transpose", "Generator upsampling: transposed conv (upstream) or nearest 2x + conv "
                           "(no checkerboard artifacts).", choices=("transpose", "resize"))
    lambda_cycle: float = option(10.0, "Weight of the cycle losses.", **AT_LEAST_0)
    lambda_identity: float = option(0.5, "Identity loss weight, relative to --lambda-cycle.", **AT_LEAST_0)
    pool_size: int = option(50, "Fake images kept for the discriminators (0: no pool).", **AT_LEAST_0)


@dataclass(frozen=True)
class MUNITOptions(GANOptions, UnpairedOptions):
    """MUNIT: content/style auto-encoders, multi-scale LSGAN (the edges2shoes config)."""

    DEFAULT_LENGTH = ("iters", 1_000_000)

    size: int = option_like(TrainOptions, "size", 256)
    resize: str = option_like(TrainOptions, "resize", "short-side")
    lr: float = option_like(TrainOptions, "lr", 1e-4)
    lr_policy: str = option_like(TrainOptions, "lr_policy", "step")
    dim: int = option(64, "Generator width.", **AT_LEAST_1)
    style_dim: int = option(8, "Length of the style code.", **AT_LEAST_1)
    n_downsample: int = option(2, "Content-encoder downsamplings.", **AT_LEAST_0)
    n_res: int = option(4, "Residual blocks in content encoder and decoder.", **AT_LEAST_0)
    mlp_dim: int = option(256, "Width of the style MLP.", **AT_LEAST_1)
    activ: str = option("relu", "Generator activation.", choices=("relu", "lrelu", "prelu", "selu", "tanh", "none"))
    pad_type: str = option("reflect", "Padding.", choices=("reflect", "replicate", "zero"))
    dis_dim: int = option(64, "Discriminator width.", **AT_LEAST_1)
    dis_layers: int = option(4, "Stride-2 layers per discriminator scale.", **AT_LEAST_1)
    dis_scales: int = option(3, "Discriminator scales.", **AT_LEAST_1)
    dis_norm: str = option("none", "Discriminator norm.", choices=("none", "bn", "in", "ln"))
    gan_weight: float = option(1.0, "Weight of the adversarial losses.", **AT_LEAST_0)
    recon_x_weight: float = option(10.0, "Weight of the image reconstruction losses.", **AT_LEAST_0)
    recon_s_weight: float = option(1.0, "Weight of the style reconstruction losses.", **AT_LEAST_0)
    recon_c_weight: float = option(1.0, "Weight of the content reconstruction losses.", **AT_LEAST_0)
    cyc_weight: float = option(0.0, "Weight of the explicit cycle losses (0: off).", **AT_LEAST_0)
    vgg_weight: float = option(1.0, "Weight of the VGG perceptual loss (with --vgg-weights).", **AT_LEAST_0)
    vgg_weights: Optional[str] = option(None, "torchvision VGG16 state dict file; enables the perceptual loss "
                                        "(nothing is downloaded).")
    weight_decay: float = option(1e-4, "Adam weight decay.", **AT_LEAST_0)


@dataclass(frozen=True)
class PredictorOptions(TrainOptions):
    """The next-frame predictor: CONTEXT frames in, HORIZON frames out (MSE)."""

    DEFAULT_LENGTH = ("iters", 20_000)

    data: Optional[str] = option_like(TrainOptions, "data", "moving-mnist")
    size: int = option_like(TrainOptions, "size", 64)
    crop: Optional[int] = option(None, "Side of the random square crop of the frames.", **POSITIVE,
                                 default_text="--size")
    flip: bool = option_like(TrainOptions, "flip", False)
    batch_size: int = option_like(TrainOptions, "batch_size", 16)
    lr: float = option_like(TrainOptions, "lr", 1e-3)
    beta1: float = option_like(TrainOptions, "beta1", 0.9)
    lr_policy: str = option_like(TrainOptions, "lr_policy", "constant")
    channels: int = option(1, "Channels per frame (1: gray, 3: RGB).", choices=(1, 3))
    context: int = option(10, "Frames in.", **AT_LEAST_1)
    horizon: int = option(10, "Frames out.", **AT_LEAST_1)
    width: int = option(32, "U-Net width.", **AT_LEAST_1)
    depth: int = option(3, "U-Net downsamplings; frames must be multiples of 2**depth.", **AT_LEAST_1)
    l1_weight: float = option(0.0, "Weight of an L1 term added to the MSE.", **AT_LEAST_0)
    stride: int = option(1, "Keep every Nth frame of videos/frame folders (frame-rate stride).", **AT_LEAST_1)
    max_frames: Optional[int] = option(None, "At most this many frames per video or folder.", **AT_LEAST_1)
    mnist_dir: Optional[str] = option(None, "Folder holding t10k-images-idx3-ubyte.gz (--data moving-mnist).")
    num_digits: int = option(2, "Digits per generated sequence.", **AT_LEAST_1)


OPTIONS: Dict[str, Type[TrainOptions]] = {
    "pix2pix": Pix2PixOptions, "cyclegan": CycleGANOptions, "munit": MUNITOptions, "predictor": PredictorOptions,
}


def options_class(method: str) -> Type[TrainOptions]:
    if method not in OPTIONS:
        raise ValueError(f"unknown training method {method!r}; use one of {', '.join(OPTIONS)}")
    return OPTIONS[method]


def option_names(method: str) -> List[str]:
    """Every option name ``method`` accepts (the keys of a config file)."""
    return list(spec_of(options_class(method)))


def as_layer(method: str, options: "TrainOptions | Mapping[str, Any]") -> Dict[str, Any]:
    """Options given to the API -> a layer of values to merge: a dict as it is (names checked), an
    options object as the values that differ from its class defaults."""
    cls = options_class(method)
    if isinstance(options, TrainOptions):
        if type(options) is not cls:
            raise ValueError(f"train {method} takes {cls.__name__}, not {type(options).__name__}")
        return options.given()
    layer = {k: v for k, v in dict(options).items() if k != "method"}
    check_layer(cls, layer, method)
    return layer


def resolve(method: str, *layers: Mapping[str, Any]) -> Tuple[TrainOptions, List[str]]:
    """The full, checked options of ``method``: its defaults overridden by ``layers`` (lowest
    priority first), the run length and the crop-dependent defaults filled in. Also returns the
    notes (log lines) on defaults fitted to the data."""
    cls = options_class(method)
    for layer in layers:
        check_layer(cls, layer, method)
    options = cls(**merge_layers(*layers))
    if options.iters is None and options.epochs is None:
        name, value = cls.DEFAULT_LENGTH
        options = options.replace(**{name: value})
    return fit_to_crop(method, options)


def fit_to_crop(method: str, o: TrainOptions) -> Tuple[TrainOptions, List[str]]:
    """Fill the defaults that depend on the crop, and check that the crop fits the networks
    (:func:`frametrans.train.sizes.check_fit`, a one-line error naming the smallest size that works).

    --crop of a GAN method: ``min(--size, 256)`` when unset. pix2pix --num-downs: the deepest
    U-Net the crop allows (at most 8) when unset, with a note saying so."""
    notes: List[str] = []
    if isinstance(o, PredictorOptions):
        check_fit(method, o, o.crop or o.size, crop_given=o.crop is not None)
        return o, notes
    crop_given = o.crop is not None
    crop = o.crop if o.crop is not None else default_crop(o.size)
    check_fit(method, o, crop, crop_given)
    o = o.replace(crop=crop)
    if isinstance(o, Pix2PixOptions) and o.num_downs is None:
        n = largest_unet_depth(crop)
        o = o.replace(num_downs=n)
        notes.append(f"pix2pix: U-Net depth --num-downs {n}, the deepest that {crop} px crops allow "
                     f"(2**{n} = {2**n} divides {crop}; at most {MAX_UNET_DEPTH})")
    return o, notes
