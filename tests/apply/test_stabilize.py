"""--temporal flow: outputs blended along the input's motion flicker less, stay close to the
per-frame output, reset at scene cuts, and do not depend on batching. --temporal stats (the
statistics smoothed inside the model: tests/engine/test_smoothing.py) through the apply paths."""

from __future__ import annotations

import dataclasses
import threading

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from frametrans.cli.main import cli
from frametrans.consistency import temporal_consistency
from frametrans.stabilize import (AUTO_STATS, AUTO_STRENGTH, STATS_FACTOR, FlowStabilizer, Temporal,
                                  resolve_strength, resolve_temporal)
from support import tiny_resnet_file


def _pan(n=8, dx=3, dy=2, size=(96, 128), seed=0):
    g = np.random.default_rng(seed)
    tex = cv2.resize(g.random((30, 40, 3)).astype(np.float32), (320, 240), interpolation=cv2.INTER_CUBIC)
    tex = np.clip(tex * 255, 0, 255).astype(np.uint8)
    h, w = size
    return [tex[t * dy:t * dy + h, t * dx:t * dx + w].copy() for t in range(n)]


def _flickering(frames, seed=1):
    """A model that re-decides its texture every frame: per-frame noise on the input."""
    g = np.random.default_rng(seed)
    return [np.clip(f + g.normal(0, 10, f.shape), 0, 255).astype(np.uint8) for f in frames]


def test_stabilizer_lowers_the_warping_error_and_stays_close_to_per_frame():
    frames = _pan()
    outputs = _flickering(frames)
    s = FlowStabilizer(AUTO_STRENGTH)
    stable = [s.step(i, o) for i, o in zip(frames, outputs)]
    report = temporal_consistency(frames, stable, outputs)
    assert report.output < 0.7 * report.second, report  # at least 30% less
    assert report.psnr_between >= 28.0, report
    assert np.array_equal(stable[0], outputs[0]) and s.cuts == 0


def test_scene_cut_resets_the_state():
    a, b = _pan(4, seed=0), _pan(4, seed=5)
    frames = a + b
    outputs = _flickering(frames)
    s = FlowStabilizer(0.7)
    stable = [s.step(i, o) for i, o in zip(frames, outputs)]
    assert s.cuts == 1
    assert np.array_equal(stable[4], outputs[4])  # the first frame of the new scene: as the model made it
    assert not np.array_equal(stable[5], outputs[5])


def test_tracked_pixels_keep_their_brightness_and_come_from_inside_the_frame(monkeypatch):
    """One flow per pair (no backward flow): a pixel is trusted when the flow brings it from inside
    frame t-1 with its luma within TRACKED_LUMA grey levels; a light switched on is not."""
    import frametrans.consistency as consistency
    from frametrans.stabilize import TRACKED_LUMA, input_motion, tracked

    a, b = _pan(2)
    lit = b.copy()
    lit[10:30, 20:50] = np.clip(lit[10:30, 20:50].astype(int) + 2 * TRACKED_LUMA, 0, 255).astype(np.uint8)
    calls = []
    real = consistency.flow
    monkeypatch.setattr("frametrans.stabilize.flow", lambda *args: calls.append(1) or real(*args))
    points, mask = input_motion(lit, a)
    assert len(calls) == 1  # the forward flow only
    assert mask[40:80, 20:100].mean() > 0.95  # the pan itself is followed
    assert mask[12:28, 22:48].mean() < 0.1  # the light changed the brightness there
    x, y = points
    h, w = mask.shape
    moved_in = (x > w - 1) | (y > h - 1)  # frame t's right and bottom edges were outside frame t-1
    assert moved_in.any() and not mask[moved_in].any()
    assert np.array_equal(tracked(consistency.luma(lit), consistency.luma(a), points), mask)


