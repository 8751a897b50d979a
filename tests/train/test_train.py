"""Training: every method for a few steps on tiny images, exact resume, config files, NaN stops,
losses, pools, datasets and the ``frametrans train`` CLI. CPU only, tiny networks, 32x32 crops."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from frametrans.checkpoint import load_model
from frametrans.train.base import lr_factor
from frametrans.train.datasets import (Augment, DataError, MatchedPairs, PairedDataset, WindowDataset,
                                       decode_video, find_pairs, load_sequences, spread)
from frametrans.train.losses import GANLoss, gradient_penalty
from frametrans.train.pool import ImagePool
from support.training import EXPORTS, _photos, _target, _tiny_args, _write, losses_of, tiny
from frametrans.train import trainer as trainer_module
from frametrans.train.trainer import STATE_FILE, TrainingStopped, load_state, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/train/conftest.py

# ---------------------------------------------------------------------------------------------
# fixtures: tiny data in every layout


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    photos = _photos()
    for k, a in enumerate(photos):
        _write(root / "aligned" / "train" / f"{k}.png", np.concatenate([a, _target(a)], 1))
        _write(root / "folders" / "A" / f"img{k}.png", a)
        _write(root / "folders" / "B" / f"img{k}.jpg", _target(a))
        _write(root / "unpaired" / "trainA" / f"{k}.png", a)
        _write(root / "unpaired" / "trainB" / f"{k}.png", _target(a)[::-1])
    for k, a in enumerate(photos[:2]):
        _write(root / "aligned" / "val" / f"{k}.png", np.concatenate([a, _target(a)], 1))
    _write_video(root / "clip.mp4", frames=16)
    return root


def _write_video(path: Path, frames: int, size: int = 40) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((size, size, 3), 30, np.uint8)
            img[8:18, 2 + 2 * i : 12 + 2 * i] = (250, 200, 40)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


METHODS = ["pix2pix", "cyclegan", "munit", "predictor"]


def _input_for(model: torch.nn.Module) -> torch.Tensor:
    c = model.config.contract()
    lo, hi = c.value_range
    return torch.rand(1, c.in_channels * c.frames_in, 32, 32) * (hi - lo) + lo


# ---------------------------------------------------------------------------------------------
# each method: runs, logs, exports a loadable checkpoint


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_and_exports(method: str, data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    opts = dict(tiny(method, data_root), sample_every=2, val_every=2, save_every=2)
    result = train(method, opts, run)
    assert result.step == 4 and result.total == 4
    records = losses_of(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for r in records for v in r.values())
    for name in EXPORTS[method]:
        model = load_model(run / name).eval()
        with torch.no_grad():
            out = model(_input_for(model))
        assert torch.isfinite(out).all()
        lo, hi = model.config.contract().value_range
        assert out.min() >= lo and out.max() <= hi
    state = torch.load(run / STATE_FILE, weights_only=True)
    assert state["step"] == 4 and state["method"] == method
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    assert cv2.imread(str(run / "losses.png")) is not None
    assert (run / "config.yaml").read_text().count(f"method: {method}") == 1
    if method in ("pix2pix", "predictor"):  # paired targets: validation metrics
        val = [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines()]
        assert [v["step"] for v in val] == [2, 4]
        assert all(0 <= v["ssim"] <= 1 and v["psnr"] > 0 for v in val)


@pytest.mark.parametrize("method", METHODS)
def test_resume_equals_uninterrupted(method: str, data_root: Path, tmp_path: Path) -> None:
    opts = tiny(method, data_root)
    if method == "cyclegan":
        opts["ema"] = 0.9  # the EMA copies are part of the state too
    if method == "pix2pix":  # a U-Net deep enough to have dropout, which draws from the global RNG
        opts.update(size=68, crop=64, num_downs=6)
    train(method, opts, tmp_path / "full")
    train(method, opts, tmp_path / "split", until=2)
    assert load_state(tmp_path / "split" / STATE_FILE)["step"] == 2
    assert len(losses_of(tmp_path / "split")) == 2
    train(method, {}, tmp_path / "split", resume=True)  # options come from the run's config.yaml
    full, split = losses_of(tmp_path / "full"), losses_of(tmp_path / "split")
    assert [r["step"] for r in split] == [1, 2, 3, 4]
    for a, b in zip(full, split):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-5), (k, a["step"])
    for name in EXPORTS[method]:
        wa = load_model(tmp_path / "full" / name).state_dict()
        wb = load_model(tmp_path / "split" / name).state_dict()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_ema_is_exported_instead_of_raw_weights(data_root: Path, tmp_path: Path) -> None:
    from frametrans.train.trainer import Trainer, resolve_options

    opts = resolve_options("pix2pix", dict(tiny("pix2pix", data_root), ema=0.5))
    trainer = Trainer("pix2pix", opts, tmp_path / "run")
    trainer.run()
    exported = load_model(tmp_path / "run" / "G.safetensors").state_dict()
    shadow = trainer.method.ema.shadow["G"].state_dict()
    raw = trainer.method.nets["G"].state_dict()
    key = next(k for k in exported if k.endswith("weight"))
    torch.testing.assert_close(exported[key], shadow[key])
    assert not torch.allclose(exported[key], raw[key])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_root: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real_getitem = PairedDataset.__getitem__

    def poisoned(self: PairedDataset, k: int) -> Dict[str, torch.Tensor]:
        item = real_getitem(self, k)
        if k >= 4:  # step 3 (batch 2) sees a NaN image
            item["A"] = item["A"].clone()
            item["A"][0, 0, 0] = float("nan")
        return item

    monkeypatch.setattr(PairedDataset, "__getitem__", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"became nan at step 3.*step 2\)") as info:
        train("pix2pix", dict(tiny("pix2pix", data_root), save_every=2), run)
    assert "\n" not in str(info.value)
    assert load_state(run / STATE_FILE)["step"] == 2
    weights = load_model(run / "G.safetensors").state_dict()
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    assert json.loads((run / "G.safetensors").read_bytes()[8:][: int.from_bytes(
        (run / "G.safetensors").read_bytes()[:8], "little")])["__metadata__"]["provenance"].count('"step": 2')
    assert [r["step"] for r in losses_of(run)] == [1, 2]


def test_losses_read_once_per_record_still_name_the_step_that_broke(data_root: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The losses stay on the device between records (reading them every step made the host wait
    for every step's kernels): a NaN at step 3 is found when step 4 is read, named as step 3, and
    nothing is written after it."""
    real_getitem = PairedDataset.__getitem__
    reads = []
    real_read = trainer_module._UnreadLosses.read

    def poisoned(self: PairedDataset, k: int) -> Dict[str, torch.Tensor]:
        item = real_getitem(self, k)
        if k >= 4:  # step 3 (batch 2)
            item["A"] = item["A"].clone()
            item["A"][0, 0, 0] = float("nan")
        return item

    def counted(self: Any) -> Any:
        out = real_read(self)
        reads.append([step for step, _ in out])
        return out

    monkeypatch.setattr(PairedDataset, "__getitem__", poisoned)
    monkeypatch.setattr(trainer_module._UnreadLosses, "read", counted)
    run = tmp_path / "run"
    opts = dict(tiny("pix2pix", data_root), iters=8, log_every=4, save_every=4, sample_every=100, val_every=100)
    with pytest.raises(TrainingStopped, match=r"became nan at step 3; .*no checkpoint was written yet"):
        train("pix2pix", opts, run)
    assert reads == [[1, 2, 3, 4]]  # one read for the four steps
    assert not (run / STATE_FILE).exists() and losses_of(run) == []
    reads.clear()
    monkeypatch.setattr(PairedDataset, "__getitem__", real_getitem)
    monkeypatch.setattr(trainer_module._UnreadLosses, "LIMIT", 3)  # a run that logs rarely is read anyway
    train("pix2pix", dict(opts, log_every=7, save_every=7), tmp_path / "rare")
    assert reads == [[1, 2, 3], [4, 5, 6], [7], [8]]
    assert [r["step"] for r in losses_of(tmp_path / "rare")] == [7, 8]


