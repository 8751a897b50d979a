"""Ctrl-C and SIGTERM delivered to a real `frametrans apply` process in the middle of its work.

Video: the segments done are kept in NAME.partial/ for --resume, with exactly the frames the log
says (`frametrans join` makes them a playable NAME.partial.EXT); nothing under the final name, no
temporary files. Folder: finished images are complete, no
temporary files, and a rerun with --skip-existing finishes the job without redoing them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from frametrans.checkpoint import save_model
from frametrans.cli.main import cli
from frametrans.models.resnet import ResnetConfig, ResnetGenerator
from support.media import make_clip, picture
from support.cli import hidden_files

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

STATUS = {"SIGINT": 130, "SIGTERM": 143}


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """Big enough that a job takes seconds on one core, so the signal lands mid-job."""
    torch.manual_seed(0)
    return save_model(ResnetGenerator(ResnetConfig(ngf=16, n_blocks=4)),
                      tmp_path_factory.mktemp("model") / "slow.safetensors")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    clip = tmp_path_factory.mktemp("clip") / "clip.mp4"
    make_clip(clip, n=150, h=96, w=128, audio=True)
    return clip


def _default_sigint() -> None:
    """In the child: SIGINT handled, even when pytest runs as a background job of a shell without job
    control (which starts it, and so every child, with SIGINT ignored; Python keeps an inherited
    ignore, as a user's `frametrans apply ... &` in a script would)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "frametrans.cli", "apply", *map(str, args)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the job ended (status {proc.returncode}) before the signal was sent:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the job did not get going in time")
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = 60.0):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the job did not stop after the signal:\n{err}")
    return proc.returncode, err


@pytest.mark.parametrize("signals", [["SIGINT"], ["SIGTERM"], ["SIGTERM", "SIGTERM"], ["SIGINT", "SIGINT"]],
                         ids=["sigint", "sigterm", "sigterm-twice", "sigint-twice"])
def test_signal_during_video(tmp_path, slow_model, long_clip, signals):
    clip = long_clip
    out = tmp_path / "out"
    folder = out / "clip.partial"
    proc = start([clip, "-o", out / "clip.mp4", "-m", slow_model, "--precision", "fp32",
                  "--batch-size", "2", "--compile", "off", "--backend", "torch"], tmp_path)
    # the encoder's temporary file of the first segment appears with the first encoded frame
    wait_for(lambda: folder.exists() and any(p.name.startswith(".clip.00000.mp4.") for p in folder.iterdir()),
             proc)
    time.sleep(0.3)
    for name in signals:
        proc.send_signal(getattr(signal, name))
        time.sleep(0.05)
    code, err = finish(proc)
    assert code == STATUS[signals[0]], err
    assert "Traceback" not in err
    found = re.search(r"interrupted: (\d+) of 150 frames done, kept in (.+); rerun with --resume", err)
    assert found, err
    done = int(found.group(1))
    assert found.group(2) == str(folder)
    assert 0 < done < 150
    assert sorted(p.name for p in out.iterdir()) == ["clip.partial"]
    assert not hidden_files(out)
    # the frames done, playable: `frametrans join` (what Ctrl-C wrote directly before segments)
    res = CliRunner().invoke(cli, ["join", str(folder)])
    assert res.exit_code == 0, res.output
    partial = out / "clip.partial.mp4"
    with av.open(str(partial)) as c:
        video = c.streams.video[0]
        frames = [f for f in c.decode(video)]
        end = float((frames[-1].pts + 1) * video.time_base) if frames else 0
        assert len(frames) == done, f"log says {done} frames, the file holds {len(frames)}"
        assert [f.pts for f in frames] == sorted(f.pts for f in frames)
        assert frames[0].width == 128 and frames[0].height == 96
    with av.open(str(partial)) as c:  # the audio copy stops with the video
        audio = c.streams.audio[0]
        last = max(float(p.pts * audio.time_base) for p in c.demux(audio) if p.pts is not None)
        assert last <= end + 0.1


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_during_folder_then_skip_existing_finishes(tmp_path, slow_model, sig):
    src = tmp_path / "in"
    src.mkdir()
    n = 40
    for i in range(n):
        Image.fromarray(picture(96, 96, i)).save(src / f"p{i:02d}.png")
    out = tmp_path / "out"
    proc = start([src, "-o", out, "-m", slow_model, "--precision", "fp32", "--batch-size", "1",
                  "--compile", "off"], tmp_path)
    wait_for(lambda: out.exists() and len([p for p in out.glob("p*.png")]) >= 3, proc)
    proc.send_signal(getattr(signal, sig))
    code, err = finish(proc)
    assert code == STATUS[sig], err
    assert "Traceback" not in err
    done = sorted(out.glob("*.png"))
    assert 3 <= len(done) < n
    assert not hidden_files(out), "temporary (partial) files left behind"
    for p in done:  # every file under its final name is complete
        with Image.open(p) as im:
            im.load()
            assert im.size == (96, 96)
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    res = CliRunner().invoke(cli, ["apply", str(src), "-o", str(out), "-m", str(slow_model),
                                   "--precision", "fp32", "--skip-existing"])
    assert res.exit_code == 0, res.output
    assert f"{len(done)} skipped" in res.output
    assert len(list(out.glob("*.png"))) == n
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


