"""MUNIT: multimodal unsupervised image-to-image translation (Huang et al., 2018).

Each domain has an auto-encoder (:class:`AdaINGenerator`) that splits an image into a content code
(spatial, shared across domains) and a style code (a small vector, one per image). Translation a->b
takes the content of an a-image and decodes it with the b-decoder under a style code that is either
sampled from N(0, I) or encoded from an example b-image.

The module tree reproduces the parameter and buffer names of upstream ``networks.AdaINGen``
(NVlabs/MUNIT, master), so the ``'a'``/``'b'`` state dicts of a ``gen_*.pt`` file load strictly
(see :mod:`frametrans.importers.munit`)::

    enc_style.model.{i}.conv.*            Conv2dBlocks, then AdaptiveAvgPool2d, then a 1x1 Conv2d
    enc_content.model.{i}.conv.*          Conv2dBlocks with instance norm (no params, no buffers)
    enc_content.model.{1+n_down}.model.{k}.model.{j}.conv.*      residual blocks
    dec.model.0.model.{k}.model.{j}.norm.running_mean / running_var   AdaIN (dummy buffers)
    dec.model.{2+2i}.norm.gamma / beta    upsampling blocks with upstream's LayerNorm
    mlp.model.{i}.fc.*                    style -> AdaIN parameters
    ....activation.weight                 only when activ == 'prelu'

Unlike upstream, AdaIN parameters are never stored on the modules: :meth:`AdaINGenerator.decode`
computes them from the style code and passes them down the forward call, so one module can decode
different batches concurrently and every sample of a batch gets its own style. Every norm layer's
``forward`` takes the one tensor it normalises, and the frame-dependent ones (LayerNorm, the
normalising step of AdaIN) implement ``norm_stats`` / ``forward_with_stats``, so
:mod:`frametrans.engine.normstats` can freeze full-frame statistics for tiled inference.

All image tensors are float [B, C, H, W] in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from frametrans.models import norms
from frametrans.models.layers import check_choice, init_weights
from frametrans.registry import MAX_CHANNELS, IOContract, ModelConfig, register

ACTIVATIONS = ("relu", "lrelu", "prelu", "selu", "tanh", "none")
PAD_TYPES = ("reflect", "replicate", "zero")
DIS_NORMS = ("none", "bn", "in", "ln")
DIRECTIONS = ("a2b", "b2a")
DOMAINS = ("a", "b")

# (weight, bias) of one AdaIN layer, each [B, C]
AdaINParams = Tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MUNITConfig(ModelConfig):
    """Hyperparameters of one MUNIT generator pair (upstream YAML section ``gen``).

    in_channels: image channels of both domains (upstream ``input_dim_a`` / ``input_dim_b``).
    dim: filters of the first layer; the content code has ``dim * 2**n_downsample`` channels.
    style_dim: length of the style code.
    n_downsample: stride-2 layers of the content encoder (and upsamplings of the decoder).
    n_res: residual blocks in the content encoder and (with AdaIN) in the decoder.
    mlp_dim: width of the MLP that maps a style code to AdaIN parameters.
    activ: relu | lrelu | prelu | selu | tanh | none.
    pad_type: reflect | replicate | zero.
    n_style_downsample: stride-2 layers of the style encoder (upstream hard-codes 4).
    n_mlp_blocks: linear layers in the MLP (upstream hard-codes 3).
    """

    in_channels: int = 3
    dim: int = 64
    style_dim: int = 8
    n_downsample: int = 2
    n_res: int = 4
    mlp_dim: int = 256
    activ: str = "relu"
    pad_type: str = "reflect"
    n_style_downsample: int = 4
    n_mlp_blocks: int = 3

    def contract(self) -> IOContract:
        return IOContract(
            value_range=(-1.0, 1.0),
            size_multiple=2**self.n_downsample,
            in_channels=self.in_channels,
            out_channels=self.in_channels,
            style_dim=self.style_dim,
        )

    @property
    def content_dim(self) -> int:
        """Channels of the content code."""
        return self.dim * 2**self.n_downsample

    def validate(self) -> None:
        super().validate()
        check_choice("activ", self.activ, ACTIVATIONS)
        check_choice("pad_type", self.pad_type, PAD_TYPES)
        for name, low in (("in_channels", 1), ("dim", 1), ("style_dim", 1), ("mlp_dim", 1),
                          ("n_res", 1), ("n_style_downsample", 2), ("n_mlp_blocks", 2)):
            if getattr(self, name) < low:
                raise ValueError(f"config field {name}={getattr(self, name)} must be >= {low}")
        widest = self.dim * 2 ** max(self.n_downsample, 2)
        if widest > MAX_CHANNELS:
            raise ValueError(
                f"dim={self.dim} with n_downsample={self.n_downsample} gives {widest} channels; "
                f"at most {MAX_CHANNELS}"
            )


@dataclass(frozen=True)
class MUNITDiscriminatorConfig(ModelConfig):
    """Multi-scale PatchGAN discriminator of MUNIT (upstream YAML section ``dis``).

    n_layer: stride-2 conv layers per scale (channels double after the first).
    num_scales: how many times the input is judged, halved (avg-pooled) between scales.
    norm: none | bn | in | ln (the first layer never has a norm, as upstream).
    """

    in_channels: int = 3
    dim: int = 64
    n_layer: int = 4
    num_scales: int = 3
    norm: str = "none"
    activ: str = "lrelu"
    pad_type: str = "reflect"

    def contract(self) -> IOContract:
        return IOContract(
            value_range=(-1.0, 1.0),
            size_multiple=1,
            in_channels=self.in_channels,
            out_channels=1,
        )

    def validate(self) -> None:
        super().validate()
        check_choice("norm", self.norm, DIS_NORMS)
        check_choice("activ", self.activ, ACTIVATIONS)
        check_choice("pad_type", self.pad_type, PAD_TYPES)
        for name in ("in_channels", "dim", "n_layer", "num_scales"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name}={getattr(self, name)} must be >= 1")
        widest = self.dim * 2 ** (self.n_layer - 1)
        if widest > MAX_CHANNELS:
            raise ValueError(
                f"dim={self.dim} with n_layer={self.n_layer} gives {widest} channels; "
                f"at most {MAX_CHANNELS}"
            )


# --------------------------------------------------------------------------------------------
# Normalisation layers
# --------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """Upstream MUNIT's LayerNorm: per sample over (C, H, W), then a per-channel affine.

    ``y = (x - mean) / (std + eps) * gamma + beta`` with the *unbiased* std (not the variance
    under the root as in ``nn.LayerNorm``); gamma starts uniform in [0, 1), beta at 0.

    Implements the ``norm_stats`` / ``forward_with_stats`` protocol of
    :mod:`frametrans.engine.normstats`, so tiled inference can freeze the full-frame statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.gamma = nn.Parameter(torch.empty(num_features).uniform_())
        self.beta = nn.Parameter(torch.zeros(num_features))

    def norm_stats(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, unbiased variance) per sample, each [B, 1, 1, 1] for x [B, C, H, W]."""
        if norms.fused_applies(x):
            return norms.sample_moments(x)
        var, mean = torch.var_mean(x.flatten(1), dim=1, correction=1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return mean.view(shape), var.view(shape)

    def forward_with_stats(
        self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
    ) -> torch.Tensor:
        """Normalise x with the given statistics (as from :meth:`norm_stats`); dtype of x kept."""
        if norms.fused_applies(x):  # 1 / (std + eps) = rsqrt((std + eps)^2 + 0)
            return norms.normalize(x, mean, (var.float().sqrt() + self.eps) ** 2, self.gamma.view(1, -1),
                                   self.beta.view(1, -1), 0.0)
        mean, var = mean.to(x.dtype), var.to(x.dtype)
        x = (x - mean) / (var.sqrt() + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.gamma.view(shape).to(x.dtype) + self.beta.view(shape).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_stats(x, *self.norm_stats(x))


class AdaptiveInstanceNorm2d(nn.Module):
    """Instance norm whose per-sample affine parameters come from the style MLP.

    Two steps, so that the module itself holds no style and its forward takes one tensor:
    ``forward(x)`` normalises each (sample, channel) of x [B, C, H, W] by its own mean and biased
    variance over H, W (eps 1e-5); :meth:`modulate` then applies the style's weight and bias
    [B, C]. ``Conv2dBlock`` does both. The ``running_mean`` / ``running_var`` buffers are never
    used; they exist only because upstream checkpoints carry them.

    Implements the ``norm_stats`` / ``forward_with_stats`` protocol of
    :mod:`frametrans.engine.normstats` for the normalising step.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def norm_stats(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, biased variance) per sample and channel, each [B, C, 1, 1]."""
        if norms.fused_applies(x):
            return norms.channel_moments(x)
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        return mean, var

    def forward_with_stats(
        self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
    ) -> torch.Tensor:
        """Normalise x with the given statistics (as from :meth:`norm_stats`); dtype of x kept."""
        if norms.fused_applies(x):
            return norms.normalize(x, mean, var, None, None, self.eps)
        return (x - mean.to(x.dtype)) * torch.rsqrt(var.to(x.dtype) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norms.instance_norm(x, eps=self.eps)

    @staticmethod
    def modulate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``x * weight + bias`` per (sample, channel): x [B, C, H, W], weight and bias [B, C]."""
        if not torch.fx._symbolic_trace.is_fx_symbolic_tracing():  # traced for row-band streaming,
            _check_modulation(x, weight, bias)  # x's shape is unknown: checked when it runs
        return x * weight[:, :, None, None] + bias[:, :, None, None]

    def extra_repr(self) -> str:
        return str(self.num_features)