def test_strength_options():
    assert resolve_strength("off", None) == 0.0
    assert resolve_strength("auto", None) == AUTO_STRENGTH
    assert resolve_strength("flow", 0.3) == 0.3
    with pytest.raises(ValueError, match=r"--temporal-strength must be in \[0, 1\)"):
        resolve_strength("flow", 1.5)
    assert resolve_temporal("stats", None) == Temporal("stats", stats=STATS_FACTOR)
    assert resolve_temporal("stats", 0.6) == Temporal("stats", stats=0.6)
    assert resolve_temporal("auto", None) == Temporal("auto", stats=AUTO_STATS, flow=AUTO_STRENGTH)
    assert not resolve_temporal("off", None).active and resolve_temporal("stats", None).active
    with pytest.raises(ValueError, match="--temporal-strength is for --temporal stats or flow"):
        resolve_temporal("auto", 0.5)
    assert resolve_temporal("flow", None, "torch") == Temporal("flow", flow=AUTO_STRENGTH, estimator="torch")
    assert resolve_temporal("auto", None, "dis").estimator == "dis"
    with pytest.raises(ValueError, match="--temporal-flow must be one of auto, dis, torch, got 'gpu'"):
        resolve_temporal("flow", None, "gpu")
    for mode in ("off", "stats"):
        with pytest.raises(ValueError, match=f"--temporal-flow is for --temporal flow or auto, not {mode}"):
            resolve_temporal(mode, None, "torch")
    flow = resolve_temporal("flow", None)
    for device in ("cuda", "cpu", "mps"):  # AUTO_FLOW is empty until torch is measured on CUDA
        assert flow.on_device(device).estimator == "dis" and flow.on_device(device).flow_name() == "dis-fast-luma32"
    torch_flow = resolve_temporal("flow", None, "torch")
    assert torch_flow.on_device("cuda").flow_name() == "torch-farneback" == torch_flow.on_device("cpu").flow_name()
    with pytest.raises(ValueError, match="--temporal-flow torch runs beside a model on CUDA or the CPU, not on MPS"):
        torch_flow.on_device("mps")
    assert resolve_temporal("stats", None).on_device("cuda").estimator == "auto"  # no flow: nothing to choose


def test_auto_flow_follows_the_table(monkeypatch):
    """--temporal-flow auto takes AUTO_FLOW's entry for the model's device type, dis otherwise."""
    from frametrans import stabilize

    monkeypatch.setattr(stabilize, "AUTO_FLOW", {"cuda": "torch"})
    flow = resolve_temporal("flow", None)
    assert flow.on_device("cuda").estimator == "torch" and flow.on_device("cpu").estimator == "dis"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_resnet_file(tmp_path_factory.mktemp("m"))


def _clip(path, frames):
    from frametrans.io.video import VideoWriter

    with VideoWriter(path, fps=10, crf=0, pix_fmt="yuv444p") as w:
        for t, f in enumerate(frames):
            w.write(f, t, None)
    return path


def _decoded(path):
    from frametrans.io.video import iter_video_frames

    return [f.image for f in iter_video_frames(path)]


def test_cli_video_same_result_for_any_batch_and_the_mode_changes_the_output(tmp_path, model_path):
    clip = _clip(tmp_path / "in.mp4", _pan(6))
    common = ["-m", str(model_path), "--precision", "fp32", "--crf", "0", "--pix-fmt", "yuv444p", "-q"]
    runner = CliRunner()
    outs = {}
    for name, extra in (("b1", ["--batch-size", "1"]), ("b3", ["--batch-size", "3"]), ("off", [])):
        args = ["apply", str(clip), "-o", str(tmp_path / f"{name}.mp4"), *common, *extra]
        if name != "off":
            args += ["--temporal", "auto"]
        res = runner.invoke(cli, args)
        assert res.exit_code == 0, res.output
        outs[name] = _decoded(tmp_path / f"{name}.mp4")
    # batching changes the model's fp32 output by at most a grey level (test_fast_paths); the
    # stabilizer's state follows the frames, not the batches, so nothing accumulates beyond that
    assert len(outs["b1"]) == 6
    assert max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(outs["b1"], outs["b3"])) <= 2
    assert np.array_equal(outs["b1"][0], outs["off"][0])  # the first frame has no past
    # frame 3 starts the second batch of 3: were the state reset per batch, it would be per-frame
    assert np.abs(outs["b1"][3].astype(int) - outs["off"][3].astype(int)).max() > 2