# ---------------------------------------------------------------------------------------------
# training: killed at any moment, --resume continues from the last complete checkpoint


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Three aligned A|B pairs of 32x32 (pix2pix layout)."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "train").mkdir()
    for k in range(3):
        a = picture(32, 32, k)
        Image.fromarray(np.concatenate([a, (255 - a)[:, ::-1]], 1)).save(root / "train" / f"{k}.png")
    return root


def _train_args(pairs: Path, run: Path, iters: int):
    return ["pix2pix", "--data", str(pairs), "--size", "36", "--crop", "32", "--num-downs", "5",
            "--ngf", "4", "--ndf", "4", "--n-layers-d", "2", "--batch-size", "2", "--iters", str(iters),
            "--log-every", "1", "--save-every", "3", "--sample-every", "100000", "--val-every", "100000",
            "--lr-policy", "constant", "--device", "cpu", "--quiet", "-o", str(run)]


def _check_run_dir(run: Path) -> int:
    """Every checkpoint file under its final name is whole; returns the saved step."""
    from frametrans.checkpoint import load_model
    from frametrans.train.trainer import STATE_FILE, load_state

    state = load_state(run / STATE_FILE)
    load_model(run / "G.safetensors")
    assert state["step"] % 3 == 0 or state["step"] == state["total"]
    return int(state["step"])


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_training_killed_then_resumed(tmp_path, pairs, how):
    import json

    trainer_py = Path(__file__).resolve().parents[2] / "train" / "trainer.py"
    if not trainer_py.exists():
        pytest.skip("no trainer")
    run = tmp_path / "run"
    iters = 3000  # far more than it gets to: the signal ends it
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "frametrans.cli", "train", *_train_args(pairs, run, iters)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (run / "state.pt").exists(), proc)
    # land somewhere in the save cycle (every 3 steps): possibly inside a checkpoint write
    time.sleep(0.05 + np.random.default_rng().random() * 0.3)
    proc.send_signal(getattr(signal, how))
    code, err = finish(proc)
    if how == "SIGKILL":
        assert code == -signal.SIGKILL
    else:
        assert code == STATUS["SIGTERM"], err
        assert "Traceback" not in err
    saved = _check_run_dir(run)
    assert 3 <= saved < iters
    # resume to a nearby end (the saved options say 3000 iterations: --iters extends or shortens)
    target = saved + 4
    res = CliRunner().invoke(cli, ["train", "pix2pix", "-o", str(run), "--resume", "--iters", str(target)])
    assert res.exit_code == 0, res.output
    assert _check_run_dir(run) == target
    steps = [json.loads(line)["step"] for line in (run / "losses.jsonl").read_text().splitlines()]
    assert steps == list(range(1, target + 1)), "log records lost or repeated across the kill"
