"""The non-finite guard: a bf16 output with NaN/inf is run again in fp32, never written as garbage."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from frametrans.engine.runner import NonFiniteOutput, Runner, RunnerOptions
from frametrans.io.frame import Frame
from frametrans.models.resnet import ResnetConfig, ResnetGenerator
from support import smooth_images


CALLS: list = []


def _precision(model: ResnetGenerator) -> torch.dtype:
    """bf16 for the session's low-precision copy (its residual block convs are bf16), else fp32."""
    return model.model[10].conv_block[1].weight.dtype


class NaNInBf16(ResnetGenerator):
    """A tiny ResNet whose output has NaN in one pixel of every frame in bf16 (an overflow), and
    everywhere in fp32 too when ``always`` is set."""

    always = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CALLS.append(_precision(self))  # shared by the session's bf16 copy (a deepcopy of the module)
        y = super().forward(x)
        if _precision(self) == torch.bfloat16 or self.always:  # the bf16 copy
            y = y.clone()
            y[:, :, 1, 2] = float("nan")
        return y


def _model(always: bool = False) -> NaNInBf16:
    torch.manual_seed(0)
    m = NaNInBf16(ResnetConfig(ngf=4, n_blocks=1))
    m.always = always
    return m


def _frames(n: int):
    return [Frame(im, source="clip.mp4", index=i, pts=i) for i, im in enumerate(smooth_images(n))]


def _opts(**kw) -> RunnerOptions:
    return RunnerOptions(device="cpu", compile="off", **kw)


def test_a_bf16_batch_with_nan_runs_again_in_fp32(caplog):
    model = _model()
    frames = _frames(4)
    ref = Runner(model, _opts(precision="fp32"))([f.image for f in frames])
    assert all(np.isfinite(r).all() for r in ref)
    caplog.set_level(logging.WARNING, logger="frametrans")
    r = Runner(model, _opts(precision="bf16", batch_size=2))
    r.plan(*frames[0].image.shape[:2])  # the memory policy's probe forward, before counting
    CALLS.clear()
    outs = [o for _, o in r.run(frames)]
    # each bf16 batch once, then once in fp32: never more
    assert CALLS == [torch.bfloat16, torch.float32] * 2
    for a, b in zip(outs, ref):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # the fp32 picture, not a black frame
    warnings = [rec.getMessage() for rec in caplog.records if "NaN or inf" in rec.getMessage()]
    assert len(warnings) == 2
    assert "clip.mp4: frame 0" in warnings[0] and "clip.mp4: frame 1" in warnings[0]
    assert "bf16 output; running the batch of 2 again in fp32" in warnings[0]


def test_tiled_frames_are_guarded_too():
    model = _model()
    image = smooth_images(1, 96, 128)[0]
    ref = Runner(model, _opts(precision="fp32", tile=64, tile_overlap=16))([image])[0]
    CALLS.clear()
    out = Runner(model, _opts(precision="bf16", tile=64, tile_overlap=16))([image], "big.png")[0]
    assert torch.float32 in CALLS
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_nan_in_fp32_is_an_error_naming_the_frame_not_a_frame():
    for precision in ("fp32", "bf16"):
        r = Runner(_model(always=True), _opts(precision=precision))
        with pytest.raises(NonFiniteOutput, match="clip.mp4: frame 0: the model's output has NaN or inf"):
            list(r.run(_frames(1)))


def test_finite_outputs_run_once():
    torch.manual_seed(0)
    model = ResnetGenerator(ResnetConfig(ngf=4, n_blocks=1))
    r = Runner(model, _opts(precision="bf16", batch_size=3))
    r.plan(40, 52)
    calls = []
    r.forward = lambda m, x: calls.append(_precision(m)) or m(x)
    outs = r([f.image for f in _frames(3)])
    assert len(outs) == 3 and calls == [torch.bfloat16]