def test_cli_raw_stream_is_stabilized_and_still_images_warn(tmp_path, model_path):
    from PIL import Image

    frames = _pan(4, size=(32, 48))
    data = b"".join(f.tobytes() for f in frames)
    args = ["apply", "-", "-o", "-", "--size", "48x32", "-m", str(model_path), "--precision", "fp32", "-q"]
    plain = CliRunner().invoke(cli, args, input=data)
    stable = CliRunner().invoke(cli, args + ["--temporal", "flow", "--temporal-strength", "0.6"], input=data)
    assert plain.exit_code == 0 and stable.exit_code == 0
    assert len(stable.stdout_bytes) == len(plain.stdout_bytes) == len(data)
    assert stable.stdout_bytes[:32 * 48 * 3] == plain.stdout_bytes[:32 * 48 * 3]
    assert stable.stdout_bytes != plain.stdout_bytes
    smooth = CliRunner().invoke(cli, args + ["--temporal", "stats"], input=data)
    assert smooth.exit_code == 0 and len(smooth.stdout_bytes) == len(data)
    assert smooth.stdout_bytes[:32 * 48 * 3] == plain.stdout_bytes[:32 * 48 * 3]
    assert smooth.stdout_bytes != plain.stdout_bytes
    (tmp_path / "imgs").mkdir()
    Image.fromarray(frames[0]).save(tmp_path / "imgs" / "a.png")
    res = CliRunner().invoke(cli, ["apply", str(tmp_path / "imgs"), "-o", str(tmp_path / "o"),
                                   "-m", str(model_path), "--temporal", "auto"])
    assert res.exit_code == 0 and "still images have no frame order" in res.output
    bad = CliRunner().invoke(cli, ["apply", str(tmp_path / "imgs"), "-o", str(tmp_path / "o2"),
                                   "-m", str(model_path), "--temporal-strength", "2"])
    assert bad.exit_code == 2 and "--temporal-strength must be in [0, 1)" in bad.output


@pytest.mark.parametrize("h, w", [(1, 1), (6, 10), (7, 40), (40, 7), (11, 11), (12, 8), (12, 40), (28, 96)])
def test_frames_too_small_for_dis_are_stabilized_too(h, w):
    """OpenCV's DIS refuses frames under 8 px a side or 12 on both ("either width or height >= 12"),
    which stopped a whole folder job with a bare OpenCV line, and it crashed the process on wide
    frames under ~32 px high (12x40, 28x96): they are padded for it."""
    from frametrans.consistency import flow

    frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in _pan(5)]
    f = flow(frames[1], frames[0], "fast")
    assert f.shape == (h, w, 2) and f.dtype == np.float32 and np.isfinite(f).all()
    assert np.abs(flow(frames[0], frames[0], "fast")).max() < 0.5  # the same frame: (almost) no motion
    s = FlowStabilizer(AUTO_STRENGTH)
    out = [s.step(i, o) for i, o in zip(frames, _flickering(frames))]
    assert all(o.shape == (h, w, 3) and o.dtype == np.uint8 for o in out)


