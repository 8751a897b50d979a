"""Backends behind the runner: selection (with and without the optional packages), the auto rule,
OpenVINO and ONNX Runtime against torch fp32, batching and tiling through them, the disk cache."""

from __future__ import annotations

import logging
import importlib.util
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from frametrans.engine import backends
from frametrans.engine.backends import stateful
from frametrans.engine.backends.serve import BackendServer
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.io.frame import Frame
from support import psnr, smooth_images, tiny_model

CPU = torch.device("cpu")


@pytest.fixture
def without_backends(monkeypatch):
    """Neither openvino nor onnxruntime importable (None in sys.modules makes ``import`` fail)."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


def _runner(model, tmp_path, **kw) -> Runner:
    kw.setdefault("device", "cpu")
    kw.setdefault("compile", "off")
    return Runner(model, RunnerOptions(cache_dir=str(tmp_path / "cache"), **kw))


def _fp32(model, images, forward=None):
    opts = RunnerOptions(device="cpu", precision="fp32", compile="off", backend="torch")
    return (Runner(model, opts, forward=forward) if forward else Runner(model, opts))(images)


# -- selection -------------------------------------------------------------------------------


def test_selection_without_the_optional_packages(without_backends):
    assert not backends.installed("openvino") and not backends.installed("onnxruntime")
    for dtype in (torch.float32, torch.bfloat16):
        choice = backends.choose("auto", CPU, dtype)
        assert choice.name == "torch" and "neither OpenVINO nor ONNX Runtime" in choice.reason
    for name, pip in (("openvino", "pip install 'frametrans[openvino]'"),
                      ("onnxruntime", "pip install 'frametrans[onnx]'")):
        with pytest.raises(backends.BackendUnavailable, match=f"--backend {name}: .* not installed; ") as err:
            RunnerOptions(backend=name).validate()
        assert pip in str(err.value) and "\n" not in str(err.value)
        assert err.value.param_hint == "--backend"  # the CLI turns it into exit status 2
    RunnerOptions(backend="torch").validate()
    RunnerOptions(backend="auto").validate()
    assert RunnerOptions().backend == "torch"  # the library runs the module it is given; the CLI says auto


def _need(name: str) -> None:
    """Skip unless backend ``name`` is installed (imported as the product imports it: an
    importorskip of openvino would send OpenVINO's telemetry)."""
    if not backends.installed(name):
        pytest.skip(f"{name} is not installed")


def test_auto_rule_and_refusals(monkeypatch):
    _need("openvino")
    _need("onnxruntime")
    assert backends.choose("auto", CPU, torch.bfloat16).name == "openvino"
    assert backends.choose("auto", CPU, torch.float32).name == "openvino"
    assert backends.choose("auto", torch.device("cuda"), torch.bfloat16).name == "torch"
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert backends.choose("auto", CPU, torch.float32).name == "onnxruntime"
    assert backends.choose("auto", CPU, torch.bfloat16).name == "torch"  # ORT has no bf16
    monkeypatch.delitem(sys.modules, "openvino")
    with pytest.raises(backends.BackendUnavailable, match="runs on the CPU, not cuda"):
        backends.choose("openvino", torch.device("cuda"), torch.float32)
    with pytest.raises(backends.BackendUnavailable, match="computes in fp32 on the CPU, not bf16"):
        backends.choose("onnxruntime", CPU, torch.bfloat16, precision="bf16")
    assert backends.choose("onnxruntime", CPU, torch.bfloat16, precision="auto").dtype == torch.float32
    with pytest.raises(backends.BackendUnavailable, match="--compile on"):
        backends.choose("openvino", CPU, torch.float32, compile_mode="on")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        RunnerOptions(backend="tensorrt").validate()
    with pytest.raises(ValueError, match="CUDA graphs need --backend torch"):
        RunnerOptions(backend="openvino", cuda_graphs=True).validate()


def test_auto_converts_only_when_the_job_pays(tmp_path, monkeypatch):
    model = tiny_model("resnet")
    choice = backends.Choice("onnxruntime", torch.float32, "test")
    server = BackendServer(choice, model, lambda m, x: m(x), "", tmp_path)
    shape = (1, 3, 16, 16)
    assert not server.wants(shape, None, 10**6)  # not timed yet
    monkeypatch.setenv("FRAMETRANS_CONVERT_SECONDS", "3")
    assert server.wants(shape, 0.5, 100)  # 0.3 x 0.5 s x 100 frames = 15 s > 3 s
    assert not server.wants(shape, 0.5, 10)  # 1.5 s < 3 s
    assert not server.wants(shape, 0.5, 0)  # no job hint: nothing pays
    (tmp_path / "onnx").mkdir()
    graph = BackendServer(choice, model, lambda m, x: m(x), "", tmp_path)
    graph_file = tmp_path / "onnx" / "x.onnx"
    graph._path = graph_file
    graph_file.write_bytes(b"")  # cached: loading (1 s) is cheaper than converting (3 s)
    assert graph.wants(shape, 0.5, 10) and not graph.wants(shape, 0.5, 5)  # 1.5 s > 1 s > 0.75 s
    assert not graph.wants(shape, None, 10**6)  # a cached graph still waits for the job's measure
    explicit = BackendServer(backends.Choice("onnxruntime", torch.float32, "x", True), model,
                             lambda m, x: m(x), "", tmp_path)
    assert explicit.wants(shape, None, 0)


def test_what_the_compile_decision_waits_for(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAMETRANS_CONVERT_SECONDS", "3")
    server = BackendServer(backends.Choice("onnxruntime", torch.float32, "test"), tiny_model("resnet"),
                           lambda m, x: m(x), "", tmp_path)
    shape = (1, 3, 8, 8)
    assert server.rival_seconds(shape, None, 100) == (True, None)  # torch eager first
    assert server.rival_seconds(shape, 0.5, 100) == (True, None)  # the backend will run it: time it
    assert server.rival_seconds(shape, 0.5, 2) == (False, None)  # too short a job for the backend
    server.fn = lambda x: x
    assert server.rival_seconds((1, 3, 16, 16), None, 100) == (False, None)  # taken untimed: no wait
    server(torch.zeros(shape), 0.5)
    server(torch.zeros(shape), 0.5)  # the second run is timed
    wait, seconds = server.rival_seconds(shape, 0.5, 100)
    assert not wait and seconds is not None and seconds < 0.5
    server._slower.add(shape)
    assert server.rival_seconds(shape, 0.5, 100) == (False, None)  # torch runs it: no rival
    failed = BackendServer(backends.Choice("onnxruntime", torch.float32, "test"), tiny_model("resnet"),
                           lambda m, x: m(x), "", tmp_path)
    failed.failed = "RuntimeError: cannot export"
    assert failed.rival_seconds(shape, None, 100) == (False, None)


def test_kept_guard_verdicts_decide_per_frame_size_under_auto_only(tmp_path, caplog):
    """A verdict kept by an earlier run: below the bar at 64x64, the auto backend leaves that size
    to torch (the whole job while unbuilt; only that size once another size built it); other sizes,
    an explicit backend and a forward without a cache token are not affected."""
    import json

    from frametrans.engine.backends.graph import GUARD_SUFFIX, graph_path, prune

    model = tiny_model("resnet")
    auto = backends.Choice("openvino", torch.bfloat16, "test", guarded=True)
    server = BackendServer(auto, model, lambda m, x: m(x), "", tmp_path)
    graph = graph_path(model, "", tmp_path)
    graph.parent.mkdir(parents=True)
    graph.write_bytes(b"graph")
    verdicts = graph.with_name(graph.name + GUARD_SUFFIX)
    verdicts.write_text(json.dumps({server._verdict_key((1, 3, 64, 64)): 41.0,
                                    server._verdict_key((1, 3, 96, 96)): 50.0}))
    caplog.set_level(logging.INFO, logger="frametrans")
    assert server.wants((2, 3, 96, 96), 1.0, 100)  # passed before: the job pays, the backend may run
    assert not server.wants((1, 3, 64, 64), 1.0, 100)  # failed before
    assert server.failed is not None and "was 41.0 dB from torch fp32 on a 64x64" in caplog.text
    built = BackendServer(auto, model, lambda m, x: m(x), "", tmp_path)
    built.fn = lambda x: x  # another size passed the guard and built it
    assert not built.wants((1, 3, 64, 64), 1.0, 100) and built.failed is None
    assert built.wants((1, 3, 32, 32), 1.0, 100)  # no verdict for this size
    explicit = BackendServer(backends.Choice("openvino", torch.bfloat16, "x", explicit=True, guarded=True),
                             model, lambda m, x: m(x), "", tmp_path)
    assert explicit.wants((1, 3, 64, 64), None, 0)  # asked for by name: its own guard runs
    untokened = BackendServer(auto, model, lambda m, x: m(x), None, tmp_path)
    assert untokened.wants((1, 3, 64, 64), 1.0, 100) and untokened._verdicts_file() is None
    graph.unlink()
    prune(graph.parent)  # the graph is gone: its verdicts go too
    assert not verdicts.exists()


def test_a_shape_the_backend_runs_slower_goes_back_to_torch(tmp_path):
    server = BackendServer(backends.Choice("onnxruntime", torch.float32, "test"), tiny_model("resnet"),
                           lambda m, x: m(x), "", tmp_path)
    server.fn = lambda x: (time.sleep(0.02), x)[1]
    x = torch.zeros(1, 3, 8, 8)
    assert server.wants((1, 3, 8, 8), 1e-6, 100)
    server(x, 1e-6)
    server(x, 1e-6)  # the second run is compared with torch eager's 1 us/frame
    assert not server.wants((1, 3, 8, 8), 1e-6, 100)


def test_a_low_precision_backend_under_precision_auto_is_guarded(monkeypatch):
    monkeypatch.setattr(backends, "installed", lambda name: True)
    monkeypatch.setattr(backends, "require_installed", lambda name: None)
    assert backends.choose("auto", CPU, torch.bfloat16, precision="auto").guarded
    assert backends.choose("openvino", CPU, torch.bfloat16, precision="auto").guarded
    assert not backends.choose("openvino", CPU, torch.bfloat16, precision="bf16").guarded  # asked for
    assert not backends.choose("auto", CPU, torch.float32, precision="auto").guarded
    assert not backends.choose("onnxruntime", CPU, torch.bfloat16, precision="auto").guarded  # runs fp32
    assert not backends.choose("torch", CPU, torch.bfloat16, precision="auto").guarded


def test_auto_leaves_openvino_bf16_alone_where_the_all_bf16_copy_failed(tmp_path, monkeypatch):
    """OpenVINO's bf16 computes every layer in bf16: a model whose all-bf16 torch copy read more than
    ALL_LOW_SLACK_DB below the bar on the session's probe is not converted, built or probed under
    auto; torch runs its careful copy. Asked for by name, or in fp32, nothing changes."""
    from frametrans.engine import device as devices
    from frametrans.engine.session import AUTO_MIN_DB, Session

    monkeypatch.setattr(backends, "installed", lambda name: True)
    monkeypatch.setattr(backends, "require_installed", lambda name: None)
    bar = AUTO_MIN_DB - backends.ALL_LOW_SLACK_DB
    lossy = backends.choose("auto", CPU, torch.bfloat16, "auto", all_low_db=bar - 0.1)
    assert lossy.name == "torch" and not lossy.guarded and "computes every layer in bf16" in lossy.reason
    assert backends.choose("auto", CPU, torch.bfloat16, "auto", all_low_db=bar + 0.1).name == "openvino"
    assert backends.choose("auto", CPU, torch.bfloat16, "auto", all_low_db=None).name == "openvino"
    assert backends.choose("openvino", CPU, torch.bfloat16, "auto", all_low_db=30.0).name == "openvino"
    assert backends.choose("auto", CPU, torch.float32, "auto", all_low_db=30.0).name == "openvino"
    monkeypatch.setattr(devices, "cpu_bf16_pays", lambda: True)
    monkeypatch.setattr(Session, "all_low_db", lambda self: bar - 0.1)
    built = []
    monkeypatch.setattr(backends, "build", lambda *a: built.append(a))
    r = _runner(tiny_model("resnet"), tmp_path, backend="auto", precision="auto", batch_size=1)
    r.expect(4)
    r(smooth_images(4))
    assert r.backend.name == "torch" and r._server is None and built == []
    assert not (tmp_path / "cache" / "onnx").exists()  # nothing converted


def _lossy_in_bf16(model, built):
    """A stand-in for backends.build: torch fp32, plus, when built for bf16, an error that follows
    the frame's content (none on a flat frame: a black first frame looks exact)."""
    from frametrans.engine.session import Session

    def build(choice, path, root):
        built.append(choice.dtype)

        def forward(x):
            with Session.full_precision():
                y = model(x.float())
            if choice.dtype != torch.bfloat16:
                return y
            return y + 0.2 * (x.float() - x.float().mean(dim=(2, 3), keepdim=True))
        return forward
    return build


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_precision_auto_runs_a_backend_that_loses_the_picture_in_fp32(precision, tmp_path, monkeypatch, caplog):
    from frametrans.engine import device as devices

    monkeypatch.setattr(devices, "cpu_bf16_pays", lambda: True)  # auto means bf16 on any CPU here
    monkeypatch.setattr(backends, "require_installed", lambda name: None)
    model, built = tiny_model("resnet"), []
    images = [np.zeros_like(smooth_images(1)[0])] + smooth_images(2)  # the job opens on a black frame
    monkeypatch.setattr(backends, "build", _lossy_in_bf16(model, built))
    ref = _fp32(model, images)
    caplog.set_level(logging.WARNING, logger="frametrans")
    r = _runner(model, tmp_path, backend="openvino", precision=precision, batch_size=1)
    assert r.dtype == torch.bfloat16 and r.backend.guarded == (precision == "auto")
    outs = [o for _, o in r.run(Frame(im, index=i) for i, im in enumerate(images))]
    worst = min(psnr(a, b) for a, b in zip(outs, ref))
    if precision == "auto":
        assert built == [torch.bfloat16, torch.float32] and r._server.choice.dtype == torch.float32
        assert worst >= 60.0  # every frame, the first one too, from the fp32 backend
        assert "--precision auto: the openvino bf16 output of this model is" in caplog.text
        assert "on a probe frame" in caplog.text
        assert "openvino runs it in fp32" in caplog.text
    else:  # asked for by name: kept, noise and all (no guard ran; on a CPU without bf16 units the
        # session still says that auto would pick fp32 there)
        assert built == [torch.bfloat16] and worst < 40.0
        assert "--precision auto: the openvino bf16 output" not in caplog.text
        assert "on a probe frame" not in caplog.text and "runs it in fp32" not in caplog.text



def test_under_backend_auto_a_backend_that_loses_the_picture_steps_aside_for_torch(tmp_path, monkeypatch, caplog):
    """--backend auto: no fp32 backend is built (torch bf16 beat it wherever bf16 pays); torch's own
    bf16 copy, which passed the session's probe, runs the guarded batch and every later one."""
    from frametrans.engine import device as devices

    monkeypatch.setattr(devices, "cpu_bf16_pays", lambda: True)
    monkeypatch.setattr(backends, "installed", lambda name: name == "openvino")
    monkeypatch.setenv("FRAMETRANS_CONVERT_SECONDS", "0")  # any job pays for the backend
    model, built = tiny_model("resnet"), []
    images = smooth_images(4)
    monkeypatch.setattr(backends, "build", _lossy_in_bf16(model, built))
    ref = _fp32(model, images)
    caplog.set_level(logging.WARNING, logger="frametrans")
    r = _runner(model, tmp_path, backend="auto", precision="auto", batch_size=1)
    assert r.dtype == torch.bfloat16 and r.backend.name == "openvino" and r.backend.guarded
    r.expect(len(images))
    outs = [o for _, o in r.run(Frame(im, index=i) for i, im in enumerate(images))]
    assert built == [torch.bfloat16]  # the guard ran on the second batch; no fp32 backend
    assert r._server.failed is not None and r._server.fn is None
    assert not r._server.wants((1, 3, 64, 64), 1.0, 100)
    assert min(psnr(a, b) for a, b in zip(outs, ref)) >= 40.0  # torch bf16, not the lossy backend
    assert "--precision auto: the openvino bf16 output of this model is" in caplog.text
    assert "torch runs its own bf16 copy (which passed the session's probe)" in caplog.text
    assert "openvino runs it in fp32" not in caplog.text
    # the verdict is kept beside the graph: the next run of the model skips the backend unbuilt
    kept = list((tmp_path / "cache" / "onnx").glob("*.onnx.guard.json"))
    assert len(kept) == 1 and "openvino bf16" in kept[0].read_text()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="frametrans")
    again = _runner(model, tmp_path, backend="auto", precision="auto", batch_size=1)
    again.expect(len(images))
    outs_again = [o for _, o in again.run(Frame(im, index=i) for i, im in enumerate(images))]
    assert built == [torch.bfloat16]  # nothing built the second time
    assert "probe frame of an earlier run" in caplog.text and again._server.failed is not None
    assert all(np.array_equal(a, b) for a, b in zip(outs_again, outs))


# -- running through the backends -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_backend_batches_match_torch_fp32(backend, tmp_path):
    pytest.importorskip(backend)
    model = tiny_model("resnet")
    images = smooth_images(5, 44, 60)
    ref = _fp32(model, images)
    r = _runner(model, tmp_path, backend=backend, precision="fp32", batch_size=2)
    outs = [o for _, o in r.run(Frame(im, index=i) for i, im in enumerate(images))]
    assert r._server.fn is not None and r._server.name == backend
    assert {s[0] for s in r._server._runs} == {1, 2}  # batches of 2 and the last one alone
    for a, b in zip(outs, ref):
        assert a.shape == b.shape and a.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    graphs = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(graphs) == 1  # cached on disk; a second runner loads it
    again = _runner(model, tmp_path, backend=backend, precision="fp32")
    assert again._server.cached()
    if backend == "onnxruntime":  # idle threads sleep instead of taking the cores from what runs next
        options = r._server.fn.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_openvino_bf16_keeps_the_picture(tmp_path):
    _need("openvino")
    model = tiny_model("resnet")
    images = smooth_images(3)
    ref = _fp32(model, images)
    r = _runner(model, tmp_path, backend="openvino", precision="bf16")
    assert r.backend.dtype == torch.bfloat16
    assert min(psnr(a, b) for a, b in zip(r(images), ref)) >= 40.0


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_tiles_go_through_the_backend_unless_norm_statistics_are_frozen(backend, tmp_path, caplog):
    pytest.importorskip(backend)
    images = smooth_images(1, 128, 160)
    unet = tiny_model("unet", num_downs=3)  # batch norm with running statistics: not per frame
    r = _runner(unet, tmp_path, backend=backend, precision="fp32", tile=64, tile_overlap=16)
    out = r(images)[0]
    assert r.tiled_frames == 1 and any(s[-2:] == (64, 64) for s in r._server._runs)
    assert np.abs(out.astype(int) - _fp32(unet, images)[0].astype(int)).max() <= 1
    resnet = tiny_model("resnet")  # instance norm: tiles run through torch with frozen statistics
    tiled_torch = _runner(resnet, tmp_path, backend="torch", precision="fp32", tile=64, tile_overlap=16)(images)[0]
    caplog.set_level("INFO", logger="frametrans")
    r = _runner(resnet, tmp_path, backend=backend, precision="fp32", tile=64, tile_overlap=16)
    out = r(images)[0]
    assert r._server.fn is None and "tiled frames of this model run through torch" in caplog.text
    assert np.array_equal(out, tiled_torch)


def test_munit_style_forward_through_a_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_model("munit")
    style = torch.randn(1, model.config.style_dim, 1, 1, generator=torch.Generator().manual_seed(1))

    def forward(m, x):
        return m.translate(x, style=style, direction="b2a")

    images = smooth_images(2, 40, 48)
    ref = _fp32(model, images, forward)
    r = Runner(model, RunnerOptions(device="cpu", precision="fp32", compile="off", backend="onnxruntime",
                                    cache_dir=str(tmp_path / "cache")), forward=forward)
    outs = r(images)
    assert r._server.fn is not None
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(outs, ref))
    # a forward without a cache_token cannot be named in the cache: converted, not cached
    assert not (tmp_path / "cache" / "onnx").exists()