class Huge(ResnetGenerator):
    """Finite outputs so large that their sum overflows fp32 (the guard's one-reduction check)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(super().forward(x), 3e38)


def test_finite_outputs_whose_sum_overflows_are_kept(caplog):
    torch.manual_seed(0)
    runner = Runner(Huge(ResnetConfig(ngf=4, n_blocks=1)),
                    RunnerOptions(device="cpu", precision="fp32", backend="torch"))
    with caplog.at_level(logging.WARNING, logger="frametrans"):
        outs = [o for _, o in runner.run(_frames(2))]
    assert len(outs) == 2 and all(o.max() == 255 for o in outs)  # clipped, not refused
    assert "NaN or inf" not in caplog.text


def _in_flight(monkeypatch):
    """The CUDA pipeline on the CPU: the finite test deferred, and every launched batch held in
    flight (an event to wait on) until the next one is launched, as on a GPU."""
    from frametrans.engine import runner as runner_module

    class Done:
        def synchronize(self):
            pass

    launch = Runner._launch

    def held(self, *args, **kwargs):
        launched = launch(self, *args, **kwargs)
        launched.event = Done()
        return launched

    monkeypatch.setattr(Runner, "_defers_finite_test", lambda self: True)
    monkeypatch.setattr(Runner, "_launch", held)
    return runner_module


def test_the_test_read_when_the_batch_is_handed_out(caplog, monkeypatch):
    """On CUDA the finite test is read when a batch is handed out, after the next one is launched
    (the same code here, batches held in flight): each bf16 batch's fp32 run comes after the next
    batch's launch, the frames are the fp32 ones, and fp32 NaN is still an error naming the frame.
    A stateful forward (--temporal stats) is never deferred."""
    model = _model()
    frames = _frames(6)
    ref = Runner(model, _opts(precision="fp32"))([f.image for f in frames])
    _in_flight(monkeypatch)
    caplog.set_level(logging.WARNING, logger="frametrans")
    r = Runner(model, _opts(precision="bf16", batch_size=2))
    r.plan(*frames[0].image.shape[:2])
    CALLS.clear()
    outs = [o for _, o in r.run(frames)]
    bf, fp = torch.bfloat16, torch.float32
    assert CALLS == [bf, bf, fp, bf, fp, fp]  # launched N+1, then N handed out (and run again)
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(outs, ref))
    assert sum("NaN or inf" in rec.getMessage() for rec in caplog.records) == 3
    assert all(np.array_equal(a, b) for a, b in zip(r([f.image for f in frames[:2]]), outs[:2]))
    with pytest.raises(NonFiniteOutput, match="frame 0"):
        list(Runner(_model(always=True), _opts(precision="fp32", batch_size=2)).run(_frames(2)))


def test_a_deferred_batch_is_redone_by_the_runner_that_launched_it(caplog, monkeypatch):
    """8-bit frames in bf16, then a 16-bit one (its fp32 twin runner hands out the 8-bit batch):
    the bf16 batch is still run again in fp32, not refused as an fp32 NaN."""
    from frametrans.engine import device, session

    monkeypatch.setattr(device, "cpu_bf16_pays", lambda: True)
    monkeypatch.setattr(session, "AUTO_MIN_DB", -1e9)
    _in_flight(monkeypatch)
    model = _model()
    frames = _frames(3)
    frames[2] = Frame(frames[2].image.astype(np.uint16) * 257, source="clip.mp4", index=2, pts=2)
    r = Runner(model, _opts(precision="auto", batch_size=2))
    assert r.dtype == torch.bfloat16
    caplog.set_level(logging.WARNING, logger="frametrans")
    outs = [o for _, o in r.run(frames)]
    assert len(outs) == 3 and outs[2].dtype == np.uint16
    assert all(np.isfinite(o.astype(float)).all() for o in outs)
    assert sum("bf16 output; running the batch of 2 again in fp32" in rec.getMessage()
               for rec in caplog.records) == 1


def test_which_forwards_defer_the_test():
    from types import SimpleNamespace

    from frametrans.engine.smoothing import NormSmoother, smoothed_forward

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    plain, smoothed = (lambda m, x: m(x)), smoothed_forward(lambda m, x: m(x), NormSmoother(0.5))
    assert Runner._defers_finite_test(SimpleNamespace(device=cuda, forward=plain))
    assert not Runner._defers_finite_test(SimpleNamespace(device=cuda, forward=smoothed))
    assert not Runner._defers_finite_test(SimpleNamespace(device=cpu, forward=plain))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_nan_batches_run_again_in_fp32_when_handed_out(caplog):
    """The deferred finite test on a real GPU: pinned flags copied back with the outputs, read when
    the batch is handed out; the frames match the fp32 ones and every batch is warned about once."""
    model = _model()
    frames = _frames(6)
    ref = Runner(model, _opts(precision="fp32"))([f.image for f in frames])
    caplog.set_level(logging.WARNING, logger="frametrans")
    r = Runner(model, RunnerOptions(device="cuda", compile="off", precision="bf16", batch_size=2))
    assert r._defers_finite_test()
    r.plan(*frames[0].image.shape[:2])
    CALLS.clear()
    outs = [o for _, o in r.run(frames)]
    bf, fp = torch.bfloat16, torch.float32
    assert CALLS == [bf, bf, fp, bf, fp, fp]  # N+1 launched before N is tested
    assert len(outs) == 6 and all(np.abs(a.astype(int) - b.astype(int)).max() <= 2 for a, b in zip(outs, ref))
    assert sum("NaN or inf" in rec.getMessage() for rec in caplog.records) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_launching_a_batch_on_cuda_does_not_wait_for_the_device():
    """After the first batch of a shape (memory probe, pinned buffers, timing), launching a batch
    queues its work without a device sync: torch's sync debug mode sees none, for RGB frames and
    for YUV planes."""
    import warnings

    import av

    from frametrans.io.planes import YUV420

    model = _model()
    r = Runner(model, RunnerOptions(device="cuda", compile="off", precision="fp32", batch_size=2))
    images = smooth_images(4)
    r(images[:2])  # warm-up: probe, buffers, eager timing
    planes = [YUV420.from_av(av.VideoFrame.from_ndarray(im, format="rgb24").reformat(format="yuv420p"))
              for im in images]
    for batch in ([images[:2], images[2:]], [planes[:2], planes[2:]]):
        r._finish(r._launch(None, batch[0]))  # warm-up of this kind
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                launched = r._launch(None, batch[1])
        finally:
            torch.cuda.set_sync_debug_mode(0)
        r._finish(launched)
        assert not [str(w.message) for w in seen if "synchroniz" in str(w.message).lower()]
