"""Faults while a job runs: write errors (full disk, read-only disk, one unwritable file), model errors
on one image of a batch, out of memory (batch halving, then tiles, never a dropped frame), an
interrupt in the middle of a video or folder, and hostile checkpoints given to `apply`.

Real disks where possible (a tiny tmpfs mounted by the test when running as root), otherwise the OS
call is made to fail by monkeypatching.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from frametrans.io import video as video_io
from frametrans.models.resnet import ResnetGenerator
from support.media import make_clip, picture
from support.cli import failure_lines, hidden_files, run

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def noisy_pngs(folder: Path, n: int, size=(64, 64)) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def all_decodable(folder: Path) -> None:
    for p in folder.rglob("*.png"):
        im = Image.open(p)
        im.load()  # raises on a truncated file


# ---------------------------------------------------------------------------------------------
# write errors on a real (tiny) disk


@pytest.fixture
def tiny_disk(tmp_path):
    """A tmpfs of 96 KiB mounted at tmp_path/disk (root only); yields (path, remount(options))."""
    if not ROOT or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(disk)], check=True)

    try:
        yield disk, remount
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_disk_full_stops_the_job_cleanly_and_a_rerun_finishes(tmp_path, model_path, tiny_disk):
    disk, remount = tiny_disk
    srcs = noisy_pngs(tmp_path / "in", 14)  # ~12 KiB each: the disk holds about 7
    out = disk / "out"
    res = run("apply", tmp_path / "in", "-o", out, "-m", model_path, "--precision", "fp32")
    assert res.exit_code == 1
    assert "No space left on device" in res.output
    failed = failure_lines(res.output)
    assert len(failed) >= 1 and all("cannot write" in m and str(out) in m for m in failed.values())
    assert "stopped early" in res.output and "rerun with --skip-existing" in res.output
    done = sorted(p.name for p in out.glob("*.png"))
    assert 0 < len(done) < len(srcs)
    assert not hidden_files(out), "temporary files left on the full disk"
    all_decodable(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    remount("size=4m")
    res = run("apply", tmp_path / "in", "-o", out, "-m", model_path, "--precision", "fp32",
              "--skip-existing")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in srcs)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items()), "finished files were redone"
    all_decodable(out)


def test_disk_full_during_a_video_leaves_nothing(tmp_path, model_path, tiny_disk):
    disk, remount = tiny_disk
    clip = tmp_path / "clip.mp4"
    make_clip(clip, n=40, h=96, w=128)
    res = run("apply", clip, "-o", disk / "out.mkv", "-m", model_path, "--precision", "fp32",
              "--crf", "0")
    assert res.exit_code == 1
    assert f"{disk / 'out.mkv'}: cannot write" in res.output
    assert "No space left on device" in res.output
    assert list(disk.iterdir()) == [], "a partial or temporary video was left behind"


def test_read_only_output_folder(tmp_path, model_path, tiny_disk):
    disk, remount = tiny_disk
    noisy_pngs(tmp_path / "in", 3, size=(16, 16))
    remount("ro")
    res = run("apply", tmp_path / "in", "-o", disk, "-m", model_path)
    assert res.exit_code == 1
    assert "Read-only file system" in res.output and str(disk) in res.output
    assert "stopped early" in res.output
    assert list(disk.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# write errors made by failing the OS call (any user)


def test_enospc_mid_write_leaves_no_half_file(tmp_path, model_path, monkeypatch):
    noisy_pngs(tmp_path / "in", 6, size=(16, 16))
    out = tmp_path / "out"
    real_write = os.write

    def write(fd, data):
        target = os.readlink(f"/proc/self/fd/{fd}")
        # the third output (by name: the writer pool may open files out of order) hits a full disk
        # halfway through
        if str(out) in target and Path(target).name.startswith(".img02.png."):
            real_write(fd, bytes(memoryview(data)[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc")
    monkeypatch.setattr(os, "write", write)
    res = run("apply", tmp_path / "in", "-o", out, "-m", model_path)
    assert res.exit_code == 1
    failed = failure_lines(res.output)
    (name, msg), = failed.items()
    assert f"{out / name}: cannot write: No space left on device" in msg
    assert not (out / name).exists() and not hidden_files(out)
    assert len(list(out.glob("*.png"))) == 2  # written before the disk filled; the rest not tried
    assert "stopped early" in res.output
    all_decodable(out)


def test_one_unwritable_output_is_reported_and_the_rest_written(tmp_path, model_path, monkeypatch):
    noisy_pngs(tmp_path / "in", 5, size=(16, 16))
    out = tmp_path / "out"
    real_open = os.open

    def os_open(path, flags, *args, **kwargs):
        if ".img02.png." in str(path) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    res = run("apply", tmp_path / "in", "-o", out, "-m", model_path)
    assert res.exit_code == 1
    assert failure_lines(res.output) == {
        "img02.png": f"{out / 'img02.png'}: cannot write: Permission denied"}
    assert sorted(p.name for p in out.glob("*.png")) == ["img00.png", "img01.png", "img03.png", "img04.png"]
    assert "stopped early" not in res.output


def test_video_write_error_names_the_output_and_leaves_nothing(tmp_path, model_path, monkeypatch):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, n=12)
    real_write = video_io.VideoWriter.write

    def write(self, *args, **kwargs):
        if self.frames_written == 5:
            raise av.error.OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(video_io.VideoWriter, "write", write)
    res = run("apply", clip, "-o", tmp_path / "out" / "clip.mp4", "-m", model_path)
    assert res.exit_code == 1
    assert f"{tmp_path / 'out' / 'clip.mp4'}: cannot write: No space left on device" in res.output
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# model errors and out of memory


MARK = 7  # a uniform image of this value makes the patched model fail


def _is_marked(x: torch.Tensor) -> torch.Tensor:
    v = MARK / 255 * 2 - 1
    return ((x - v).abs().amax(dim=(1, 2, 3)) < 1e-4)


@pytest.fixture
def forward_hook(monkeypatch):
    """Install ``check(x)`` to run before every ResnetGenerator forward (it may raise)."""
    real = ResnetGenerator.forward

    def install(check):
        def forward(self, x):
            check(x)
            return real(self, x)
        monkeypatch.setattr(ResnetGenerator, "forward", forward)
    return install


def test_model_error_on_one_image_of_a_batch_fails_only_that_file(tmp_path, model_path, forward_hook):
    src = tmp_path / "in"
    noisy_pngs(src, 7, size=(20, 20))
    Image.fromarray(np.full((20, 20, 3), MARK, np.uint8)).save(src / "img03.png")  # poisoned

    def check(x):
        if _is_marked(x).any():
            raise RuntimeError("simulated model failure\nwith a second line")
    forward_hook(check)
    res = run("apply", src, "-o", tmp_path / "out", "-m", model_path, "--batch-size", "4",
              "--precision", "fp32")
    assert res.exit_code == 1
    failed = failure_lines(res.output)
    assert list(failed) == ["img03.png"]
    assert "model failed: simulated model failure" in failed["img03.png"]
    assert "second line" not in res.output
    assert "running them one at a time" in res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        [f"img{i:02d}.png" for i in range(7) if i != 3]


def test_oom_on_batches_halves_and_drops_no_frame(tmp_path, model_path, forward_hook):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, n=10)

    def check(x):
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    forward_hook(check)
    res = run("apply", clip, "-o", tmp_path / "out.mp4", "-m", model_path, "--batch-size", "4",
              "--precision", "fp32")
    assert res.exit_code == 0, res.output
    assert "out of memory" in res.output
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 10


def test_oom_on_a_large_frame_retries_in_tiles(tmp_path, model_path, forward_hook):
    image = picture(300, 400)
    Image.fromarray(image).save(tmp_path / "big.png")
    common = ["-m", model_path, "--precision", "fp32"]
    assert run("apply", tmp_path / "big.png", "-o", tmp_path / "ref.png", *common).exit_code == 0
    # the "device" holds inputs up to 256x256 (the runner's probes fit), not the 400x300 frame
    limit = 256 * 256
    seen = []

    def check(x):
        seen.append(tuple(x.shape[-2:]))
        if x.shape[-1] * x.shape[-2] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    forward_hook(check)
    res = run("apply", tmp_path / "big.png", "-o", tmp_path / "tiled.png", *common)
    assert res.exit_code == 0, res.output
    assert "out of memory on a 400x300 frame; retrying in tiles" in res.output
    out = np.asarray(Image.open(tmp_path / "tiled.png")).astype(int)
    ref = np.asarray(Image.open(tmp_path / "ref.png")).astype(int)
    assert out.shape == ref.shape == (300, 400, 3)
    assert np.abs(out - ref).mean() < 0.5, "tiled output differs from the whole-frame output"
    assert any(h * w <= limit and h < 300 for h, w in seen[-3:]), "no tile was run"


def test_oom_everywhere_is_reported_never_dropped(tmp_path, model_path, forward_hook):
    src = tmp_path / "in"
    noisy_pngs(src, 2, size=(24, 24))
    clip = tmp_path / "clip.mp4"
    make_clip(clip, n=3)
    calls = []

    def check(x):
        calls.append(x.shape)
        if len(calls) > 1:  # the first call is the runner's 64x64 memory probe
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    forward_hook(check)
    res = run("apply", src, clip, "-o", tmp_path / "out", "-m", model_path, "--tile-overlap", "4",
              "--precision", "fp32")  # auto would probe bf16 vs fp32 before the memory probe
    assert res.exit_code == 1
    failed = failure_lines(res.output)
    assert set(failed) == {"img00.png", "img01.png", "clip.mp4"}
    assert all("out of memory even in the smallest tiles" in m for m in failed.values()), failed
    assert "clip.mp4: frame 0 (00:00:00.0): out of memory" in failed["clip.mp4"]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------
# interrupts (in-process: KeyboardInterrupt raised from inside the model at a chosen frame)


def _main(args, capsys):
    """Run the real entry point (exit codes, signal handlers) in-process; restore SIGTERM after."""
    import signal

    from frametrans.cli.main import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    return code, capsys.readouterr().err


def test_interrupt_mid_video_keeps_a_playable_partial(tmp_path, model_path, forward_hook, capsys):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, n=24, audio=True)
    frames = []

    def check(x):
        frames.append(x.shape[0])
        if sum(frames) > 12:
            raise KeyboardInterrupt
    forward_hook(check)
    code, err = _main(["apply", clip, "-o", tmp_path / "out" / "clip.mp4", "-m", model_path,
                       "--batch-size", "2", "--precision", "fp32"], capsys)
    assert code == 130
    folder = tmp_path / "out" / "clip.partial"
    assert f"frames done, kept in {folder}; rerun with --resume" in err
    done = int(err.split("interrupted: ")[1].split(" ")[0])
    assert not (tmp_path / "out" / "clip.mp4").exists() and not hidden_files(tmp_path / "out")
    # the part done, as a playable file: `frametrans join` (the folder stays for --resume)
    code, err = _main(["join", folder], capsys)
    assert code == 0, err
    partial = tmp_path / "out" / "clip.partial.mp4"
    with av.open(str(partial)) as c:
        assert sum(1 for _ in c.decode(video=0)) == done
    assert 6 <= done < 24
    # rerun: the whole file appears and the stale partial goes away
    forward_hook(lambda x: None)
    code, err = _main(["apply", clip, "-o", tmp_path / "out" / "clip.mp4", "-m", model_path,
                       "--precision", "fp32", "--skip-existing", "--quiet"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.mp4"]


def test_interrupt_before_the_first_frame_is_not_swallowed(tmp_path, model_path, forward_hook, capsys):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, n=4)
    other = tmp_path / "other.mp4"
    make_clip(other, n=4)
    calls = []

    def check(x):
        calls.append(1)
        if len(calls) > 1:  # after the runner's memory probe
            raise KeyboardInterrupt
    forward_hook(check)
    code, err = _main(["apply", clip, other, "-o", tmp_path / "out", "-m", model_path], capsys)
    assert code == 130, err
    assert "interrupted" in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_interrupt_mid_folder_finishes_written_files(tmp_path, model_path, forward_hook, capsys):
    src = tmp_path / "in"
    noisy_pngs(src, 12, size=(16, 16))
    calls = []

    def check(x):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
    forward_hook(check)
    out = tmp_path / "out"
    code, err = _main(["apply", src, "-o", out, "-m", model_path, "--batch-size", "1"], capsys)
    assert code == 130
    done = sorted(p.name for p in out.iterdir())
    assert 0 < len(done) < 12 and not hidden_files(out)
    all_decodable(out)
    forward_hook(lambda x: None)
    code, err = _main(["apply", src, "-o", out, "-m", model_path, "--skip-existing"], capsys)
    assert code == 0, err
    assert f"{len(done)} skipped" in err
    assert len(list(out.glob("*.png"))) == 12


# ---------------------------------------------------------------------------------------------
# hostile checkpoints given to apply


def test_pickle_payload_checkpoint_is_refused_by_apply(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "latest_net_G.pth"
    torch.save({"model.1.weight": Payload()}, evil)
    Image.fromarray(picture(16, 16)).save(tmp_path / "a.png")
    res = run("apply", tmp_path / "a.png", "-o", tmp_path / "b.png", "-m", evil)
    assert res.exit_code == 1
    assert "refused: the file asks to unpickle GLOBAL" in res.output
    assert res.output.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "b.png").exists()


def _safetensors(path: Path, config: dict, shapes: dict) -> None:
    meta = {"frametrans_format": "1", "architecture": "resnet", "config": json.dumps(config),
            "provenance": "{}"}
    header, blobs, offset = {"__metadata__": meta}, [], 0
    for name, shape in shapes.items():
        n = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        blobs.append(b"\0" * n)
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


@pytest.mark.parametrize("config, message", [
    ({"ngf": 10**12, "n_blocks": 9}, "ngf=1000000000000 is out of range"),
    ({"ngf": 4000, "n_blocks": 60}, "parameters; refused"),
    ({"ngf": 4, "n_blocks": 1, "evil": 1}, "unknown config field"),
    ({"ngf": 4, "n_blocks": 1, "norm": "rm -rf"}, "is not one of"),
])
def test_absurd_checkpoint_config_refused_by_apply(tmp_path, config, message):
    ckpt = tmp_path / "m.safetensors"
    _safetensors(ckpt, config, {"w": [1]})
    Image.fromarray(picture(16, 16)).save(tmp_path / "a.png")
    res = run("apply", tmp_path / "a.png", "-o", tmp_path / "b.png", "-m", ckpt)
    assert res.exit_code == 1 and message in res.output, res.output
    assert res.output.startswith("frametrans: error: ") and res.output.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# training checkpoints are never half-written


def test_interrupt_while_writing_a_training_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    trainer = pytest.importorskip("frametrans.train.trainer")
    pairs = tmp_path / "pairs" / "train"
    pairs.mkdir(parents=True)
    for k in range(3):
        a = picture(32, 32, k)
        Image.fromarray(np.concatenate([a, 255 - a], 1)).save(pairs / f"{k}.png")
    options = dict(data=str(pairs.parent), size=36, crop=32, num_downs=5, ngf=4, ndf=4, n_layers_d=2,
                   batch_size=2, iters=6, save_every=2, log_every=1, sample_every=1000,
                   val_every=1000, quiet=True, device="cpu", lr_policy="constant")
    run = tmp_path / "run"
    real_save = torch.save
    saves = []

    def torch_save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:  # the second state.pt: half the bytes, then Ctrl-C
            real_save(obj, f, *args, **kwargs)
            data = Path(f).read_bytes()
            Path(f).write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", torch_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.train("pix2pix", options, run)
    state = trainer.load_state(run / trainer.STATE_FILE)
    assert state["step"] == 2, "the checkpoint under the final name must be the last complete one"
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "temporary checkpoint left"
    monkeypatch.setattr(torch, "save", real_save)
    trainer.train("pix2pix", {}, run, resume=True)
    assert trainer.load_state(run / trainer.STATE_FILE)["step"] == 6
