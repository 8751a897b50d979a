"""bf16 that keeps the picture: what stays fp32 in the session's low-precision copy, the PSNR bars on
real photos (random and bundled weights), and precision=auto's rule for a model that still loses."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import skimage.data
import torch
from torch import nn

from frametrans.checkpoint import load_model
from frametrans.engine import device as devices
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.engine.session import Session, full_precision_modules, output_convolutions
from frametrans.models.resnet import ResnetConfig, ResnetGenerator
from support import psnr, tiny_model


def _photos(size: int = 128):
    return [f()[:size, :size].copy() for f in (skimage.data.astronaut, skimage.data.coffee,
                                               skimage.data.chelsea, skimage.data.rocket)]


def _munit_forward(model):
    style = torch.randn(1, model.config.style_dim, 1, 1, generator=torch.Generator().manual_seed(0))

    def forward(m, x):
        return m.translate(x, style=style, direction="a2b")
    return forward


def _psnrs(model, images, forward=None):
    def run(precision):
        opts = RunnerOptions(device="cpu", precision=precision, compile="off", batch_size=1)
        r = Runner(model, opts, forward=forward) if forward else Runner(model, opts)
        return [r([im])[0] for im in images]
    return [psnr(a, b) for a, b in zip(run("bf16"), run("fp32"))]


def test_the_copy_keeps_norms_and_frame_convs_in_fp32_and_hands_the_output_on_in_fp32():
    model = tiny_model("resnet")
    keep = full_precision_modules(model, torch.device("cpu"))
    # first 7x7 conv and the stride-2 conv reading the full frame, every norm
    assert {"model.1", "model.4", "model.2", "model.10.conv_block.2"} <= keep
    assert "model.7" not in keep and "model.10.conv_block.1" not in keep  # lower resolutions: bf16
    assert "model.18" not in keep  # the output conv reads the full resolution too, but runs in bf16
    assert output_convolutions(model) == {"model.18"}
    low = Session(model, "cpu", "bf16").model
    weights = dict(low.named_parameters())
    assert weights["model.1.weight"].dtype == weights["model.4.weight"].dtype == torch.float32
    assert weights["model.10.conv_block.1.weight"].dtype == weights["model.18.weight"].dtype == torch.bfloat16
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    s = Session(model, "cpu", "bf16")
    with s.inference():
        y = s.model(s.to_model_input(x))
    assert y.dtype == torch.float32  # the tanh ran in fp32: no bf16 rounding right before uint8


def test_keep_fp32_knob_selects_what_stays_fp32(monkeypatch):
    """FRAMETRANS_KEEP_FP32 (a measuring knob): output keeps only the output conv, none nothing; each
    mode gets its own copy of the weights; an unknown mode is refused with the choices."""
    model = tiny_model("resnet")
    dtypes = {}
    for mode in ("output", "none", "all"):
        monkeypatch.setenv("FRAMETRANS_KEEP_FP32", mode)
        weights = dict(Session(model, "cpu", "bf16").model.named_parameters())
        dtypes[mode] = {n: w.dtype for n, w in weights.items()}
    assert dtypes["output"]["model.18.weight"] == torch.float32
    assert dtypes["output"]["model.1.weight"] == dtypes["output"]["model.4.weight"] == torch.bfloat16
    assert set(dtypes["none"].values()) == {torch.bfloat16}
    monkeypatch.setenv("FRAMETRANS_KEEP_FP32", "none")
    light = Session(model, "cpu", "bf16")
    with light.inference():
        assert light.model(light.to_model_input(torch.rand(1, 3, 32, 32))).dtype == torch.float32
    assert dtypes["all"]["model.1.weight"] == dtypes["all"]["model.4.weight"] == torch.float32
    assert dtypes["all"]["model.18.weight"] == torch.bfloat16
    monkeypatch.setenv("FRAMETRANS_KEEP_FP32", "some")
    with pytest.raises(ValueError, match="FRAMETRANS_KEEP_FP32='some': use all, output or none"):
        Session(model, "cpu", "bf16")


@pytest.mark.parametrize("name", ["resnet", "unet", "munit", "predictor"])
def test_bf16_keeps_the_picture_with_random_weights(name):
    model = tiny_model(name)
    forward = _munit_forward(model) if name == "munit" else None
    ps = _psnrs(model, _photos(64 if name != "unet" else 128), forward)
    assert min(ps) >= 40.0 and np.mean(ps) >= 45.0, ps


@pytest.mark.parametrize("name", ["cyclegan", "munit", "pix2pix"])
def test_bf16_keeps_the_picture_with_bundled_weights(name):
    model = load_model(name)
    forward = _munit_forward(model) if name == "munit" else None
    ps = _psnrs(model, _photos(128), forward)
    assert min(ps) >= 40.0 and np.mean(ps) >= 45.0, ps


@pytest.mark.parametrize("name, light", [("cyclegan", True), ("munit", True), ("pix2pix", True),
                                          ("predictor", False)])
def test_auto_on_the_cpu_keeps_nothing_in_fp32_where_the_probe_has_room(name, light, monkeypatch):
    """The light copy (every layer bf16) where the probe passes 45 + 3 dB, else the copy that keeps
    norms and frame in fp32; the picture stays within the bars on photos either way."""
    monkeypatch.setattr(devices, "cpu_bf16_pays", lambda: True)
    monkeypatch.delenv("FRAMETRANS_KEEP_FP32", raising=False)
    model = load_model(name)
    s = Session(model, "cpu", "auto")
    assert s.dtype == torch.bfloat16 and s.keep_fp32 == ("none" if light else "all")
    assert s.precision_db >= (48.0 if light else 45.0)
    assert {p.dtype for p in s.model.parameters()} == ({torch.bfloat16} if light else {torch.bfloat16, torch.float32})
    assert Session(model, "cpu", "bf16").keep_fp32 == "all"  # asked for by name: the careful copy
    monkeypatch.setenv("FRAMETRANS_KEEP_FP32", "all")
    assert Session(model, "cpu", "auto").keep_fp32 == "all"  # the knob still decides when set
    if name == "predictor":
        return
    monkeypatch.delenv("FRAMETRANS_KEEP_FP32")
    forward = _munit_forward(model) if name == "munit" else None

    def run(precision):
        opts = RunnerOptions(device="cpu", precision=precision, compile="off", batch_size=1)
        r = Runner(model, opts, forward=forward) if forward else Runner(model, opts)
        return [r([im])[0] for im in _photos(128)], r.session.keep_fp32

    (auto, kept), (ref, _) = run("auto"), run("fp32")
    ps = [psnr(a, b) for a, b in zip(auto, ref)]
    assert kept == "none" and min(ps) >= 40.0 and np.mean(ps) >= 45.0, ps


class LosesInBf16(ResnetGenerator):
    """A ResNet whose output passes through a channel-mixing Linear with a large offset: in bf16
    (8 significant bits) the offset leaves steps of 0.5 on values in [-1, 1]."""

    def __init__(self, config: ResnetConfig) -> None:
        super().__init__(config)
        self.shift = nn.Linear(3, 3)
        with torch.no_grad():
            self.shift.weight.copy_(torch.eye(3))
            self.shift.bias.fill_(100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return self.shift(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) - 100.0


def test_auto_runs_fp32_for_a_model_that_loses_the_picture_in_bf16(monkeypatch, caplog):
    monkeypatch.setattr(devices, "cpu_bf16_pays", lambda: True)  # auto means bf16 on any CPU here
    torch.manual_seed(0)
    lossy = LosesInBf16(ResnetConfig(ngf=4, n_blocks=1))
    caplog.set_level(logging.WARNING, logger="frametrans")
    s = Session(lossy, "cpu", "auto")
    assert s.dtype == torch.float32 and s.model is s.source and s.precision_db < 45.0
    assert "--precision auto: bf16 output of this model is" in caplog.text and "running it in fp32" in caplog.text
    assert Session(lossy, "cpu", "bf16").dtype == torch.bfloat16  # asked for by name: kept
    fine = Session(tiny_model("resnet"), "cpu", "auto")
    assert fine.dtype == torch.bfloat16 and fine.precision_db >= 45.0
    r = Runner(lossy, RunnerOptions(device="cpu", precision="auto", compile="off"))
    assert r.dtype == torch.float32


# -- which CPUs get bf16 under auto ----------------------------------------------------------------


@pytest.mark.parametrize("flags, units, speedup, pays", [
    ("flags : avx2 fma", False, 9.0, False),  # no bf16 units: emulated, never measured
    ("flags : avx512f avx512_bf16 amx_bf16 amx_tile", True, 0.1, True),  # AMX: not measured
    ("flags : avx512f avx512_bf16", True, 1.93, True),  # AMD Zen 5: a convolution 1.93x in bf16
    ("flags : avx512f avx512_bf16", True, 0.74, False),  # bf16 slower (the 2026-11-30 Xeon's model)
    ("flags : avx512f avx512_bf16", True, devices.BF16_MIN_SPEEDUP, True),
])
def test_cpu_bf16_pays_by_units_then_by_measurement(flags, units, speedup, pays, monkeypatch):
    measured = []
    monkeypatch.setattr(devices, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: units)
    monkeypatch.setattr(devices, "remembered_bf16_speedup", lambda: measured.append(1) or speedup)
    devices.cpu_bf16_pays.cache_clear()
    try:
        assert devices.cpu_bf16_pays() is pays
        assert devices.resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if pays else torch.float32)
        assert devices.resolve_precision("fp32", torch.device("cpu")) == torch.float32
        assert len(measured) == (1 if units and "amx" not in flags else 0)  # once per process
    finally:
        devices.cpu_bf16_pays.cache_clear()


def test_the_bf16_probe_convolution_times_both_precisions_and_leaves_the_seed_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    speedup = devices.cpu_bf16_speedup(channels=8, side=16, repeat=2)
    assert 0 < speedup < float("inf") and torch.equal(torch.rand(4), expected)


def test_the_probe_is_measured_once_per_machine_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAMETRANS_CACHE_DIR", str(tmp_path))
    measured = []
    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda: measured.append(1) or 1.5)
    assert devices.remembered_bf16_speedup() == 1.5 and len(measured) == 1
    kept = tmp_path / devices.SPEEDUP_FILE
    assert list(json.loads(kept.read_text()).values()) == [1.5]
    assert devices.remembered_bf16_speedup() == 1.5 and len(measured) == 1  # read, not measured
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # another thread count is another measurement
        assert devices.remembered_bf16_speedup() == 1.5 and len(measured) == 2
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads(kept.read_text())) == 2
    kept.write_text("{not json")  # damaged: measured again and rewritten
    assert devices.remembered_bf16_speedup() == 1.5 and len(measured) == 3
    assert len(json.loads(kept.read_text())) == 1
    monkeypatch.setenv("FRAMETRANS_CACHE_DIR", str(tmp_path / "file" / "under-a-file"))
    (tmp_path / "file").write_text("")  # the cache folder cannot be made: measured, not kept
    assert devices.remembered_bf16_speedup() == 1.5 and len(measured) == 4


class NaNInBf16(ResnetGenerator):
    """Fine in fp32; one NaN pixel whenever any of its weights is bf16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if any(p.dtype == torch.bfloat16 for p in self.parameters()):
            y = y.clone()
            y[..., 0, 0] = float("nan")
        return y


def test_auto_runs_fp32_when_the_probe_sees_nan_and_makes_no_copy_to_throw_away(monkeypatch):
    from frametrans.engine import session as sessions

    monkeypatch.setattr(devices, "cpu_bf16_pays", lambda: True)
    monkeypatch.delenv("FRAMETRANS_KEEP_FP32", raising=False)
    torch.manual_seed(0)
    model = NaNInBf16(ResnetConfig(ngf=4, n_blocks=1))
    s = Session(model, "cpu", "auto")
    assert s.dtype == torch.float32 and s.precision_db == 0.0  # NaN is a lost picture, not inf dB
    copies = []
    real = sessions.copy.deepcopy
    monkeypatch.setattr(sessions.copy, "deepcopy", lambda m, *a: copies.append(1) or real(m, *a))
    again = Session(model, "cpu", "auto")  # verdicts known for these weights: no light copy made
    assert again.dtype == torch.float32 and not copies
    assert all(key[-1] != "none" for key in sessions._PREPARED.get(again.source, {}))
