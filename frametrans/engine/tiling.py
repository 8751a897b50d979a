"""Split a frame into overlapping tiles, run a function on batches of tiles, blend them back.

Pure arithmetic plus a blend window, independent of any model: ``run_tiled(lambda t: t, x, ...)``
returns ``x`` (up to float32 rounding, ~1e-6).

Geometry
--------
Along each axis, tiles have size ``tile`` (clamped to the frame when the frame is smaller), start at
multiples of ``multiple`` (so every tile sees the strided layers' sampling grid of the full frame), the
first starts at 0, the last ends at the frame edge, and the starts are spread as evenly as the
``multiple`` grid allows, so neighbours overlap by at least ``overlap`` pixels (usually a bit more).
The frame's height and width must be multiples of ``multiple``: pad first
(:func:`frametrans.engine.padding.pad_to_multiple`).

Blending
--------
Each tile's output is weighted by :func:`blend_window`: 1 in the tile's interior and along the frame
edges; inside an overlap with a neighbour, 0 for an outer margin next to the tile's own edge, then a
raised-cosine ramp up to 1 across the middle ``ramp`` fraction of the overlap. The two neighbours'
ramps sum to 1. Weighted outputs and weights are accumulated and divided.

Why the zero margin: a tile's output is wrong within ``radius`` pixels of a cut edge (the model's
receptive field radius sees padding there instead of the neighbour's pixels). The margin is
``floor(overlap * (1 - ramp) / 2)`` pixels, so a purely convolutional model tiled with
``margin >= radius`` reproduces the full-frame output exactly (see
:func:`frametrans.engine.receptive.suggest_overlap`: ``overlap ~ 4 * radius`` for ``ramp=0.5``).
For models whose receptive field exceeds the overlap, the margin still discards the worst pixels and
the ramp hides what remains.

Batching
--------
Tiles are stacked along the batch dimension, ``batch_tiles`` at a time. A batch of tiles never mixes
frames: every call of ``fn`` gets tiles cut from a single sample of ``x`` (which is what frozen
normalization statistics, :mod:`frametrans.engine.normstats`, rely on). When one tile covers the whole
frame, ``fn`` is called once on the whole ``[B, C, H, W]`` input instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "TileBox",
    "plan_tiles",
    "blend_window",
    "blend_weight_sum",
    "iter_tile_batches",
    "ramp_weights",
    "run_tiled",
]


@dataclass(frozen=True)
class TileBox:
    """One tile: its box in frame pixels, and how far it overlaps its neighbour on each side.

    ``overlap_*`` is 0 on a side that touches the frame edge (no neighbour there).
    """

    top: int
    left: int
    height: int
    width: int
    overlap_top: int = 0
    overlap_bottom: int = 0
    overlap_left: int = 0
    overlap_right: int = 0

    @property
    def bottom(self) -> int:
        """One past the last row."""
        return self.top + self.height

    @property
    def right(self) -> int:
        """One past the last column."""
        return self.left + self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices, for ``frame[..., rows, cols]``."""
        return slice(self.top, self.bottom), slice(self.left, self.right)

    @property
    def overlaps(self) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` overlaps, the arguments of :func:`blend_window`."""
        return self.overlap_top, self.overlap_bottom, self.overlap_left, self.overlap_right


def _check_params(tile: int, overlap: int, multiple: int) -> None:
    if multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple}")
    if tile < multiple:
        raise ValueError(
            f"tile={tile} is smaller than the model's size multiple {multiple}; use tile >= {multiple}"
        )
    if tile % multiple:
        lo, hi = tile // multiple * multiple, (tile // multiple + 1) * multiple
        raise ValueError(f"tile={tile} is not a multiple of {multiple}; use {lo} or {hi}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if overlap >= tile:
        raise ValueError(f"overlap={overlap} must be smaller than tile={tile}")


def _check_step(tile: int, overlap: int, multiple: int) -> None:
    """Checked only when an axis needs several tiles (a frame that fits one tile never steps)."""
    if tile - overlap < multiple:
        raise ValueError(
            f"tile={tile} leaves a step of {tile - overlap} px after overlap={overlap}, less than the size "
            f"multiple {multiple}; use overlap <= {tile - multiple} or tile >= {overlap + multiple}"
        )


def _axis_starts(length: int, tile: int, overlap: int, multiple: int) -> tuple[list[int], int]:
    """Start offsets along one axis and the tile size used there (``min(tile, length)``)."""
    if length <= tile:
        return [0], length
    _check_step(tile, overlap, multiple)
    units = (length - tile) // multiple  # distance first start -> last start, in multiples
    max_step = (tile - overlap) // multiple  # >= 1
    steps = math.ceil(units / max_step)
    # floor(i * units / steps) grows by floor or ceil of units/steps <= max_step each time.
    return [(i * units // steps) * multiple for i in range(steps + 1)], tile


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> list[TileBox]:
    """Tile boxes covering a ``height x width`` frame, row-major.

    Args:
        height, width: frame size in pixels; both must be multiples of ``multiple``.
        tile: tile side in pixels, a multiple of ``multiple``; clamped to the frame side when the
            frame is smaller (then one tile spans that axis).
        overlap: minimum overlap between neighbouring tiles, ``0 <= overlap < tile``, and
            ``tile - overlap >= multiple`` when the frame needs more than one tile along an axis
            (tiles advance in whole multiples, so every tile sees the full frame's stride grid).
        multiple: the model's size multiple; tile starts and sizes are multiples of it.

    Raises:
        ValueError: one-line message naming the bad value and what would work.
    """
    _check_params(tile, overlap, multiple)
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty frame ({height}x{width})")
    if height % multiple or width % multiple:
        raise ValueError(
            f"frame {height}x{width} is not a multiple of {multiple}; pad it first "
            "(frametrans.engine.padding.pad_to_multiple)"
        )
    rows, tile_h = _axis_starts(height, tile, overlap, multiple)
    cols, tile_w = _axis_starts(width, tile, overlap, multiple)

    def overlaps(starts: list[int], size: int, i: int) -> tuple[int, int]:
        before = starts[i - 1] + size - starts[i] if i > 0 else 0
        after = starts[i] + size - starts[i + 1] if i + 1 < len(starts) else 0
        return before, after

    boxes = []
    for i, top in enumerate(rows):
        o_top, o_bottom = overlaps(rows, tile_h, i)
        for j, left in enumerate(cols):
            o_left, o_right = overlaps(cols, tile_w, j)
            boxes.append(TileBox(top, left, tile_h, tile_w, o_top, o_bottom, o_left, o_right))
    return boxes


def ramp_weights(length: int, overlap_before: int, overlap_after: int, ramp: float = 0.5) -> Tensor:
    """1-D blend weights ``[length]`` (float64) of one tile along one axis; see :func:`blend_window`."""
    weights = torch.ones(length, dtype=torch.float64)
    for overlap, flip in ((overlap_before, False), (overlap_after, True)):
        if overlap <= 0:
            continue
        overlap = min(overlap, length)
        margin = math.floor(overlap * (1.0 - ramp) / 2)
        ramp_len = overlap - 2 * margin  # same parity as overlap: the neighbour's ramp mirrors this one
        k = torch.arange(ramp_len, dtype=torch.float64)
        side = torch.ones(overlap, dtype=torch.float64)
        side[:margin] = 0.0
        side[margin : margin + ramp_len] = torch.sin(math.pi * (k + 0.5) / (2 * ramp_len)) ** 2
        if flip:
            weights[length - overlap :] *= side.flip(0)
        else:
            weights[:overlap] *= side
    return weights


def blend_window(
    h: int,
    w: int,
    overlap_top: int = 0,
    overlap_bottom: int = 0,
    overlap_left: int = 0,
    overlap_right: int = 0,
    *,
    ramp: float = 0.5,
) -> Tensor:
    """Blend weights ``[h, w]`` (float32, values in ``[0, 1]``) for one tile.

    1 everywhere except inside overlaps that touch a neighbour (a side with overlap 0 stays 1, e.g.
    at the frame edge). Inside an overlap of ``o`` pixels, walking from the tile's edge inwards:
    ``floor(o * (1 - ramp) / 2)`` pixels of 0, a raised-cosine ramp (sampled at pixel centres, so
    never exactly 0 or 1) across the middle ~``ramp * o`` pixels, then 1. The neighbour's window over
    the same overlap is the mirror image, and the two sum to 1. ``ramp=0`` gives a (near) hard seam
    in the middle of the overlap, ``ramp=1`` ramps over the whole overlap with no zero margin.
    The 2-D window is the outer product of the row and column ramps.
    """
    if not 0.0 <= ramp <= 1.0:
        raise ValueError(f"ramp must be in [0, 1], got {ramp}")
    rows = ramp_weights(h, overlap_top, overlap_bottom, ramp)
    cols = ramp_weights(w, overlap_left, overlap_right, ramp)
    return torch.outer(rows, cols).float()


def iter_tile_batches(
    x: Tensor, boxes: list[TileBox], batch_tiles: int
) -> Iterator[tuple[int, list[TileBox], Tensor]]:
    """Yield ``(sample, boxes, tiles)``: up to ``batch_tiles`` tiles ``[n, C, h, w]`` of ``x[sample]``.

    Sample-major, boxes in plan order; a batch never mixes samples. Tiles are copies (``torch.stack``).
    """
    for b in range(x.shape[0]):
        for i in range(0, len(boxes), batch_tiles):
            group = boxes[i : i + batch_tiles]
            yield b, group, torch.stack([x[b, :, rows, cols] for rows, cols in (box.slices for box in group)])


def blend_weight_sum(
    boxes: list[TileBox], height: int, width: int, *, ramp: float = 0.5, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Sum ``[height, width]`` of all tiles' blend windows; strictly positive wherever the boxes cover.

    ``blend_window(box) / blend_weight_sum(...)[box]`` is each tile's share of a pixel: the shares of
    all tiles sum to 1 at every pixel.
    """
    total = torch.zeros(height, width, dtype=dtype)
    for box in boxes:
        rows, cols = box.slices
        total[rows, cols] += blend_window(box.height, box.width, *box.overlaps, ramp=ramp).to(dtype)
    return total


def run_tiled(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    tile: int,
    overlap: int,
    multiple: int = 1,
    out_channels: int | None = None,
    batch_tiles: int = 8,
    *,
    ramp: float = 0.5,
) -> Tensor:
    """Run ``fn`` tile by tile over ``x`` and blend the tiles into one output frame.

    Args:
        fn: maps ``[N, C_in, h, w]`` to ``[N, C_out, h, w]`` (same spatial size) for any ``N`` up
            to ``batch_tiles`` and any tile size the plan produces; ``C_out`` may differ from ``C_in``.
        x: ``[B, C_in, H, W]`` floating point, ``H`` and ``W`` multiples of ``multiple`` (pad first).
        tile, overlap, multiple: see :func:`plan_tiles`.
        out_channels: expected ``C_out``; checked against ``fn``'s output when given.
        batch_tiles: at most this many tiles (all from the same sample of ``x``) per call of ``fn``.
        ramp: fraction of each overlap the blend ramp spans, see :func:`blend_window`.

    Returns:
        ``[B, C_out, H, W]`` with ``fn``'s output dtype and device. Weights are accumulated in float32
        (float64 if ``fn`` returns float64). If one tile covers the frame, this is ``fn(x)``.
    """
    if x.dim() != 4:
        raise ValueError(f"expected x of shape [B, C, H, W], got {tuple(x.shape)}")
    if batch_tiles < 1:
        raise ValueError(f"batch_tiles must be >= 1, got {batch_tiles}")
    if not 0.0 <= ramp <= 1.0:
        raise ValueError(f"ramp must be in [0, 1], got {ramp}")
    batch, _, height, width = x.shape
    boxes = plan_tiles(height, width, tile, overlap, multiple)

    if len(boxes) == 1:
        out = fn(x)
        _check_output(out, batch, height, width, out_channels)
        return out

    blend = _Blend(batch, height, width, ramp)
    for b, group, tiles in iter_tile_batches(x, boxes, batch_tiles):
        out = fn(tiles)
        _check_output(out, len(group), group[0].height, group[0].width, out_channels)
        blend.add(b, group, out)
    return blend.result()


class _Blend:
    """Window-weighted sums of tile outputs and of the windows; ``result`` divides them."""

    def __init__(self, batch: int, height: int, width: int, ramp: float) -> None:
        self.shape, self.ramp = (batch, height, width), ramp
        self.windows: dict[tuple[int, ...], Tensor] = {}
        self.acc: Tensor | None = None
        self.weight_sum: Tensor | None = None
        self.out_dtype = torch.float32

    def add(self, b: int, group: list[TileBox], out: Tensor) -> None:
        """The outputs ``out [n, C, h, w]`` of tiles ``group`` of sample ``b``."""
        if self.acc is None:
            batch, height, width = self.shape
            dtype = torch.float64 if out.dtype == torch.float64 else torch.float32
            self.acc = torch.zeros(batch, out.shape[1], height, width, dtype=dtype, device=out.device)
            self.weight_sum = torch.zeros(height, width, dtype=dtype, device=out.device)
            self.out_dtype = out.dtype
        acc, weight_sum = self.acc, self.weight_sum
        for box, y in zip(group, out):
            key = (box.height, box.width, *box.overlaps)
            if key not in self.windows:
                self.windows[key] = blend_window(*key, ramp=self.ramp).to(device=acc.device, dtype=acc.dtype)
            window = self.windows[key]
            rows, cols = box.slices
            acc[b, :, rows, cols].addcmul_(y.to(acc.dtype), window)
            if b == 0:  # the weights are the same for every sample
                weight_sum[rows, cols] += window

    def result(self) -> Tensor:
        assert self.acc is not None and self.weight_sum is not None
        return self.acc.div_(self.weight_sum).to(self.out_dtype)


def _check_output(out: Tensor, n: int, h: int, w: int, out_channels: int | None) -> None:
    if not isinstance(out, Tensor) or out.dim() != 4:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the tiled function must return a [N, C, H, W] tensor, got {shape}")
    if out.shape[0] != n or out.shape[2:] != (h, w):
        raise ValueError(
            f"the tiled function turned {n} tiles of {h}x{w} into {tuple(out.shape)}; it must keep "
            "the batch size and the spatial size"
        )
    if out_channels is not None and out.shape[1] != out_channels:
        raise ValueError(
            f"the tiled function returned {out.shape[1]} channels, expected out_channels={out_channels}"
        )
