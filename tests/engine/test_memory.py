"""The memory policy: batch and tile decisions within --max-memory, out-of-memory reactions that
return decisions and never write into the caller's options, and the budget as a measured bound."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from frametrans import registry
from frametrans.engine.memory import MemoryBudgetError
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.io.frame import Frame
from support import psnr, tiny_config
from support import smooth_images as _images
from support import tiny_model as _model

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _runner(model, forward=None, **kw) -> Runner:
    kw.setdefault("device", "cpu")
    kw.setdefault("precision", "fp32")
    kw.setdefault("compile", "off")
    if forward is None:
        return Runner(model, RunnerOptions(**kw))
    return Runner(model, RunnerOptions(**kw), forward=forward)


def _oom_when(test):
    """A forward that raises a (simulated) out-of-memory error when ``test(x)`` is true."""
    seen = []

    def forward(model, x):
        seen.append(tuple(x.shape))
        if test(x):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return model(x)

    forward.seen = seen
    return forward


# -- the plan within the budget ------------------------------------------------------------------


def test_budget_tiles_compute_few_pixels_and_respect_the_budget(monkeypatch):
    from frametrans.engine import tiling
    from frametrans.engine.tiling import plan_tiles

    model = _model("unet", num_downs=3, ngf=16)  # batch norm in eval: no statistics pass, plain tiles
    fp = _runner(model).memory.footprint
    h, w = 120, 400
    # the frame's buffers and the queues, plus about 130x130 pixels of activations
    held = 120 * 400 * (fp.frame + fp.tiled)
    budget = int(held + fp.activation * 130 * 130)
    r = _runner(model, max_memory=budget, tile_overlap=16)
    budget += r.memory.queue_bytes(h, w)
    r = _runner(model, max_memory=budget, tile_overlap=16, row_bands=False)  # the tiles themselves
    fit = r.memory.pixels_that_fit(h, w, tiled=True)
    assert 120 * 120 <= fit < 140 * 140
    side = r.plan(h, w).tile
    assert side is not None and min(side, h) * min(side, w) <= fit
    area = sum(b.height * b.width for b in plan_tiles(h, w, side, 16, 8))
    square = int(fit ** 0.5) // 8 * 8
    assert area <= sum(b.height * b.width for b in plan_tiles(h, w, square, 16, 8))
    seen = []
    real = tiling.run_tiled

    def spy(fn, x, *args, **kw):
        def wrapped(t):
            seen.append(t.shape[0] * t.shape[-2] * t.shape[-1])
            return fn(t)
        return real(wrapped, x, *args, **kw)

    monkeypatch.setattr("frametrans.engine.tiledstats.run_tiled", spy)
    out = r(_images(1, h=h, w=w))[0]
    assert out.shape == (h, w, 3) and r.tiled_frames == 1
    assert seen and max(seen) <= fit  # tiles per forward: within the budget
    full = _runner(model)(_images(1, h=h, w=w))[0]
    assert psnr(out, full) >= 25.0


def test_cpu_batches_stop_at_a_pixel_count():
    model = registry.get("unet").build(tiny_config("unet")).eval()
    r = _runner(model)
    assert r.batch_size_for((64, 64, 3)) == 4
    assert r.batch_size_for((256, 256, 3)) == 4
    assert r.batch_size_for((360, 640, 3)) == 1
    assert _runner(model, batch_size=3).batch_size_for((360, 640, 3)) == 3


def test_too_small_a_budget_names_the_smallest_that_works():
    model = _model("resnet")
    r = _runner(model, max_memory=2**20, tile_overlap=8)
    with pytest.raises(MemoryBudgetError, match=r"1.0 MiB is too small for a 800x600 frame: it "
                       r"needs at least .* use --max-memory (\d+)M or more") as err:
        r.plan(600, 800)
    need = int(err.value.args[0].rsplit("--max-memory ", 1)[1].split("M")[0])
    ok = _runner(model, max_memory=need * 2**20, tile_overlap=8).plan(600, 800)
    assert ok.tile is not None


# -- out-of-memory reactions: decisions, never writes into the options ----------------------------


def test_batch_halving_keeps_the_options_and_drops_no_frame():
    model = _model("resnet")
    images = _images(6)
    # one frame at a time, as the halving ends: oneDNN may round a batch of 6 differently (AMD Zen 5)
    ref = [_runner(model)([im])[0] for im in images]
    options = RunnerOptions(device="cpu", precision="fp32", compile="off", batch_size=4)
    before = dataclasses.asdict(options)
    forward = _oom_when(lambda x: x.shape[0] > 1)
    r = Runner(model, options, forward=forward)
    outs = [o for _, o in r.run(Frame(im, index=i) for i, im in enumerate(images))]
    assert len(outs) == 6 and all(np.array_equal(a, b) for a, b in zip(outs, ref))
    assert r.options is options and dataclasses.asdict(options) == before
    assert r.memory.batch_cap == 1 and r.batch_size_for(images[0].shape) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 1  # type: ignore[misc]


def test_oom_on_a_frame_tiles_then_tiles_smaller_and_keeps_the_options():
    model = _model("resnet")
    h, w = 320, 416
    image = _images(1, h=h, w=w)[0]
    whole = _runner(model)([image])[0]
    options = RunnerOptions(device="cpu", precision="fp32", compile="off")  # overlap: receptive field
    before = dataclasses.asdict(options)
    limit = 180 * 180  # the first tiles (200 px, for half the frame) fail, the next (164 px) fit
    forward = _oom_when(lambda x: x.shape[-1] * x.shape[-2] > limit and x.shape[-1] > 64)
    r = Runner(model, options, forward=forward)
    out = r([image])[0]
    assert dataclasses.asdict(options) == before and r.options.tile is None
    tiles = [s for s in forward.seen if 64 < s[-1] and s[-1] * s[-2] < h * w]
    assert any(s[-1] * s[-2] > limit for s in tiles), "the first tiles were not retried smaller"
    assert any(s[-1] * s[-2] <= limit for s in tiles)
    assert r.memory.pixel_cap is not None and r.memory.pixel_cap <= limit
    assert psnr(out, whole) >= 40.0


def test_oom_with_a_user_tile_halves_the_tile_not_the_option():
    model = _model("resnet")
    image = _images(1, h=96, w=128)[0]
    options = RunnerOptions(device="cpu", precision="fp32", compile="off", tile=96, tile_overlap=8)
    forward = _oom_when(lambda x: x.shape[-1] > 64 and x.shape[-2] > 32)
    r = Runner(model, options, forward=forward)
    out = r([image])[0]
    assert out.shape == (96, 128, 3)
    assert options.tile == 96 and r.options.tile == 96
    assert r.plan(96, 128).tile < 96


def test_oom_everywhere_raises_for_the_frame_and_the_next_frame_starts_over():
    from frametrans.engine.runner import FrameOutOfMemory

    model = _model("resnet")
    calls = []
    forward = _oom_when(lambda x: calls.append(x) or len(calls) > 1)  # the probe fits, nothing else
    r = _runner(model, forward=forward, tile_overlap=8)
    with pytest.raises(FrameOutOfMemory, match="out of memory even in the smallest tiles"):
        r(_images(1, h=64, w=96))
    assert r.memory.pixel_cap is None  # forgiven: the next frame starts from the full budget
    assert r.plan(64, 96).tile is None


def test_munit_variants_share_the_session_but_not_the_memory_state():
    from frametrans.apply import Translator

    model = _model("munit")
    options = RunnerOptions(device="cpu", precision="bf16", compile="off")
    t = Translator(model, options, num_styles=3, seed=0)
    runners = [v.runner for v in t.variants]
    assert len({id(r.session) for r in runners}) == 1  # one module, one weight copy
    assert len({id(r.memory) for r in runners}) == 3
    runners[0].memory.after_batch_oom(4)
    assert runners[0].memory.batch_cap == 2
    assert runners[1].memory.batch_cap is None and runners[2].memory.batch_cap is None
    assert all(r.options is options for r in runners) and options.batch_size is None


# -- the budget is a bound: measured resident-set growth (CPU) and allocator peak (CUDA) ----------


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak reset")
def test_max_memory_bounds_the_resident_growth_of_a_tiled_instancenorm_frame(tmp_path):
    from frametrans.bench.memory import MemoryBench, measure_in_child, photo_mosaic

    pytest.importorskip("skimage")
    budget = 128 * 2**20
    np.save(tmp_path / "in.npy", photo_mosaic(1024, 1024))
    opts = MemoryBench(model="cyclegan", max_memory=budget, device="cpu", precision="fp32", threads=2)
    facts = measure_in_child(opts, tmp_path / "in.npy", tmp_path / "tiled.npy", budget)
    assert facts["tile"] is not None and facts["stats"] == "tiled"
    overhead = 40 * 2**20  # allocator and oneDNN scratch, thread stacks: fixed, not per pixel
    assert facts["growth"] <= 1.25 * budget + overhead, facts
    whole = measure_in_child(opts, tmp_path / "in.npy", tmp_path / "whole.npy", None)
    assert whole["tile"] is None and whole["growth"] > budget  # the budget did bind
    assert psnr(np.load(tmp_path / "tiled.npy"), np.load(tmp_path / "whole.npy")) >= 40.0


@GPU
def test_max_memory_bounds_the_cuda_peak():
    from frametrans.checkpoint import load_model

    budget = 1 * 2**30
    image = np.random.default_rng(0).integers(0, 256, (2160, 3840, 3), dtype=np.uint8)
    runner = Runner(load_model("cyclegan"), RunnerOptions(device="cuda", precision="bf16", compile="off",
                                                         max_memory=budget))
    runner([image[:64, :64]])  # weights and the probe in place: what the budget does not count
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = runner([image])[0]
    torch.cuda.synchronize()
    assert out.shape == image.shape and runner.plan(2160, 3840).tile is not None
    assert torch.cuda.max_memory_allocated() - base <= 1.25 * budget
