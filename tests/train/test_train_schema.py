"""One option schema per training method: the frozen dataclasses of frametrans.train.options are
the flags, the --config / config.yaml parser and the typed Python API, all at once."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from frametrans.train.options import (OPTIONS, CycleGANOptions, MUNITOptions, Pix2PixOptions, PredictorOptions,
                                      option_names, resolve)
from frametrans.train.schema import parse_layer, specs

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/train/conftest.py

TRAIN = Path(__file__).resolve().parents[2] / "train"
METHODS = list(OPTIONS)


def _cli(args: List[str]) -> Any:
    from frametrans.cli.main import cli

    return CliRunner().invoke(cli, ["train", *args], catch_exceptions=False)


def _command(method: str) -> Any:
    from frametrans.cli.main import cli

    return cli.get_command(None, "train").get_command(None, method)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# the schema itself


@pytest.mark.parametrize("method", METHODS)
def test_every_field_is_documented_and_typed(method: str) -> None:
    cls = OPTIONS[method]
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    for spec in specs(cls):
        assert spec.help.strip(), spec.name
        assert spec.kind in (int, float, str, bool), spec.name
        if spec.default is not None:
            assert spec.check(spec.default) == spec.default, spec.name  # every default is valid
        for choice in spec.choices:
            assert isinstance(choice, spec.kind)


@pytest.mark.parametrize("method", METHODS)
def test_flags_are_generated_from_the_schema(method: str) -> None:
    command = _command(method)
    params = {p.name: p for p in command.params}
    for spec in specs(OPTIONS[method]):
        assert spec.name in params, spec.name
        param = params[spec.name]
        assert spec.flag in param.opts or (spec.name in ("device", "quiet")), spec.name
        if spec.cli:
            assert param.help.startswith(spec.help)
            assert param.default is None  # so that only given flags override the config layers
    invocation = {"output", "config", "resume", "overwrite", "ddp", "nproc"}
    assert set(params) == set(option_names(method)) | invocation


def test_method_defaults_and_length() -> None:
    p, _ = resolve("pix2pix", {})
    assert (p.epochs, p.iters, p.gan_mode, p.norm, p.dropout, p.crop, p.num_downs) == (200, None, "vanilla", "batch",
                                                                                        True, 256, 8)
    c, _ = resolve("cyclegan", {"iters": 5})
    assert (c.epochs, c.iters, c.norm, c.dropout, c.gan_mode) == (None, 5, "instance", False, "lsgan")
    m, _ = resolve("munit", {})
    assert (m.iters, m.size, m.crop, m.resize, m.lr, m.lr_policy) == (1_000_000, 256, 256, "short-side", 1e-4, "step")
    q, _ = resolve("predictor", {})
    assert (q.iters, q.data, q.size, q.crop, q.batch_size, q.beta1) == (20_000, "moving-mnist", 64, None, 16, 0.9)


@pytest.mark.parametrize("make, message", [
    (lambda: CycleGANOptions(lr=-1.0), "--lr must be > 0, got -1.0"),
    (lambda: CycleGANOptions(gan_mode="wgan"), "--gan-mode 'wgan' is not one of: vanilla, lsgan, hinge, wgan-gp"),
    (lambda: CycleGANOptions(batch_size="4"), "--batch-size '4' is not an integer"),
    (lambda: CycleGANOptions(batch_size=True), "--batch-size True is not an integer"),
    (lambda: PredictorOptions(channels=2), "--channels 2 is not one of: 1, 3"),
    (lambda: MUNITOptions(ema=1.0), r"--ema must be in [0, 1), got 1.0"),
    (lambda: Pix2PixOptions(iters=10, epochs=2.0), "give --iters or --epochs, not both"),
    (lambda: Pix2PixOptions(num_downs=1), "--num-downs must be >= 2, got 1"),
    (lambda: Pix2PixOptions(lr=float("nan")), "--lr must be a finite number"),
])
def test_invalid_values_are_refused_when_the_options_are_made(make: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_options_are_frozen_and_typed() -> None:
    o = CycleGANOptions(data="d", iters=3, lr=1)
    assert o.lr == 1.0 and isinstance(o.lr, float)  # an int for a float option is widened
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.lr = 2.0  # type: ignore[misc]
    assert o.replace(lr=3e-4).lr == 3e-4 and o.lr == 1.0
    assert o.given() == {"data": "d", "iters": 3, "lr": 1.0}
    assert o["iters"] == 3  # read by config-file key, as a mapping


def test_yaml_values_are_parsed_by_the_schema() -> None:
    layer = parse_layer(Pix2PixOptions, {"lr": "1e-4", "batch-size": "2", "flip": "off", "size": 64.0,
                                         "data": 12, "crop": None}, "run.yaml")
    assert layer == {"lr": 1e-4, "batch_size": 2, "flip": False, "size": 64, "data": "12", "crop": None}
    with pytest.raises(ValueError, match=r"run.yaml: size: --size '64.5' is not an integer"):
        parse_layer(Pix2PixOptions, {"size": "64.5"}, "run.yaml")
    with pytest.raises(ValueError, match=r"run.yaml: unknown option 'n_blocks'"):
        parse_layer(Pix2PixOptions, {"n_blocks": 3}, "run.yaml")


# ---------------------------------------------------------------------------------------------
# the CLI and the config files


def test_cli_refuses_a_bad_value_with_exit_2() -> None:
    res = _cli(["cyclegan", "--gan-mode", "wgan", "-o", "x"])
    assert res.exit_code == 2 and "'wgan' is not one of: vanilla, lsgan, hinge, wgan-gp" in res.output
    res = _cli(["cyclegan", "--lr", "0", "-o", "x"])
    assert res.exit_code == 2 and "must be > 0, got 0.0" in res.output


def test_config_file_bad_choice_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("norm: group\n")
    res = _cli(["cyclegan", "--config", str(cfg), "-o", str(tmp_path / "r")])
    assert res.exit_code == 1 and "norm: --norm 'group' is not one of: batch, instance, none" in res.output
    assert len(res.output.strip().splitlines()) == 1
    cfg.write_text("resume: true\n")
    res = _cli(["cyclegan", "--config", str(cfg), "-o", str(tmp_path / "r")])
    assert res.exit_code == 1 and "'resume' describes one invocation" in res.output


def _pictures(root: Path) -> Path:
    for k in range(2):
        yy, xx = np.mgrid[0:32, 0:32]
        img = np.clip(np.stack([xx * 8, yy * 8, (xx + yy + 20 * k) * 4], -1), 0, 255).astype(np.uint8)
        for sub in ("trainA", "trainB"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(root / sub / f"{k}.png"), img if sub == "trainA" else 255 - img)
    return root


TINY_CYCLEGAN = dict(size=32, ngf=4, n_blocks=1, ndf=4, n_layers_d=2, pool_size=2, batch_size=2, iters=2,
                     log_every=1, quiet=True)


def test_python_api_takes_the_options_object(tmp_path: Path) -> None:
    from frametrans.train import train

    data = _pictures(tmp_path / "data")
    opts = CycleGANOptions(data=str(data), **TINY_CYCLEGAN)
    result = train("cyclegan", opts, tmp_path / "a")
    assert result.step == 2
    same = train("cyclegan", dict(TINY_CYCLEGAN, data=str(data)), tmp_path / "b")
    assert same.last_losses == result.last_losses  # the object and the dict are the same run
    with pytest.raises(ValueError, match="train pix2pix takes Pix2PixOptions, not CycleGANOptions"):
        train("pix2pix", opts, tmp_path / "c")
    # resume with an object: the fields set (differing from the defaults) override the saved run
    longer = train("cyclegan", CycleGANOptions(iters=3), tmp_path / "a", resume=True)
    assert (longer.step, longer.total) == (3, 3)


def test_resume_checks_the_saved_config(tmp_path: Path) -> None:
    from frametrans.train import train

    run = tmp_path / "run"
    train("cyclegan", CycleGANOptions(data=str(_pictures(tmp_path / "data")), **TINY_CYCLEGAN), run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("gan_mode: lsgan", "gan_mode: lsgan2"))
    with pytest.raises(ValueError, match=r"config.yaml: gan_mode: --gan-mode 'lsgan2' is not one of"):
        train("cyclegan", {}, run, resume=True)
    res = _cli(["cyclegan", "-o", str(run), "--resume"])
    assert res.exit_code == 1 and "'lsgan2' is not one of" in res.output
    assert len(res.output.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# structure


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "munit", "--help"]])
def test_help_imports_no_torch(argv: List[str]) -> None:
    code = f"from frametrans.cli.main import main; main({argv!r})"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert imported and not [m for m in imported if m == "torch" or m.startswith("torch.")]


def test_method_modules_do_not_import_each_other() -> None:
    methods = {"pix2pix", "cyclegan", "munit", "predictor"}
    for name in methods:
        tree = ast.parse((TRAIN / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {f"frametrans.train.{m}" for m in methods - {name}} & imported, name
    assert not (TRAIN / "defaults.py").exists()


def test_gan_losses_cover_the_schema_choices() -> None:
    from frametrans.train.losses import GAN_LOSSES
    from frametrans.train.options import GAN_MODES

    assert tuple(GAN_LOSSES) == GAN_MODES