def test_auto_in_the_runner_converts_once_the_job_pays(tmp_path, monkeypatch):
    if not (backends.installed("openvino") or backends.installed("onnxruntime")):
        pytest.skip("neither openvino nor onnxruntime installed")
    monkeypatch.setenv("FRAMETRANS_CONVERT_SECONDS", "0")
    model = tiny_model("resnet")
    images = smooth_images(6, 32, 40)
    frames = [Frame(im, index=i) for i, im in enumerate(images)]
    short = _runner(model, tmp_path / "a", precision="fp32", batch_size=2, backend="auto")
    assert short.backend.name in ("openvino", "onnxruntime") and not short.backend.explicit
    list(short.run(frames))  # no job hint: nothing pays for converting
    assert short._server.fn is None
    long = _runner(model, tmp_path / "b", precision="fp32", batch_size=2, backend="auto")
    long.expect(len(frames))
    outs = [o for _, o in long.run(frames)]
    assert long._server.fn is not None  # the first batch ran eagerly (timed), the rest converted
    ref = _fp32(model, images)
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(outs, ref))


# -- --temporal stats through the backends: the statistics' state as graph inputs and outputs ----


def _stream(n=7, size=(36, 44), cut_at=4):
    """uint8 frames of a texture panning right, then (from ``cut_at``) another scene."""
    rng = np.random.default_rng(0)
    wide = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 14, generator=torch.Generator().manual_seed(0)),
                                           size=(size[0], size[1] + 3 * n), mode="bicubic")[0]
    frames = [wide[:, :, 3 * t:3 * t + size[1]].permute(1, 2, 0).clamp(0, 1).numpy() for t in range(n)]
    other = rng.random((1, 1, 3)) * 0.3 + 0.6
    out = [f if t < cut_at else f * 0.3 + other for t, f in enumerate(frames)]
    return [np.ascontiguousarray(np.clip(f * 255, 0, 255).astype(np.uint8)) for f in out]


