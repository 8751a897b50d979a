"""Every fast path of the runner gives the fp32 picture within its stated tolerance.

Tolerances (uint8 outputs, PSNR against the fp32 eager runner on the same input):
- channels_last, batching, the compiled fp32 forward: exact up to one grey level from rounding;
- bf16 (autocast + bf16 weights, eager or compiled): >= 45 dB (the issue's bar);
- tiles of a bf16 model against its own untiled output: >= 40 dB.
Compiled paths take tens of seconds to build (a C++ compile), so they are marked slow.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from frametrans.engine import compile as compiling
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.io.frame import Frame
from support import psnr
from support import smooth_images as _images
from support import tiny_model as _model

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# a conv inside the residual block of the tiny ResNet: bf16 in the session's copy (the first and
# last convs and the norms stay fp32 there, see frametrans.engine.session)
BLOCK_CONV = "model.10.conv_block.1.weight"


def _runner(model, tmp_path=None, **kw) -> Runner:
    kw.setdefault("device", "cpu")
    kw.setdefault("compile", "off")
    if tmp_path is not None:
        kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return Runner(model, RunnerOptions(**kw))


def _fp32(model, images):
    return _runner(model, precision="fp32", channels_last=False)(images)


@pytest.mark.parametrize("name", ["resnet", "unet"])
def test_channels_last_and_batching_match_fp32(name):
    model = _model(name)
    images = _images(4)
    ref = _fp32(model, images)
    for kw in (dict(channels_last=True, batch_size=1), dict(channels_last=True, batch_size=4),
               dict(channels_last=False, batch_size=3)):
        r = _runner(model, precision="fp32", **kw)
        outs = [o for _, o in r.run(Frame(im, index=i) for i, im in enumerate(images))]
        for a, b in zip(outs, ref):
            assert a.shape == b.shape and a.dtype == np.uint8
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, kw


@pytest.mark.parametrize("name", ["resnet", "unet"])
def test_bf16_within_45db_of_fp32(name):
    model = _model(name)
    images = _images(3)
    ref = _fp32(model, images)
    r = _runner(model, precision="bf16", batch_size=3)
    assert r.dtype == torch.bfloat16
    outs = r(images)
    for a, b in zip(outs, ref):
        assert psnr(a, b) >= 45.0


def test_bf16_keeps_the_given_module_fp32_and_shares_one_copy():
    model = _model("resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = _runner(model, precision="bf16")
    b = _runner(model, precision="bf16")
    assert a.model is b.model and a.model is not model
    assert dict(a.model.named_parameters())[BLOCK_CONV].dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _runner(model, precision="fp32").model is model


def test_bf16_copy_follows_weight_changes():
    model = _model("resnet")
    images = _images(1)
    before = _runner(model, precision="bf16")(images)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)  # in place, as an optimizer step would
    runner = _runner(model, precision="bf16")
    assert torch.equal(dict(runner.model.named_parameters())[BLOCK_CONV].float(),
                       dict(model.named_parameters())[BLOCK_CONV].to(torch.bfloat16).float())
    after = runner(images)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert psnr(after[0], _fp32(model, images)[0]) >= 40.0


def test_uint16_and_gray_inputs_keep_their_dtype():
    model = _model("resnet")
    im16 = _images(2, dtype=np.uint16)
    ref = _fp32(model, im16)
    out = _runner(model, precision="fp32")(im16)
    assert out[0].dtype == np.uint16 and out[0].shape == im16[0].shape
    assert np.abs(out[0].astype(int) - ref[0].astype(int)).max() <= 1
    out_bf16 = _runner(model, precision="bf16")(im16)
    assert psnr(out_bf16[0], ref[0], 65535.0) >= 45.0
    gray = [im[..., :1] for im in _images(1)]
    assert _runner(model, precision="bf16")(gray)[0].shape == (40, 52, 3)


def test_auto_precision_runs_16_bit_inputs_in_fp32(monkeypatch):
    from frametrans.engine import device as devices

    monkeypatch.setattr(devices, "cpu_bf16_pays", lambda: True)  # auto -> bf16, as on such a CPU
    model = _model("resnet")
    r = _runner(model, precision="auto")
    assert r.dtype == torch.bfloat16
    ramp = np.linspace(0, 65535, 24 * 32 * 3).reshape(24, 32, 3).astype(np.uint16)  # 2304 levels
    ref = _fp32(model, [ramp])[0]
    out = r([ramp])[0]
    assert out.dtype == np.uint16 and np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    outs = [o for _, o in r.run([Frame(ramp, index=0), Frame(ramp, index=1)])]
    assert all(np.abs(o.astype(int) - ref.astype(int)).max() <= 1 for o in outs)
    assert len(np.unique(outs[0])) > 1000  # the depth survived
    bf16 = _runner(model, precision="bf16")([ramp])[0]  # what auto did before: far fewer levels
    assert np.abs(bf16.astype(int) - ref.astype(int)).max() > 1
    eight = _images(1, h=24, w=32)
    monkeypatch.setenv("FRAMETRANS_KEEP_FP32", r.session.keep_fp32)  # the copy auto chose
    assert np.array_equal(r(eight)[0], _runner(model, precision="bf16")(eight)[0])  # 8-bit: bf16


def test_bf16_tiles_agree_with_untiled_bf16():
    model = _model("resnet")
    images = _images(1, h=72, w=96)
    whole = _runner(model, precision="bf16")(images)[0]
    tiled_runner = _runner(model, precision="bf16", tile=48)  # overlap from the receptive field
    tiled = tiled_runner(images)[0]
    assert tiled_runner.tiled_frames == 1
    assert psnr(tiled, whole) >= 40.0
    assert psnr(tiled, _fp32(model, images)[0]) >= 40.0


def test_model_input_and_forward_are_the_runner_path():
    model = _model("resnet")
    r = _runner(model, precision="bf16")
    x = r.model_input(2, 32, 40)
    assert x.dtype == torch.bfloat16 and x.shape == (2, 3, 32, 40)
    assert x.is_contiguous(memory_format=torch.channels_last)
    y = r.model_forward(x)
    assert y.shape == (2, 3, 32, 40) and float(y.float().abs().max()) <= 1.0


# -- the compile policy (no compilation here) ------------------------------------------------------


def test_policy_decisions():
    cpu = torch.device("cpu")
    p = compiling.CompilePolicy(mode="auto")
    shape = (1, 3, 64, 64)
    assert not p.should_compile(shape, cached=False, eager_seconds_per_frame=None, device=cpu, dtype=torch.float32)
    assert p.should_compile(shape, cached=True, eager_seconds_per_frame=None, device=cpu, dtype=torch.float32)
    assert not p.should_compile(shape, cached=False, eager_seconds_per_frame=5.0, device=cpu, dtype=torch.float32)
    p.expected_frames = 1000  # a long job of slow frames pays for itself, a short one does not
    assert p.should_compile(shape, False, 5.0, cpu, torch.float32)
    assert not p.should_compile(shape, False, 0.001, cpu, torch.float32)
    # on CUDA, auto builds nothing (cold builds of 60-95 s, a loader crash seen): a cached package only
    cuda = torch.device("cuda")
    assert not p.should_compile(shape, False, 5.0, cuda, torch.bfloat16)
    assert p.should_compile(shape, True, 5.0, cuda, torch.bfloat16)
    assert compiling.CompilePolicy(mode="on").should_compile(shape, False, None, cuda, torch.bfloat16)
    p.done_frames = 999
    assert not p.should_compile(shape, False, 5.0, cpu, torch.float32)
    assert compiling.CompilePolicy(mode="on").should_compile(shape, False, None, cpu, torch.float32)
    assert not compiling.CompilePolicy(mode="off").should_compile(shape, True, 5.0, cpu, torch.float32)
    assert p.break_even_frames(1.0, cpu, torch.bfloat16) == pytest.approx(compiling.COMPILE_SECONDS / 0.5)


def test_policy_weighs_a_faster_backend_against_the_compiled_forward(monkeypatch):
    monkeypatch.delenv("FRAMETRANS_COMPILE_SECONDS", raising=False)  # the 40 s default below
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    p = compiling.CompilePolicy(mode="auto", expected_frames=10**6)  # a job long enough for any build
    shape = (1, 3, 64, 64)
    # compiled bf16 is expected at eager x 0.5: 0.5 s here
    assert p.should_compile(shape, False, 1.0, cpu, bf16, rival_seconds_per_frame=0.7)  # beats 0.7 s
    assert not p.should_compile(shape, False, 1.0, cpu, bf16, rival_seconds_per_frame=0.4)  # not 0.4 s
    assert not p.should_compile(shape, True, 1.0, cpu, bf16, rival_seconds_per_frame=0.4)  # cached: neither
    assert p.should_compile(shape, True, 1.0, cpu, bf16, rival_seconds_per_frame=0.6)
    assert not p.should_compile(shape, True, None, cpu, bf16, rival_seconds_per_frame=0.4)
    assert compiling.CompilePolicy(mode="on").should_compile(shape, False, 1.0, cpu, bf16, 0.1)  # asked for
    p.expected_frames = 100  # the gain over the rival pays for the build, not the gain over eager
    assert p.should_compile(shape, False, 1.0, cpu, bf16)  # 0.5 s x 100 > 40 s
    assert not p.should_compile(shape, False, 1.0, cpu, bf16, rival_seconds_per_frame=0.7)  # 0.2 x 100 < 40


@pytest.mark.parametrize("backend_sleep, builds", [
    (0.0, 0),  # the backend beats the compiled forward's expected 0.1 s: no build (AMD Zen 5)
    (0.15, 1),  # faster than eager (0.2 s), slower than compiled: build (Sapphire Rapids)
    (0.4, 1),  # slower than eager: torch takes the shape back, and compiling pays against eager
])
def test_auto_compiles_only_where_it_beats_the_backend_measured_here(backend_sleep, builds, tmp_path, monkeypatch):
    """--backend auto with --compile auto: the compile decision waits until torch eager and the
    backend are timed on the shape, then builds only where the compiled forward is expected to win.
    Times come from sleeps (eager 0.2 s, the compiled forward expected at half of it), so a loaded
    machine shifts them by milliseconds, not by the margins."""
    from frametrans.engine import backends
    from frametrans.engine.session import Session

    monkeypatch.setattr(backends, "choose", lambda *a, **k: backends.Choice("onnxruntime", torch.float32, "test"))
    monkeypatch.setattr(compiling, "can_compile", lambda device: None)  # no C++ compiler needed
    monkeypatch.setattr(compiling, "SAVING", {("cpu", torch.float32): 0.5})
    monkeypatch.setenv("FRAMETRANS_CONVERT_SECONDS", "0")
    monkeypatch.setenv("FRAMETRANS_COMPILE_SECONDS", "0")
    model, images, built = _model("resnet"), _images(7), []
    ref = _runner(model, precision="fp32", backend="torch")(images)
    inner = model.forward
    model.forward = lambda x: (time.sleep(0.2), inner(x))[1]

    def compiled(model_, forward, x, key, root):
        built.append(tuple(x.shape))
        return (lambda t: forward(model_, t)), False, 0.0

    def build(choice, path, root):
        def forward(x):
            time.sleep(backend_sleep)
            with Session.full_precision():
                return inner(x.float())
        return forward

    monkeypatch.setattr(compiling, "get_compiled", compiled)
    monkeypatch.setattr(backends, "build", build)
    r = _runner(model, tmp_path, precision="fp32", compile="auto", batch_size=1)
    r.expect(len(images))
    outs = [o for _, o in r.run(Frame(im, index=i) for i, im in enumerate(images))]
    assert len(outs) == len(images)
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(outs, ref))
    assert r._server.fn is not None and r._server._seconds  # the backend ran and was timed
    assert len(built) == builds


def test_runner_expect_and_auto_stays_eager_for_short_jobs(tmp_path):
    model = _model("resnet")
    r = _runner(model, tmp_path, precision="fp32", compile="auto", batch_size=1)
    r.expect(3)
    outs = [o for _, o in r.run(Frame(im) for im in _images(3))]
    assert len(outs) == 3 and not r._compiled
    assert r.policy.done_frames == 3 and r.policy.remaining() == 0
    r.expect(None)  # an open-ended stream: no cold compile up front
    assert r.policy.remaining() == 0
    outs = [o for _, o in r.run(Frame(im) for im in _images(3))]
    assert len(outs) == 3 and not r._compiled and r.policy.remaining() == 3
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt2"))


def test_open_ended_stream_compiles_only_once_its_frames_would_have_paid():
    cpu = torch.device("cpu")
    shape = (1, 3, 64, 48)
    p = compiling.CompilePolicy(mode="auto", done_frames=10, open_ended_from=10)
    assert not p.should_compile(shape, False, 5.0, cpu, torch.float32)  # a slow model, frame 0
    need = p.break_even_frames(5.0, cpu, torch.float32)  # 40 s / (0.2 * 5 s) = 40 frames
    p.done_frames = 10 + int(need) - 1
    assert not p.should_compile(shape, False, 5.0, cpu, torch.float32)
    p.done_frames = 10 + int(need) + 1
    assert p.should_compile(shape, False, 5.0, cpu, torch.float32)
    assert compiling.CompilePolicy(mode="auto", open_ended_from=0).should_compile(shape, True, None, cpu,
                                                                                  torch.float32)


def test_compile_option_validation(monkeypatch):
    with pytest.raises(ValueError, match="compile"):
        RunnerOptions(compile="sometimes").validate()
    monkeypatch.setattr(compiling, "can_compile", lambda device: "no C++ compiler (g++/clang++) found")
    with pytest.raises(ValueError, match="--compile on: no C"):
        _runner(_model("resnet"), compile="on")
    # auto quietly stays eager when compiling is impossible
    r = _runner(_model("resnet"), compile="auto", precision="fp32")
    r.expect(10**6)
    r(_images(1)); r(_images(1))
    assert not r._compiled


def _child(returncode, stderr: str, calls: list):
    """A stand-in for frametrans.child.run_child: each call exits with ``returncode`` (an int, or a
    list of them, one per call) and ``stderr``; ``calls`` collects the arguments."""
    import subprocess

    codes = iter(returncode) if isinstance(returncode, list) else None

    def run(module, args, timeout=None):
        calls.append(args)
        return subprocess.CompletedProcess(args, next(codes) if codes else returncode, "", stderr)
    return run


def test_a_package_that_crashes_its_check_runs_uncompiled(tmp_path, monkeypatch, caplog):
    """A cached package whose check process crashed is never loaded: auto runs eager and says why,
    on refuses in one line that says how to try again; the crash is kept beside the package, so the
    check runs once."""
    model = _model("resnet")
    images = _images(2)
    ref = _fp32(model, images)
    calls = []
    monkeypatch.setattr("frametrans.child.run_child", _child(-11, "Fatal Python error: Segmentation fault\n", calls))
    monkeypatch.setattr(compiling, "load_package", lambda path: pytest.fail("a crashing package was loaded"))
    r = _runner(model, tmp_path, precision="fp32", compile="auto", batch_size=2)
    key = r._artifact_key(torch.zeros(2, 3, *images[0].shape[:2]).contiguous(memory_format=torch.channels_last))
    package = compiling.package_path(key, tmp_path / "cache")
    package.parent.mkdir(parents=True)
    package.write_bytes(b"a package")  # cached: auto would load it
    with caplog.at_level("WARNING", logger="frametrans"):
        outs = r(images)
    assert not r._compiled and len(calls) == 1 and calls[0][0] == "check"
    assert np.array_equal(np.stack(outs), np.stack(ref))
    assert "killed by SIGSEGV: Fatal Python error: Segmentation fault" in caplog.text
    assert "killed by SIGSEGV" in package.with_name(package.name + ".bad").read_text()
    with pytest.raises(RuntimeError, match=r"^--compile on: compiling the model failed \(PackageUnusable: "
                                           r".*SIGSEGV.*; delete .*\.pt2\.bad in .* to try it again"):
        _runner(model, tmp_path, precision="fp32", compile="on", batch_size=2)(images)
    assert len(calls) == 1  # the kept verdict
    package.write_bytes(b"another package, rebuilt elsewhere")  # same name, another file: checked again
    with pytest.raises(RuntimeError, match="SIGSEGV"):
        _runner(model, tmp_path, precision="fp32", compile="on", batch_size=2)(images)
    assert len(calls) == 2


def test_a_damaged_package_is_compiled_again_and_a_transient_failure_is_not_kept(tmp_path, monkeypatch):
    """The check child cannot read a cached package (exit 3): it is compiled again, and the new one
    is checked and loaded. A check that fails otherwise (exit 1: out of memory, a busy device) makes
    this job run uncompiled and keeps no verdict, so the next job checks again."""
    from frametrans.engine import package_child

    calls, builds = [], []
    monkeypatch.setattr("frametrans.child.run_child",
                        _child([3, 0], "RuntimeError: Failed to initialize zip archive", calls))

    def fake_build(model, fn, example, path):
        builds.append(path)
        path.write_bytes(b"rebuilt")
        return path

    monkeypatch.setattr(compiling, "compile_package", fake_build)
    monkeypatch.setattr(compiling, "load_package", lambda path: ("forward of", path.read_bytes()))
    key = compiling.ArtifactKey("id", (1, 3, 8, 8), "torch.float32", True, "cpu:x")
    package = compiling.package_path(key, tmp_path)
    package.parent.mkdir(parents=True)
    package.write_bytes(b"truncated")
    forward, was_cached, _ = compiling.get_compiled(None, None, torch.zeros(1, 3, 8, 8), key, tmp_path)
    assert forward == ("forward of", b"rebuilt") and not was_cached and builds == [package]
    assert [c[0] for c in calls] == ["check", "check"] and package.with_name(package.name + ".ok").exists()
    package_child.forget(package)
    monkeypatch.setattr("frametrans.child.run_child", _child(1, "torch.OutOfMemoryError: CUDA out of memory", calls))
    for _ in range(2):
        with pytest.raises(compiling.PackageUnusable, match="exit status 1: torch.OutOfMemoryError.*checked again"):
            compiling.get_compiled(None, None, torch.zeros(1, 3, 8, 8), key, tmp_path)
    assert len(calls) == 4 and not list(tmp_path.rglob("*.bad")) and builds == [package]


def test_a_failed_build_is_one_line_and_leaves_no_files(tmp_path, monkeypatch):
    """The build child gets this process's thread count; its failure is one line with the child's
    last error line, and neither the exported program nor a half package stays behind."""
    calls = []
    monkeypatch.setattr("frametrans.child.run_child",
                        _child(1, "Traceback (most recent call last):\n  ...\nCppCompileError: C++ compile error\n", calls))
    model = _model("resnet").eval()
    with pytest.raises(RuntimeError, match=r"^compiling in a child process failed \(exit status 1: "
                                           r"CppCompileError: C\+\+ compile error\)$"):
        compiling.compile_package(model, lambda m, t: m(t), torch.zeros(1, 3, 32, 32), tmp_path / "aoti" / "k.pt2")
    assert calls[0][0] == "build" and calls[0][-1] == str(torch.get_num_threads())
    assert calls[0][1].endswith(".exported.pt2") and calls[0][2].endswith(".tmp.pt2")
    assert not list((tmp_path / "aoti").iterdir())


def test_a_package_with_the_wrong_output_is_kept_as_bad(tmp_path, monkeypatch):
    from frametrans.engine import package_child

    calls = []
    monkeypatch.setattr("frametrans.child.run_child", _child(4, "output batch 1 for an input batch of 2", calls))
    package = tmp_path / "k.pt2"
    package.write_bytes(b"a package")
    for _ in range(2):
        failure = package_child.check(package, torch.zeros(2, 3, 8, 8))
        assert failure.kind == "crashed" and "output batch 1 for an input batch of 2" in failure.reason
    assert len(calls) == 1 and (tmp_path / "k.pt2.bad").exists()


def test_the_keep_fp32_mode_is_part_of_the_compiled_packages_key(monkeypatch):
    """A bf16 package built with another FRAMETRANS_KEEP_FP32 is another package; fp32 has no copy.
    bf16 and fp32 packages differ too, though a copy that keeps its first layer in fp32 takes the
    same fp32 input as the fp32 model (they once shared a key and loaded each other's package)."""
    model = _model("resnet")
    x = torch.zeros(1, 3, 32, 32)
    digests = {}
    for mode in ("all", "none"):
        monkeypatch.setenv("FRAMETRANS_KEEP_FP32", mode)
        for precision in ("bf16", "fp32"):
            digests[mode, precision] = _runner(model, precision=precision)._artifact_key(x).digest
    assert digests["all", "bf16"] != digests["none", "bf16"]
    assert digests["all", "fp32"] == digests["none", "fp32"]
    assert digests["all", "bf16"] != digests["all", "fp32"] and digests["none", "bf16"] != digests["all", "fp32"]


def test_package_check_child_reports_a_package_it_cannot_load(tmp_path):
    """The real child process on a file that is no package: damaged, in one line, nothing kept."""
    from frametrans.engine import package_child

    package = tmp_path / "broken.pt2"
    package.write_bytes(b"not a zip archive")
    failure = package_child.check(package, torch.zeros(1, 3, 8, 8))
    assert failure.kind == "damaged"
    assert failure.reason.startswith("the compiled package failed to run in a check process (exit status 3: ")
    assert "\n" not in failure.reason and not list(tmp_path.glob("broken.pt2.*"))


def test_custom_forward_needs_a_cache_token():
    model = _model("resnet")

    def fwd(m, x):
        return m(x)

    with pytest.raises(ValueError, match="cache_token"):
        Runner(model, RunnerOptions(device="cpu", compile="on"), forward=fwd)
    fwd.cache_token = "plain"
    Runner(model, RunnerOptions(device="cpu", compile="on"), forward=fwd)  # accepted


def test_artifact_key_changes_with_weights_shape_and_dtype():
    a, b = _model("resnet", seed=0), _model("resnet", seed=1)
    ida, idb = compiling.model_identity(a), compiling.model_identity(b)
    assert ida != idb and ida == compiling.model_identity(_model("resnet", seed=0))
    k = compiling.ArtifactKey(ida, (1, 3, 32, 32), "torch.float32", True, "cpu:x")
    assert k.digest != compiling.ArtifactKey(ida, (2, 3, 32, 32), "torch.float32", True, "cpu:x").digest
    assert k.digest != compiling.ArtifactKey(ida, (1, 3, 32, 32), "torch.bfloat16", True, "cpu:x").digest
    assert k.digest != compiling.ArtifactKey(idb, (1, 3, 32, 32), "torch.float32", True, "cpu:x").digest


# -- compiled paths (AOTInductor; tens of seconds each) ----------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(compiling.can_compile(torch.device("cpu")) is not None, reason="cannot compile here")
def test_compiled_forward_matches_and_is_cached(tmp_path):
    model = _model("resnet")
    images = _images(3)
    ref = _fp32(model, images)
    r = _runner(model, tmp_path, precision="fp32", compile="on", batch_size=2)
    outs = [o for _, o in r.run(Frame(im) for im in images)]  # a batch of 2, then a short one padded
    assert list(r._compiled) == [(2, 3, 40, 52)]
    for a, b in zip(outs, ref):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    packages = list((tmp_path / "cache").rglob("*.pt2"))
    assert len(packages) == 1
    assert packages[0].with_name(packages[0].name + ".ok").exists()  # checked in a child process once
    # a new runner (as in a new process) loads the package instead of compiling
    again = _runner(model, tmp_path, precision="fp32", compile="auto", batch_size=2)
    out2 = again(images[:2])
    assert again._compiled and again.compile_seconds < 10
    assert np.abs(out2[0].astype(int) - ref[0].astype(int)).max() <= 1


@pytest.mark.slow
@pytest.mark.skipif(compiling.can_compile(torch.device("cpu")) is not None, reason="cannot compile here")
def test_compiled_bf16_within_45db(tmp_path):
    model = _model("unet")
    images = _images(2)
    ref = _fp32(model, images)
    r = _runner(model, tmp_path, precision="bf16", compile="on", batch_size=2)
    outs = r(images)
    assert r._compiled
    for a, b in zip(outs, ref):
        assert psnr(a, b) >= 45.0


# -- CUDA (skipped without a GPU) ------------------------------------------------------------------


@GPU
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_paths_match_cpu_fp32(precision):
    model = _model("resnet")
    images = _images(5)
    ref = _fp32(model, images)
    r = Runner(_model("resnet"), RunnerOptions(device="cuda", precision=precision, batch_size=2, compile="off"))
    outs = [o for _, o in r.run(Frame(im, index=i) for i, im in enumerate(images))]  # pinned, 1 in flight
    assert len(outs) == 5
    for a, b in zip(outs, ref):
        assert psnr(a, b) >= (50.0 if precision == "fp32" else 40.0)


@GPU
def test_cuda_graphs_match_eager():
    model = _model("resnet")
    images = _images(4)
    eager = Runner(model, RunnerOptions(device="cuda", precision="fp32", batch_size=2, compile="off"))(images)
    r = Runner(model, RunnerOptions(device="cuda", precision="fp32", batch_size=2, compile="on", cuda_graphs=True))
    outs = [o for _, o in r.run(Frame(im) for im in images)]
    for a, b in zip(outs, eager):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_cache_prune_drops_least_recently_used(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("FRAMETRANS_CACHE_MAX_BYTES", "250")
    for i in range(4):
        p = tmp_path / f"p{i}.pt2"
        p.write_bytes(b"x" * 100)
        os.utime(p, (1000 + i, 1000 + i))
    old, fresh = tmp_path / ".p9.1-2.tmp.pt2", tmp_path / ".p8.3-4.exported.pt2"  # a killed build's, one in flight
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(old, (1000, 1000))
    compiling.prune(tmp_path, keep=tmp_path / "p0.pt2")
    assert sorted(p.name for p in tmp_path.glob("p*.pt2")) == ["p0.pt2", "p2.pt2", "p3.pt2"]
    assert fresh.exists() and not old.exists()