@pytest.mark.parametrize("method", ["pix2pix", "cyclegan", "munit"])
def test_wgan_gp_penalty_is_applied(method: str, data_root: Path, tmp_path: Path) -> None:
    train(method, dict(tiny(method, data_root), gan_mode="wgan-gp", iters=2), tmp_path / "run")
    records = losses_of(tmp_path / "run")
    assert all(r["D_GP"] > 0 and math.isfinite(r["D_GP"]) for r in records)


def test_hinge_mode_trains(data_root: Path, tmp_path: Path) -> None:
    result = train("cyclegan", dict(tiny("cyclegan", data_root), gan_mode="hinge", iters=2), tmp_path / "r")
    assert all(math.isfinite(v) for v in result.last_losses.values())


def test_cli_upsample_resize_is_exported(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = _cli(["cyclegan", *_tiny_args("cyclegan", data_root), "--iters", "1", "--upsample", "resize",
                "-o", str(run)])
    assert res.exit_code == 0, res.output
    g = load_model(run / "G_A.safetensors")
    assert g.config.upsample == "resize"
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())


def test_bf16_autocast_on_cpu(data_root: Path, tmp_path: Path) -> None:
    result = train("predictor", dict(tiny("predictor", data_root), precision="bf16", iters=2), tmp_path / "r")
    assert all(math.isfinite(v) for v in result.last_losses.values())
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        train("predictor", dict(tiny("predictor", data_root), precision="fp16", device="cpu"), tmp_path / "r2")