def _stats_outputs(name, batch, **runner):
    """The stream through a Translator's --temporal stats variant (EMA 0.8): (outputs, variant)."""
    from frametrans.apply import Translator

    model = tiny_model(name)
    opts = RunnerOptions(device="cpu", precision="fp32", compile="off", batch_size=batch, **runner)
    t = Translator(model, opts, num_styles=1, seed=1) if name == "munit" else Translator(model, opts)
    v = t.stream_variants(0.8)[0]
    frames = _stream()
    outs = [o for _, o in v.runner.run(Frame(f, index=i) for i, f in enumerate(frames))]
    return outs, v


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("name", ["resnet", "munit"])
def test_temporal_stats_through_a_backend_match_torch(backend, name, tmp_path):
    pytest.importorskip(backend)
    ref, tv = _stats_outputs(name, 1, backend="torch")
    outs, v = _stats_outputs(name, 3, backend=backend, cache_dir=str(tmp_path / "cache"))
    assert isinstance(v.runner._server.fn, stateful.StatefulForward)  # the graph served every batch
    assert v.smoother.cuts == tv.smoother.cuts == 1  # the scene cut, found and reset on both paths
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(outs, ref))
    if name == "resnet":  # smoothed: later frames differ from each frame's own statistics
        own = _fp32(tiny_model(name), _stream())
        assert np.array_equal(own[0], ref[0]) and np.abs(own[3].astype(int) - outs[3].astype(int)).max() > 2
    graphs = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(graphs) == 1  # cached; a later process loads it and finds its state slots again
    again, v2 = _stats_outputs(name, 2, backend=backend, cache_dir=str(tmp_path / "cache"))
    assert v2.runner._server.cached() and v2.runner._server.fn.graph.keys == v.runner._server.fn.graph.keys
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(again, ref))


