"""Crop sizes and network depths that fit each other: pure arithmetic, no torch.

Each method's networks accept crops that are a multiple of some power of two (the generator's
downsamplings) and at least some side (the discriminator's stride-2 layers must leave a patch map).
This module answers, for resolved options:

- :func:`default_crop`: the crop when none is given, ``min(size, 256)``;
- :func:`largest_unet_depth`: the deepest U-Net (at most the reference's 8 downsamplings) whose
  size multiple divides the crop, pix2pix's default ``--num-downs``;
- :func:`check_fit`: a one-line ValueError when the crop does not fit the networks, naming the
  smallest crop that works (or why none near it does).

The checks run before any data is read or network built, so a too-small size fails at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

MAX_DEFAULT_CROP = 256
MAX_UNET_DEPTH = 8  # upstream unet_256
MIN_UNET_DEPTH = 2  # frametrans.models.unet.UNetConfig refuses fewer
_LARGEST_CROP_SEARCHED = 1 << 16


def default_crop(size: int) -> int:
    """The crop side when ``--crop`` is not given: the load size, at most 256 (the reference)."""
    return min(size, MAX_DEFAULT_CROP)


def largest_unet_depth(crop: int, cap: int = MAX_UNET_DEPTH) -> Optional[int]:
    """The largest ``n <= cap`` (and >= 2) with ``crop`` a multiple of ``2**n``; None if none."""
    for n in range(cap, MIN_UNET_DEPTH - 1, -1):
        if crop % 2**n == 0:
            return n
    return None


def patchgan_output_size(size: int, n_layers: int) -> int:
    """Side of a PatchGAN's logit map for an input of side ``size`` (k4 convs: ``n_layers``
    stride-2 ones, then two stride-1 ones)."""
    for _ in range(n_layers):
        size = (size + 2 - 4) // 2 + 1
    return size - 2


def munit_discriminator_fits(crop: int, n_layer: int, num_scales: int) -> bool:
    """Every scale of MUNIT's multi-scale discriminator survives ``n_layer`` stride-2 convs with
    reflect padding 1 (each needs an input of at least 2 px); scales are AvgPool2d(3, 2, 1)."""
    size = crop
    for scale in range(num_scales):
        if scale:
            size = (size + 1) // 2
        s = size
        for _ in range(n_layer):
            if s < 2:
                return False
            s //= 2
    return True


@dataclass(frozen=True)
class Fit:
    """What a method's networks need of a crop: a multiple of ``multiple``, and ``big_enough``
    (monotonic: once true for a crop, true for every larger one). ``nets`` names them in errors,
    ``knobs`` the options that would relax them."""

    multiple: int
    big_enough: Callable[[int], bool]
    nets: str
    knobs: str

    def smallest(self) -> int:
        """The smallest crop that is a multiple of ``multiple`` and big enough."""
        crop = self.multiple
        while crop <= _LARGEST_CROP_SEARCHED:
            if self.big_enough(crop):
                return crop
            crop += self.multiple
        raise ValueError(f"no crop up to {_LARGEST_CROP_SEARCHED} px fits {self.nets}; use fewer {self.knobs}")


def fit_of(method: str, o: object) -> Optional[Fit]:
    """The crop requirements of ``method`` with options ``o`` (attributes as the option names;
    a pix2pix ``num_downs`` of None: the depth is still to be chosen). None for other methods."""
    g = lambda name: getattr(o, name)  # noqa: E731
    if method == "pix2pix":
        n, k = g("num_downs"), g("n_layers_d")
        if n is None:  # depth still to choose: any multiple of 2**MIN_UNET_DEPTH has one
            return Fit(2**MIN_UNET_DEPTH, lambda c: patchgan_output_size(c, k) >= 1,
                       f"pix2pix's U-Net (at least {MIN_UNET_DEPTH} downsamplings) and PatchGAN "
                       f"(--n-layers-d {k})", "--n-layers-d")
        return Fit(2**n, lambda c: c >= 2**n and patchgan_output_size(c, k) >= 1,
                   f"pix2pix's U-Net (--num-downs {n}) and PatchGAN (--n-layers-d {k})",
                   "--num-downs or --n-layers-d")
    if method == "cyclegan":
        k = g("n_layers_d")
        return Fit(4, lambda c: patchgan_output_size(c, k) >= 1,
                   f"CycleGAN's ResNet generator (2 downsamplings) and PatchGAN (--n-layers-d {k})",
                   "--n-layers-d")
    if method == "munit":
        n, layers, scales = g("n_downsample"), g("dis_layers"), g("dis_scales")
        return Fit(2**n, lambda c: c >= 2**n and munit_discriminator_fits(c, layers, scales),
                   f"MUNIT's auto-encoder (--n-downsample {n}) and discriminator (--dis-layers "
                   f"{layers} at --dis-scales {scales})", "--dis-layers or --dis-scales")
    if method == "predictor":
        d = g("depth")
        return Fit(2**d, lambda c: c >= 2**d, f"the predictor's U-Net (--depth {d})", "--depth")
    return None


def check_fit(method: str, o: object, crop: int, crop_given: bool = True) -> None:
    """Raise a one-line ValueError when crops of ``crop`` px do not fit ``method``'s networks.

    crop_given: the crop was set by the user (``--crop``), not derived from ``--size``; the error
    then names the option to change.
    """
    fit = fit_of(method, o)
    if fit is None:
        return
    smallest = fit.smallest()
    option = "--crop" if crop_given else "--size"
    if crop % fit.multiple:
        below, above = crop - crop % fit.multiple, crop - crop % fit.multiple + fit.multiple
        near = f"{below} or {above}" if below >= smallest else str(max(above, smallest))
        raise ValueError(f"{option} {crop} is not a multiple of {fit.multiple} ({fit.nets}); "
                         f"use {option} {near}, or fewer {fit.knobs}")
    if crop < smallest:
        raise ValueError(f"{option} {crop} is too small for {fit.nets}; the smallest size that works "
                         f"is {smallest} ({option} {smallest}), or use fewer {fit.knobs}")
