"""Small helpers shared by the architectures: normalisation layers and weight initialisation.

The choices follow pytorch-CycleGAN-and-pix2pix, so that its checkpoints load into our modules:
``instance`` is a non-affine InstanceNorm without running statistics (no parameters, no buffers),
and convolutions carry a bias only when the norm is ``instance`` (:func:`conv_bias`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from frametrans.models.norms import InstanceNorm2d

NORMS = ("batch", "instance", "none")
INIT_KINDS = ("normal", "xavier", "kaiming", "orthogonal")
PADDINGS = ("reflect", "replicate", "zero")


def check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``field`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not one of: {', '.join(choices)}")


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 2-D normalisation layer over ``channels`` channels.

    kind: ``batch`` (affine BatchNorm2d with running statistics), ``instance`` (InstanceNorm2d,
    affine=False, track_running_stats=False: no state at all; :mod:`frametrans.models.norms`' fast
    CPU version of ``nn.InstanceNorm2d``) or ``none`` (nn.Identity).
    """
    check_choice("norm", kind, NORMS)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True)
    if kind == "instance":
        return InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def conv_bias(norm: str) -> bool:
    """Whether a convolution followed by ``norm`` carries a bias (upstream: only for instance).

    BatchNorm has its own shift, so a bias would be redundant; upstream also leaves it out for
    ``none``, and we keep that so its files load.
    """
    check_choice("norm", norm, NORMS)
    return norm == "instance"


def init_weights(
    module: nn.Module,
    kind: str = "normal",
    gain: float = 0.02,
    generator: Optional[torch.Generator] = None,
) -> nn.Module:
    """Initialise ``module`` in place the way pix2pix/CycleGAN do, and return it.

    Conv/ConvTranspose/Linear weights: ``normal`` N(0, gain), ``xavier`` (xavier_normal, gain),
    ``kaiming`` (kaiming_normal, fan_in, a=0) or ``orthogonal`` (gain); their biases 0.
    BatchNorm weights N(1, gain), biases 0. Other layers keep their values.
    ``generator`` makes the result reproducible without touching the global RNG.
    """
    check_choice("init kind", kind, INIT_KINDS)

    @torch.no_grad()
    def init_one(m: nn.Module) -> None:
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            w = m.weight
            if kind == "normal":
                nn.init.normal_(w, 0.0, gain, generator=generator)
            elif kind == "xavier":
                nn.init.xavier_normal_(w, gain=gain, generator=generator)
            elif kind == "kaiming":
                nn.init.kaiming_normal_(w, a=0, mode="fan_in", generator=generator)
            else:
                nn.init.orthogonal_(w, gain=gain, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain, generator=generator)
            nn.init.zeros_(m.bias)

    module.apply(init_one)
    return module