def test_munit_vgg_perceptual_loss(data_root: Path, tmp_path: Path) -> None:
    from frametrans.train.losses import vgg16_features

    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in vgg16_features().state_dict().items()}
    state = {f"features.{k}": torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # a full VGG16 dict: extra keys are ignored
    torch.save(state, tmp_path / "vgg16.pth")
    result = train("munit", dict(tiny("munit", data_root), iters=1, vgg_weights=str(tmp_path / "vgg16.pth")),
                   tmp_path / "run")
    assert result.last_losses["vgg_a"] > 0
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision VGG16 state dict"):
        train("munit", dict(tiny("munit", data_root), vgg_weights=str(tmp_path / "bad.pth")), tmp_path / "run2")


def test_video_sources(data_root: Path, tmp_path: Path) -> None:
    clip = data_root / "clip.mp4"
    result = train("predictor", dict(tiny("predictor", data_root), data=str(clip), size=32, crop=32,
                                     channels=3, stride=2, iters=2, batch_size=2), tmp_path / "p")
    assert result.step == 2
    result = train("cyclegan", dict(tiny("cyclegan", data_root), data=None, data_a=str(clip),
                                    data_b=str(data_root / "unpaired" / "trainB"), frame_every=3, iters=2),
                   tmp_path / "c")
    assert result.step == 2


# ---------------------------------------------------------------------------------------------
# losses, pool, schedule, datasets


def test_gan_losses_known_values() -> None:
    x = torch.tensor([[[[0.0, 2.0]]]])
    assert GANLoss("lsgan")(x, True).item() == pytest.approx((1 + 1) / 2)
    assert GANLoss("lsgan")(x, False).item() == pytest.approx((0 + 4) / 2)
    assert GANLoss("vanilla")(x, True).item() == pytest.approx(
        float(torch.nn.functional.softplus(-x).mean()))
    assert GANLoss("hinge")(x, True).item() == pytest.approx((1 + 0) / 2)
    assert GANLoss("hinge")(x, False).item() == pytest.approx((1 + 3) / 2)
    assert GANLoss("hinge")(x, True, for_discriminator=False).item() == pytest.approx(-1.0)
    assert GANLoss("wgan-gp")(x, True).item() == pytest.approx(-1.0)
    assert GANLoss("lsgan")([x, x], True).item() == pytest.approx(2.0)  # multi-scale: summed
    with pytest.raises(ValueError, match="unknown GAN mode"):
        GANLoss("wgangp")


def test_gradient_penalty_nonzero_and_differentiable() -> None:
    d = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3))
    real, fake = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    gp = gradient_penalty(d, real, fake, generator=torch.Generator().manual_seed(0))
    assert gp.item() > 0
    gp.backward()
    assert d[0].weight.grad is not None and d[0].weight.grad.abs().sum() > 0


def test_image_pool_state_roundtrip() -> None:
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = ImagePool(3, gen())
    batches = [torch.full((2, 1, 2, 2), float(i)) for i in range(6)]
    for b in batches[:3]:
        a.query(b)
    b = ImagePool(3, torch.Generator())
    b.load_state_dict(a.state_dict())
    for x in batches[3:]:
        torch.testing.assert_close(a.query(x), b.query(x))
    assert torch.equal(ImagePool(0, gen()).query(batches[1]), batches[1])


def test_lr_schedules() -> None:
    assert [lr_factor(s, 4, "linear") for s in range(4)] == [1.0, 1.0, 1.0, 0.5]
    assert lr_factor(0, 10, "linear", decay_start=0.0) == 1.0 and lr_factor(9, 10, "linear", 0.0) == pytest.approx(0.1)
    assert lr_factor(250, 1000, "step", step_size=100, gamma=0.5) == 0.25
    assert lr_factor(5, 10, "constant") == 1.0
    assert lr_factor(10, 10, "cosine", decay_start=0.0) == pytest.approx(0.0)


