"""Multi-frame next-frame predictor: a U-Net that reads ``context`` past frames and writes
``horizon`` future frames, all stacked along channels (oldest first).

    input [B, context*C, H, W] in [0, 1]
      -> double conv (width)                         skip 0
      -> depth x (maxpool 2, double conv, width*2^i capped at 8*width)   skips 1..depth-1
      -> depth x (bilinear up 2, concat skip, double conv)
      -> concat with the input frames -> 1x1 conv -> sigmoid
    output [B, horizon*C, H, W] in [0, 1]

The final skip from the input lets the network copy static background through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from frametrans.registry import IOContract, ModelConfig, register


@dataclass(frozen=True)
class PredictorConfig(ModelConfig):
    """Constructor arguments of :class:`FramePredictor`.

    channels: channels of one frame (1 grayscale, 3 RGB). context / horizon: frames in / out.
    width: channels of the first level (doubled per level, at most 8*width). depth: downsamplings.
    """

    channels: int = 1
    context: int = 10
    horizon: int = 10
    width: int = 32
    depth: int = 3

    def validate(self) -> None:
        super().validate()
        for name in ("channels", "context", "horizon", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name}={getattr(self, name)} must be at least 1")

    def contract(self) -> IOContract:
        return IOContract(
            value_range=(0.0, 1.0),
            size_multiple=2**self.depth,
            in_channels=self.channels,
            out_channels=self.channels,
            frames_in=self.context,
            frames_out=self.horizon,
        )


class DoubleConv(nn.Sequential):
    """(Conv3x3 -> BatchNorm -> LeakyReLU(0.2)) x 2: [B, cin, H, W] -> [B, cout, H, W]."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(cout, cout, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2, True),
        )


@register("predictor", PredictorConfig, "predictor")
class FramePredictor(nn.Module):
    """[B, context*channels, H, W] in [0, 1] -> [B, horizon*channels, H, W] in [0, 1].

    H and W must be multiples of ``2**depth``.
    """

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c_in = config.context * config.channels
        widths = [config.width * min(2**i, 8) for i in range(config.depth + 1)]
        self.inc = DoubleConv(c_in, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(config.depth))
        # decoder level i: upsampled widths[i+1] concat skip widths[i] -> widths[i]
        self.up = nn.ModuleList(
            DoubleConv(widths[i + 1] + widths[i], widths[i]) for i in range(config.depth)
        )
        self.head = nn.Conv2d(widths[0] + c_in, config.horizon * config.channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.shape[1] != cfg.context * cfg.channels:
            raise ValueError(
                f"predictor expects {cfg.context} frames x {cfg.channels} channels = "
                f"{cfg.context * cfg.channels} input channels, got {x.shape[1]}"
            )
        multiple = 2**cfg.depth
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"predictor input size {tuple(x.shape[-2:])} is not a multiple of {multiple}; "
                "pad the frames first"
            )
        skips = [self.inc(x)]  # [B, width, H, W]
        for block in self.down:  # level i+1: [B, widths[i+1], H/2^(i+1), W/2^(i+1)]
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        h = skips.pop()
        for block in reversed(self.up):  # back up to [B, width, H, W]
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return torch.sigmoid(self.head(torch.cat([h, x], dim=1)))

    def rollout(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Predict ``steps`` frames autoregressively, feeding predictions back as context.

        x: [B, context*channels, H, W] in [0, 1] -> [B, steps*channels, H, W] in [0, 1].
        Each pass predicts ``horizon`` frames; the newest ``context`` frames are the next input.
        """
        if steps < 0:
            raise ValueError(f"rollout steps={steps} must be at least 0")
        cfg = self.config
        window = x
        outputs: list[torch.Tensor] = []
        produced = 0
        while produced < steps:
            pred = self(window)  # [B, horizon*C, H, W]
            outputs.append(pred)
            produced += cfg.horizon
            window = torch.cat([window, pred], dim=1)[:, -cfg.context * cfg.channels :]
        if not outputs:
            return x.new_zeros((x.shape[0], 0, *x.shape[2:]))
        return torch.cat(outputs, dim=1)[:, : steps * cfg.channels]
