"""Resumable video jobs (frametrans.apply.resumable): killed at any point, resumed, the same file.

A job is killed with SIGKILL from inside a child process (a hook on the segment writer, the manifest
or the final join), then resumed with ``--resume`` in this process; the result must equal an
uninterrupted run's: frame count, every pts, audio packets byte for byte, decoded frames identical
(``--crf 0``: lossless).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from frametrans.apply.manifest import Manifest
from frametrans.cli.main import cli
from support import decoded, segment_clip, tiny_resnet_file

FAST = ["--precision", "fp32", "--compile", "off", "--backend", "torch", "--batch-size", "2", "--crf", "0"]
SEG = ["--segment-seconds", "1"]  # 25 frames per segment at 25 fps
N = 150


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_resnet_file(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return segment_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=N, gop=12)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, clip, model):
    """An uninterrupted run (in one piece, not segmented) with the same settings."""
    out = tmp_path_factory.mktemp("ref") / "ref.mp4"
    res = run("apply", clip, "-o", out, "-m", model, *FAST, "--segment-seconds", "0", "--quiet")
    assert res.exit_code == 0, res.output
    return decoded(out)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_same(path: Path, reference) -> None:
    pts, frames, audio = decoded(path)
    ref_pts, ref_frames, ref_audio = reference
    assert len(frames) == len(ref_frames)
    assert pts == ref_pts
    assert audio == ref_audio and audio, "audio packets differ"
    bad = [i for i, (a, b) in enumerate(zip(frames, ref_frames)) if not np.array_equal(a, b)]
    assert not bad, f"decoded frames differ at {bad[:5]}"


KILLERS = {
    # SIGKILL while frame k of this run is being encoded (inside a segment)
    "frame": """
        from frametrans.apply.segmented import SegmentedWriter
        real = SegmentedWriter.write
        count = [0]
        def write(self, *a, **k):
            count[0] += 1
            if count[0] == {arg}:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, *a, **k)
        SegmentedWriter.write = write
    """,
    # SIGKILL right after the manifest listing {arg} parts was saved (between segments)
    "manifest": """
        from frametrans.apply.manifest import Manifest
        real = Manifest.save
        def save(self, folder):
            real(self, folder)
            if len(self.parts) == {arg}:
                os.kill(os.getpid(), signal.SIGKILL)
        Manifest.save = save
    """,
    # SIGKILL during the final join: the joined file is complete but not renamed into place
    "join": """
        import frametrans.io.segments as segments
        def fsync(path):
            os.kill(os.getpid(), signal.SIGKILL)
        segments._fsync_file = fsync
    """,
}


def killed_run(args, killer: str, arg: int = 0) -> subprocess.CompletedProcess:
    """``frametrans ARGS`` in a child process that SIGKILLs itself where ``killer`` says."""
    code = "import os, signal, sys\n" + textwrap.dedent(KILLERS[killer]).format(arg=arg) + \
        "from frametrans.cli.main import main\nsys.argv = ['frametrans'] + sys.argv[1:]\nmain()\n"
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, f"the job was not killed: {proc.returncode}\n{proc.stderr}"
    return proc


def frames_written(output: str) -> int:
    return int(output.split(" written, ")[1].split(" frames")[0])


@pytest.mark.parametrize("killer, arg", [("frame", 64), ("manifest", 3), ("join", 0), ("frame", 3)],
                         ids=["inside-a-segment", "between-segments", "during-the-join", "first-segment"])
def test_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, clip, model, reference, killer, arg):
    out = tmp_path / "out" / "clip.mp4"
    args = ["apply", clip, "-o", out, "-m", model, *FAST, *SEG]
    killed_run(args, killer, arg)
    folder = tmp_path / "out" / "clip.partial"
    manifest = Manifest.load(folder)
    assert manifest is not None
    done = manifest.frames_done
    if killer == "frame":  # at most the segment being written is lost (25 frames)
        assert arg - 1 - 25 <= done <= arg - 1
    if killer == "manifest":
        assert done == 3 * 25
    if killer == "join":
        assert manifest.complete and done == N
    res = run(*args, "--resume")
    assert res.exit_code == 0, res.output
    assert frames_written(res.output) == N - done  # nothing done is redone
    assert_same(out, reference)
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.mp4"], "leftovers"


def check_manifest(path: Path, clip: Path) -> None:
    """The manifest after two closed parts of 25 frames (1 s each)."""
    data = json.loads(path.read_text())
    assert data["outputs"] == ["clip.mp4"] and data["source"] == str(clip.resolve())
    tb = Fraction(data["time_base"])
    first, second = data["parts"]
    assert (first["frames"], second["frames"]) == (25, 25)
    assert second["first_pts"] > first["last_pts"]
    assert float((second["first_pts"] - data["origin"]) * tb) == pytest.approx(1.0)
    assert len(second["tail_pts"]) == 16 and second["tail_pts"][-1] == second["last_pts"]
    assert data["settings"]["crf"] == 0 and data["settings"]["model"].startswith("resnet:")


def test_resume_with_other_settings_or_input_is_refused(tmp_path, clip, model):
    out = tmp_path / "out" / "clip.mp4"
    args = ["apply", clip, "-o", out, "-m", model, *FAST, *SEG]
    killed_run(args, "manifest", 2)
    check_manifest(out.parent / "clip.partial" / "manifest.json", clip)
    res = run(*args)  # no --resume: refused, and says how to go on
    assert res.exit_code == 2
    assert "holds an interrupted run of clip.mp4 (50 of 150 frames done); pass --resume" in res.output
    res = run("apply", clip, "-o", out, "-m", model, *FAST[:-1], "10", *SEG, "--resume")
    assert res.exit_code == 2
    assert "was started with other settings: crf (0 -> 10)" in res.output
    res = run(*args, "--resume", "--temporal", "auto")
    assert res.exit_code == 2 and "temporal (0.0 -> 0.5)" in res.output
    (tmp_path / "other").mkdir()
    other = segment_clip(tmp_path / "other" / "clip.mp4", frames=N - 10, gop=12)
    res = run("apply", other, "-o", out, "-m", model, *FAST, *SEG, "--resume")
    assert res.exit_code == 2
    assert "was started from another clip.mp4" in res.output and "bytes" in res.output
    assert Manifest.load(out.parent / "clip.partial").frames_done == 50  # untouched
    res = run(*args, "--overwrite")  # starts over
    assert res.exit_code == 0, res.output
    assert frames_written(res.output) == N
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.mp4"]


def test_disk_full_during_a_segment_keeps_the_manifest_consistent(tmp_path, clip, model, reference,
                                                                  monkeypatch):
    from frametrans.io.video import VideoWriter

    real = VideoWriter.write
    count = [0]

    def write(self, *a, **k):
        count[0] += 1
        if count[0] == 90:
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)
    monkeypatch.setattr(VideoWriter, "write", write)
    out = tmp_path / "out" / "clip.mp4"
    args = ["apply", clip, "-o", out, "-m", model, *FAST, *SEG]
    res = run(*args)
    assert res.exit_code == 1
    assert "No space left on device" in res.output
    folder = out.parent / "clip.partial"
    manifest = Manifest.load(folder)
    assert manifest.frames_done == 75 and len(manifest.parts) == 3
    assert sorted(p.name for p in folder.iterdir()) == \
        ["clip.00000.mp4", "clip.00001.mp4", "clip.00002.mp4", "manifest.json"]
    monkeypatch.setattr(VideoWriter, "write", real)
    res = run(*args, "--resume")
    assert res.exit_code == 0, res.output
    assert frames_written(res.output) == N - 75
    assert_same(out, reference)


def test_ctrl_c_keeps_the_segments_and_join_makes_a_playable_file(tmp_path, clip, model, reference,
                                                                  monkeypatch):
    from frametrans.apply.segmented import SegmentedWriter

    real = SegmentedWriter.write
    count = [0]

    def write(self, *a, **k):
        count[0] += 1
        if count[0] == 40:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(SegmentedWriter, "write", write)
    out = tmp_path / "out" / "clip.mp4"
    args = ["apply", clip, "-o", out, "-m", model, *FAST, *SEG]
    res = run(*args)
    assert res.exit_code != 0
    folder = out.parent / "clip.partial"
    assert f"interrupted: 39 of {N} frames done, kept in {folder}" in res.output
    assert f"`frametrans join {folder}` for a playable clip.partial.mp4" in res.output
    assert Manifest.load(folder).frames_done == 39  # the part being written was closed, not lost
    res = run("join", folder)
    assert res.exit_code == 0, res.output
    partial = out.parent / "clip.partial.mp4"
    assert res.output.strip() == str(partial)
    pts, frames, audio = decoded(partial)
    ref_pts, ref_frames, ref_audio = reference
    assert pts == ref_pts[:39] and all(np.array_equal(a, b) for a, b in zip(frames, ref_frames))
    with av.open(str(partial)) as c:  # the audio copy stops with the video
        a = c.streams.audio[0]
        last = max(float(p.pts * a.time_base) for p in c.demux(a) if p.pts is not None)
    assert 0 < len(audio) < len(ref_audio) and last <= 39 / 25 + 0.1
    monkeypatch.setattr(SegmentedWriter, "write", real)
    res = run(*args, "--skip-existing")  # --skip-existing continues it too
    assert res.exit_code == 0, res.output
    assert frames_written(res.output) == N - 39
    assert_same(out, reference)
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.mp4"]  # the partial file went


def test_join_refuses_a_folder_that_is_no_job(tmp_path):
    res = run("join", tmp_path)
    assert res.exit_code == 2
    assert "not the working folder of an interrupted job" in res.output


def test_vfr_clip_resumes_with_every_timestamp(tmp_path, model):
    clip = segment_clip(tmp_path / "vfr.mp4", frames=90, gop=10, vfr=True)
    ref = tmp_path / "ref.mp4"
    assert run("apply", clip, "-o", ref, "-m", model, *FAST, "--segment-seconds", "0",
               "--quiet").exit_code == 0
    out = tmp_path / "out" / "vfr.mp4"
    args = ["apply", clip, "-o", out, "-m", model, *FAST, *SEG]
    killed_run(args, "manifest", 2)
    res = run(*args, "--resume")
    assert res.exit_code == 0, res.output
    assert_same(out, decoded(ref))


def test_temporal_resume_warms_the_stabilizer_up(tmp_path, clip, model):
    """--temporal: the frames before the cut go through the model again (not written), so the
    resumed output matches an uninterrupted one (the stabilizer forgets its start within them)."""
    ref = tmp_path / "ref.mp4"
    flags = [*FAST, *SEG, "--temporal", "auto"]
    assert run("apply", clip, "-o", ref, "-m", model, *flags, "--quiet").exit_code == 0
    out = tmp_path / "out" / "clip.mp4"
    args = ["apply", clip, "-o", out, "-m", model, *flags]
    killed_run(args, "manifest", 2)
    res = run(*args, "--resume")
    assert res.exit_code == 0, res.output
    assert frames_written(res.output) == N - 50
    _, frames, _ = decoded(out)
    _, ref_frames, _ = decoded(ref)
    worst = max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(frames, ref_frames))
    assert worst <= 1, worst


@pytest.mark.parametrize("name", ["unet", "resnet", "munit"])
def test_settings_fingerprint_of_every_generator(name):
    """Every image generator gets a fingerprint (0-dim buffers such as BatchNorm's step count
    included); it changes with the weights, and for MUNIT with the style."""
    import torch

    from frametrans.apply import Translator
    from frametrans.engine.runner import RunnerOptions
    from support import tiny_model

    opts = RunnerOptions(device="cpu", precision="fp32", backend="torch")
    a = Translator(tiny_model(name), opts).fingerprint()
    assert a == Translator(tiny_model(name), opts).fingerprint()
    assert a["model"].startswith(name + ":") and a["precision"] == "float32"
    changed = tiny_model(name)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert Translator(changed, opts).fingerprint()["model"] != a["model"]
    if name == "munit":
        assert Translator(tiny_model(name), opts, seed=1).fingerprint()["model"] != a["model"]


def test_settings_name_the_stabilizer_flow_when_it_blends():
    """A job that blends along the flow records which flow (it changed from DIS medium to fast):
    a job folder left by the older version lacks the key and is refused rather than mixed."""
    from frametrans.apply import OutputOptions, Translator
    from frametrans.apply.resumable import settings_of
    from frametrans.engine.runner import RunnerOptions
    from support import tiny_model

    t = Translator(tiny_model("resnet"), RunnerOptions(device="cpu", precision="fp32", backend="torch"))
    assert settings_of(t, OutputOptions(temporal="flow"))["temporal_flow"] == "dis-fast-luma32"
    assert settings_of(t, OutputOptions(temporal="auto"))["temporal_flow"] == "dis-fast-luma32"
    assert settings_of(t, OutputOptions(temporal="auto", temporal_flow="torch"))["temporal_flow"] == "torch-farneback"
    assert "temporal_flow" not in settings_of(t, OutputOptions(temporal="stats"))
    assert "temporal_flow" not in settings_of(t, OutputOptions())


def test_munit_style_kept_by_skip_existing_and_the_rest_resumed(tmp_path, clip):
    """MUNIT, two styles, style0's output there already: the job writes style1 alone, is killed
    inside a segment and resumed; the manifest of that one-style job matches the resumed run's
    settings, style0 is untouched and style1 equals an uninterrupted two-style run's."""
    import torch

    from frametrans.checkpoint import save_model
    from frametrans.models.munit import MUNIT, MUNITConfig

    torch.manual_seed(0)
    munit = save_model(MUNIT(MUNITConfig(dim=4, style_dim=3, n_res=1, mlp_dim=8)), tmp_path / "munit.safetensors")
    styles = ["-m", munit, "--num-styles", "2", "--seed", "1", *FAST]
    res = run("apply", clip, "-o", tmp_path / "ref" / "clip.mp4", *styles, "--quiet")
    assert res.exit_code == 0, res.output
    out = tmp_path / "out" / "clip.mp4"
    out.parent.mkdir()
    (out.parent / "clip_style0.mp4").write_bytes(b"kept")
    args = ["apply", clip, "-o", out, *styles, *SEG, "--skip-existing"]
    killed_run(args, "frame", 64)
    manifest = Manifest.load(out.parent / "clip.partial")
    assert manifest.outputs == ["clip_style1.mp4"] and manifest.frames_done >= 25
    res = run(*args[:-1], "--resume")
    assert res.exit_code == 0, res.output
    assert frames_written(res.output) == N - manifest.frames_done and "1 skipped" in res.output
    assert (out.parent / "clip_style0.mp4").read_bytes() == b"kept"
    assert_same(out.parent / "clip_style1.mp4", decoded(tmp_path / "ref" / "clip_style1.mp4"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip_style0.mp4", "clip_style1.mp4"]
