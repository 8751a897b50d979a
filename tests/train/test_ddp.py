"""Distributed data-parallel training on the CPU (gloo): 2 processes reproduce the single-process
run with the same global batch, only rank 0 writes, resume works, a NaN on one rank stops all.

Tolerance: weights agree to 1e-4 absolute, losses to 1e-4 relative or absolute (measured: weights
2e-8 to 3e-5, losses < 1e-5 relative; float rounding from summing the batch in another order). Conv biases right before an instance norm
are compared by function instead: their gradient is mathematically zero and numerically rounding
noise, which Adam scales to steps of ~lr, so they differ by ~lr between any two summation orders
while changing no output; the exported generators' outputs are compared to 1e-4. The tiny pix2pix uses --num-downs 4: with 5 the innermost level is
1x1 and batch norm over 4 numbers makes the run chaotic from step 3 on (a 1e-7 change of the state
changes the gradients by percents, DDP or not), which says nothing about DDP.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import pytest
import torch
from torch import nn

from frametrans.checkpoint import load_model
from frametrans.train.datasets import DataError, StepBatches
from frametrans.train.distributed import Shard, SyncBatchNorm, convert_batchnorm
from frametrans.train.trainer import STATE_FILE, TrainingStopped, load_state, train
from support.training import EXPORTS, _photos, _target, _write, losses_of, tiny

# one_thread: tests/train/conftest.py; the group keeps these tests on one pytest-xdist worker, so the
# shared process-group start (a session fixture) is paid once
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.xdist_group("ddp")]

TOL = 1e-4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddpdata")
    for k, a in enumerate(_photos()):
        _write(root / "aligned" / "train" / f"{k}.png", np.concatenate([a, _target(a)], 1))
        _write(root / "unpaired" / "trainA" / f"{k}.png", a)
        _write(root / "unpaired" / "trainB" / f"{k}.png", _target(a)[::-1])
    return root


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Kill our child processes if a DDP run hangs (a rank stuck in a collective)."""
    def kill() -> None:
        for p in multiprocessing.active_children():
            p.kill()

    timer = threading.Timer(seconds, kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------------------------
# comparing two runs


def absorbed_biases(module: nn.Module, prefix: str = "") -> Set[str]:
    """Names of conv biases directly followed by an instance norm (in a Sequential, or in a MUNIT
    Conv2dBlock with IN/AdaIN): no effect on any output; see the module docstring."""
    from frametrans.models.munit import AdaptiveInstanceNorm2d

    names: Set[str] = set()
    if isinstance(getattr(module, "norm", None), (nn.InstanceNorm2d, AdaptiveInstanceNorm2d)):
        names.add(f"{prefix}conv.bias")
    children = list(module.named_children())
    for (name, child), nxt in zip(children, children[1:] + [("", None)]):
        if (isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)) and child.bias is not None
                and isinstance(nxt[1], nn.InstanceNorm2d)):
            names.add(f"{prefix}{name}.bias")
        names |= absorbed_biases(child, f"{prefix}{name}.")
    return names


def assert_same_losses(a: Path, b: Path) -> None:
    la, lb = losses_of(a), losses_of(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    worst = 0.0
    for x, y in zip(la, lb):
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=TOL, abs=TOL), (k, x["step"])
            worst = max(worst, abs(y[k] - x[k]) / max(1.0, abs(x[k])))
    print(f"largest loss difference (relative where |loss| > 1): {worst:.2e}")


def assert_same_nets(a: Path, b: Path, method: str) -> None:
    """Every trained tensor (weights, batch-norm statistics, EMA, pools) within TOL, absorbed
    biases excepted; the exported generators give the same output on a fixed input."""
    sa, sb = load_state(a / STATE_FILE)["train"], load_state(b / STATE_FILE)["train"]
    from frametrans.train.trainer import METHODS, resolve_options
    from frametrans.train.base import Amp

    opts = resolve_options(method, load_state(a / STATE_FILE)["options"])
    nets = METHODS[method].cls(opts, torch.device("cpu"), Amp(torch.device("cpu"), "fp32")).nets
    checked, worst = 0, 0.0
    for name, net in nets.items():
        skip = absorbed_biases(net)
        for key, ta in sa["nets"][name].items():
            if key in skip or not ta.is_floating_point():
                continue
            torch.testing.assert_close(sb["nets"][name][key], ta, rtol=0, atol=TOL, msg=f"{name}.{key}")
            worst = max(worst, float((sb["nets"][name][key] - ta).abs().max()))
            checked += 1
    assert checked > 10
    print(f"{method}: {checked} tensors, largest weight difference {worst:.2e}")
    for name, pool in sa["pools"].items():
        assert len(pool["images"]) == len(sb["pools"][name]["images"])
        for ia, ib in zip(pool["images"], sb["pools"][name]["images"]):
            torch.testing.assert_close(ib, ia, rtol=0, atol=TOL)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for export in EXPORTS[method]:
        ga, gb = load_model(a / export).eval(), load_model(b / export).eval()
        with torch.no_grad():
            if method == "munit":  # both directions under one fixed style
                style = torch.randn(2, ga.config.style_dim, 1, 1, generator=torch.Generator().manual_seed(1))
                for direction in ("a2b", "b2a"):
                    torch.testing.assert_close(gb.translate(x, style, direction), ga.translate(x, style, direction),
                                               rtol=0, atol=TOL)
            else:
                torch.testing.assert_close(gb(x), ga(x), rtol=0, atol=TOL)