def test_cli_thumbnail_videos_with_temporal_flow_do_not_stop_the_folder(tmp_path, model_path):
    import av

    (tmp_path / "in").mkdir()
    for name, (w, h) in (("a_tiny.mp4", (10, 6)), ("b.mp4", (48, 32))):
        with av.open(str(tmp_path / "in" / name), "w") as c:
            stream = c.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for f in _pan(4):
                for packet in stream.encode(av.VideoFrame.from_ndarray(cv2.resize(f, (w, h)), format="rgb24")):
                    c.mux(packet)
            for packet in stream.encode():
                c.mux(packet)
    res = CliRunner().invoke(cli, ["apply", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_path),
                                   "--temporal", "flow", "--compile", "off"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_tiny.mp4", "b.mp4"]


def test_stats_mode_runners_smooth_and_off_stays_the_plain_path():
    """``off`` (factor 0) runs the translator's own runners, untouched; ``stats`` gets runners whose
    forward smooths, on the same session, reset for every stream; a model without per-frame
    normalization (pix2pix's U-Net: batch norm with running statistics) has nothing to smooth."""
    from frametrans.apply import Translator
    from frametrans.engine.runner import RunnerOptions
    from support import tiny_model

    opts = RunnerOptions(device="cpu", precision="fp32", backend="torch", compile="off")
    t = Translator(tiny_model("resnet"), opts)
    assert t.stream_variants(0.0) is t.variants
    smoothed = t.stream_variants(0.8)
    assert smoothed[0].runner is not t.variants[0].runner and smoothed[0].smoother is not None
    assert smoothed[0].runner.session is t.variants[0].runner.session
    frames = _pan(4, size=(32, 48))
    first = [smoothed[0].runner([f])[0] for f in frames]
    again = t.stream_variants(0.8)  # a new stream: the same runners, the state reset
    assert again[0].runner is smoothed[0].runner
    assert all(np.array_equal(a, b) for a, b in zip(first, [again[0].runner([f])[0] for f in frames]))
    plain = [t.variants[0].runner([f])[0] for f in frames]
    assert np.array_equal(first[0], plain[0]) and not np.array_equal(first[3], plain[3])
    unet = Translator(tiny_model("unet"), opts)
    assert unet.stream_variants(0.8) is unet.variants
    with pytest.raises(ValueError, match="--temporal stats runs the model uncompiled"):
        Translator(tiny_model("resnet"), RunnerOptions(device="cpu", compile="on")).stream_variants(0.8)


def test_cli_stats_mode_same_result_for_any_batch(tmp_path, model_path):
    clip = _clip(tmp_path / "in.mp4", _pan(6))
    # lossless RGB out (no YUV round trip: a grey level in R, G or B can move another channel by 3
    # through yuv444p and back, seen on a Xeon with AMX with one torch thread)
    common = ["-m", str(model_path), "--precision", "fp32", "--codec", "libx264rgb", "--pix-fmt", "rgb24",
              "--crf", "0", "-q"]
    outs = {}
    for name, extra in (("b1", ["--batch-size", "1"]), ("b4", ["--batch-size", "4"]), ("off", [])):
        args = ["apply", str(clip), "-o", str(tmp_path / f"{name}.mkv"), *common, *extra]
        if name != "off":
            args += ["--temporal", "stats", "--temporal-strength", "0.8"]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        outs[name] = _decoded(tmp_path / f"{name}.mkv")
    assert len(outs["b1"]) == 6
    # batching moves the fp32 output by a grey level (oneDNN's rounding), and the state carried
    # across batches adds nothing to that
    assert max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(outs["b1"], outs["b4"])) <= 1
    assert np.array_equal(outs["b1"][0], outs["off"][0])
    assert np.abs(outs["b1"][5].astype(int) - outs["off"][5].astype(int)).max() > 2
    bad = CliRunner().invoke(cli, ["apply", str(clip), "-o", str(tmp_path / "x.mp4"), "-m", str(model_path),
                                   "--temporal", "stats", "--compile", "on"])
    assert bad.exit_code == 2 and "--temporal stats runs the model uncompiled" in bad.output


def test_motion_computed_ahead_gives_the_same_frames_and_survives_failed_frames():
    """The input's motion computed on worker threads while the model runs: the same output as
    computed inline; a frame that never reaches the stabilizer (failed) makes the next one compute
    its own (its flow would be against the wrong previous frame); the wait is bounded."""
    from frametrans.apply.temporal import MotionAhead, stabilized
    from frametrans.io.frame import Frame

    frames = _pan(8)
    outputs = _flickering(frames)
    inline = [o for _, [(_, o)] in stabilized(((Frame(f), [("", o)]) for f, o in zip(frames, outputs)), 0.5)]
    for workers in (1, 3):  # several frames' motion at once: the same results
        with MotionAhead(workers=workers) as ahead:
            fed = list(ahead.feed(Frame(f, index=i) for i, f in enumerate(frames)))
            assert len(ahead._pending) == 7  # every frame after the first, waiting
            ahead_out = [o for _, [(_, o)] in stabilized(((f, [("", o)]) for f, o in zip(fed, outputs)),
                                                         0.5, ahead.motion)]
            assert not ahead._pending
        assert all(np.array_equal(a, b) for a, b in zip(inline, ahead_out))
    keep = [i for i in range(8) if i != 3]  # frame 3 failed in the model: 4 follows 2
    calls = []
    with MotionAhead() as ahead:
        fed = list(ahead.feed(Frame(f, index=i) for i, f in enumerate(frames)))

        def spy(image, previous):
            got = ahead.motion(image, previous)
            calls.append(got is not None)
            return got

        gapped = [o for _, [(_, o)] in stabilized(((fed[i], [("", outputs[i])]) for i in keep), 0.5, spy)]
    s = FlowStabilizer(0.5)
    assert all(np.array_equal(a, s.step(frames[i], outputs[i])) for a, i in zip(gapped, keep))
    assert calls == [True, True, False, True, True, True]  # frame 4's flow was against frame 3
    with MotionAhead(budget=1, workers=1) as tight:  # room for 2 waiting results only
        list(tight.feed(Frame(f) for f in frames))
        assert len(tight._pending) == 2
    with MotionAhead(budget=1, workers=2) as tight:  # the budget holds, whatever the workers
        list(tight.feed(Frame(f) for f in frames))
        assert len(tight._pending) == 2


