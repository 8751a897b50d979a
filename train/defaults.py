"""Default options of every training method, in one place and without torch (the CLI shows them in
``--help`` without importing torch).

Keys are the CLI option names with underscores; they are also the keys of a ``--config`` YAML file
and of the options dict of :func:`frametrans.train.trainer.train`. A method's dict adds its own
options and overrides the common ones; the values are those of the reference implementations
(pytorch-CycleGAN-and-pix2pix for pix2pix/CycleGAN, NVlabs/MUNIT for MUNIT).
"""

from __future__ import annotations

from typing import Any, Dict

COMMON: Dict[str, Any] = {
    # data
    "data": None, "val_data": None, "size": 286, "crop": None, "flip": True, "resize": "square",
    # length and optimisation
    "batch_size": 1, "iters": None, "epochs": None,
    "lr": 2e-4, "beta1": 0.5, "beta2": 0.999, "lr_policy": "linear", "decay_start": 0.5,
    "step_size": 100_000, "gamma": 0.5,
    # machinery
    "device": "auto", "precision": "fp32", "seed": 0, "workers": 0,
    "save_every": 5000, "sample_every": 1000, "val_every": 5000, "log_every": 10,
    "sample_count": 4, "val_count": 50, "ema": 0.0, "quiet": False,
}

_GAN: Dict[str, Any] = {"gp_weight": 10.0}

_UNPAIRED_DATA: Dict[str, Any] = {"data_a": None, "data_b": None, "frame_every": 1, "max_frames": None}

PIX2PIX: Dict[str, Any] = {
    **_GAN,
    "direction": "AtoB", "epochs": 200,
    "ngf": 64, "num_downs": None, "ndf": 64, "n_layers_d": 3, "norm": "batch", "dropout": True,
    "init": "normal", "init_gain": 0.02,
    "gan_mode": "vanilla", "lambda_l1": 100.0,
}

CYCLEGAN: Dict[str, Any] = {
    **_GAN, **_UNPAIRED_DATA,
    "epochs": 200,
    # the released CycleGAN models were trained without dropout (their test command: --no_dropout)
    "ngf": 64, "n_blocks": 9, "upsample": "transpose", "ndf": 64, "n_layers_d": 3, "norm": "instance",
    "dropout": False, "init": "normal", "init_gain": 0.02,
    "gan_mode": "lsgan", "lambda_cycle": 10.0, "lambda_identity": 0.5, "pool_size": 50,
}

MUNIT: Dict[str, Any] = {
    **_GAN, **_UNPAIRED_DATA,
    "size": 256, "resize": "short-side",
    "iters": 1_000_000, "lr": 1e-4, "weight_decay": 1e-4, "lr_policy": "step", "step_size": 100_000,
    "gamma": 0.5,
    "dim": 64, "style_dim": 8, "n_downsample": 2, "n_res": 4, "mlp_dim": 256, "activ": "relu",
    "pad_type": "reflect", "dis_dim": 64, "dis_layers": 4, "dis_scales": 3, "dis_norm": "none",
    "gan_mode": "lsgan", "gan_weight": 1.0, "recon_x_weight": 10.0, "recon_s_weight": 1.0,
    "recon_c_weight": 1.0, "cyc_weight": 0.0, "vgg_weight": 1.0, "vgg_weights": None,
}

PREDICTOR: Dict[str, Any] = {
    "data": "moving-mnist", "size": 64, "crop": None, "flip": False, "max_frames": None,
    "batch_size": 16, "iters": 20_000, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999,
    "lr_policy": "constant",
    "channels": 1, "context": 10, "horizon": 10, "width": 32, "depth": 3,
    "l1_weight": 0.0, "stride": 1, "mnist_dir": None, "num_digits": 2,
}

METHODS: Dict[str, Dict[str, Any]] = {
    "pix2pix": PIX2PIX, "cyclegan": CYCLEGAN, "munit": MUNIT, "predictor": PREDICTOR,
}


def defaults_for(method: str) -> Dict[str, Any]:
    """Every option of ``method`` with its default value."""
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; use one of {', '.join(METHODS)}")
    return {**COMMON, **METHODS[method]}