# ---------------------------------------------------------------------------------------------
# pieces, in this process


def test_step_batches_split_the_global_batch() -> None:
    single = iter(StepBatches(6, start=12))
    ranks = [iter(StepBatches(6, start=12, rank=r, world=3)) for r in range(3)]
    for _ in range(3):
        assert sum((next(it) for it in ranks), []) == next(single)
    with pytest.raises(DataError, match="multiple of 4"):
        StepBatches(6, rank=0, world=4)


def test_sync_batchnorm_without_process_group_is_batchnorm() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    twin = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    twin.load_state_dict(net.state_dict())
    params = list(net.parameters())
    assert convert_batchnorm(net) == 2
    assert isinstance(net[1], SyncBatchNorm) and list(net.parameters()) == params  # optimizers stay valid
    assert list(net.state_dict()) == list(twin.state_dict())
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(net(x), twin(x))
    torch.testing.assert_close(net[1].running_var, twin[1].running_var)
    shard = Shard()
    assert shard.local(x) is x and shard.gather(x) is x


def test_ddp_flag_without_torchrun_is_a_clear_error(data_root: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _no_torchrun_env(monkeypatch)
    with pytest.raises(ValueError, match="torchrun --nproc-per-node N"):
        train("predictor", tiny("predictor", data_root), tmp_path / "r", ddp=True)
    assert not (tmp_path / "r").exists()
    from click.testing import CliRunner

    from frametrans.cli.main import cli

    res = CliRunner().invoke(cli, ["train", "predictor", "-o", str(tmp_path / "r"), "--nproc", "2"])
    assert res.exit_code == 2 and "add --ddp" in res.output


# ---------------------------------------------------------------------------------------------
# 2 processes


AUDITED = ("open", "os.rename", "os.replace", "os.remove", "os.unlink", "os.mkdir", "os.rmdir", "os.truncate")


def audited_train(run_dir: str, audit_dir: str, *args: Any, **kwargs: Any) -> Any:
    """train() in a DDP process, recording every file-system write under ``run_dir``."""
    root = os.path.realpath(run_dir)
    writes: List[str] = []

    def hook(event: str, args: tuple) -> None:
        if event not in AUDITED or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        if event == "open":
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            if mode is not None and not any(c in str(mode) for c in "wax+"):
                return
            if mode is None and not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                return
        path = os.path.realpath(os.fsdecode(args[0]))
        paths = [path] + ([os.path.realpath(os.fsdecode(args[1]))] if event in ("os.rename", "os.replace") else [])
        if any(p == root or p.startswith(root + os.sep) for p in paths):
            writes.append(f"{event} {' -> '.join(paths)}")

    sys.addaudithook(hook)
    result = train(*args, **kwargs)
    with open(os.path.join(audit_dir, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(writes, f)
    return result


# The four in-process DDP runs (pix2pix with batch norm, MUNIT with WGAN-GP, CycleGAN stopped at
# step 2, pix2pix with a NaN on one rank) share ONE start of 2 processes: a start costs each process
# seconds of imports (torch, torch._dynamo), far more than these tiny runs. Each run still joins and
# leaves its own process group (its own port); the CycleGAN run resumes in 2 fresh processes.


def pix2pix_opts(data_root: Path) -> Dict[str, Any]:
    return dict(tiny("pix2pix", data_root), num_downs=4, batch_size=4, iters=4, sample_every=2,
                val_every=2, save_every=2)  # norm batch (the default): SyncBatchNorm in G and D


def cyclegan_opts(data_root: Path) -> Dict[str, Any]:
    return dict(tiny("cyclegan", data_root), batch_size=4, iters=4, pool_size=3, ema=0.9)


def munit_opts(data_root: Path) -> Dict[str, Any]:
    return dict(tiny("munit", data_root), batch_size=4, iters=3, gan_mode="wgan-gp")


def nan_opts(data_root: Path) -> Dict[str, Any]:
    return dict(tiny("pix2pix", data_root), num_downs=4, batch_size=4, save_every=1)


Job = Tuple[str, Callable[..., Any], tuple, Dict[str, Any]]


def run_jobs(ports: List[int], outdir: str, jobs: List[Job]) -> None:
    """In each DDP process: the jobs one after another, each in the process group on its own port.
    Every rank records what each job returned (or raised) in OUTDIR/NAME.rankR.json; the last
    job's error is raised, so it reaches the parent through spawn_local as a single run's would."""
    rank = os.environ["RANK"]
    for i, (port, (name, target, args, kwargs)) in enumerate(zip(ports, jobs)):
        os.environ["MASTER_PORT"] = str(port)
        try:
            result = target(*args, **kwargs)
            outcome: Dict[str, Any] = {"rank": result.rank, "world_size": result.world_size, "step": result.step}
        except Exception as exc:
            if i == len(jobs) - 1:
                raise
            outcome = {"error": f"{type(exc).__name__}: {exc}"}
        with open(os.path.join(outdir, f"{name}.rank{rank}.json"), "w") as f:
            json.dump(outcome, f)


class DDPRuns:
    """The run folders and outcomes of the shared DDP start (see run_jobs)."""

    def __init__(self, root: Path, error: Optional[BaseException]) -> None:
        self.root, self.error = root, error

    def run(self, name: str) -> Path:
        return self.root / name

    def outcome(self, name: str, rank: int = 0) -> Dict[str, Any]:
        path = self.root / "outcomes" / f"{name}.rank{rank}.json"
        assert path.is_file(), f"the DDP processes ended before {name} finished: {self.error!r}"
        outcome = json.loads(path.read_text())
        assert "error" not in outcome, outcome["error"]
        return outcome


@pytest.fixture(scope="module")
def ddp_runs(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> DDPRuns:
    from frametrans.train.distributed import free_port, spawn_local

    root = tmp_path_factory.mktemp("ddp")
    for sub in ("audit", "outcomes"):
        (root / sub).mkdir()
    jobs: List[Job] = [
        ("pix2pix", audited_train, (str(root / "pix2pix"), str(root / "audit"), "pix2pix",
                                    pix2pix_opts(data_root), root / "pix2pix"), dict(ddp=True)),
        ("munit", train, ("munit", munit_opts(data_root), root / "munit"), dict(ddp=True)),
        ("cyclegan", train, ("cyclegan", cyclegan_opts(data_root), root / "cyclegan"),
         dict(until=2, ddp=True)),  # interrupted at step 2; resumed by its test
        ("nan", poisoned_train, (1, "pix2pix", nan_opts(data_root), root / "nan"), dict(ddp=True)),
    ]
    ports: List[int] = []
    while len(ports) < len(jobs):
        port = free_port()
        ports += [] if port in ports else [port]
    error: Optional[BaseException] = None
    with pytest.MonkeyPatch.context() as mp:
        _no_torchrun_env(mp)
        try:
            with watchdog(400):
                spawn_local(2, run_jobs, ports, str(root / "outcomes"), jobs)
        except Exception as exc:
            error = exc
    return DDPRuns(root, error)


@pytest.mark.slow
def test_pix2pix_batchnorm_ddp_matches_single_process_and_only_rank0_writes(
        ddp_runs: DDPRuns, data_root: Path, tmp_path: Path) -> None:
    opts = pix2pix_opts(data_root)
    assert opts.get("norm", "batch") == "batch"
    train("pix2pix", opts, tmp_path / "single")
    run = ddp_runs.run("pix2pix")
    for r in (0, 1):
        assert ddp_runs.outcome("pix2pix", r) == {"rank": r, "world_size": 2, "step": 4}
    assert_same_losses(tmp_path / "single", run)
    assert_same_nets(tmp_path / "single", run, "pix2pix")
    single_files = sorted(str(p.relative_to(tmp_path / "single")) for p in (tmp_path / "single").rglob("*"))
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == single_files
    assert load_state(run / STATE_FILE)["world_size"] == 2
    assert "\nddp:" not in (run / "config.yaml").read_text() and "\nnproc:" not in (run / "config.yaml").read_text()
    audit = ddp_runs.run("audit")
    writes = {r: json.loads((audit / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert writes[1] == []
    assert any(w.endswith("state.pt") for w in writes[0]) and any("losses.jsonl" in w for w in writes[0])


@pytest.mark.slow
def test_cyclegan_ddp_with_pools_resumes_and_matches_single_process(
        ddp_runs: DDPRuns, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_torchrun_env(monkeypatch)
    train("cyclegan", cyclegan_opts(data_root), tmp_path / "single")
    run = ddp_runs.run("cyclegan")
    assert ddp_runs.outcome("cyclegan")["step"] == 2 and load_state(run / STATE_FILE)["step"] == 2
    with watchdog(240):
        resumed = train("cyclegan", {}, run, resume=True, ddp=True, nproc=2)  # every rank loads state.pt
    assert (resumed.rank, resumed.world_size, resumed.step) == (0, 2, 4)  # rank 0's result comes back
    assert_same_losses(tmp_path / "single", run)
    assert_same_nets(tmp_path / "single", run, "cyclegan")
    ema_a = load_state(tmp_path / "single" / STATE_FILE)["train"]["ema"]["modules"]["G_A"]
    ema_b = load_state(run / STATE_FILE)["train"]["ema"]["modules"]["G_A"]
    torch.testing.assert_close(ema_b["model.1.weight"], ema_a["model.1.weight"], rtol=0, atol=TOL)


@pytest.mark.slow
def test_munit_wgan_gp_ddp_matches_single_process(ddp_runs: DDPRuns, data_root: Path, tmp_path: Path) -> None:
    """Random styles and gradient-penalty weights drawn for the global batch and sliced; the
    encoders/decoders called directly (no forward()), gradients still averaged."""
    train("munit", munit_opts(data_root), tmp_path / "single")
    run = ddp_runs.run("munit")
    assert ddp_runs.outcome("munit")["step"] == 3
    assert all(r["D_GP"] > 0 for r in losses_of(run))
    assert_same_losses(tmp_path / "single", run)
    assert_same_nets(tmp_path / "single", run, "munit")


def poisoned_train(poison_rank: int, *args: Any, **kwargs: Any) -> Any:
    """train() where one rank's own G_L1 loss turns NaN at step 2 (its weights stay finite, the
    other rank's losses too: only the all-reduced log makes every rank see it)."""
    from frametrans.train.pix2pix import Pix2Pix

    real, calls = Pix2Pix.step, []
    if int(os.environ["RANK"]) == poison_rank:

        def step(self: Pix2Pix, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
            losses = real(self, batch)
            calls.append(1)
            return dict(losses, G_L1=float("nan")) if len(calls) == 2 else losses

        Pix2Pix.step = step  # type: ignore[method-assign]
    try:
        return train(*args, **kwargs)
    finally:
        Pix2Pix.step = real  # type: ignore[method-assign]


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank(ddp_runs: DDPRuns) -> None:
    """The poisoned run is the shared start's last job: its error is what spawn_local raised."""
    with pytest.raises(TrainingStopped, match=r"became nan at step 2.*step 1\)"):
        if ddp_runs.error is not None:
            raise ddp_runs.error
    run = ddp_runs.run("nan")
    assert load_state(run / STATE_FILE)["step"] == 1
    assert [r["step"] for r in losses_of(run)] == [1]


@pytest.mark.slow
def test_torchrun_cli_predictor_matches_single_process(data_root: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m torch.distributed.run --nproc-per-node 2 -m frametrans.cli train predictor``
    (the predictor's BatchNorm synchronised), against the single-process CLI."""
    from click.testing import CliRunner

    from frametrans.cli.main import cli
    from support.training import _tiny_args

    _no_torchrun_env(monkeypatch)
    args = _tiny_args("predictor", data_root) + ["--iters", "3"]
    res = CliRunner().invoke(cli, ["train", "predictor", *args, "-o", str(tmp_path / "single")])
    assert res.exit_code == 0, res.output
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "frametrans.cli", "train", "predictor", *[a for a in args if a != "--quiet"],
           "-o", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("predictor: step 3/3; wrote predictor.safetensors") == 1  # rank 0 only
    assert_same_losses(tmp_path / "single", tmp_path / "ddp")
    assert_same_nets(tmp_path / "single", tmp_path / "ddp", "predictor")
    bn = load_state(tmp_path / "ddp" / STATE_FILE)["train"]["nets"]["P"]
    assert any(k.endswith("running_var") for k in bn) and math.isfinite(float(next(iter(bn.values())).sum()))