def test_motion_ahead_runs_frames_at_once():
    """With 3 workers, 3 frames' motion is computed at the same time (each waits for the others)."""
    import threading

    from frametrans.apply import temporal
    from frametrans.io.frame import Frame

    barrier = threading.Barrier(3, timeout=10)
    waited = []

    def meeting(a, b):
        waited.append(barrier.wait())
        return temporal.input_motion(a, b)

    frames = _pan(4)
    with temporal.MotionAhead(workers=3, estimate=meeting) as ahead:
        fed = list(ahead.feed(Frame(f) for f in frames))
        got = [ahead.motion(fed[i].image, fed[i - 1].image) for i in range(1, 4)]
    assert all(g is not None for g in got) and not barrier.broken and sorted(waited) == [0, 1, 2]


def test_flow_workers_follow_the_cores(monkeypatch):
    """A quarter of the cores, 1 to 4: one thread on the 2-core CPU, four on a 16-core GPU host,
    one in a process set to one torch thread (a Ray worker)."""
    import torch

    from frametrans.apply import temporal

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(64)
        for cores, want in ((1, 1), (2, 1), (8, 2), (16, 4), (128, 4)):
            monkeypatch.setattr(temporal, "default_workers", lambda c=cores: c)
            assert temporal.flow_workers() == want
        torch.set_num_threads(1)
        assert temporal.flow_workers() == 1  # 16 cores, but one thread asked for
    finally:
        torch.set_num_threads(threads)


def test_variants_share_one_motion_per_frame():
    """MUNIT with several styles: the input's flow is computed once per frame, not once per style,
    with the estimator given."""
    from frametrans import stabilize
    from frametrans.apply.temporal import stabilized
    from frametrans.io.frame import Frame

    frames = _pan(4)
    calls = []

    def counted(a, b):
        calls.append(1)
        return stabilize.input_motion(a, b)

    results = ((Frame(f), [("_s0", o), ("_s1", 255 - o)]) for f, o in zip(frames, _flickering(frames)))
    out = list(stabilized(results, 0.5, estimate=counted))
    assert len(out) == 4 and len(calls) == 3


def test_auto_resolves_against_the_model_and_the_options(caplog):
    """auto's statistics apply only to models with per-frame normalization (so a U-Net's resume or
    Ray segment warms up 16 frames, not 51), and --compile on makes auto flow only (said once)
    while an explicit stats with --compile on is still refused."""
    from frametrans.apply import Translator
    from frametrans.apply.jobs import OutputOptions
    from frametrans.cli.apply import _check_temporal
    from frametrans.engine.runner import RunnerOptions
    from support import tiny_model

    auto = resolve_temporal("auto", None)
    opts = RunnerOptions(device="cpu", precision="fp32", backend="torch", compile="off")
    resnet, unet = Translator(tiny_model("resnet"), opts), Translator(tiny_model("unet"), opts)
    on_cpu = dataclasses.replace(auto, estimator="dis")  # the flow's auto: DIS on a CPU model
    assert resnet.temporal(auto) == on_cpu and resnet.temporal(auto).warm_frames() == 51
    assert unet.temporal(auto) == Temporal("auto", stats=0.0, flow=AUTO_STRENGTH, estimator="dis")
    assert unet.temporal(auto).warm_frames() == 16
    compiled = Translator(tiny_model("resnet"), RunnerOptions(device="cpu", compile="on"))
    caplog.set_level("INFO", logger="frametrans")
    assert compiled.temporal(auto).stats == 0.0 and compiled.temporal(auto).flow == AUTO_STRENGTH
    assert caplog.text.count("--temporal auto with --compile on: flow only") == 1
    stats = resolve_temporal("stats", None)
    assert compiled.temporal(stats) == stats  # kept, and refused where the variants are made
    _check_temporal(OutputOptions(temporal="auto"), RunnerOptions(compile="on"))  # no error
    with pytest.raises(Exception, match="--temporal stats runs the model uncompiled"):
        _check_temporal(OutputOptions(temporal="stats"), RunnerOptions(compile="on"))


