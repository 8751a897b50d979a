"""Row-band streaming: a frame over the budget runs whole, layer by layer in bands of rows, and
gives the untiled output; kept tensors spill when the budget is small; forwards with steps that
cannot run in bands are refused (the runner then tiles)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from frametrans.engine.bandgraph import Unstreamable, trace_bands
from frametrans.engine.memory import MemoryBudgetError
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.engine.streaming import Streamer
from support import psnr, smooth_images, tiny_model


def _db(a: torch.Tensor, b: torch.Tensor, span: float = 2.0) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(span**2 / mse)


def _stream(model: nn.Module, x: torch.Tensor, budget: int, fn=None) -> tuple:
    fn = fn or (lambda m, t: m(t))
    with torch.inference_mode():
        streamer = Streamer(trace_bands(model, fn, tuple(x.shape)), model, fn, budget, x.device)
        return streamer(x), fn(model, x), streamer


class _Windows(nn.Module):
    """Every kind of window the bands handle, with an instance norm between, odd sizes, and an
    in-place activation whose input is also used after it (as in a U-Net's skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.ReflectionPad2d((1, 2, 3, 1)), nn.Conv2d(3, 6, 4, stride=2, padding=1),
                               nn.InstanceNorm2d(6), nn.LeakyReLU(0.2, inplace=True))
        self.b = nn.Sequential(nn.ReplicationPad2d(2), nn.Conv2d(6, 6, 3, dilation=2), nn.InstanceNorm2d(6, affine=True))
        self.c = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.ZeroPad2d((0, 1, 1, 0)),
                               nn.AvgPool2d(2, stride=1), nn.Conv2d(6, 5, 3, padding=1, padding_mode="reflect"))
        self.up = nn.Sequential(nn.ConvTranspose2d(5, 4, 3, stride=2, padding=1, output_padding=1),
                                nn.InstanceNorm2d(4), nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1),
                                nn.Upsample(scale_factor=2), nn.Conv2d(4, 3, 5, stride=2, padding=2))
        self.skip = nn.ReLU(inplace=True)
        self.mix = nn.Conv2d(12, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = y + self.b(y)
        z = self.skip(y)  # in place: `y` below reads the activated tensor, as in eager mode
        out = self.up(self.c(self.mix(torch.cat([y, z], 1))))
        return torch.tanh(out)


def test_every_window_kind_matches_the_whole_frame_with_tiny_bands_and_spills():
    torch.manual_seed(0)
    model = _Windows().eval()
    x = torch.randn(1, 3, 53, 47)
    y, ref, streamer = _stream(model, x, budget=40 * 2**10)
    assert y.shape == ref.shape
    assert _db(y, ref) >= 100
    assert max(streamer.schedule.band.values()) < 20  # many bands: the halos and crops were exercised
    assert "file" in streamer.schedule.place.values()  # and some kept tensors went to disk


@pytest.mark.parametrize("name", ["resnet", "unet", "munit"])
def test_the_generators_stream_exactly(name):
    model = tiny_model(name, **({"norm": "instance"} if name == "unet" else {})).eval()
    x = torch.rand(1, 3, 96, 64) * 2 - 1
    fn = None
    if name == "munit":
        style = torch.randn(1, model.config.style_dim, 1, 1)
        fn = lambda m, t: m.translate(t, style=style, direction="b2a")  # noqa: E731
    y, ref, streamer = _stream(model, x, budget=64 * 2**10, fn=fn)
    assert _db(y, ref) >= 100
    assert any(streamer.steps[n].kind == "norm" for n in streamer.steps)


def test_a_large_budget_keeps_everything_in_memory_and_a_small_one_spills_all_it_can():
    model = tiny_model("resnet").eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    _, _, big = _stream(model, x, budget=2**30)
    _, _, small = _stream(model, x, budget=40 * 2**10)
    assert big.spilled_bytes() == 0 and big.schedule.peak <= 2**30
    assert small.spilled_bytes() > 0
    kept = [n for n in small.schedule.kept if n != small.graph.output]
    assert all(small.schedule.place[n] == "file" for n in kept[1:])
    assert min(small.schedule.band.values()) < min(big.schedule.band.values())


class _GlobalPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y - y.mean(dim=(2, 3), keepdim=True)


@pytest.mark.parametrize("layer", [nn.Upsample(scale_factor=2, mode="bilinear"), nn.AdaptiveAvgPool2d(4)])
def test_steps_that_need_more_than_a_band_are_refused(layer):
    with pytest.raises(Unstreamable):
        trace_bands(nn.Sequential(nn.Conv2d(3, 3, 3), layer), lambda m, t: m(t), (1, 3, 32, 32))
    with pytest.raises(Unstreamable, match="mean"):
        trace_bands(_GlobalPool(), lambda m, t: m(t), (1, 3, 32, 32))


def _runner(model, **kw) -> Runner:
    return Runner(model, RunnerOptions(device="cpu", precision="fp32", compile="off", **kw))


def test_the_runner_streams_a_frame_over_the_budget_and_leaves_its_options_alone():
    model = tiny_model("resnet", ngf=8).eval()
    image = smooth_images(1, h=320, w=448)[0]
    whole = _runner(model)([image])[0]
    options = RunnerOptions(device="cpu", precision="fp32", compile="off", max_memory=20 * 2**20)
    before = dataclasses.replace(options)
    runner = Runner(model, options)
    assert runner.plan(320, 448).tile is not None  # over the budget
    out = runner([image])[0]
    assert [s for s in runner.streams.cache.values() if s is not None], "the frame did not run in bands"
    assert runner.tiled_frames == 1 and psnr(out, whole) >= 60
    assert runner.options == before
    tiles = _runner(model, max_memory=20 * 2**20, row_bands=False)
    assert psnr(tiles([image])[0], whole) >= 40 and not tiles.streams.cache


def test_a_budget_below_one_tile_runs_in_row_bands_and_tiles_still_refuse_it():
    model = tiny_model("resnet", ngf=8).eval()
    image = smooth_images(1, h=320, w=448)[0]
    with pytest.raises(MemoryBudgetError, match="too small for a 448x320 frame"):
        _runner(model, max_memory=12 * 2**20, row_bands=False).plan(320, 448)
    runner = _runner(model, max_memory=12 * 2**20)
    out = runner([image])[0]
    assert psnr(out, _runner(model)([image])[0]) >= 60
    with pytest.raises(MemoryBudgetError, match="one band of rows") as err:  # below the frame's buffers
        _runner(model, max_memory=2 * 2**20).plan(320, 448)
    need = int(err.value.args[0].rsplit("--max-memory ", 1)[1].split("M")[0])
    assert need < 12  # less than the 16 MiB one tile needs here
    smallest = _runner(model, max_memory=need * 2**20)
    assert psnr(smallest([image])[0], out) >= 60  # the named budget works


def test_a_forward_that_cannot_stream_still_runs_in_tiles():
    torch.manual_seed(0)
    model = tiny_model("resnet", ngf=8).eval()
    model.model[-3] = nn.Sequential(nn.Upsample(scale_factor=1, mode="bilinear"), model.model[-3])
    image = smooth_images(1, h=320, w=448)[0]
    runner = _runner(model, max_memory=20 * 2**20)
    out = runner([image])[0]
    assert runner.tiled_frames == 1 and list(runner.streams.cache.values()) == [None]
    assert psnr(out, _runner(model)([image])[0]) >= 30


def test_bands_on_cuda_run_without_the_conv_autotuner(monkeypatch):
    """cuDNN's autotuner is off while bands run on CUDA (its trial workspaces are outside the
    budget) and back as it was afterwards; other devices leave it alone."""
    from frametrans.engine import device as devices

    no_conv_autotuning = devices.no_conv_autotuning
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    with no_conv_autotuning(torch.device("cuda")):
        assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cudnn.benchmark is True
    with no_conv_autotuning(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark is True
    # and every streamed frame runs inside it, with the streamer's device
    seen = []

    def recording(device):
        seen.append(device)
        return no_conv_autotuning(device)

    monkeypatch.setattr(devices, "no_conv_autotuning", recording)
    model = tiny_model("resnet", ngf=8).eval()
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    streamer = Streamer(trace_bands(model, lambda m, t: m(t), tuple(x.shape)), model, lambda m, t: m(t),
                        2**20, x.device)
    with torch.no_grad():
        streamer(x)
    assert seen == [torch.device("cpu")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_row_bands_on_cuda_match_the_whole_frame_within_the_budget(monkeypatch):
    # cuDNN's fp32 convolutions default to TF32, whose rounding depends on the algorithm picked for
    # each band's shape: the bands' arithmetic, not their bookkeeping, would set the PSNR
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # as a session leaves it on CUDA
    model = tiny_model("resnet", ngf=8).eval().cuda()
    x = torch.rand(1, 3, 512, 768, device="cuda") * 2 - 1
    budget = 4 * 2**20
    with torch.inference_mode():
        ref = model(x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        streamer = Streamer(trace_bands(model, lambda m, t: m(t), tuple(x.shape)), model,
                            lambda m, t: m(t), budget, x.device)
        y = streamer(x)
        torch.cuda.synchronize()
    db = _db(y, ref)
    assert db >= 80, f"{db:.1f} dB"
    assert "host" in streamer.schedule.place.values()  # kept tensors left the GPU
    out_bytes = y.numel() * y.element_size() * 2  # the output and its NCHW copy
    peak = torch.cuda.max_memory_allocated() - base
    assert peak <= 1.25 * budget + out_bytes, f"peak {peak / 2**20:.2f} MiB, budget {budget / 2**20:.0f} MiB"


def test_temporal_stats_over_the_budget_smooths_the_exact_statistics():
    from frametrans.engine.runner import default_forward
    from frametrans.engine.smoothing import NormSmoother, smoothed_forward

    model = tiny_model("resnet", ngf=8).eval()
    base = smooth_images(1, h=320, w=448)[0].astype(np.float32)
    frames = [np.clip(base * (1.0 + 0.04 * (-1) ** i), 0, 255).astype(np.uint8) for i in range(4)]  # flicker

    def outputs(**kw):
        runner = Runner(model, RunnerOptions(device="cpu", precision="fp32", compile="off", **kw),
                        forward=smoothed_forward(default_forward, NormSmoother(0.8)))
        return [runner([f])[0] for f in frames], runner

    whole, _ = outputs()
    bands, runner = outputs(max_memory=20 * 2**20)
    plain = _runner(model, max_memory=20 * 2**20)
    assert [s for s in runner.streams.cache.values() if s is not None], "the frames did not run in bands"
    assert all(psnr(a, b) >= 60 for a, b in zip(whole, bands))  # the same smoothing, in bands
    assert psnr(bands[1], plain([frames[1]])[0]) < 45  # and it did smooth: not the frame's own statistics