def test_sample_grid_picks_spread_over_the_data(data_root: Path) -> None:
    assert spread(4, 57) == [0, 19, 37, 56] and spread(3, 1) == [0, 0, 0] and spread(2, 0) == []
    ds = PairedDataset(find_pairs(data_root / "aligned"), Augment(36, 32), seed=1)
    picks = ds.evaluation(2)  # first and last of the three pairs
    torch.testing.assert_close(picks[1]["A"], ds.augment.center(ds.pairs.get(2)[0]))


def test_paired_layouts_and_determinism(data_root: Path, tmp_path: Path) -> None:
    aug = Augment(36, 32)
    aligned = PairedDataset(find_pairs(data_root / "aligned"), aug, seed=1)
    matched = PairedDataset(find_pairs(data_root / "folders"), aug, seed=1)
    assert len(aligned.pairs) == len(matched.pairs) == 3
    assert find_pairs(data_root / "aligned", "val") is not None
    assert find_pairs(data_root / "folders", "val") is None
    again = PairedDataset(find_pairs(data_root / "aligned"), aug, seed=1)
    for k in (0, 5, 11):
        for key in ("A", "B"):
            torch.testing.assert_close(aligned[k][key], again[k][key])
    item = aligned[0]
    assert item["A"].shape == (3, 32, 32) and -1 <= item["A"].min() and item["A"].max() <= 1
    epochs = [sorted(aligned.order(k) for k in range(e * 3, e * 3 + 3)) for e in range(3)]
    assert all(e == [0, 1, 2] for e in epochs)  # every epoch visits every pair once
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    _write(tmp_path / "A" / "x.png", _photos()[0])
    _write(tmp_path / "B" / "y.png", _photos()[0])
    with pytest.raises(DataError, match="no partner"):
        MatchedPairs(tmp_path / "A", tmp_path / "B")


def test_windows_from_video_and_folder(data_root: Path, tmp_path: Path) -> None:
    frames = decode_video(data_root / "clip.mp4", every=1)
    assert len(frames) == 16 and frames[0].shape == (40, 40, 3)
    for i, f in enumerate(frames[:6]):
        _write(tmp_path / "seq" / f"{i:03d}.png", f)
    seqs = load_sequences(tmp_path / "seq", channels=1, size=32)
    assert seqs[0].shape == (6, 32, 32, 1)
    ds = WindowDataset(seqs, length=3, stride=2, crop=16, seed=0)
    assert ds.epoch_size == 2 and ds[0]["frames"].shape == (3, 1, 16, 16)
    with pytest.raises(DataError, match="no window of 4 frames"):
        WindowDataset(seqs, length=4, stride=2, crop=16, seed=0)


