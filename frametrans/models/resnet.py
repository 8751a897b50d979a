"""CycleGAN ResNet generator (Johnson et al. style): 7x7 conv, two stride-2 downsamplings,
``n_blocks`` residual blocks, two 2x upsamplings, 7x7 conv, tanh.

The module tree and state-dict names are those of pytorch-CycleGAN-and-pix2pix's
``ResnetGenerator`` (``resnet_6blocks`` / ``resnet_9blocks``): everything sits in one
``self.model`` Sequential, and each residual block keeps its layers in ``conv_block``::

    model.0  ReflectionPad2d(3)      model.1  Conv 7x7 in->ngf        model.2  norm   model.3 ReLU
    model.4-6  Conv 3x3 s2 ngf->2ngf, norm, ReLU     model.7-9  Conv 3x3 s2 2ngf->4ngf, norm, ReLU
    model.10 .. model.(9+n_blocks)   ResnetBlock(4*ngf)
    then ConvT 4ngf->2ngf, norm, ReLU, ConvT 2ngf->ngf, norm, ReLU, ReflectionPad2d(3),
    Conv 7x7 ngf->out (always with bias), Tanh

``upsample='resize'`` (not upstream) replaces each ConvT with nearest 2x upsampling, reflection pad
and a 3x3 conv (Odena et al. 2016, "Deconvolution and checkerboard artifacts"): no checkerboard
pattern from uneven kernel overlap, ~19% more multiply-adds at ngf 16 / 6 blocks; each upsampling
adds two modules (Upsample, ReflectionPad2d), so the indices after it shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from frametrans.models.layers import NORMS, PADDINGS, check_choice, conv_bias, make_norm
from frametrans.registry import IOContract, ModelConfig, register

N_DOWNSAMPLING = 2
UPSAMPLES = ("transpose", "resize")


@dataclass(frozen=True)
class ResnetConfig(ModelConfig):
    """Constructor arguments of :class:`ResnetGenerator`.

    ngf: channels after the first conv (the blocks run at 4*ngf). n_blocks: residual blocks
    (6 or 9 upstream). norm: 'batch' | 'instance' | 'none'. dropout: Dropout(0.5) between the two
    convs of each block. padding: 'reflect' | 'replicate' | 'zero' inside the blocks.
    upsample: 'transpose' (upstream's ConvTranspose2d) | 'resize' (nearest 2x, then a 3x3 conv).
    """

    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    n_blocks: int = 9
    norm: str = "instance"
    dropout: bool = False
    padding: str = "reflect"
    upsample: str = "transpose"

    def validate(self) -> None:
        super().validate()
        check_choice("norm", self.norm, NORMS)
        check_choice("padding", self.padding, PADDINGS)
        check_choice("upsample", self.upsample, UPSAMPLES)
        for name in ("in_channels", "out_channels", "ngf"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name}={getattr(self, name)} must be at least 1")

    def contract(self) -> IOContract:
        return IOContract(
            value_range=(-1.0, 1.0),
            size_multiple=2**N_DOWNSAMPLING,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
        )


def _pad(padding: str) -> list[nn.Module]:
    """The explicit padding layer before a 3x3 conv; [] for 'zero' (the conv pads itself)."""
    if padding == "reflect":
        return [nn.ReflectionPad2d(1)]
    if padding == "replicate":
        return [nn.ReplicationPad2d(1)]
    return []


def _upsample(kind: str, c_in: int, c_out: int, bias: bool) -> list[nn.Module]:
    """An exact 2x upsampling from c_in to c_out channels: [B, c_in, h, w] -> [B, c_out, 2h, 2w]."""
    if kind == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=0, bias=bias)]
    return [nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1, output_padding=1, bias=bias)]


class ResnetBlock(nn.Module):
    """x + [pad, conv3x3, norm, ReLU, (Dropout), pad, conv3x3, norm](x); [B, C, H, W] -> same.

    With 'zero' padding the pad layers are absent and the convs pad by 1, which shifts the
    ``conv_block`` indices exactly as upstream does (so does the dropout).
    """

    def __init__(self, channels: int, padding: str, norm: str, dropout: bool) -> None:
        super().__init__()
        bias = conv_bias(norm)
        conv_pad = 1 if padding == "zero" else 0
        layers: list[nn.Module] = _pad(padding)
        layers += [
            nn.Conv2d(channels, channels, kernel_size=3, padding=conv_pad, bias=bias),
            make_norm(norm, channels),
            nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += _pad(padding)
        layers += [
            nn.Conv2d(channels, channels, kernel_size=3, padding=conv_pad, bias=bias),
            make_norm(norm, channels),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


@register("resnet", ResnetConfig, "generator")
class ResnetGenerator(nn.Module):
    """CycleGAN generator: [B, in_channels, H, W] in [-1, 1] -> [B, out_channels, H, W] in [-1, 1].

    H and W must be multiples of 4 (two stride-2 convs, then two exact 2x upsamplings).
    """

    def __init__(self, config: ResnetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        ngf, norm, bias = config.ngf, config.norm, conv_bias(config.norm)

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(config.in_channels, ngf, kernel_size=7, padding=0, bias=bias),
            make_norm(norm, ngf),
            nn.ReLU(True),
        ]
        for i in range(N_DOWNSAMPLING):  # ngf -> 2ngf -> 4ngf, H -> H/4
            c = ngf * 2**i
            layers += [
                nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1, bias=bias),
                make_norm(norm, 2 * c),
                nn.ReLU(True),
            ]
        width = ngf * 2**N_DOWNSAMPLING
        layers += [
            ResnetBlock(width, config.padding, norm, config.dropout) for _ in range(config.n_blocks)
        ]
        for i in range(N_DOWNSAMPLING):  # 4ngf -> 2ngf -> ngf, H/4 -> H
            c = width // 2**i
            layers += _upsample(config.upsample, c, c // 2, bias)
            layers += [make_norm(norm, c // 2), nn.ReLU(True)]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, config.out_channels, kernel_size=7, padding=0),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(
                f"resnet input size {tuple(x.shape[-2:])} is not a multiple of 4; "
                "pad the frame first"
            )
        return self.model(x)