def test_temporal_stats_state_carries_over_from_torch_to_the_backend(tmp_path, monkeypatch):
    """Under --backend auto the first batch of a shape runs in torch (timed), the rest on the backend:
    one state across both."""
    if not (backends.installed("openvino") or backends.installed("onnxruntime")):
        pytest.skip("neither openvino nor onnxruntime installed")
    monkeypatch.setenv("FRAMETRANS_CONVERT_SECONDS", "0")
    from frametrans.apply import Translator

    ref, _ = _stats_outputs("resnet", 1, backend="torch")
    t = Translator(tiny_model("resnet"), RunnerOptions(device="cpu", precision="fp32", compile="off", batch_size=2,
                                                       backend="auto", cache_dir=str(tmp_path / "c")))
    t.expect(7)
    v = t.stream_variants(0.8)[0]
    outs = [o for _, o in v.runner.run(Frame(f, index=i) for i, f in enumerate(_stream()))]
    server = v.runner._server
    assert isinstance(server.fn, stateful.StatefulForward) and sum(server._runs.values()) == 3
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(outs, ref))


def test_temporal_stats_with_batch_statistics_stay_in_torch(caplog):
    if not backends.installed("onnxruntime"):
        pytest.skip("onnxruntime not installed")
    from torch import nn

    from frametrans.engine.smoothing import NormSmoother, smoothed_forward

    model = tiny_model("resnet")
    model.extra = nn.BatchNorm2d(3, track_running_stats=False)  # batch statistics: a per-sample loop
    forward = smoothed_forward(lambda m, x: m.extra(m(x)), NormSmoother(0.8))
    opts = RunnerOptions(device="cpu", precision="fp32", compile="off", backend="onnxruntime")
    with pytest.raises(backends.BackendUnavailable, match="cannot run --temporal stats for this model"):
        Runner(model, opts, forward=forward)
    caplog.set_level("INFO", logger="frametrans")
    r = Runner(model, RunnerOptions(device="cpu", precision="fp32", compile="off", backend="auto"),
               forward=forward)
    assert r._server is None and "torch runs this model" in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None or importlib.util.find_spec("openvino_telemetry") is None,
                    reason="needs openvino and openvino_telemetry")
def test_openvino_is_imported_without_its_telemetry():
    """``import openvino`` sends a usage event to Google Analytics from a process forked off a thread
    (one such child hung a stream job at exit). The backend imports it with OpenVINO's no-op stub
    bound instead, and leaves the package importable for the user's code. A fresh interpreter:
    this one may have imported openvino already."""
    code = ("import sys\n"
            "from frametrans.engine.backends import installed\n"
            "assert installed('openvino')\n"
            "import openvino.tools.ovc.telemetry_utils as t\n"
            "print(t.tm.__name__, 'openvino_telemetry' in sys.modules)\n"
            "import openvino_telemetry\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "False"]
    kept = ("import sys\n"
            "sys.modules['openvino_telemetry'] = None  # the user's own block stays\n"
            "from frametrans.engine.backends import installed\n"
            "assert installed('openvino')\n"
            "print('openvino_telemetry' in sys.modules and sys.modules['openvino_telemetry'] is None)\n")
    out = subprocess.run([sys.executable, "-c", kept], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["True"], out.stderr
