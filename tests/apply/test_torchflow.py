"""The stabilizer's flow as torch ops (frametrans.torchflow): exact polynomial fits, known shifts
recovered as OpenCV's Farnebäck recovers them, the device motion equal to input_motion along the
same flow, and --temporal-flow torch through apply (on the CPU: the same code path as on CUDA)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from frametrans.cli.main import cli
from frametrans.consistency import temporal_consistency
from frametrans.stabilize import input_motion
from frametrans.torchflow import DeviceMotion, FlowParams, farneback, frame_flow, levels_of, poly_expand


def _texture(h=200, w=240, seed=0) -> np.ndarray:
    """A smooth random texture, float32 [H, W] in [0, 255]."""
    tex = cv2.GaussianBlur(np.random.default_rng(seed).uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 3)
    return (tex - tex.min()) / (tex.max() - tex.min()) * 255


def _shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` moved by (dx, dy): out(p + d) = image(p)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, m, image.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]


def test_poly_expand_fits_a_quadratic_exactly():
    """On f = 3 + 2x - y + 0.5x^2 + 0.25y^2 - 0.3xy, the expansion around (x0, y0) has
    axx 0.5, ayy 0.25, axy -0.3, bx = 2 + x0 - 0.3 y0, by = -1 + 0.5 y0 - 0.3 x0."""
    y, x = np.mgrid[0:40, 0:50].astype(np.float64)
    f = 3 + 2 * x - y + 0.5 * x * x + 0.25 * y * y - 0.3 * x * y
    r = poly_expand(torch.from_numpy(f)[None, None], 5, 1.1)[0].double().numpy()[:, 6:-6, 6:-6]
    xi, yi = x[6:-6, 6:-6], y[6:-6, 6:-6]
    for got, want in ((r[0], f[6:-6, 6:-6]), (r[1], 2 + xi - 0.3 * yi), (r[2], -1 + 0.5 * yi - 0.3 * xi),
                      (r[3], 0.5), (r[4], 0.25), (r[5], -0.3)):
        np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-5, atol=2e-3)


@pytest.mark.parametrize("dx,dy", [(2.3, -1.7), (12.4, 7.1), (-25.0, 3.0)])
def test_known_shifts_are_recovered(dx, dy):
    """Subpixel and large (pyramid) shifts within 0.1 px inside the frame; OpenCV's Farnebäck with
    the same settings agrees on the small one (it misses the largest: 5 levels only)."""
    a = _texture()
    b = _shifted(a, dx, dy)
    flow = farneback(_t(a), _t(b))[0].numpy()[:, 40:-40, 40:-40]
    assert np.median(np.abs(flow[0] - dx)) < 0.1 and np.median(np.abs(flow[1] - dy)) < 0.1
    if abs(dx) < 5:
        p = FlowParams()
        ref = cv2.calcOpticalFlowFarneback(a.astype(np.uint8), b.astype(np.uint8), None, p.scale, 5, p.winsize,
                                           p.iters, p.poly_n, p.poly_sigma, 0)[40:-40, 40:-40]
        assert abs(flow[0].mean() - ref[..., 0].mean()) < 0.02 and abs(flow[1].mean() - ref[..., 1].mean()) < 0.02


def test_levels_and_shape_checks():
    assert levels_of(360, 640) == 4 and levels_of(1080, 1920) == 6 and levels_of(20, 20) == 1
    flow = farneback(torch.zeros(2, 1, 17, 23, dtype=torch.uint8), torch.zeros(2, 1, 17, 23, dtype=torch.uint8))
    assert flow.shape == (2, 2, 17, 23) and flow.dtype == torch.float32 and not flow.abs().any()
    with pytest.raises(ValueError, match=r"two \[B, 1, H, W\] tensors of one shape"):
        farneback(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))


def _clip_frames(n=3):
    from frametrans.io.video import iter_video_frames

    return [f.image for _, f in zip(range(n), iter_video_frames("examples/data/clip.mp4"))]


def test_device_motion_is_input_motion_along_the_same_flow():
    """The flow and the brightness test on the device give what input_motion gives with the same
    flow and its OpenCV test: the same sample points, the same tracked pixels but for a few at the
    threshold (OpenCV's 1/32 px bilinear weights)."""
    frames = _clip_frames()

    (px, py), mask = DeviceMotion("cpu")(frames[1], frames[0])
    (qx, qy), want = input_motion(frames[1], frames[0], frame_flow)  # one flow at a time
    assert np.array_equal(px, qx) and np.array_equal(py, qy)
    assert mask.dtype == bool and (mask == want).mean() > 0.999 and mask.mean() > 0.9


def test_torch_flow_explains_the_input_as_well_as_dis():
    """On consecutive frames of the sample clip, what the torch flow leaves unexplained (every
    pixel, no occlusion mask to hide behind) is no more than DIS fast's, which the stabilizer used."""
    from frametrans.consistency import flow, pair_error

    frames = _clip_frames(4)
    ones = np.ones(frames[0].shape[:2], bool)

    def residual(estimate):
        return np.mean([pair_error(a, b, estimate(b, a), ones) for a, b in zip(frames, frames[1:])])

    torch_flow = residual(frame_flow)
    assert torch_flow <= residual(lambda s, d: flow(s, d, "fast"))


def _counted(monkeypatch) -> list:
    """Counts DeviceMotion calls (one per frame after the first when the torch flow runs)."""
    calls: list = []
    real = DeviceMotion.__call__
    monkeypatch.setattr(DeviceMotion, "__call__", lambda self, a, b: calls.append(1) or real(self, a, b))
    return calls


def test_cli_temporal_flow_torch_stabilizes_a_video(tmp_path, monkeypatch):
    """--temporal flow --temporal-flow torch on the CPU: the torch flow computes every frame's
    motion (and dis none), the first frame is per-frame, the warping error is lowered like DIS's;
    the option is refused where it means nothing."""
    from frametrans.bench.common import make_video
    from frametrans.io.video import iter_video_frames
    from support import tiny_resnet_file

    model = tiny_resnet_file(tmp_path)
    clip = make_video(tmp_path / "in.mp4", 64, 48, 6)
    outs = {}
    calls = _counted(monkeypatch)
    for name, extra in (("off", []), ("dis", ["--temporal-flow", "dis"]), ("torch", ["--temporal-flow", "torch"])):
        args = ["apply", str(clip), "-o", str(tmp_path / f"{name}.mkv"), "-m", str(model), "--codec", "ffv1",
                "--device", "cpu", "--precision", "fp32", "-q"] + (["--temporal", "flow", *extra] if extra else [])
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        outs[name] = [f.image for f in iter_video_frames(tmp_path / f"{name}.mkv")]
        assert len(calls) == (5 if name == "torch" else 0), name
    frames = [f.image for f in iter_video_frames(clip)]
    assert np.array_equal(outs["torch"][0], outs["off"][0])
    off = temporal_consistency(frames, outs["off"]).output
    for name in ("dis", "torch"):
        assert temporal_consistency(frames, outs[name]).output < off
    bad = CliRunner().invoke(cli, ["apply", str(clip), "-o", str(tmp_path / "x.mkv"), "-m", str(model),
                                   "--temporal", "stats", "--temporal-flow", "torch"])
    assert bad.exit_code == 2 and "--temporal-flow is for --temporal flow or auto, not stats" in bad.output


def test_raw_stream_takes_the_torch_flow(tmp_path, monkeypatch):
    """A raw stream on stdin with --temporal-flow torch: the torch flow computes each frame's motion."""
    from support import tiny_resnet_file

    frames = [(np.random.default_rng(t).random((32, 48, 3)) * 255).astype(np.uint8) for t in range(4)]
    calls = _counted(monkeypatch)
    res = CliRunner().invoke(cli, ["apply", "-", "-o", "-", "--size", "48x32", "-m", str(tiny_resnet_file(tmp_path)),
                                   "--precision", "fp32", "-q", "--temporal", "flow", "--temporal-flow", "torch"],
                             input=b"".join(f.tobytes() for f in frames))
    assert res.exit_code == 0 and len(res.stdout_bytes) == 4 * 32 * 48 * 3 and len(calls) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_motion_on_cuda_matches_the_cpu():
    """The same motion on CUDA as on the CPU (TF32 may round the window sums: 0.05 px for 99.9% of
    the pixels, 0.5% of the tracked ones), from two threads at once (each on its own stream)."""
    from concurrent.futures import ThreadPoolExecutor

    frames = _clip_frames(3)
    (cx, cy), cmask = DeviceMotion("cpu")(frames[1], frames[0])
    gpu = DeviceMotion("cuda")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: gpu(frames[1], frames[0]), range(4)))
    for (gx, gy), gmask in results:
        for got, want in ((gx, cx), (gy, cy)):
            diff = np.abs(got - want)
            assert np.percentile(diff, 99.9) < 0.05 and diff.max() < 0.25
        assert (gmask == cmask).mean() > 0.995
