"""--temporal stats: normalization statistics smoothed across time inside one forward pass
(frametrans/engine/smoothing.py): the EMA follows the frames, not the batches; a scene cut and a new
stream reset it; a forward that fails changes nothing; tiled frames keep their own statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from frametrans.engine.normstats import collect_norm_stats, frozen_norm_stats
from frametrans.engine.smoothing import NormSmoother, ema_weights, smoothed_forward
from support import tiny_model


def _pan(n=8, seed=0, size=(32, 40), dx=2):
    """A smooth texture panning right, as [n, 3, H, W] in [-1, 1], with a small per-frame flicker."""
    g = torch.Generator().manual_seed(seed)
    tex = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 12, generator=g), size=(size[0], 120),
                                          mode="bicubic", align_corners=False)[0]
    h, w = size
    frames = torch.stack([tex[:, :, t * dx:t * dx + w] for t in range(n)]) * 2 - 1
    flicker = 0.02 * torch.randn(n, 1, 1, 1, generator=g)
    return (frames + flicker).clamp(-1, 1)


def _run(model, frames, factor, batch, smoother=None):
    smoother = smoother or NormSmoother(factor)
    forward = smoothed_forward(lambda m, x: m(x), smoother)
    with torch.no_grad():
        return torch.cat([forward(model, frames[i:i + batch]) for i in range(0, len(frames), batch)])


def _scan(stats, cuts, factor):
    """The EMA written as a loop, one sample at a time."""
    out, s = [], None
    for m, cut in zip(stats, cuts):
        s = m if (cut or s is None) else factor * s + (1 - factor) * m
        out.append(s)
    return torch.stack(out)


def test_weight_matrix_is_the_ema_loop():
    stats = torch.randn(6, 4, dtype=torch.float64)
    cuts = [True, False, False, True, False, False]
    w = ema_weights(cuts, 0.8)
    got = w[:, 1:] @ stats  # no past: column 0 unused after the first cut
    assert torch.allclose(got, _scan(stats, cuts, 0.8))
    assert torch.allclose(w.sum(1), torch.ones(6, dtype=torch.float64))
    past = ema_weights([False, False], 0.5)
    assert past[1].tolist() == [0.25, 0.25, 0.5]


@pytest.mark.parametrize("name", ["resnet", "munit"])
def test_batch_1_and_batch_4_give_the_same_output(name):
    model = tiny_model(name).eval()
    if name == "munit":
        style = torch.randn(1, model.config.style_dim, 1, 1, generator=torch.Generator().manual_seed(1))
        model = _Translate(model, style)
    frames = _pan(8)
    one = _run(model, frames, 0.8, 1)
    four = _run(model, frames, 0.8, 4)
    three = _run(model, frames, 0.8, 3)  # batches that end mid-way
    assert torch.allclose(one, four, atol=1e-5) and torch.allclose(one, three, atol=1e-5)
    with torch.no_grad():
        per_frame = model(frames)
    assert torch.allclose(one[0], per_frame[0], atol=1e-5)  # the first frame has no past
    assert (one[1:] - per_frame[1:]).abs().max() > 1e-3  # later ones are smoothed


class _Translate(nn.Module):
    """MUNIT with a fixed style, called like a plain generator (its norm layers are its own)."""

    def __init__(self, munit, style):
        super().__init__()
        self.munit, self.style = munit, style

    def forward(self, x):
        return self.munit.translate(x, style=self.style, direction="a2b")


def test_statistics_follow_the_ema_of_each_frames_own():
    norm = nn.InstanceNorm2d(3)
    frames = _pan(6)
    out = _run(nn.Sequential(norm), frames, 0.7, 4)
    mean, var = frames.mean((2, 3)), frames.var((2, 3), unbiased=False)
    m, v = _scan(mean, [True] + [False] * 5, 0.7), _scan(var, [True] + [False] * 5, 0.7)
    expected = (frames - m[..., None, None]) / torch.sqrt(v[..., None, None] + norm.eps)
    assert torch.allclose(out, expected, atol=1e-5)


def test_flicker_is_smoothed_out():
    """A static scene where a corner patch blinks: with each frame's own statistics the whole frame
    pulses with it (the classic per-frame normalization flicker); smoothed, the rest stays put."""
    norm = nn.InstanceNorm2d(3)
    frames = _pan(1)[0][None].repeat(10, 1, 1, 1)
    frames[1::2, :, :8, :8] = 1.0  # the patch is on in every other frame
    own = _run(nn.Sequential(norm), frames, 0.0, 5)  # factor 0: each frame's own statistics
    smooth = _run(nn.Sequential(norm), frames, 0.9, 5)
    assert torch.allclose(own, norm(frames), atol=1e-5)

    def pulse(y):  # frame-to-frame change of the background, late in the clip
        return (y[5:, :, 8:, 8:] - y[4:-1, :, 8:, 8:]).abs().mean()

    assert pulse(smooth) < 0.2 * pulse(own)


def test_scene_cut_and_new_stream_reset_the_state():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    a, b = _pan(4, seed=0), _pan(4, seed=7) * 0.3 + 0.5  # another scene: brighter, less contrast
    s = NormSmoother(0.8)
    out = _run(model, torch.cat([a, b]), 0.8, 3, s)
    assert s.cuts == 1
    with torch.no_grad():
        fresh = _run(model, b, 0.8, 3)
    assert torch.allclose(out[4:], fresh, atol=1e-5)  # after the cut: as if the stream started there
    s.reset()
    again = _run(model, a, 0.8, 2, s)
    assert torch.allclose(again, out[:4], atol=1e-5) and s.cuts == 1
    smaller = _run(model, _pan(3, size=(24, 40)), 0.8, 1, s)  # another frame size: starts over
    assert torch.allclose(smaller, _run(model, _pan(3, size=(24, 40)), 0.8, 1), atol=1e-5)


def test_a_forward_that_raises_leaves_the_state_alone():
    model = nn.Sequential(nn.InstanceNorm2d(3), nn.Conv2d(3, 3, 1), nn.InstanceNorm2d(3))
    frames = _pan(6)
    s = NormSmoother(0.8)
    forward = smoothed_forward(lambda m, x: m(x), s)
    boom = smoothed_forward(lambda m, x: (m[0](x), 1 / 0), s)  # fails after the first layer ran
    with torch.no_grad():
        first = forward(model, frames[:2])
        with pytest.raises(ZeroDivisionError):
            boom(model, frames[2:4])
        rest = forward(model, frames[2:])
    assert torch.allclose(torch.cat([first, rest]), _run(model, frames, 0.8, 6), atol=1e-5)


def test_tiled_frames_keep_their_frozen_whole_frame_statistics(caplog):
    """Inside the tiler's frozen statistics the smoother steps aside (warns once, state unchanged)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.Conv2d(4, 3, 1))
    frames = _pan(4)
    s = NormSmoother(0.8)
    forward = smoothed_forward(lambda m, x: m(x), s)
    with torch.no_grad():
        stats = collect_norm_stats(model, frames[2:3], fn=lambda t: forward(model, t))
        with frozen_norm_stats(model, stats), caplog.at_level("WARNING", logger="frametrans"):
            tiled = forward(model, frames[2:3])
            forward(model, frames[3:4])
        plain = model(frames[2:3])
    assert torch.allclose(tiled, plain, atol=1e-6)
    assert sum("tiled frames" in r.message for r in caplog.records) == 1
    assert s._hist is None  # nothing entered the state


def test_factor_is_checked():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        NormSmoother(1.0)
    assert np.isclose(ema_weights([False], 0.25)[0, 0].item(), 0.25)
