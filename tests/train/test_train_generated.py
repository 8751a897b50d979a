"""Moving digits made on the training device in whole batches (frametrans.train.generated): the same
sequences as the host generator for the same draws, sample k a pure function of (seed, k)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Tuple

import numpy as np
import pytest
import torch

from frametrans.data import make_datasets
from frametrans.train.datasets import make_loader
from frametrans.train.generated import DeviceDigits, GeneratedWindows, uniforms


@pytest.fixture(scope="module")
def splits() -> Any:
    return make_datasets("moving-digits", size=48, frames=7, digit_size=20)


def test_renders_what_the_host_generator_renders_for_the_same_draws(splits: Any) -> None:
    host = splits.train
    dev = DeviceDigits(host.digits, 48, 2, 7, torch.device("cpu"))
    n = 40
    traj = host.draw(n, np.random.default_rng(11))
    rng = np.random.default_rng(11)  # the same draws, in MovingDigits.draw's order
    digit = rng.integers(0, len(host.digits), size=(n, 2))
    y, x = rng.random((n, 2)), rng.random((n, 2))
    theta = rng.random((n, 2)) * 2 * np.pi
    ours = dev.render(torch.from_numpy(digit), torch.from_numpy(np.stack([y, x], -1)), torch.from_numpy(theta))
    assert ours.dtype == torch.float32 and ours.shape == (n, 7, 1, 48, 48)
    np.testing.assert_array_equal(ours.numpy(), host.render(traj).astype(np.float32) / 255)


def test_sample_k_does_not_depend_on_the_batch_it_is_in(splits: Any) -> None:
    dev = DeviceDigits(splits.train.digits, 48, 2, 7, torch.device("cpu"))
    ks = torch.arange(1000, 1012)
    whole = dev.batch(5, ks)
    parts = torch.cat([dev.batch(5, ks[:5]), dev.batch(5, ks[5:9]), dev.batch(5, ks[9:])])
    assert torch.equal(whole, parts)
    assert not torch.equal(dev.batch(6, ks), whole)  # another seed, other sequences
    assert not torch.equal(whole[0], whole[1])
    frames = whole.reshape(-1, 48 * 48)
    assert (frames.max(dim=1).values > 0.5).all()  # every frame shows a digit
    big = torch.tensor([2**40 + 3, 2**40 + 3, 3])
    u = uniforms(0, 3, big, 4)
    assert torch.equal(u[0], u[1]) and not torch.equal(u[0], u[2])  # the high bits of k count


def _ops_of(fn: Any) -> Tuple[Any, Counter]:
    """``fn()``'s result and the aten ops it ran on tensors, by name (views included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter = Counter()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    with Count() as mode:
        out = fn()
    return out, mode.ops


def test_device_ops_do_not_grow_with_frames_or_batch(splits: Any) -> None:
    """On a GPU each op is a launch: the draws and trajectories are made on the host, so a batch
    costs the device the same few ops for 5 frames as for 40, and for 2 samples as for 64."""
    counts = []
    for frames, b in ((5, 2), (40, 2), (5, 64)):
        dev = DeviceDigits(splits.train.digits, 48, 2, frames, torch.device("cpu"))
        out, ops = _ops_of(lambda: dev.batch(5, torch.arange(b)))
        assert out.shape == (b, frames, 1, 48, 48)
        counts.append(ops)
    assert counts[0] == counts[1] == counts[2]
    assert sum(counts[0].values()) <= 120  # the device draw took ~630 for 20 frames
    assert counts[0]["aten.scatter_"] == 2 and counts[0]["aten.sin"] == 0  # one paste per digit


def test_uniform_draws() -> None:
    u = uniforms(123, 3, torch.arange(20000), 8)
    assert u.dtype == torch.float64 and u.shape == (20000, 8)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert torch.allclose(u.mean(0), torch.full((8,), 0.5, dtype=torch.float64), atol=0.01)
    assert torch.allclose(u.std(0), torch.full((8,), 12 ** -0.5, dtype=torch.float64), atol=0.01)
    hist = torch.histc(u[:, 0].float(), bins=10, min=0, max=1)
    assert float(hist.min()) > 1700  # ~2000 per tenth
    c = torch.corrcoef(torch.stack([u[:-1, 0], u[1:, 0], u[:, 1][:-1]]))  # neighbours, draws
    assert float((c - torch.eye(3, dtype=torch.float64)).abs().max()) < 0.03


def test_loader_makes_whole_batches_and_ranks_split_them() -> None:
    ds = GeneratedWindows("moving-digits", 32, 5, seed=3, num_digits=2)
    single = make_loader(ds, 6, start=12, workers=0, device=torch.device("cpu"))
    ranks = [make_loader(ds, 6, start=12, workers=0, rank=r, world=3, device=torch.device("cpu")) for r in range(3)]
    for _ in range(2):
        batch = next(single)["frames"]
        assert batch.shape == (6, 5, 1, 32, 32) and batch.device.type == "cpu"
        assert torch.equal(torch.cat([next(it)["frames"] for it in ranks]), batch)
    torch.testing.assert_close(ds[12]["frames"], GeneratedWindows("moving-digits", 32, 5, 3)[12]["frames"])
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0


def test_data_bench_measures(capsys: pytest.CaptureFixture) -> None:
    from frametrans.train.data_bench import main

    assert main(["--steps", "1", "--warmup", "0", "--width", "4", "--batch-size", "2", "--device", "cpu",
                 "--host"]) == 0
    out = capsys.readouterr().out
    assert "data share of the step" in out and "previous host generator" in out


def test_data_bench_bad_option_is_one_line(capsys: pytest.CaptureFixture) -> None:
    from frametrans.train.data_bench import main

    assert main(["--steps", "1", "--device", "cpu", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and "batch" in err


def test_data_bench_profiles_a_step(capsys: pytest.CaptureFixture) -> None:
    from frametrans.train.data_bench import main

    assert main(["--steps", "1", "--warmup", "0", "--width", "4", "--batch-size", "2", "--device", "cpu",
                 "--profile"]) == 0
    out = capsys.readouterr().out
    assert "ms per step (profiled)" in out and "aten ops per step" in out
    assert "aten::" in out.split("\n", 1)[1]  # the table names the ops that take the time


def test_adam_is_fused_on_cuda_only() -> None:
    from frametrans.train.base import adam

    cpu = adam(torch.nn.Linear(2, 2).parameters(), 1e-3, 0.9, 0.999)
    assert not cpu.defaults["fused"]  # torch's default for CPU tensors
    assert cpu.param_groups[0]["initial_lr"] == 1e-3
    if torch.cuda.is_available():
        assert adam(torch.nn.Linear(2, 2).cuda().parameters(), 1e-3, 0.9, 0.999).defaults["fused"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_predictor_trains_on_cuda(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated data on the device, fused Adam, cuDNN autotuning: a few steps, finite losses, saved."""
    from frametrans.train.trainer import train

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # whatever earlier tests left: training sets it

    result = train("predictor", {"data": "moving-digits", "size": 32, "width": 4, "depth": 2, "iters": 4,
                                 "batch_size": 8, "device": "cuda", "val_count": 4, "val_every": 4,
                                 "sample_every": 4, "save_every": 4, "quiet": True}, tmp_path / "run")
    assert result.step == 4 and all(np.isfinite(v) for v in result.last_losses.values())
    assert torch.backends.cudnn.benchmark
    assert (tmp_path / "run" / "predictor.safetensors").exists()

