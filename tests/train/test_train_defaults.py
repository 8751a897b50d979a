"""Defaults that fit the data: ``frametrans train pix2pix|cyclegan|munit --data D --size 64 -o R
--iters 10`` works on a folder of 64 px images with no other flag.

--crop defaults to min(--size, 256); pix2pix's U-Net depth to the deepest the crop allows (one log
line says so); a size too small for the networks is a one-line error naming the smallest that works.

The literal command with the default (reference-sized) networks costs minutes of CPU per method
(MUNIT: 47 M parameters, a 560 MB state.pt), so the default suite runs it with narrow networks
(width flags only: they do not change which sizes fit), and the ``slow`` test runs one step of the
literal options with the default networks through the Python API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/train/conftest.py

NARROW = {  # width only: the depths and layer counts, which decide what fits, stay the defaults
    "pix2pix": ["--ngf", "4", "--ndf", "4"],
    "cyclegan": ["--ngf", "4", "--ndf", "4", "--n-blocks", "1"],
    "munit": ["--dim", "4", "--mlp-dim", "8", "--dis-dim", "4", "--n-res", "1"],
}


def _picture(side: int, k: int) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side]
    rgb = np.stack([np.sin(xx / 5 + k), np.cos(yy / 7 + k), np.sin((xx + yy) / 9)], -1)
    return np.clip(rgb * 127 + 128, 0, 255).astype(np.uint8)


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def make_folder(root: Path, method: str, side: int = 64) -> Path:
    """Three ``side`` px pictures per domain: A/ + B/ matched by name (pix2pix), else trainA/ + trainB/."""
    a_dir, b_dir = ("A", "B") if method == "pix2pix" else ("trainA", "trainB")
    for k in range(3):
        a = _picture(side, k)
        _write(root / a_dir / f"{k}.png", a)
        _write(root / b_dir / f"{k}.png", (255 - a)[:, ::-1])
    return root


def _cli(args: List[str]) -> Any:
    from frametrans.cli.main import cli

    return CliRunner().invoke(cli, ["train", *args], catch_exceptions=False)


@pytest.mark.parametrize("method", ["pix2pix", "cyclegan", "munit"])
def test_size_64_works_with_no_size_flags(method: str, tmp_path: Path) -> None:
    import yaml

    data = make_folder(tmp_path / "data", method)
    run = tmp_path / "run"
    res = _cli([method, "--data", str(data), "--size", "64", "-o", str(run), "--iters", "10", *NARROW[method]])
    assert res.exit_code == 0, res.output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["crop"] == 64 and config["iters"] == 10
    assert (run / "state.pt").is_file()
    notes = [line for line in res.output.splitlines() if "U-Net depth" in line]
    if method == "pix2pix":
        assert config["num_downs"] == 6  # 2**6 = 64: the innermost level is 1x1
        assert len(notes) == 1 and "--num-downs 6" in notes[0] and "64 px crops" in notes[0]
    else:
        assert notes == []


def test_the_fitted_depth_is_not_re_derived_on_resume(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", "pix2pix")
    run = tmp_path / "run"
    args = ["pix2pix", "--data", str(data), "--size", "64", "-o", str(run), *NARROW["pix2pix"]]
    assert _cli([*args, "--iters", "2"]).exit_code == 0
    res = _cli(["pix2pix", "-o", str(run), "--resume", "--iters", "3"])
    assert res.exit_code == 0, res.output
    assert "U-Net depth" not in res.output  # config.yaml holds num_downs: 6 now


def test_crop_default_and_depth_choice() -> None:
    from frametrans.train.sizes import default_crop, largest_unet_depth

    assert [default_crop(s) for s in (64, 256, 286, 1024)] == [64, 256, 256, 256]
    assert [largest_unet_depth(c) for c in (64, 256, 512, 96, 100, 30)] == [6, 8, 8, 5, 2, None]


@pytest.mark.parametrize("method, args, message", [
    ("pix2pix", ["--size", "16"], "--size 16 is too small for pix2pix's U-Net (at least 2 downsamplings) "
                                  "and PatchGAN (--n-layers-d 3); the smallest size that works is 24"),
    ("pix2pix", ["--size", "64", "--crop", "30"], "--crop 30 is not a multiple of 4"),
    ("pix2pix", ["--size", "64", "--num-downs", "7"], "--size 64 is not a multiple of 128"),
    ("cyclegan", ["--size", "20"], "the smallest size that works is 24 (--size 24)"),
    ("munit", ["--size", "48"], "the smallest size that works is 64 (--size 64)"),
    ("munit", ["--size", "64", "--crop", "62"], "--crop 62 is not a multiple of 4 (MUNIT's auto-encoder"),
])
def test_too_small_is_one_line_naming_the_smallest_size(method: str, args: List[str], message: str,
                                                        tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", method, side=16)
    res = _cli([method, "--data", str(data), *args, "-o", str(tmp_path / "run"), "--iters", "1"])
    assert res.exit_code == 1 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before any data is read or file written


@pytest.mark.parametrize("method, options", [
    ("pix2pix", dict(ngf=4, ndf=4)),
    ("cyclegan", dict(ngf=4, ndf=4, n_blocks=1)),
    ("munit", dict(dim=4, mlp_dim=8, dis_dim=4, n_res=1)),
])
def test_the_smallest_size_named_does_train(method: str, options: dict, tmp_path: Path) -> None:
    from frametrans.train.options import options_class
    from frametrans.train.sizes import fit_of
    from frametrans.train.trainer import train

    smallest = fit_of(method, options_class(method)()).smallest()  # pix2pix: num_downs still None
    data = make_folder(tmp_path / "data", method, side=smallest)
    result = train(method, dict(options, data=str(data), size=smallest, iters=1, quiet=True), tmp_path / "run")
    assert result.step == 1 and all(np.isfinite(v) for v in result.last_losses.values())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pix2pix", "cyclegan", "munit"])
def test_literal_options_train_a_step_with_the_default_networks(method: str, tmp_path: Path) -> None:
    """``--data D --size 64 -o R --iters 10``, nothing else: the reference networks take 64 px
    images (one step, then the checkpoint a stop there writes)."""
    from frametrans.train.trainer import train

    data = make_folder(tmp_path / "data", method)
    result = train(method, dict(data=str(data), size=64, iters=10, quiet=True), tmp_path / "run", until=1)
    assert (result.step, result.total) == (1, 10)
    assert all(np.isfinite(v) for v in result.last_losses.values())
