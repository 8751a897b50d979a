"""Pad a frame up to a model's size multiple, and crop the padding off again.

Pure functions, no state, no model. Padding goes on the **bottom and right** only: pixel (0, 0) of
the padded frame is pixel (0, 0) of the source, so tile boxes, crops and error messages use the same
coordinates as the source, and :func:`crop` is a plain slice. (Symmetric padding would centre the
frame, but buys nothing for fully convolutional generators and makes every coordinate shift.)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Pads", "pad_to_multiple", "crop", "padding_for"]

#: (top, bottom, left, right) in pixels, as returned by :func:`pad_to_multiple`.
Pads = tuple[int, int, int, int]

_MODES = ("reflect", "replicate", "constant")


def min_side(multiple: int) -> int:
    """Smallest padded side worth feeding a model with this size multiple: two strides for shallow
    models, so the innermost feature map is at least 2x2 (instance normalization needs more than one
    value per channel), one stride for deep ones (a U-Net-256's innermost block has no norm)."""
    return 2 * multiple if 1 < multiple <= 16 else multiple


def padding_for(height: int, width: int, multiple: int, min_size: int = 0) -> Pads:
    """The (top, bottom, left, right) padding that makes ``height x width`` a multiple of ``multiple``
    and, when ``min_size`` is given, at least ``min_size`` on each side.

    Always ``top == left == 0``; without ``min_size``, ``bottom, right < multiple``.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple}")
    if height < 1 or width < 1:
        raise ValueError(f"cannot pad an empty frame ({height}x{width})")
    return 0, max((-height) % multiple, min_size - height), 0, max((-width) % multiple, min_size - width)


def _pad_dim(x: Tensor, dim: int, after: int, mode: str) -> Tensor:
    """Append ``after`` rows/columns along ``dim`` (``-2`` or ``-1``) using index gathering.

    Index gathering (rather than ``F.pad``) works for every dtype, uint8 included, on every device.
    """
    if after == 0:
        return x
    size = x.shape[dim]
    if mode == "constant":
        shape = list(x.shape)
        shape[dim] = after
        return torch.cat([x, x.new_zeros(shape)], dim=dim)
    extra = torch.arange(size, size + after, device=x.device)
    if mode == "reflect" and after < size:
        extra = 2 * (size - 1) - extra  # mirror about the last row/column, edge not repeated
    else:  # replicate, or reflect on an axis too short to mirror
        extra = torch.full_like(extra, size - 1)
    index = torch.cat([torch.arange(size, device=x.device), extra])
    return x.index_select(dim, index)


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "reflect", min_size: int = 0
                    ) -> tuple[Tensor, Pads]:
    """Pad the bottom and right of ``x`` so height and width become multiples of ``multiple``.

    Args:
        x: ``[..., H, W]`` (normally ``[B, C, H, W]``), any dtype and device; values are untouched.
        multiple: the model's size multiple (``2 ** n_downsamplings``); ``1`` pads nothing.
        mode: ``"reflect"`` (mirror without repeating the edge, like ``F.pad(mode="reflect")``),
            ``"replicate"`` (repeat the edge) or ``"constant"`` (zeros).
            Reflect needs ``pad < size`` along an axis: for tiny inputs (a 1x1 frame, or 7x13 padded
            to a multiple of 16) that axis falls back to **replicate**; the other axis still reflects.
        min_size: pad each side to at least this (a multiple of ``multiple``), e.g.
            :func:`min_side` so that tiny frames still leave the model's innermost map 2x2.

    Returns:
        ``(padded, pads)``: ``padded`` is ``[..., H + bottom, W + right]`` with the same dtype and
        device; ``pads == (top, bottom, left, right) == (0, bottom, 0, right)``, for :func:`crop`.
    """
    if mode not in _MODES:
        raise ValueError(f"unknown padding mode {mode!r}; use one of {', '.join(_MODES)}")
    if x.dim() < 2:
        raise ValueError(f"expected a [..., H, W] tensor, got shape {tuple(x.shape)}")
    pads = padding_for(x.shape[-2], x.shape[-1], multiple, min_size)
    _, bottom, _, right = pads
    x = _pad_dim(x, -2, bottom, mode)
    x = _pad_dim(x, -1, right, mode)
    return x, pads


def crop(x: Tensor, pads: Pads) -> Tensor:
    """Remove ``pads = (top, bottom, left, right)`` from ``x [..., H, W]``; the inverse of padding.

    Returns a view ``[..., H - top - bottom, W - left - right]``.
    """
    top, bottom, left, right = pads
    height, width = x.shape[-2], x.shape[-1]
    if min(pads) < 0 or top + bottom >= height or left + right >= width:
        raise ValueError(f"cannot crop pads {pads} from a {height}x{width} frame")
    return x[..., top : height - bottom, left : width - right]
