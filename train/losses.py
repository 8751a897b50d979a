"""GAN objectives and the WGAN-GP gradient penalty.

Discriminators return raw logits (no sigmoid); each mode reads them its own way:

    mode      discriminator loss (real, fake)                 generator loss (fake)
    vanilla   BCEWithLogits(real, 1) + BCEWithLogits(fake, 0)  BCEWithLogits(fake, 1)
    lsgan     mean((real - 1)^2) + mean(fake^2)                mean((fake - 1)^2)
    hinge     mean(relu(1 - real)) + mean(relu(1 + fake))      -mean(fake)
    wgan-gp   -mean(real) + mean(fake)  (+ gradient_penalty)   -mean(fake)

A multi-scale discriminator (MUNIT) returns a list of score maps: the loss is the sum over scales,
as upstream MUNIT does. Losses are computed in float32 whatever the autocast dtype of the logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from frametrans.io.errors import first_line

if TYPE_CHECKING:
    from frametrans.train.distributed import Shard

Logits = Union[torch.Tensor, Sequence[torch.Tensor]]


def _vanilla(pred: torch.Tensor, real: bool, for_discriminator: bool) -> torch.Tensor:
    target = torch.full_like(pred, 1.0 if real else 0.0)
    return F.binary_cross_entropy_with_logits(pred, target)


def _lsgan(pred: torch.Tensor, real: bool, for_discriminator: bool) -> torch.Tensor:
    return torch.mean((pred - (1.0 if real else 0.0)) ** 2)


def _hinge(pred: torch.Tensor, real: bool, for_discriminator: bool) -> torch.Tensor:
    if not for_discriminator:  # the generator pushes the critic's score up, unbounded
        return -pred.mean()
    return F.relu(1.0 - pred).mean() if real else F.relu(1.0 + pred).mean()


def _wasserstein(pred: torch.Tensor, real: bool, for_discriminator: bool) -> torch.Tensor:
    return -pred.mean() if real else pred.mean()


# mode name -> loss of one score map; explicit on purpose (no getattr lookups by name)
GAN_LOSSES: Dict[str, Callable[[torch.Tensor, bool, bool], torch.Tensor]] = {
    "vanilla": _vanilla,
    "lsgan": _lsgan,
    "hinge": _hinge,
    "wgan-gp": _wasserstein,
}


class GANLoss(nn.Module):
    """The adversarial loss of one GAN mode (see the module docstring).

    ``loss(pred, target_is_real, for_discriminator=True)``: pred is a logit map [B, 1, h, w] (any
    float dtype) or a list of them (multi-scale); returns a float32 scalar.
    For the generator call ``loss(D(fake), True, for_discriminator=False)``.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in GAN_LOSSES:
            raise ValueError(f"unknown GAN mode {mode!r}; use one of: {', '.join(GAN_LOSSES)}")
        self.mode = mode
        self._fn = GAN_LOSSES[mode]

    @property
    def needs_gradient_penalty(self) -> bool:
        return self.mode == "wgan-gp"

    def forward(self, pred: Logits, target_is_real: bool, for_discriminator: bool = True) -> torch.Tensor:
        preds = [pred] if isinstance(pred, torch.Tensor) else list(pred)
        total = preds[0].new_zeros((), dtype=torch.float32)
        for p in preds:
            total = total + self._fn(p.float(), target_is_real, for_discriminator)
        return total