def test_stabilizer_blends_along_dis_fast_and_the_metric_measures_with_medium(monkeypatch):
    """The stabilizer's flow is DIS fast (a quarter of medium's time); the metric keeps medium, so
    that its numbers stay comparable across versions."""
    import frametrans.consistency as consistency
    from frametrans.stabilize import FLOW_PRESET, input_motion

    a, b = _pan(2)
    points, _ = input_motion(b, a)
    assert FLOW_PRESET == "fast"
    for want, same in ((consistency.flow(b, a, "fast"), True), (consistency.flow(b, a), False)):  # default: medium
        expected = consistency.sample_points(want)
        assert all(np.array_equal(p, e) for p, e in zip(points, expected)) == same
    presets = []
    real = cv2.DISOpticalFlow_create
    monkeypatch.setattr(consistency.cv2, "DISOpticalFlow_create", lambda p: presets.append(p) or real(p))
    monkeypatch.setattr(consistency, "_DIS", threading.local())  # this thread's estimators made anew
    temporal_consistency([a, b], [a, b])
    assert presets and set(presets) == {cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def test_a_reused_dis_estimator_gives_a_new_ones_flow():
    """Each thread keeps one DIS estimator per preset and frame size; its flows equal a new
    estimator's, pair after pair, also after frames of another size (OpenCV's estimator, reused
    across sizes, gave a larger frame another flow after a smaller one: a folder's videos depended
    on the order they came in), and other threads get their own."""
    import frametrans.consistency as consistency

    frames = _pan(4)
    small = [cv2.resize(f, (12, 12), interpolation=cv2.INTER_AREA) for f in frames]
    for preset in consistency.DIS_PRESETS:
        consistency.flow(small[1], small[0], preset)  # a smaller frame first
        for src, dst in zip(frames[1:], frames):
            fresh = cv2.DISOpticalFlow_create(consistency.DIS_PRESETS[preset]).calc(
                consistency.luma(src), consistency.luma(dst), None)
            assert np.array_equal(consistency.flow(src, dst, preset), fresh)
    mine = consistency._dis("fast", (96, 128))
    assert consistency._dis("fast", (96, 128)) is mine and consistency._dis("fast", (12, 12)) is not mine
    other = []
    t = threading.Thread(target=lambda: other.append(consistency._dis("fast", (96, 128))))
    t.start(), t.join()
    assert other[0] is not mine


@pytest.mark.parametrize("dtype, channels", [(np.uint8, 3), (np.uint16, 3), (np.uint8, 1)])
def test_blend_and_rounding_match_the_formula(dtype, channels):
    """The OpenCV blend is (1 - w) * out + w * previous (w = strength on tracked pixels) to float
    precision; untracked pixels keep the model's value exactly, even at the top of uint16."""
    from frametrans.stabilize import _blend, _rounded

    g = np.random.default_rng(0)
    top = np.iinfo(dtype).max
    out = g.integers(0, top + 1, (24, 32, channels)).astype(np.float32)
    out[0, 0] = top
    prev = g.uniform(0, top, (24, 32, channels)).astype(np.float32)
    mask = g.random((24, 32)) < 0.7
    mask[0, 0] = False
    got = _blend(out, prev, mask, 0.3)  # not 0.5: the weights of out and previous must differ
    w = 0.3 * mask[..., None]
    want = (1 - w) * out.astype(np.float64) + w * prev
    assert got.shape == out.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-6 * top
    r = _rounded(got, np.dtype(dtype))
    assert r.dtype == dtype and r.shape == out.shape
    assert np.abs(r.astype(np.float64) - want).max() <= 0.5 + 1e-6 * top
    assert np.array_equal(r[~mask], out[~mask].astype(dtype))  # untracked: the model's own values