def test_option_errors(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a multiple of 256"):
        train("pix2pix", dict(tiny("pix2pix", data_root), num_downs=8), tmp_path / "a")
    with pytest.raises(ValueError, match="unknown option"):
        train("pix2pix", dict(tiny("pix2pix", data_root), n_blocks=3), tmp_path / "b")
    with pytest.raises(ValueError, match="not both"):
        train("pix2pix", dict(tiny("pix2pix", data_root), epochs=2), tmp_path / "c")
    with pytest.raises(DataError, match="no paired data"):
        train("pix2pix", dict(tiny("pix2pix", data_root), data=str(tmp_path)), tmp_path / "d")


def test_loader_workers_do_not_change_the_data(data_root: Path, tmp_path: Path) -> None:
    """The run with loader processes is a ``frametrans train`` child process, as users start it: a
    DataLoader with workers installs torch's SIGCHLD handler in the process that iterates it, and
    in a process that has also run frametrans's OpenVINO backend (this test process, after the
    backend tests), the next subprocess then crashed the interpreter (heap corruption, seen with
    openvino 2026.4; not reproduced with OpenVINO alone)."""
    import subprocess

    train("cyclegan", dict(tiny("cyclegan", data_root), iters=3), tmp_path / "w0")
    args = _tiny_args("cyclegan", data_root) + ["--iters", "3", "--workers", "2", "-o", str(tmp_path / "w2")]
    proc = subprocess.run([sys.executable, "-m", "frametrans.cli.main", "train", "cyclegan", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert losses_of(tmp_path / "w0") == losses_of(tmp_path / "w2")


def test_epochs_count_steps(data_root: Path, tmp_path: Path) -> None:
    opts = dict(tiny("pix2pix", data_root), iters=None, epochs=2)  # 3 pairs, batch 2 -> 2 steps/epoch
    assert train("pix2pix", opts, tmp_path / "run").total == 4


# ---------------------------------------------------------------------------------------------
# the CLI


def _cli(args: List[str]) -> Any:
    from frametrans.cli.main import cli

    return CliRunner().invoke(cli, ["train", *args], catch_exceptions=False)


def test_cli_config_file_and_override(data_root: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 1e-4\nbatch-size: 1\nngf: 8\nseed: 3\n")  # pyyaml reads 1e-4 as a string
    run = tmp_path / "run"
    res = _cli(["pix2pix", *_tiny_args("pix2pix", data_root), "--iters", "2", "--config", str(cfg),
                "--lr", "5e-5", "-o", str(run)])
    assert res.exit_code == 0, res.output
    import yaml

    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["lr"] == 5e-5  # the flag wins over the file
    assert resolved["ngf"] == 4  # --ngf 4 from the tiny args wins too
    assert resolved["seed"] == 3 and resolved["iters"] == 2
    assert load_model(run / "G.safetensors").config.ngf == 4
    # the written config is itself a valid --config file
    res = _cli(["pix2pix", "--config", str(run / "config.yaml"), "-o", str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    assert losses_of(run) == losses_of(tmp_path / "again")


def test_cli_errors_are_one_line(data_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-4\nlearning_rate: 3\n")
    res = _cli(["pix2pix", "--config", str(bad), "-o", str(tmp_path / "x")])
    assert res.exit_code != 0 and "unknown option 'learning_rate'" in res.output
    assert len(res.output.strip().splitlines()) == 1
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("batch_size: many\n")
    res = _cli(["pix2pix", "--config", str(wrong_type), "-o", str(tmp_path / "x")])
    assert res.exit_code != 0 and "batch_size" in res.output
    res = _cli(["pix2pix", *_tiny_args("pix2pix", data_root), "--num-downs", "8", "-o", str(tmp_path / "y")])
    assert res.exit_code == 1 and "not a multiple of 256" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_cli_refuses_nonempty_run_dir_and_resumes(data_root: Path, tmp_path: Path) -> None:
    args = _tiny_args("pix2pix", data_root) + ["--lr-policy", "constant"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    res = _cli(["pix2pix", *args, "--iters", "2", "-o", str(run)])
    assert res.exit_code != 0 and "not empty" in res.output
    res = _cli(["pix2pix", *args, "--iters", "2", "-o", str(run), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (run / "notes.txt").read_text() == "mine"  # --overwrite removes only our own files
    res = _cli(["pix2pix", "-o", str(run), "--resume", "--iters", "4"])  # extend the run
    assert res.exit_code == 0, res.output
    res = _cli(["pix2pix", *args, "--iters", "4", "-o", str(tmp_path / "straight")])
    assert res.exit_code == 0, res.output
    split, straight = losses_of(run), losses_of(tmp_path / "straight")
    assert [r["step"] for r in split] == [1, 2, 3, 4]
    for a, b in zip(split, straight):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
    res = _cli(["cyclegan", "-o", str(run), "--resume"])
    assert res.exit_code != 0 and "holds a pix2pix run" in res.output


def test_cli_nan_is_one_line_error(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from frametrans.train import predictor

    real_step = predictor.Predictor.step
    monkeypatch.setattr(predictor.Predictor, "step",
                        lambda self, batch: {k: float("inf") for k in real_step(self, batch)})
    res = _cli(["predictor", *_tiny_args("predictor", data_root), "-o", str(tmp_path / "r")])
    assert res.exit_code == 1
    assert "became inf at step 1" in res.output and "no checkpoint was written yet" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("method", METHODS)
def test_every_option_has_a_flag(method: str) -> None:
    from frametrans.cli.main import cli

    command = cli.get_command(None, "train").get_command(None, method)  # type: ignore[union-attr]
    flags = {p.name for p in command.params}
    from frametrans.train.options import option_names

    assert set(option_names(method)) - {"device", "quiet"} <= flags  # those two: shared decorators
    assert {"device", "quiet"} <= flags
    assert {"output", "config", "resume", "overwrite"} <= flags


def test_train_help_does_not_import_torch() -> None:
    import subprocess

    code = ("import sys; from click.testing import CliRunner; from frametrans.cli.main import cli; "
            "r = CliRunner().invoke(cli, ['train', 'pix2pix', '--help']); assert r.exit_code == 0, r.output; "
            "assert '[default: 100.0]' in r.output; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
