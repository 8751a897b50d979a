"""frametrans.metrics: hand-computed values, scikit-image agreement, OpenSTL definitions."""

import math

import numpy as np
import pytest
import torch

from frametrans.metrics import (
    MetricAccumulator,
    count_params,
    mae_per_frame,
    mse_per_frame,
    multiply_adds,
    openstl_metrics,
    psnr,
    ssim,
)


def test_mse_mae_hand_computed():
    true = torch.zeros(2, 1, 2, 2)
    pred = torch.zeros(2, 1, 2, 2)
    pred[0, 0, 0, 0] = 0.5  # frame 0: one pixel off by 0.5
    pred[1] = 0.25  # frame 1: all four pixels off by 0.25
    assert mse_per_frame(pred, true).tolist() == pytest.approx([0.25, 4 * 0.0625])
    assert mae_per_frame(pred, true).tolist() == pytest.approx([0.5, 1.0])


def test_psnr_hand_computed_and_inf_safe():
    true = torch.zeros(3, 1, 4, 4)
    pred = true.clone()
    pred[0] = 0.1  # per-pixel MSE 0.01 -> 20 dB
    pred[1, 0, 0, 0] = 1.0  # MSE 1/16 -> 10 log10(16) dB
    out = psnr(pred, true)
    assert out[0].item() == pytest.approx(20.0)
    assert out[1].item() == pytest.approx(10 * math.log10(16))
    assert math.isinf(out[2].item()) and out[2].item() > 0  # identical frame: +inf, not NaN


def test_psnr_matches_openstl_formula():
    rng = np.random.default_rng(1)
    p, t = rng.random((2, 3, 8, 8)), rng.random((2, 3, 8, 8))
    expected = [20 * np.log10(1 / np.sqrt(np.mean((p[i] - t[i]) ** 2))) for i in range(2)]
    assert psnr(torch.from_numpy(p), torch.from_numpy(t)).numpy() == pytest.approx(expected)


@pytest.mark.parametrize("data_range", [1.0, 2.0])
@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(data_range, channels):
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    pred = torch.rand(3, channels, 20, 17, generator=g)
    true = (pred + 0.2 * torch.rand(3, channels, 20, 17, generator=g)).clamp(0, 1)
    true[2] = pred[2]  # identical frame -> 1
    ours = ssim(pred, true, data_range=data_range).numpy()
    ref = [
        structural_similarity(pred[i].permute(1, 2, 0).double().numpy(),
                              true[i].permute(1, 2, 0).double().numpy(),
                              win_size=7, data_range=data_range, channel_axis=-1)
        for i in range(3)
    ]
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    assert ours[2] == pytest.approx(1.0)


def test_ssim_rejects_small_frames():
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(torch.zeros(1, 1, 5, 9), torch.zeros(1, 1, 5, 9))


def test_openstl_mse_mae_definition_on_tiny_array():
    rng = np.random.default_rng(0)
    pred = rng.random((2, 3, 1, 8, 8)).astype(np.float32)  # [B, T, C, H, W]
    true = rng.random((2, 3, 1, 8, 8)).astype(np.float32)
    res = openstl_metrics(torch.from_numpy(pred), torch.from_numpy(true))
    # OpenSTL: np.mean((pred-true)**2, axis=(0, 1)).sum()
    assert res["mse"] == pytest.approx(np.mean((pred - true) ** 2, axis=(0, 1)).sum(), rel=1e-6)
    assert res["mae"] == pytest.approx(np.mean(np.abs(pred - true), axis=(0, 1)).sum(), rel=1e-6)
    per_step = np.mean(((pred - true) ** 2).sum(axis=(2, 3, 4)), axis=0)
    assert res["mse_per_step"] == pytest.approx(per_step.tolist(), rel=1e-6)
    assert np.mean(res["mse_per_step"]) == pytest.approx(res["mse"], rel=1e-9)
    p, t = torch.from_numpy(pred).flatten(0, 1), torch.from_numpy(true).flatten(0, 1)
    assert res["psnr"] == pytest.approx(psnr(p, t).mean().item())
    assert res["ssim"] == pytest.approx(ssim(p, t, data_range=1.0).mean().item())
    assert res["ssim_dr2"] == pytest.approx(ssim(p, t, data_range=2.0).mean().item())
    assert res["ssim_dr2"] > res["ssim"]  # the larger range makes the constants larger
    assert res["sequences"] == 2


def test_accumulator_over_batches_equals_one_batch():
    g = torch.Generator().manual_seed(3)
    pred, true = torch.rand(5, 2, 1, 8, 8, generator=g), torch.rand(5, 2, 1, 8, 8, generator=g)
    acc = MetricAccumulator()
    acc.update(pred[:2], true[:2])
    acc.update(pred[2:], true[2:])
    whole = openstl_metrics(pred, true)
    split = acc.result()
    for key in ("mse", "mae", "psnr", "ssim", "ssim_dr2"):
        assert split[key] == pytest.approx(whole[key], rel=1e-12)
    assert split["mse_per_step"] == pytest.approx(whole["mse_per_step"], rel=1e-12)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        mse_per_frame(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


def test_count_params_and_multiply_adds():
    conv = torch.nn.Conv2d(2, 3, kernel_size=3, padding=1, bias=True)
    assert count_params(conv) == 3 * 2 * 9 + 3
    # one output pixel: 2*9 MACs per output channel; 3 channels; 5x4 pixels; batch 1
    assert multiply_adds(conv, (1, 2, 5, 4)) == 2 * 9 * 3 * 5 * 4
    assert conv.training  # mode restored


def test_mean_psnr_is_capped_when_a_frame_is_identical():
    true = torch.zeros(1, 2, 1, 8, 8)
    pred = true.clone()
    pred[0, 1] = 0.1  # frame 0 identical (inf dB), frame 1 at 20 dB
    res = openstl_metrics(pred, true)
    assert res["psnr"] == pytest.approx((100.0 + 20.0) / 2)


def test_picture_scores_average_per_picture_values():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from frametrans.metrics import picture_scores

    rng = np.random.default_rng(0)
    targets = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)]
    outs = [np.clip(t.astype(int) + rng.integers(-20, 21, t.shape), 0, 255).astype(np.uint8) for t in targets]
    q = picture_scores(outs, targets)
    assert q["l1"] == pytest.approx(np.mean([np.abs(o.astype(float) - t).mean() for o, t in zip(outs, targets)]))
    assert q["psnr"] == pytest.approx(np.mean([peak_signal_noise_ratio(t, o) for o, t in zip(outs, targets)]))
    assert q["ssim"] == pytest.approx(np.mean([
        structural_similarity(o / 255, t / 255, data_range=1, channel_axis=-1) for o, t in zip(outs, targets)]))
