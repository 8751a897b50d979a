"""`frametrans apply --ray`: a local Ray with 2 CPUs gives the same outputs as a local run."""

import dataclasses
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

# one local Ray for the module: the group keeps its tests on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("ray")

from frametrans.apply import OutputOptions, Translator, apply_paths
from frametrans.checkpoint import save_model
from frametrans.cli.main import cli
from frametrans.engine.runner import RunnerOptions
from frametrans.io.images import read_image
from frametrans.models.resnet import ResnetConfig, ResnetGenerator
from support import decoded, segment_clip as make_clip

FP32 = RunnerOptions(device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    return str(save_model(ResnetGenerator(ResnetConfig(ngf=4, n_blocks=1)),
                          tmp_path_factory.mktemp("m") / "rn.safetensors"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of images (two sizes, one in a subfolder) and a clip with audio, 5 segments."""
    root = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (30 + i % 2, 41, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "sub" / "deep.png")
    make_clip(root / "clip.mp4", frames=60, gop=10)
    return root


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def local_run(inputs, out, model, opts):
    """The local reference, on one thread as each CPU worker runs: fp32 sums taken in another
    order (another thread count) move a few pixels by a grey level or two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return apply_paths([str(inputs)], str(out), Translator.load(model, FP32), opts)
    finally:
        torch.set_num_threads(threads)


def check_video_like_local(ours, local, source):
    """Same frame count and timestamps, the source's audio packets, and (both encoded with
    lossless x264, --crf 0) the same decoded frames."""
    t_ours, f_ours, a_ours = decoded(ours)
    t_local, f_local, _ = decoded(local)
    _, _, a_src = decoded(source)
    assert len(t_ours) == len(t_local) == 60
    assert t_ours == t_local, "timestamps must be the local run's"
    assert a_ours == a_src and a_src, "audio packets must be the source's, byte for byte"
    same = [np.array_equal(a, b) for a, b in zip(f_ours, f_local)]
    assert all(same), f"frames {[i for i, s in enumerate(same) if not s]} differ from the local run's"


@pytest.mark.ray
def test_folder_through_cli_equals_local_run(tmp_path, ray_local, model, inputs):
    opts = OutputOptions(recursive=True, crf=0)
    local = local_run(inputs, tmp_path / "local", model, opts)
    res = CliRunner().invoke(cli, ["apply", str(inputs), "-o", str(tmp_path / "ray"), "-m", model,
                                   "--recursive", "--precision", "fp32", "--device", "cpu",
                                   "--crf", "0", "--quiet", "--ray"])
    assert res.exit_code == 0, res.output
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")  # same names, nothing hidden left
    for p in (tmp_path / "local").rglob("*.png"):
        q = tmp_path / "ray" / p.relative_to(tmp_path / "local")
        assert np.array_equal(read_image(q).image, read_image(p).image), q
    check_video_like_local(tmp_path / "ray" / "clip.mp4", tmp_path / "local" / "clip.mp4",
                           inputs / "clip.mp4")  # not split: 2.4 s < 2 x 60 s
    assert local.frames == 66


@pytest.mark.ray
def test_split_video_equals_local_run(tmp_path, ray_local, model, inputs):
    from frametrans.scale import ray_apply

    src = inputs / "clip.mp4"
    opts = OutputOptions(crf=0, quiet=True)
    local_run(src, tmp_path / "local.mp4", model, opts)
    report = ray_apply([str(src)], str(tmp_path / "ray.mp4"), model, FP32, opts, segment_seconds=0.5)
    assert report.ok and report.frames == 60 and report.written == [tmp_path / "ray.mp4"]
    assert report.stages["encode"].items == 60  # the workers' stage times reach the driver
    assert report.stages["decode"].items >= 60 and report.stages["main"].items >= 60
    check_video_like_local(tmp_path / "ray.mp4", tmp_path / "local.mp4", src)
    assert tree(tmp_path) == ["local.mp4", "ray.mp4"]  # the segment folder is gone


@pytest.mark.ray
def test_worker_killed_mid_run_every_output_once(tmp_path, ray_local, model, inputs):
    """The first unit to run kills its worker process after its first frame (a segment: the
    biggest units go first); Ray restarts the actor and retries the unit."""
    from frametrans.scale.ray_apply import ray_apply

    marker = tmp_path / "crashed"
    opts = OutputOptions(recursive=True, crf=0, quiet=True)
    report = ray_apply([str(inputs)], str(tmp_path / "ray"), model, FP32, opts,
                       segment_seconds=0.5, _crash_marker=str(marker))
    assert marker.exists(), "no worker was killed"
    assert report.ok, report.failed
    assert report.frames == 66 and len(report.written) == len(set(report.written)) == 7
    local_run(inputs, tmp_path / "local", model, opts)
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")  # no temporary or part files left
    check_video_like_local(tmp_path / "ray" / "clip.mp4", tmp_path / "local" / "clip.mp4",
                           inputs / "clip.mp4")


@pytest.mark.ray
def test_skip_existing_keeps_each_munit_style_output(tmp_path, ray_local, inputs):
    """A MUNIT job whose outputs exist in part: the existing ones are kept as they are (an edit
    included) and reported as skipped; the workers write only the missing ones, as a local run
    from the same state does."""
    from frametrans.models.munit import MUNIT, MUNITConfig
    from frametrans.scale import ray_apply

    torch.manual_seed(0)
    munit = str(save_model(MUNIT(MUNITConfig(dim=4, style_dim=3, n_res=1, mlp_dim=8)), tmp_path / "munit.safetensors"))
    src = [str(inputs / "img0.png"), str(inputs / "clip.mp4")]
    styles = dict(num_styles=2, seed=1)
    opts = OutputOptions(crf=0, quiet=True, skip_existing=True)
    for run in ("local", "ray"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "img0_style0.png").write_bytes(b"edited by hand")
        (tmp_path / run / "clip_style1.mp4").write_bytes(b"kept")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker
    try:
        local = apply_paths(src, str(tmp_path / "local"), Translator.load(munit, FP32, **styles), opts)
    finally:
        torch.set_num_threads(threads)
    report = ray_apply(src, str(tmp_path / "ray"), munit, FP32, opts, **styles)
    assert report.ok, report.failed
    for r in (local, report):
        assert sorted(p.name for p in r.written) == ["clip_style0.mp4", "img0_style1.png"]
        assert sorted(p.name for p in r.skipped) == ["clip_style1.mp4", "img0_style0.png"]
    out = tmp_path / "ray"
    assert (out / "img0_style0.png").read_bytes() == b"edited by hand"
    assert (out / "clip_style1.mp4").read_bytes() == b"kept"
    assert tree(out) == tree(tmp_path / "local")
    assert np.array_equal(read_image(out / "img0_style1.png").image,
                          read_image(tmp_path / "local" / "img0_style1.png").image)
    check_video_like_local(out / "clip_style0.mp4", tmp_path / "local" / "clip_style0.mp4", inputs / "clip.mp4")


def test_plan_groups_partly_done_jobs_by_the_styles_they_need(tmp_path, inputs):
    """--skip-existing with some styles done: images are grouped by the styles they need (units
    of a group spread over the workers), a video is one whole unit with its frame count (long ones
    go first)."""
    from frametrans.apply.jobs import Job
    from frametrans.scale.ray_apply import plan_units

    out = tmp_path / "out"
    images = [Job(inputs / f"img{i}.png", out / f"img{i}.png", "image") for i in range(3)]
    clip = Job(inputs / "clip.mp4", out / "clip.mp4", "video")
    partial = {id(images[0]): ("_style1",), id(images[1]): ("_style1",), id(clip): ("_style0",)}
    units = plan_units(images + [clip], OutputOptions(), 0.5, ("_style0", "_style1"), partial)
    assert [(u.kind, u.frames, u.suffixes, u.srcs) for u in units] == [
        ("files", 60, ("_style0",), (str(clip.src),)), ("files", 1, ("_style1",), (str(images[0].src),)),
        ("files", 1, ("_style1",), (str(images[1].src),)), ("files", 1, (), (str(images[2].src),))]
    assert units[0].outputs == (str(out / "clip_style0.mp4"),) and units[0].segment is None
    assert units[1].outputs == (str(out / "img0_style1.png"),) and units[1].dst == str(out) + os.sep
    assert units[3].outputs == (str(out / "img2_style0.png"), str(out / "img2_style1.png"))


def test_without_ray_the_flag_says_how_to_install(tmp_path, model, inputs, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = CliRunner().invoke(cli, ["apply", str(inputs / "img0.png"), "-o", str(tmp_path / "o.png"),
                                   "-m", model, "--ray"])
    assert res.exit_code != 0
    assert "pip install 'frametrans[ray]'" in res.output
    assert not (tmp_path / "o.png").exists()


def test_temporaries_of_a_killed_try_are_removed(tmp_path):
    """A worker killed mid-write leaves its writer's hidden temporary file; the retry removes it
    (and nothing else)."""
    from frametrans.atomic import temporary_path_for
    from frametrans.scale.ray_apply import _remove_temporaries

    out = tmp_path / "a[1].mp4"
    left = [temporary_path_for(out, ".mp4"), temporary_path_for(tmp_path / "b.png", ".tmp")]
    kept = [temporary_path_for(tmp_path / "c.mp4", ".mp4"), tmp_path / ".a[1].mp4.notes"]
    for p in left + kept:
        p.write_bytes(b"x")
    _remove_temporaries([str(out), str(tmp_path / "b.png")])
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_segment_frame_count_hint_for_compile_auto(tmp_path):
    from frametrans.io.video import probe_video
    from frametrans.scale.ray_apply import _segment_frames
    from frametrans.io.segments import plan_segments

    clip = make_clip(tmp_path / "c.mp4", frames=48, gop=12)
    info = probe_video(clip)
    segments = plan_segments(clip, 0.5, min_seconds=0.1)
    assert len(segments) > 1
    counts = [_segment_frames(info, s) for s in segments]
    assert sum(counts) == pytest.approx(48, abs=len(segments))


def test_ray_option_gives_an_input_path_back(tmp_path, monkeypatch):
    import click

    from frametrans.cli.apply import _ray_address_or_input

    (tmp_path / "clips").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _ray_address_or_input(None, ["a.png"]) == (None, ["a.png"])
    assert _ray_address_or_input("", ["a.png"]) == ("", ["a.png"])
    for address in ("auto", "local", "10.0.0.5:6379", "head-node:6379", "ray://head:10001"):
        assert _ray_address_or_input(address, ["clips"]) == (address, ["clips"])
    assert _ray_address_or_input("clips", ["b.png"]) == ("", ["clips", "b.png"])
    with pytest.raises(click.BadParameter, match="not a Ray address"):
        _ray_address_or_input("nowhere", [])


@pytest.mark.ray
def test_interrupted_local_job_resumes_on_a_ray_worker(tmp_path, ray_local, model, inputs, monkeypatch):
    """Ctrl-C a local run (closed segments kept in clip.partial/), then --resume with Ray: one
    worker goes on from the segments (the video is not split) and checks the settings itself."""
    from frametrans.apply.manifest import Manifest
    from frametrans.apply.segmented import SegmentedWriter
    from frametrans.scale.ray_apply import ray_apply

    src = inputs / "clip.mp4"
    real, count = SegmentedWriter.write, [0]

    def write(self, *a, **k):
        count[0] += 1
        if count[0] == 30:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(SegmentedWriter, "write", write)
    opts = OutputOptions(crf=0, quiet=True, segment_seconds=0.4)
    with pytest.raises(KeyboardInterrupt):
        local_run(src, tmp_path / "out" / "clip.mp4", model, opts)
    done = Manifest.load(tmp_path / "out" / "clip.partial").frames_done
    assert done == 29
    monkeypatch.setattr(SegmentedWriter, "write", real)
    resume = OutputOptions(crf=0, quiet=True, segment_seconds=0.4, skip_existing=True)
    report = ray_apply([str(src)], str(tmp_path / "out" / "clip.mp4"), model, FP32, resume,
                       segment_seconds=0.5)
    assert report.ok, report.failed
    assert report.frames == 60 - done  # only what was not done
    local_run(src, tmp_path / "local.mp4", model, OutputOptions(crf=0, quiet=True))
    check_video_like_local(tmp_path / "out" / "clip.mp4", tmp_path / "local.mp4", src)
    assert tree(tmp_path / "out") == ["clip.mp4"]
    # other settings: the worker refuses, naming them
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(SegmentedWriter, "write", write)
        count[0] = 0
        local_run(src, tmp_path / "again" / "clip.mp4", model, opts)
    monkeypatch.setattr(SegmentedWriter, "write", real)
    other = OutputOptions(crf=5, quiet=True, segment_seconds=0.4, skip_existing=True)
    report = ray_apply([str(src)], str(tmp_path / "again" / "clip.mp4"), model, FP32, other)
    assert not report.ok and "crf (0 -> 5)" in report.failed[0][1]


@pytest.mark.ray
def test_split_video_stopped_then_resumed_with_ray_and_locally(tmp_path, ray_local, model, inputs, monkeypatch):
    """The driver stops after two segments came back: they stay in clip.partial/ (recorded in the
    manifest, the same folder as a local job's); --resume with Ray runs only the others; a local
    --resume goes on after the first parts in order."""
    from frametrans.apply.manifest import Manifest
    import frametrans.scale.ray_apply  # noqa: F401 - the package binds the function over the module
    ra = sys.modules["frametrans.scale.ray_apply"]

    src = inputs / "clip.mp4"
    real, seen = ra._Scheduler._collect, []

    def collect(self, unit, out):
        real(self, unit, out)
        seen.append(unit.kind)
        if seen.count("segment") == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(ra._Scheduler, "_collect", collect)
    opts = OutputOptions(crf=0, quiet=True)
    for name in ("ray", "local"):
        seen.clear()
        with pytest.raises(KeyboardInterrupt):
            ra.ray_apply([str(src)], str(tmp_path / name / "clip.mp4"), model, FP32, opts, segment_seconds=0.5)
        m = Manifest.load(tmp_path / name / "clip.partial")
        assert len(m.parts) == 2 and m.ray_plan is not None and m.settings["crf"] == 0
    monkeypatch.setattr(ra._Scheduler, "_collect", real)
    done = Manifest.load(tmp_path / "ray" / "clip.partial").frames_done
    resume = OutputOptions(crf=0, quiet=True, skip_existing=True)
    report = ra.ray_apply([str(src)], str(tmp_path / "ray" / "clip.mp4"), model, FP32, resume,
                          segment_seconds=0.5)
    assert report.ok, report.failed
    assert report.frames == 60 - done
    report = local_run(src, tmp_path / "local" / "clip.mp4", model, resume)
    assert report.ok, report.failed
    local_run(src, tmp_path / "ref.mp4", model, OutputOptions(crf=0, quiet=True))
    for name in ("ray", "local"):
        check_video_like_local(tmp_path / name / "clip.mp4", tmp_path / "ref.mp4", src)
        assert tree(tmp_path / name) == ["clip.mp4"]


# -- --temporal: a segment after the first starts warm ---------------------------------------------


def _pan_clip(path, frames=60, gop=10, size=(64, 48)):
    """A smooth texture panning right (lossless x264, a keyframe every ``gop`` frames, 25 fps)."""
    import av
    import cv2

    g = np.random.default_rng(3)
    w, h = size
    tex = cv2.resize(g.random((6, 16, 3)).astype(np.float32), (w + 2 * frames, h), interpolation=cv2.INTER_CUBIC)
    tex = np.clip(tex * 255, 0, 255).astype(np.uint8)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25, options={"g": str(gop), "keyint_min": str(gop),
                                                        "sc_threshold": "0", "bf": "0", "crf": "0"})
        v.width, v.height, v.pix_fmt = w, h, "yuv444p"
        for t in range(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(tex[:, 2 * t:2 * t + w]), format="rgb24")
            f.pts = t
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    return path


def _planes(path):
    """The decoded I420 planes of each frame, [H * 3 / 2, W] uint8: what the encoder was given."""
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray() for f in c.decode(video=0)]


def _pair_errors(inputs, outputs):
    """The warping error of each consecutive pair (index t: the pair t-1 -> t; 0 for t = 0)."""
    from frametrans.consistency import flow, non_occluded, pair_error

    errors = [0.0]
    for t in range(1, len(inputs)):
        fwd = flow(inputs[t], inputs[t - 1])
        mask = non_occluded(fwd, flow(inputs[t - 1], inputs[t]))
        errors.append(pair_error(outputs[t - 1], outputs[t], fwd, mask))
    return errors


def _seams(errors, joins):
    """Per join: the pair across it over the largest of the 3 pairs on either side."""
    return [errors[j] / max(errors[j - 3:j] + errors[j + 1:j + 4]) for j in joins]


def _segment_run(src, dst, model, opts, seconds):
    """The segments of ``src`` run in this process by a FrameWorker, joined (the Ray units, no Ray)."""
    from frametrans.io.segments import plan_segments
    from frametrans.scale.ray_apply import FrameWorker, WorkUnit, _new_split, _part_path
    from frametrans.apply.jobs import Job
    from frametrans.io.video import iter_video_frames, probe_video

    segments = plan_segments(src, seconds)
    _new_split(Job(src, dst, "video"), probe_video(src), seconds, [[s.start, s.end] for s in segments], [""])
    threads, logger = torch.get_num_threads(), logging.getLogger("frametrans")
    level = logger.level
    try:
        worker = FrameWorker(model, FP32, {}, opts)  # sets 1 thread and the log level: restored below
        for s in segments:
            assert worker.run(WorkUnit("segment", (str(src),), str(dst), segment=s)).parts
        parts = ((*(str(_part_path(dst, "", s.index)) for s in segments),),)
        assert not worker.run(WorkUnit("join", (str(src),), str(dst), parts=parts, expected_frames=60)).failed
    finally:
        torch.set_num_threads(threads)
        logger.setLevel(level)
    pts = [f.pts for f in iter_video_frames(src)]
    return [pts.index(s.start) for s in segments[1:]]  # the joins, as frame indices


@pytest.mark.ray
def test_temporal_segments_start_warm_no_seam_at_the_joins(tmp_path, ray_local, model, monkeypatch):
    """--temporal flow: each segment after the first runs the ~16 frames before it through the model
    and the stabilizer first (not written). The split output is within a grey level of the unsplit
    one, and the warping error across a join is in line with its neighbours; a segment started
    cold (the control, run in this process) shows the seam the metric is meant to catch."""
    from frametrans.io.video import iter_video_frames
    from frametrans.scale import ray_apply
    import frametrans.scale.ray_apply  # noqa: F401
    ra = sys.modules["frametrans.scale.ray_apply"]

    src = _pan_clip(tmp_path / "pan.mp4")
    opts = OutputOptions(crf=0, quiet=True, temporal="flow", segment_seconds=0)
    local_run(src, tmp_path / "whole.mp4", model, opts)
    report = ray_apply([str(src)], str(tmp_path / "split.mp4"), model, FP32, opts, segment_seconds=0.5)
    assert report.ok and report.frames == 60, report.failed
    inputs = [f.image for f in iter_video_frames(src)]
    _, whole, _ = decoded(tmp_path / "whole.mp4")
    _, split, _ = decoded(tmp_path / "split.mp4")
    assert len(split) == 60
    # after the 16 warm frames the states differ by <= 255 * 0.5 ** 16 grey levels, so the outputs
    # round at most one level apart; RGB -> YUV moves each Y/U/V sample by < 1 for that (coefficient
    # sums 220/256 and 224/256) and lossless x264 keeps the planes, so compare the planes (back in
    # RGB a one-level flip of Y and U together can become 4)
    diff = np.stack([np.abs(a.astype(int) - b.astype(int))
                     for a, b in zip(_planes(tmp_path / "whole.mp4"), _planes(tmp_path / "split.mp4"))])
    assert len(diff) == 60 and diff.max() <= 1 and diff.mean() < 0.002, (diff.max(), diff.mean())
    monkeypatch.setattr(ra, "_segment_source",
                        lambda src, seg, info, warm, how=(False, None): (ra.iter_segment_frames(src, seg, *how), None))
    joins = _segment_run(src, tmp_path / "cold.mp4", model, opts, 0.5)
    assert len(joins) >= 2
    _, cold, _ = decoded(tmp_path / "cold.mp4")
    warm_seams = _seams(_pair_errors(inputs, split), joins)
    cold_seams = _seams(_pair_errors(inputs, cold), joins)
    assert max(warm_seams) < 1.2, warm_seams
    assert min(cold_seams) > 1.5, cold_seams  # the metric does see a cold start


@pytest.mark.ray
def test_temporal_stats_segments_start_warm(tmp_path, ray_local, model):
    """--temporal stats: the statistics' EMA is warmed up on the frames before each segment too."""
    from frametrans.scale import ray_apply

    src = _pan_clip(tmp_path / "pan.mp4")
    # factor 0.8: 24 frames of warm-up (0.9 would warm every segment of this 60-frame clip from frame 0)
    opts = OutputOptions(crf=0, pix_fmt="yuv444p", quiet=True, temporal="stats", temporal_strength=0.8,
                         segment_seconds=0)
    local_run(src, tmp_path / "whole.mp4", model, opts)
    report = ray_apply([str(src)], str(tmp_path / "split.mp4"), model, FP32, opts, segment_seconds=0.5)
    assert report.ok and report.frames == 60, report.failed
    _, whole, _ = decoded(tmp_path / "whole.mp4")
    _, split, _ = decoded(tmp_path / "split.mp4")
    local_run(src, tmp_path / "off.mp4", model, OutputOptions(crf=0, pix_fmt="yuv444p", quiet=True,
                                                              segment_seconds=0))
    _, off, _ = decoded(tmp_path / "off.mp4")
    # the tiny random model's statistics swing widely across this fast pan (a cold start is 20 grey
    # levels off at the join); after the warm-up (Temporal.warm_frames) the outputs differ by at most
    # a grey level where they round differently, which the encoder's RGB -> YUV -> RGB (+-2 each)
    # can turn into 4 at a few pixels
    diff = np.stack([np.abs(a.astype(int) - b.astype(int)) for a, b in zip(whole, split)])
    assert diff.max() <= 4 and diff.mean() < 0.25, (diff.max(), diff.mean())
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(whole, off)) > 10  # it does smooth
