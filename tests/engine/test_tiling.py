"""Padding, tile planning, blend windows, run_tiled and receptive fields (frametrans.engine).

Tolerances: identity tiling reproduces the input to 2e-6 (float32 rounding, values in [0, 1))
and 1e-12 (float64); a convolution-only model tiled with
``suggest_overlap(receptive_field(...))`` equals the untiled output to 1e-5 (measured ~3e-8).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from frametrans.engine.padding import crop, pad_to_multiple, padding_for
from frametrans.engine.receptive import receptive_field, suggest_overlap
from frametrans.engine.tiling import (
    TileBox,
    blend_weight_sum,
    blend_window,
    plan_tiles,
    ramp_weights,
    run_tiled,
)


def _frame(b: int, c: int, h: int, w: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------------------------
# padding


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (16, 16), (17, 31), (100, 3), (64, 65)])
@pytest.mark.parametrize("multiple", [1, 4, 16])
@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
def test_pad_to_multiple_shapes_and_crop_inverse(size, multiple, mode):
    h, w = size
    x = _frame(2, 3, h, w)
    padded, pads = pad_to_multiple(x, multiple, mode)
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert padded.shape[-2] - h < multiple and padded.shape[-1] - w < multiple
    assert pads == (0, padded.shape[-2] - h, 0, padded.shape[-1] - w) == padding_for(h, w, multiple)
    assert torch.equal(padded[..., :h, :w], x)  # bottom/right padding: the origin stays put
    assert torch.equal(crop(padded, pads), x)


def test_reflect_matches_torch_where_possible():
    x = _frame(1, 2, 10, 11)
    padded, (_, bottom, _, right) = pad_to_multiple(x, 8)
    assert (bottom, right) == (6, 5)
    assert torch.equal(padded, F.pad(x, (0, right, 0, bottom), mode="reflect"))


def test_reflect_falls_back_to_replicate_on_tiny_axes():
    x = _frame(1, 1, 7, 13)
    padded, _ = pad_to_multiple(x, 16)  # needs 9 rows (> 6 mirrorable) and 3 columns (fine)
    assert padded.shape[-2:] == (16, 16)
    assert torch.equal(padded[..., 7:, :13], x[..., 6:7, :].expand(1, 1, 9, 13))  # rows: replicate
    assert torch.equal(padded[..., :7, 13:], x[..., :, [11, 10, 9]])  # columns: still reflect
    one = torch.tensor([[[[5.0]]]])
    assert torch.equal(pad_to_multiple(one, 4)[0], torch.full((1, 1, 4, 4), 5.0))


def test_pad_uint8_and_constant():
    x = torch.arange(12, dtype=torch.uint8).view(1, 1, 3, 4)
    padded, pads = pad_to_multiple(x, 4)
    assert padded.dtype == torch.uint8 and padded.shape[-2:] == (4, 4)
    assert torch.equal(padded[0, 0, 3], x[0, 0, 1])
    zeros, _ = pad_to_multiple(x, 4, "constant")
    assert torch.equal(zeros[0, 0, 3], torch.zeros(4, dtype=torch.uint8))


def test_padding_errors():
    x = _frame(1, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown padding mode"):
        pad_to_multiple(x, 4, "circular")
    with pytest.raises(ValueError, match="multiple"):
        pad_to_multiple(x, 0)
    with pytest.raises(ValueError, match="cannot crop"):
        crop(x, (0, 4, 0, 0))


# --------------------------------------------------------------------------------------------------
# plan_tiles


def _check_plan(height: int, width: int, tile: int, overlap: int, multiple: int) -> list[TileBox]:
    boxes = plan_tiles(height, width, tile, overlap, multiple)
    covered = torch.zeros(height, width, dtype=torch.int32)
    th, tw = min(tile, height), min(tile, width)
    for box in boxes:
        assert (box.height, box.width) == (th, tw)
        assert box.top % multiple == 0 and box.left % multiple == 0
        assert 0 <= box.top and box.bottom <= height and 0 <= box.left and box.right <= width
        covered[box.slices] += 1
    assert covered.min() >= 1, "a pixel is not covered"
    tops = sorted({b.top for b in boxes})
    lefts = sorted({b.left for b in boxes})
    assert len(boxes) == len(tops) * len(lefts)  # a grid, no duplicates
    for starts, size, length in ((tops, th, height), (lefts, tw, width)):
        assert starts[0] == 0 and starts[-1] + size == length  # first at 0, last at the edge
        for a, b in zip(starts, starts[1:]):
            assert a < b and a + size - b >= overlap  # neighbours overlap by at least `overlap`
    for box in boxes:  # recorded overlaps match the neighbours (0 at frame edges)
        up = [b for b in boxes if b.left == box.left and b.bottom > box.top and b.top < box.top]
        assert box.overlap_top == (max(b.bottom for b in up) - box.top if up else 0)
        below = [t for t in tops if t > box.top]
        assert box.overlap_bottom == (box.bottom - below[0] if below else 0)
        right = [t for t in lefts if t > box.left]
        assert box.overlap_right == (box.right - right[0] if right else 0)
    return boxes


@pytest.mark.parametrize(
    "height,width,tile,overlap,multiple",
    [
        (100, 60, 32, 8, 4),
        (7, 13, 16, 4, 1),  # frame smaller than the tile: clamped, one tile
        (64, 64, 64, 8, 8),  # tile == frame
        (40, 200, 48, 16, 8),
        (33, 35, 8, 0, 1),  # no overlap
        (64, 96, 32, 28, 4),  # overlap = tile - multiple: step of one multiple
        (256, 256, 256, 16, 256),  # one tile: the step is never taken, so no error
        (768, 256, 512, 256, 256),
        (1, 1, 1, 0, 1),
    ],
)
def test_plan_tiles_covers_every_pixel(height, width, tile, overlap, multiple):
    _check_plan(height, width, tile, overlap, multiple)


@settings(max_examples=60, deadline=None)
@given(
    multiple=st.sampled_from([1, 2, 4, 8]),
    hu=st.integers(1, 40),
    wu=st.integers(1, 40),
    tu=st.integers(1, 12),
    data=st.data(),
)
def test_plan_tiles_property(multiple, hu, wu, tu, data):
    tile = tu * multiple
    overlap = data.draw(st.integers(0, tile - multiple))
    _check_plan(hu * multiple, wu * multiple, tile, overlap, multiple)


@pytest.mark.parametrize(
    "args,message",
    [
        ((64, 64, 16, 16, 1), "overlap=16 must be smaller than tile=16"),
        ((64, 64, 16, 20, 1), "overlap=20 must be smaller than tile=16"),
        ((64, 64, 20, 4, 8), "tile=20 is not a multiple of 8; use 16 or 24"),
        ((64, 64, 4, 0, 8), "tile=4 is smaller than the model's size multiple 8"),
        ((64, 64, 32, 28, 8), "less than the size multiple 8; use overlap <= 24 or tile >= 36"),
        ((512, 256, 256, 16, 256), "use overlap <= 0 or tile >= 272"),
        ((64, 64, 16, -1, 1), "overlap must be >= 0"),
        ((66, 64, 16, 4, 4), "frame 66x64 is not a multiple of 4; pad it first"),
        ((64, 64, 16, 4, 0), "multiple must be a positive integer"),
        ((0, 64, 16, 4, 1), "empty frame"),
    ],
)
def test_plan_tiles_validation(args, message):
    with pytest.raises(ValueError) as info:
        plan_tiles(*args)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# blend windows


def test_blend_window_is_one_without_overlaps():
    assert torch.equal(blend_window(5, 7), torch.ones(5, 7))
    assert torch.equal(blend_window(5, 7, 0, 0, 0, 0, ramp=0.0), torch.ones(5, 7))


@pytest.mark.parametrize("overlap", [1, 2, 5, 8, 17])
@pytest.mark.parametrize("ramp", [0.0, 0.25, 0.5, 1.0])
def test_blend_ramps_of_neighbours_sum_to_one(overlap, ramp):
    rising = ramp_weights(32, overlap, 0, ramp)[:overlap]
    falling = ramp_weights(32, 0, overlap, ramp)[-overlap:]
    assert torch.allclose(rising + falling, torch.ones(overlap, dtype=torch.float64), atol=1e-12)
    assert rising.min() >= 0 and rising.max() <= 1
    margin = math.floor(overlap * (1 - ramp) / 2)
    assert torch.all(rising[:margin] == 0)  # zero margin next to the tile's own edge
    assert torch.all(rising[margin:] > 0)
    assert torch.all(ramp_weights(32, overlap, 0, ramp)[overlap:] == 1)


def test_blend_window_only_ramps_touching_sides():
    w = blend_window(16, 16, 8, 0, 0, 4)
    assert w.dtype == torch.float32 and w.shape == (16, 16)
    assert torch.all(w[6:, :13] == 1)  # interior and the free bottom/left sides
    assert torch.all(w[:2, :] == 0)  # top margin: floor(8 * 0.5 / 2) = 2 rows, then a 4-row ramp
    assert torch.all((w[2:6, :13] > 0) & (w[2:6, :13] < 1))
    assert torch.all(w[:, -1] == 0)  # right margin: 1 column, then a 2-column ramp
    assert torch.all((w[2:, 13:15] > 0) & (w[2:, 13:15] < 1))
    with pytest.raises(ValueError, match="ramp"):
        blend_window(4, 4, ramp=1.5)


def test_blend_weight_sum_positive_everywhere():
    boxes = plan_tiles(96, 80, 32, 20, 4)
    total = blend_weight_sum(boxes, 96, 80)
    assert total.min() > 0.5


# --------------------------------------------------------------------------------------------------
# run_tiled


@pytest.mark.parametrize(
    "shape,tile,overlap,multiple",
    [
        ((1, 3, 37, 53), 16, 4, 1),  # odd sizes
        ((2, 3, 37, 53), 16, 0, 1),  # no overlap, two frames
        ((1, 1, 64, 48), 32, 31, 1),  # overlap = tile - 1
        ((1, 3, 64, 64), 64, 16, 8),  # tile == frame
        ((1, 3, 24, 40), 128, 16, 8),  # tile > frame
        ((1, 3, 24, 200), 32, 24, 8),  # one row of tiles
        ((3, 2, 100, 60), 32, 12, 4),
        ((1, 3, 33, 35), 8, 7, 1),  # many tiny tiles, ramp wider than half the tile
    ],
)
@pytest.mark.parametrize("batch_tiles", [1, 5, 64])
def test_identity_reproduces_input(shape, tile, overlap, multiple, batch_tiles):
    x = _frame(*shape)
    y = run_tiled(lambda t: t.clone(), x, tile, overlap, multiple, batch_tiles=batch_tiles)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert (y - x).abs().max() <= 2e-6  # float32 rounding; exact pixels where one tile covers


@pytest.mark.parametrize("ramp", [0.0, 0.5, 1.0])
def test_identity_float64_and_ramps(ramp):
    x = _frame(1, 2, 45, 70, torch.float64)
    y = run_tiled(lambda t: t, x, 24, 10, 1, ramp=ramp)
    assert y.dtype == torch.float64
    assert (y - x).abs().max() <= 1e-12


def test_channel_change_pointwise_is_exact():
    mix = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))

    def fn(t: torch.Tensor) -> torch.Tensor:  # C_in=3 -> C_out=5, per pixel
        return torch.einsum("oc,nchw->nohw", mix, t)

    x = _frame(2, 3, 50, 41)
    y = run_tiled(fn, x, 16, 6, 1, out_channels=5)
    assert y.shape == (2, 5, 50, 41)
    assert (y - fn(x)).abs().max() <= 1e-5


def test_batches_never_mix_frames():
    x = torch.arange(2, dtype=torch.float32).view(2, 1, 1, 1).expand(2, 1, 40, 40).contiguous()
    calls = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        calls.append((t.shape[0], sorted(set(t.flatten().tolist()))))
        return t

    run_tiled(fn, x, 16, 4, 1, batch_tiles=3)
    assert calls and all(n <= 3 and len(values) == 1 for n, values in calls)
    assert sum(n for n, _ in calls) == 2 * len(plan_tiles(40, 40, 16, 4, 1))


def test_single_tile_calls_fn_on_whole_batch():
    x = _frame(3, 2, 16, 16)
    shapes = []
    run_tiled(lambda t: shapes.append(t.shape) or t, x, 32, 8, 1)
    assert shapes == [x.shape]


def test_run_tiled_errors():
    x = _frame(1, 3, 32, 32)
    with pytest.raises(ValueError, match="keep the batch size and the spatial size"):
        run_tiled(lambda t: t[..., :-1], x, 16, 4, 1)
    with pytest.raises(ValueError, match="expected out_channels=4"):
        run_tiled(lambda t: t, x, 16, 4, 1, out_channels=4)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        run_tiled(lambda t: t, x[0], 16, 4, 1)
    with pytest.raises(ValueError, match="overlap=16 must be smaller than tile=16"):
        run_tiled(lambda t: t, x, 16, 16, 1)
    with pytest.raises(ValueError, match="batch_tiles"):
        run_tiled(lambda t: t, x, 16, 4, 1, batch_tiles=0)


# --------------------------------------------------------------------------------------------------
# receptive field, and conv-only models tiled exactly


def _convs(*layers: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*layers)


def test_receptive_field_of_known_stacks():
    three = _convs(*(nn.Conv2d(2, 2, 3, padding=1) for _ in range(3)))
    assert receptive_field(three, 2, 1, probe=32) == 3
    dilated = _convs(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 1, 3, padding=2, dilation=2))
    assert receptive_field(dilated, 1, 1, probe=32) == 3
    seven = _convs(nn.Conv2d(1, 1, 7, padding=3))
    assert receptive_field(seven, 1, 1, probe=32) == 3


def test_receptive_field_saturates_at_probe_and_caches():
    global_pool = _convs(nn.Conv2d(1, 1, 3, padding=1), nn.AdaptiveAvgPool2d(1))

    class Broadcast(nn.Module):  # output depends on every input pixel
        def forward(self, x):
            return global_pool(x).expand_as(x)

    model = Broadcast()
    assert receptive_field(model, 1, 1, probe=32) == 16  # reaches the probe's border: "at least"
    assert receptive_field(model, 1, 1, probe=32) == 16  # served from the cache


def test_receptive_field_grows_the_probe_and_stops_at_max_radius():
    wide = _convs(nn.Conv2d(1, 1, 81, padding=40))  # radius 40: more than a 64 px probe can see
    assert receptive_field(wide, 1, 1, probe=256) == 40  # 64 px probe saturates, 128 px finds it
    assert receptive_field(wide, 1, 1, probe=256, max_radius=20) == 32  # ">= 20" from the 64 px probe
    assert receptive_field(wide, 1, 1, probe=48) == 24  # capped by the largest probe


def test_receptive_field_leaves_model_untouched():
    model = _convs(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert receptive_field(model, 2, 1, probe=32) == 2
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched
    assert "forward" not in model[1].__dict__


def test_suggest_overlap():
    assert suggest_overlap(0, 64) == 0
    assert suggest_overlap(6, 64) == 24  # margin floor(24 * 0.5 / 2) = 6
    assert suggest_overlap(6, 64, ramp=0.0) == 12
    assert suggest_overlap(100, 512) == 128  # capped
    assert suggest_overlap(100, 64, 8) == 56  # at most tile - multiple
    for r in range(0, 40):
        o = suggest_overlap(r, 1024, cap=1000)
        assert math.floor(o * 0.5 / 2) >= r and math.floor((o - 1) * 0.5 / 2) < r


def test_conv_model_tiled_equals_untiled():
    """Strided encoder-decoder, zero and reflect padding; overlap from the measured radius."""
    model = _convs(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 4, 5, padding=2),
    )
    multiple, tile = 2, 48
    radius = receptive_field(model, 3, multiple, probe=64)
    assert 6 <= radius <= 12
    overlap = suggest_overlap(radius, tile, multiple)
    x = _frame(2, 3, 90, 124) * 2 - 1
    with torch.no_grad():
        full = model(x)
        tiled = run_tiled(model, x, tile, overlap, multiple, batch_tiles=4)
        short = run_tiled(model, x, tile, 4, multiple)  # overlap below the radius: seams
    assert tiled.shape == (2, 4, 90, 124)
    assert (tiled - full).abs().max() <= 1e-5
    assert (short - full).abs().max() > 1e-3


def test_min_size_pads_tiny_frames_to_two_strides():
    from frametrans.engine.padding import min_side

    x = torch.arange(3.0).view(1, 1, 1, 3)
    padded, pads = pad_to_multiple(x, 4, min_size=min_side(4))
    assert padded.shape[-2:] == (8, 8) and pads == (0, 7, 0, 5)
    assert torch.equal(crop(padded, pads), x)
    assert min_side(256) == 256 and min_side(1) == 1
