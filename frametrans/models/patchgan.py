"""pix2pix/CycleGAN discriminators: PatchGAN (NLayer) and the 1x1 pixel discriminator.

Both return raw logits (no sigmoid): the loss decides how to read them. Module trees and
state-dict names follow pytorch-CycleGAN-and-pix2pix (``NLayerDiscriminator.model``,
``PixelDiscriminator.net``). For pix2pix the input is the condition and the image concatenated
along channels, hence the default 6 input channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from frametrans.models.layers import NORMS, check_choice, conv_bias, make_norm
from frametrans.registry import IOContract, ModelConfig, register


def _check_common(config: ModelConfig) -> None:
    check_choice("norm", config.norm, NORMS)  # type: ignore[attr-defined]
    for name in ("in_channels", "ndf"):
        if getattr(config, name) < 1:
            raise ValueError(f"config field {name}={getattr(config, name)} must be at least 1")


def _disc_contract(in_channels: int) -> IOContract:
    return IOContract(
        value_range=(-1.0, 1.0), size_multiple=1, in_channels=in_channels, out_channels=1
    )


@dataclass(frozen=True)
class PatchGANConfig(ModelConfig):
    """Constructor arguments of :class:`PatchDiscriminator`.

    n_layers: stride-2 convs (3 = upstream 'basic', a 70x70 receptive field); at least 1.
    ndf: channels of the first conv, doubled per layer up to 8*ndf. norm: batch | instance | none.
    """

    in_channels: int = 6
    ndf: int = 64
    n_layers: int = 3
    norm: str = "batch"

    def validate(self) -> None:
        super().validate()
        _check_common(self)
        if self.n_layers < 1:
            raise ValueError(f"config field n_layers={self.n_layers} must be at least 1")

    def contract(self) -> IOContract:
        return _disc_contract(self.in_channels)


@register("patchgan", PatchGANConfig, "discriminator")
class PatchDiscriminator(nn.Module):
    """[B, in_channels, H, W] in [-1, 1] -> logits [B, 1, h, w], one per overlapping patch.

    Each of the ``n_layers`` stride-2 convs (k4, p1) maps H to H//2, the two final stride-1 convs
    take 1 each: h = H // 2**n_layers - 2 (for sizes that divide evenly).
    Needs H, W >= 3 * 2**n_layers.
    """

    def __init__(self, config: PatchGANConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        ndf, norm, bias = config.ndf, config.norm, conv_bias(config.norm)
        layers: list[nn.Module] = [
            nn.Conv2d(config.in_channels, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        width = ndf
        for n in range(1, config.n_layers):
            new = ndf * min(2**n, 8)
            layers += [
                nn.Conv2d(width, new, kernel_size=4, stride=2, padding=1, bias=bias),
                make_norm(norm, new),
                nn.LeakyReLU(0.2, True),
            ]
            width = new
        new = ndf * min(2**config.n_layers, 8)
        layers += [
            nn.Conv2d(width, new, kernel_size=4, stride=1, padding=1, bias=bias),
            make_norm(norm, new),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(new, 1, kernel_size=4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@dataclass(frozen=True)
class PixelGANConfig(ModelConfig):
    """Constructor arguments of :class:`PixelDiscriminator` (a 1x1 PatchGAN)."""

    in_channels: int = 6
    ndf: int = 64
    norm: str = "batch"

    def validate(self) -> None:
        super().validate()
        _check_common(self)

    def contract(self) -> IOContract:
        return _disc_contract(self.in_channels)


@register("pixelgan", PixelGANConfig, "discriminator")
class PixelDiscriminator(nn.Module):
    """[B, in_channels, H, W] in [-1, 1] -> logits [B, 1, H, W], one per pixel (1x1 convs only)."""

    def __init__(self, config: PixelGANConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        ndf, bias = config.ndf, conv_bias(config.norm)
        self.net = nn.Sequential(
            nn.Conv2d(config.in_channels, ndf, kernel_size=1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, 2 * ndf, kernel_size=1, bias=bias),
            make_norm(config.norm, 2 * ndf),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * ndf, 1, kernel_size=1, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