def _check_modulation(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    b, c = x.shape[:2]
    if weight.shape != (b, c) or bias.shape != (b, c):
        raise ValueError(
            f"AdaIN over {c} channels of a batch of {b} needs weight and bias [{b}, {c}], "
            f"got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


def _make_activation(activ: str) -> Optional[nn.Module]:
    check_choice("activ", activ, ACTIVATIONS)
    if activ == "relu":
        return nn.ReLU(inplace=True)
    if activ == "lrelu":
        return nn.LeakyReLU(0.2, inplace=True)
    if activ == "prelu":
        return nn.PReLU()
    if activ == "selu":
        return nn.SELU(inplace=True)
    if activ == "tanh":
        return nn.Tanh()
    return None


def _make_pad(pad_type: str, padding: int) -> nn.Module:
    check_choice("pad_type", pad_type, PAD_TYPES)
    if pad_type == "reflect":
        return nn.ReflectionPad2d(padding)
    if pad_type == "replicate":
        return nn.ReplicationPad2d(padding)
    return nn.ZeroPad2d(padding)


def _make_norm(norm: str, channels: int) -> Optional[nn.Module]:
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "in":  # upstream master: no affine, no running statistics
        return norms.InstanceNorm2d(channels)
    if norm == "ln":
        return LayerNorm(channels)
    if norm == "adain":
        return AdaptiveInstanceNorm2d(channels)
    if norm == "none":
        return None
    raise ValueError(f"norm={norm!r} is not one of: bn, in, ln, adain, none")


class Conv2dBlock(nn.Module):
    """pad -> conv (with bias) -> norm -> activation; [B, in, H, W] -> [B, out, H', W']."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int,
        stride: int,
        padding: int = 0,
        norm: str = "none",
        activ: str = "relu",
        pad_type: str = "zero",
    ) -> None:
        super().__init__()
        # registration order as upstream, so state dicts list keys in the same order
        self.pad = _make_pad(pad_type, padding)
        self.norm = _make_norm(norm, out_dim)
        self.activation = _make_activation(activ)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride, bias=True)

    def forward(self, x: torch.Tensor, adain: Optional[AdaINParams] = None) -> torch.Tensor:
        x = self.conv(self.pad(x))
        if isinstance(self.norm, AdaptiveInstanceNorm2d):
            if adain is None:
                raise ValueError("an AdaIN block needs its (weight, bias) from the style code")
            x = self.norm.modulate(self.norm(x), *adain)
        elif self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class ResBlock(nn.Module):
    """x + (conv3x3 -> norm -> activ -> conv3x3 -> norm)(x); shape preserved."""

    def __init__(self, dim: int, norm: str, activ: str, pad_type: str) -> None:
        super().__init__()
        self.model = nn.Sequential(
            Conv2dBlock(dim, dim, 3, 1, 1, norm=norm, activ=activ, pad_type=pad_type),
            Conv2dBlock(dim, dim, 3, 1, 1, norm=norm, activ="none", pad_type=pad_type),
        )

    def forward(
        self, x: torch.Tensor, adain: Optional[Sequence[AdaINParams]] = None
    ) -> torch.Tensor:
        first, second = self.model
        out = first(x, adain[0] if adain is not None else None)
        out = second(out, adain[1] if adain is not None else None)
        return out + x


class ResBlocks(nn.Module):
    """``num_blocks`` ResBlocks in a row; with AdaIN each block takes two (weight, bias) pairs."""

    def __init__(self, num_blocks: int, dim: int, norm: str, activ: str, pad_type: str) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *[ResBlock(dim, norm, activ, pad_type) for _ in range(num_blocks)]
        )

    def forward(
        self, x: torch.Tensor, adain: Optional[Sequence[AdaINParams]] = None
    ) -> torch.Tensor:
        for k, block in enumerate(self.model):
            x = block(x, adain[2 * k : 2 * k + 2] if adain is not None else None)
        return x


class LinearBlock(nn.Module):
    """fc (with bias) -> activation; [B, in] -> [B, out]."""

    def __init__(self, in_dim: int, out_dim: int, activ: str) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim, bias=True)
        self.activation = _make_activation(activ)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        return self.activation(x) if self.activation is not None else x


class MLP(nn.Module):
    """Style code [B, style_dim(, 1, 1)] -> AdaIN parameters [B, out_dim]; no output activation."""

    def __init__(self, in_dim: int, out_dim: int, dim: int, n_blocks: int, activ: str) -> None:
        super().__init__()
        layers = [LinearBlock(in_dim, dim, activ)]
        layers += [LinearBlock(dim, dim, activ) for _ in range(n_blocks - 2)]
        layers += [LinearBlock(dim, out_dim, "none")]
        self.model = nn.Sequential(*layers)

    def forward(self, style: torch.Tensor) -> torch.Tensor:
        return self.model(style.flatten(1))


# --------------------------------------------------------------------------------------------
# Encoders and decoder
# --------------------------------------------------------------------------------------------


class StyleEncoder(nn.Module):
    """Image [B, C, H, W] -> style code [B, style_dim, 1, 1] (no norm, global average pool)."""

    def __init__(self, n_downsample: int, in_dim: int, dim: int, style_dim: int,
                 activ: str, pad_type: str) -> None:
        super().__init__()
        kw = dict(norm="none", activ=activ, pad_type=pad_type)
        layers: List[nn.Module] = [Conv2dBlock(in_dim, dim, 7, 1, 3, **kw)]
        for _ in range(2):
            layers.append(Conv2dBlock(dim, 2 * dim, 4, 2, 1, **kw))
            dim *= 2
        for _ in range(n_downsample - 2):
            layers.append(Conv2dBlock(dim, dim, 4, 2, 1, **kw))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, style_dim, 1, 1, 0)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ContentEncoder(nn.Module):
    """Image [B, C, H, W] -> content [B, dim*2**n, H/2**n, W/2**n] (instance norm throughout)."""

    def __init__(self, n_downsample: int, n_res: int, in_dim: int, dim: int,
                 activ: str, pad_type: str) -> None:
        super().__init__()
        kw = dict(norm="in", activ=activ, pad_type=pad_type)
        layers: List[nn.Module] = [Conv2dBlock(in_dim, dim, 7, 1, 3, **kw)]
        for _ in range(n_downsample):
            layers.append(Conv2dBlock(dim, 2 * dim, 4, 2, 1, **kw))
            dim *= 2
        layers.append(ResBlocks(n_res, dim, "in", activ, pad_type))
        self.model = nn.Sequential(*layers)
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Decoder(nn.Module):
    """Content [B, D, h, w] + AdaIN parameters -> image [B, C, h*2**n, w*2**n] in [-1, 1].

    AdaIN residual blocks, then ``n_upsample`` x (nearest x2 upsample, 5x5 conv, LayerNorm),
    then a 7x7 conv with tanh.
    """

    def __init__(self, n_upsample: int, n_res: int, dim: int, out_dim: int,
                 activ: str, pad_type: str) -> None:
        super().__init__()
        layers: List[nn.Module] = [ResBlocks(n_res, dim, "adain", activ, pad_type)]
        for _ in range(n_upsample):
            layers += [
                nn.Upsample(scale_factor=2),
                Conv2dBlock(dim, dim // 2, 5, 1, 2, norm="ln", activ=activ, pad_type=pad_type),
            ]
            dim //= 2
        layers.append(
            Conv2dBlock(dim, out_dim, 7, 1, 3, norm="none", activ="tanh", pad_type=pad_type)
        )
        self.model = nn.Sequential(*layers)

    def adain_layers(self) -> List[AdaptiveInstanceNorm2d]:
        """The AdaIN layers in module order, the order in which the MLP output is laid out."""
        return [m for m in self.modules() if isinstance(m, AdaptiveInstanceNorm2d)]

    def forward(self, content: torch.Tensor, adain: Sequence[AdaINParams]) -> torch.Tensor:
        res_blocks, *rest = self.model
        x = res_blocks(content, adain)
        for layer in rest:
            x = layer(x)
        return x


# --------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------


def _broadcast_style(style: torch.Tensor, batch: int, style_dim: int) -> torch.Tensor:
    """[N, style_dim] or [N, style_dim, 1, 1] with N in {1, batch} -> [batch, style_dim, 1, 1]."""
    if style.dim() == 2:
        style = style[:, :, None, None]
    if style.dim() != 4 or style.shape[1:] != (style_dim, 1, 1) or style.shape[0] not in (1, batch):
        raise ValueError(
            f"style code of shape {tuple(style.shape)} does not fit; expected "
            f"[{batch} or 1, {style_dim}, 1, 1]"
        )
    return style.expand(batch, -1, -1, -1)


class AdaINGenerator(nn.Module):
    """One domain's auto-encoder (upstream ``AdaINGen``): content + style encoders, decoder, MLP."""

    def __init__(self, config: MUNITConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.enc_style = StyleEncoder(c.n_style_downsample, c.in_channels, c.dim, c.style_dim,
                                      c.activ, c.pad_type)
        self.enc_content = ContentEncoder(c.n_downsample, c.n_res, c.in_channels, c.dim,
                                          c.activ, c.pad_type)
        self.dec = Decoder(c.n_downsample, c.n_res, self.enc_content.output_dim, c.in_channels,
                           c.activ, c.pad_type)
        n_adain = sum(2 * m.num_features for m in self.dec.adain_layers())
        self.mlp = MLP(c.style_dim, n_adain, c.mlp_dim, c.n_mlp_blocks, c.activ)
        init_weights(self, "kaiming")  # upstream trains with init: kaiming

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruct [B, C, H, W] images in [-1, 1] from their own content and style."""
        content, style = self.encode(images)
        return self.decode(content, style)

    def encode(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] in [-1, 1] -> (content [B, dim*2**n, H/2**n, W/2**n],
        style [B, style_dim, 1, 1])."""
        return self.encode_content(images), self.encode_style(images)

    def encode_content(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> content [B, dim*2**n, H/2**n, W/2**n]."""
        self._check_images(images)
        return self.enc_content(images)

    def encode_style(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> style [B, style_dim, 1, 1]."""
        self._check_images(images)
        return self.enc_style(images)

    def decode(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Content [B, D, h, w] and style [B or 1, style_dim(, 1, 1)] -> images [B, C, H, W] in
        [-1, 1]. Each sample is decoded with its own style (a batch of one style is broadcast)."""
        style = _broadcast_style(style, content.shape[0], self.config.style_dim)
        return self.dec(content, self.adain_params(style))

    def adain_params(self, style: torch.Tensor) -> List[AdaINParams]:
        """Style [B, style_dim, 1, 1] -> one (weight [B, C], bias [B, C]) per AdaIN layer.

        Upstream layout of the MLP output, layer after layer: C means (bias), then C stds (weight).
        """
        params = self.mlp(style)
        out: List[AdaINParams] = []
        offset = 0
        for layer in self.dec.adain_layers():
            c = layer.num_features
            bias = params[:, offset : offset + c]
            weight = params[:, offset + c : offset + 2 * c]
            out.append((weight, bias))
            offset += 2 * c
        return out

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected images [B, {self.config.in_channels}, H, W], got {tuple(images.shape)}"
            )


@register("munit", MUNITConfig, "munit")
class MUNIT(nn.Module):
    """The two generators of a MUNIT model: ``gen_a`` (domain a) and ``gen_b`` (domain b)."""

    def __init__(self, config: MUNITConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.gen_a = AdaINGenerator(config)
        self.gen_b = AdaINGenerator(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """a->b translation of [B, C, H, W] in [-1, 1] under styles sampled from the global RNG."""
        return self.translate(x)

    def translate(
        self,
        x: torch.Tensor,
        style: Optional[torch.Tensor] = None,
        direction: str = "a2b",
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Translate images [B, C, H, W] in [-1, 1] to the other domain; same shape and range.

        direction: ``a2b`` (content from gen_a, decoded by gen_b) or ``b2a``.
        style: [B or 1, style_dim, 1, 1] (or [.., style_dim]) target-domain style codes, e.g.
            from :meth:`encode_style`; None samples one code per image from N(0, I) with
            ``generator`` (on its own device; the codes are then moved to ``x``'s device).
        """
        check_choice("direction", direction, DIRECTIONS)
        if direction == "a2b":
            source, target = self.gen_a, self.gen_b
        else:
            source, target = self.gen_b, self.gen_a
        content = source.encode_content(x)
        if style is None:
            style = self.sample_style(x.shape[0], generator, device=x.device, dtype=x.dtype)
        return target.decode(content, style.to(device=x.device, dtype=x.dtype))

    def encode_style(self, image: torch.Tensor, domain: str) -> torch.Tensor:
        """Style codes [B, style_dim, 1, 1] of images [B, C, H, W] in [-1, 1] from ``domain``.

        For example-guided a->b translation, encode a b-image: ``encode_style(img_b, 'b')``.
        """
        check_choice("domain", domain, DOMAINS)
        gen = self.gen_a if domain == "a" else self.gen_b
        return gen.encode_style(image)

    def sample_style(
        self,
        batch: int,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device] = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``batch`` style codes [batch, style_dim, 1, 1] drawn from N(0, I).

        The draw happens on ``generator``'s device (CPU for a CPU generator), so a seed gives the
        same codes whatever device the model runs on.
        """
        shape = (batch, self.config.style_dim, 1, 1)
        draw_device = generator.device if generator is not None else device
        codes = torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32)
        return codes.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------


@register("munit_discriminator", MUNITDiscriminatorConfig, "discriminator")
class MultiScaleDiscriminator(nn.Module):
    """Upstream ``MsImageDis``: one PatchGAN per scale, the input avg-pooled by 2 between scales.

    forward(x [B, C, H, W] in [-1, 1]) -> list of raw scores [B, 1, h_s, w_s], finest scale first.
    Parameter names match upstream (``cnns.{s}.{i}.conv.weight``).
    """

    def __init__(self, config: MUNITDiscriminatorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.cnns = nn.ModuleList([self._make_net(config) for _ in range(config.num_scales)])
        init_weights(self, "normal", gain=0.02)  # upstream: 'gaussian' init for D

    @staticmethod
    def _make_net(c: MUNITDiscriminatorConfig) -> nn.Sequential:
        dim = c.dim
        kw = dict(activ=c.activ, pad_type=c.pad_type)
        layers: List[nn.Module] = [Conv2dBlock(c.in_channels, dim, 4, 2, 1, norm="none", **kw)]
        for _ in range(c.n_layer - 1):
            layers.append(Conv2dBlock(dim, dim * 2, 4, 2, 1, norm=c.norm, **kw))
            dim *= 2
        layers.append(nn.Conv2d(dim, 1, 1, 1, 0))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outputs = []
        for k, net in enumerate(self.cnns):
            if k > 0:
                x = self.downsample(x)
            outputs.append(net(x))
        return outputs
