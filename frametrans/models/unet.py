"""pix2pix U-Net generator.

The module tree and state-dict names are those of pytorch-CycleGAN-and-pix2pix's ``UnetGenerator``,
so its ``unet_128`` (num_downs=7) and ``unet_256`` (num_downs=8) files load strictly after
:func:`frametrans.importers.upstream.import_upstream_generator`. Blocks nest from the outside in::

    model.model.0            outermost down-conv         in_channels -> ngf
    model.model.1.model.1    level-1 down-conv            ngf -> 2*ngf
    model.model.1.model.3    level-2 block (submodule)    ... and so on, 8*ngf at most
    model.model.3            outermost up-conv (bias)    2*ngf -> out_channels, then tanh

Level ``i`` (0 = outermost) works at ``ngf * min(2**i, 8)`` channels; every level halves the size,
so height and width must be multiples of ``2**num_downs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from frametrans.models.layers import NORMS, check_choice, conv_bias, make_norm
from frametrans.registry import IOContract, ModelConfig, register


@dataclass(frozen=True)
class UNetConfig(ModelConfig):
    """Constructor arguments of :class:`UNetGenerator`.

    num_downs: number of 2x downsamplings (7 = upstream unet_128, 8 = unet_256); at least 2.
    ngf: channels after the first conv. norm: 'batch' | 'instance' | 'none'.
    dropout: Dropout(0.5) in the 8*ngf middle levels (as upstream; only active in train mode).
    """

    in_channels: int = 3
    out_channels: int = 3
    num_downs: int = 8
    ngf: int = 64
    norm: str = "batch"
    dropout: bool = False

    def validate(self) -> None:
        super().validate()
        check_choice("norm", self.norm, NORMS)
        for name in ("in_channels", "out_channels", "ngf"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name}={getattr(self, name)} must be at least 1")
        if self.num_downs < 2:
            raise ValueError(f"config field num_downs={self.num_downs} must be at least 2")

    def contract(self) -> IOContract:
        return IOContract(
            value_range=(-1.0, 1.0),
            size_multiple=2**self.num_downs,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
        )


class UNetBlock(nn.Module):
    """One U-Net level: down -> [inner block] -> up, with the input concatenated to the output.

    Layer order inside ``self.model`` (indices matter for upstream state dicts):
      outermost: conv, inner, ReLU, convT(bias), Tanh              -> [B, outer, H, W]
      middle:    LeakyReLU, conv, norm, inner, ReLU, convT, norm[, Dropout]
                                                                   -> cat -> [B, 2*outer, H, W]
      innermost: LeakyReLU, conv, ReLU, convT, norm                -> cat -> [B, 2*outer, H, W]
    """

    def __init__(
        self,
        outer: int,
        inner: int,
        norm: str,
        submodule: nn.Module | None = None,
        in_channels: int | None = None,
        outermost: bool = False,
        dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        bias = conv_bias(norm)
        in_channels = outer if in_channels is None else in_channels
        down = nn.Conv2d(in_channels, inner, kernel_size=4, stride=2, padding=1, bias=bias)
        if submodule is None:  # innermost: nothing below, so the up-conv sees `inner` channels
            up = nn.ConvTranspose2d(inner, outer, kernel_size=4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, make_norm(norm, outer)]
        elif outermost:
            up = nn.ConvTranspose2d(2 * inner, outer, kernel_size=4, stride=2, padding=1)
            layers = [down, submodule, nn.ReLU(True), up, nn.Tanh()]
        else:
            up = nn.ConvTranspose2d(2 * inner, outer, kernel_size=4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, make_norm(norm, inner), submodule,
                      nn.ReLU(True), up, make_norm(norm, outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


@register("unet", UNetConfig, "generator")
class UNetGenerator(nn.Module):
    """pix2pix U-Net: [B, in_channels, H, W] in [-1, 1] -> [B, out_channels, H, W] in [-1, 1].

    H and W must be multiples of ``2**num_downs``; float32 (or the dtype the module was cast to).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        widths = [config.ngf * min(2**i, 8) for i in range(config.num_downs)]  # inner, per level
        block: nn.Module | None = None
        for level in range(config.num_downs - 1, 0, -1):  # innermost first
            block = UNetBlock(
                outer=widths[level - 1],
                inner=widths[level],
                norm=config.norm,
                submodule=block,
                dropout=config.dropout and level >= 4 and level < config.num_downs - 1,
            )
        self.model = UNetBlock(
            outer=config.out_channels,
            inner=widths[0],
            norm=config.norm,
            submodule=block,
            in_channels=config.in_channels,
            outermost=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        multiple = 2**self.config.num_downs
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"unet input size {tuple(x.shape[-2:])} is not a multiple of {multiple}; "
                "pad the frame first"
            )
        return self.model(x)
