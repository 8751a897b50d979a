"""The temporal-consistency metric (warping error, Lai et al. 2018) on motion we know."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from frametrans.cli.main import cli
from frametrans.consistency import flow, non_occluded, temporal_consistency, warp


def _texture(h: int = 200, w: int = 260, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    noise = g.random((h // 8, w // 8, 3)).astype(np.float32)
    smooth = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)  # structure the flow can follow
    return np.clip(smooth * 255, 0, 255).astype(np.uint8)


def _pan(n: int = 6, dx: int = 3, dy: int = 2, size=(96, 128)) -> list:
    """A camera pan over a texture: frame t is the window at (t*dy, t*dx)."""
    tex = _texture()
    h, w = size
    return [tex[t * dy:t * dy + h, t * dx:t * dx + w].copy() for t in range(n)]


def _noisy(frames: list, sigma: float, seed: int = 1) -> list:
    g = np.random.default_rng(seed)
    return [np.clip(f + g.normal(0, sigma, f.shape), 0, 255).astype(np.uint8) for f in frames]


def test_flow_and_warp_recover_a_known_translation():
    frames = _pan(2)
    fwd = flow(frames[1], frames[0])  # t -> t-1: content moved by (-3, -2) in the window
    inner = fwd[20:-20, 20:-20]
    assert np.allclose(inner[..., 0].mean(), 3, atol=0.3) and np.allclose(inner[..., 1].mean(), 2, atol=0.3)
    back = warp(frames[0].astype(np.float32), fwd)
    assert np.abs(back[20:-20, 20:-20] - frames[1][20:-20, 20:-20]).mean() < 2.0
    mask = non_occluded(fwd, flow(frames[0], frames[1]))
    assert mask[20:-20, 20:-20].mean() > 0.95  # consistent motion: almost nothing occluded
    assert not mask[:, -1].all()  # the right edge came in from outside frame t-1


def test_a_consistent_output_scores_like_its_input_and_noise_raises_the_error():
    frames = _pan()
    same = temporal_consistency(frames, frames)
    assert same.pairs == 5 and same.output == pytest.approx(same.input)
    assert same.input < 2e-3
    errors = [temporal_consistency(frames, _noisy(frames, s)).output for s in (2.0, 6.0, 18.0)]
    assert errors[0] < errors[1] < errors[2]
    assert errors[2] > 20 * same.input
    # a model that flickers: per-frame brightness changes
    flicker = [np.clip(f.astype(int) + (12 if t % 2 else -12), 0, 255).astype(np.uint8)
               for t, f in enumerate(frames)]
    report = temporal_consistency(frames, flicker, second=frames)
    assert report.output > 10 * report.input and report.ratio > 10
    assert report.second == pytest.approx(report.input)
    assert 25 < report.psnr_between < 35  # 12 grey levels everywhere: 26.5 dB


def test_lengths_and_sizes_must_match():
    frames = _pan(4)
    with pytest.raises(ValueError, match="OUTPUT ends after 3 frames"):
        temporal_consistency(frames, frames[:3])
    with pytest.raises(ValueError, match="frame 0: OUTPUT is 64x48, INPUT is 128x96"):
        temporal_consistency(frames, [f[:48, :64] for f in frames])
    with pytest.raises(ValueError, match="at least two frames"):
        temporal_consistency(frames[:1], frames[:1])


def test_cli_eval_temporal_on_folders(tmp_path):
    from PIL import Image

    frames = _pan()
    for name, seq in (("in", frames), ("out", _noisy(frames, 8.0)), ("out2", frames)):
        (tmp_path / name).mkdir()
        for t, f in enumerate(seq):
            Image.fromarray(f).save(tmp_path / name / f"{t}.png")
    res = CliRunner().invoke(cli, ["eval", "temporal", str(tmp_path / "in"), str(tmp_path / "out"),
                                   str(tmp_path / "out2"), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "warping error over 5 frame pairs" in res.output and "PSNR between the outputs" in res.output
    numbers = json.loads((tmp_path / "r.json").read_text())
    assert numbers["output"] > numbers["input"] and numbers["second"] == pytest.approx(numbers["input"])
    bad = CliRunner().invoke(cli, ["eval", "temporal", str(tmp_path / "in"), str(tmp_path / "nope")])
    assert bad.exit_code == 1 and "no such file or folder" in bad.output


def test_motions_given_once_give_the_same_report():
    """Several outputs of one input: its pair motions computed once give the same numbers."""
    from frametrans.consistency import pair_motion

    frames = _pan()
    motions = [pair_motion(a, b) for a, b in zip(frames, frames[1:])]
    flicker = _noisy(frames, 6.0)
    assert temporal_consistency(frames, flicker, frames, motions) == temporal_consistency(frames, flicker, frames)
    with pytest.raises(ValueError, match="motions given"):
        temporal_consistency(frames, flicker, motions=motions[:-1])


def test_another_flow_estimate_gives_the_motion():
    """``estimate`` replaces DIS (to compare flows): the pan's exact shift gives a zero warping
    error on the input's tracked pixels, and a zero flow a large one; input_motion likewise."""
    from frametrans.consistency import pair_motion
    from frametrans.stabilize import input_motion

    frames = _pan(3)
    h, w = frames[0].shape[:2]

    index = {id(f): t for t, f in enumerate(frames)}

    def exact(src, dst):  # pixel p of frame t shows what frame t-1 shows at p + (3, 2)
        return np.broadcast_to(np.float32([3, 2]) * (index[id(src)] - index[id(dst)]), (h, w, 2)).copy()

    motions = [pair_motion(a, b, exact) for a, b in zip(frames, frames[1:])]
    fwd, mask = motions[0]
    assert np.all(fwd == np.float32([3, 2])) and mask[:h - 2, :w - 3].all() and not mask[:, w - 2:].any()
    assert temporal_consistency(frames, frames, motions=motions).input < 1e-10
    still = [pair_motion(a, b, lambda s, d: np.zeros((h, w, 2), np.float32)) for a, b in zip(frames, frames[1:])]
    assert temporal_consistency(frames, frames, motions=still).input > 1e-3
    (px, py), tracked = input_motion(frames[1], frames[0], exact)
    assert np.array_equal(tracked, mask) and px[5, 7] == 10 and py[5, 7] == 7