def gradient_penalty(
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float = 10.0,
    kind: str = "mixed",
    target_norm: float = 1.0,
    generator: Optional[torch.Generator] = None,
    shard: Optional["Shard"] = None,
) -> torch.Tensor:
    """WGAN-GP penalty ``weight * mean((||grad_x D(x)||_2 - target_norm)^2)`` (Gulrajani et al.).

    real, fake: the discriminator's inputs [B, C, H, W] (for pix2pix the concatenated pairs).
    kind: ``mixed`` (x = a*real + (1-a)*fake, a ~ U(0, 1) per sample), ``real`` or ``fake``.
    generator: draws the mixing weights (on its own device, then moved), so runs are reproducible.
    shard: with DDP, the weights are drawn for the global batch and this rank's slice is used, so
        the penalty equals the single-process one (the mean over ranks of the local means).
    Run in float32 with autocast off: the penalty differentiates through D twice.
    Returns a float32 scalar with a graph to D's parameters.
    """
    if kind == "real":
        x = real
    elif kind == "fake":
        x = fake
    elif kind == "mixed":
        draw_device = generator.device if generator is not None else real.device
        world = 1 if shard is None else shard.world
        alpha = torch.rand((real.shape[0] * world, 1, 1, 1), generator=generator, device=draw_device)
        alpha = alpha if shard is None else shard.local(alpha)
        alpha = alpha.to(real.device)
        x = alpha * real.detach().float() + (1.0 - alpha) * fake.detach().float()
    else:
        raise ValueError(f"unknown gradient penalty kind {kind!r}; use mixed, real or fake")
    x = x.detach().float().requires_grad_(True)
    with torch.autocast(x.device.type, enabled=False):
        out = discriminator(x)
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        score = sum(o.float().sum() for o in outs)
        (grad,) = torch.autograd.grad(score, x, create_graph=True)
    norms = torch.sqrt(grad.flatten(1).pow(2).sum(dim=1) + 1e-12)  # [B]; eps: finite grad at 0
    return weight * ((norms - target_norm) ** 2).mean()


# torchvision's VGG16 "D" configuration up to conv4_3: channels per 3x3 conv, "M" = max-pool
_VGG16_TO_RELU4_3 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features[:23]`` (through relu4_3), same layer indices and names."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG16_TO_RELU4_3:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            cin = int(v)
    return nn.Sequential(*layers)


class VGGPerceptualLoss(nn.Module):
    """MUNIT's domain-invariant perceptual loss on VGG16 relu4_3 features.

    ``loss(img, target)`` = mean((IN(vgg(img)) - IN(vgg(target)))^2), IN = instance norm without
    affine (upstream ``compute_vgg_loss``). Images are [B, 3, H, W] in [-1, 1]; they are mapped to
    [0, 1] and normalised with the ImageNet mean/std that torchvision's VGG16 weights expect
    (upstream used the Caffe VGG in BGR 0..255; the torchvision weights are what people have).

    weights: a torchvision VGG16 state dict file (``features.N.*`` keys, classifier keys ignored; a
    features-only dict without the prefix works too), read with ``torch.load(weights_only=True)``.
    Nothing is downloaded. The network is frozen and kept out of the training state.
    """

    def __init__(self, weights: str) -> None:
        super().__init__()
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"--vgg-weights {weights}: no such file") from None
        except Exception as exc:  # unpickling refusals, corrupt files
            raise ValueError(f"--vgg-weights {weights}: not a readable state dict "
                             f"({first_line(exc)[:120]})") from None
        if not isinstance(state, dict):
            raise ValueError(f"--vgg-weights {weights}: holds a {type(state).__name__}, expected a state dict")
        with torch.device("meta"):  # no init work: every tensor comes from the file
            features = vgg16_features()
        wanted = features.state_dict()
        picked = {}
        for key in wanted:
            for candidate in (f"features.{key}", key, f"module.features.{key}"):
                if candidate in state:
                    picked[key] = state[candidate]
                    break
        missing = sorted(set(wanted) - set(picked))
        if missing:
            raise ValueError(
                f"--vgg-weights {weights}: not a torchvision VGG16 state dict "
                f"({len(missing)} of {len(wanted)} feature tensors missing, e.g. features.{missing[0]})"
            )
        bad = [k for k, v in wanted.items() if tuple(picked[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(
                f"--vgg-weights {weights}: features.{bad[0]} has shape {tuple(picked[bad[0]].shape)}, "
                f"VGG16 has {tuple(wanted[bad[0]].shape)}"
            )
        features = features.to_empty(device="cpu")
        try:
            features.load_state_dict({k: v.float() for k, v in picked.items()})
        except RuntimeError as exc:
            raise ValueError(f"--vgg-weights {weights}: shapes do not fit VGG16 ({str(exc).splitlines()[-1].strip()[:120]})") from None
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        super().train(mode)
        self.features.eval()  # frozen: always inference behaviour
        return self

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return F.instance_norm(self.features(x).float())

    def forward(self, img: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.mean((self._features(img) - self._features(target)) ** 2)
