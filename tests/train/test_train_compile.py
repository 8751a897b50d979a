"""frametrans train --compile: compiled networks train like eager ones, keep their checkpoint names
and resume; what stays eager and why; refusals."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from frametrans.engine.compile import can_compile
from frametrans.train.base import Amp, _with_our_implementation, adam, compile_nets
from frametrans.train.options import resolve

CPU = torch.device("cpu")
NO_COMPILER = can_compile(CPU)


def _method(name: str, **options: Any) -> Any:
    from frametrans.train.trainer import _spec

    o, _ = resolve(name, dict(options, device="cpu", iters=1))
    return _spec(name).cls(o, CPU, Amp(CPU, "fp32"))


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


@pytest.mark.skipif(NO_COMPILER is not None, reason=f"cannot compile here: {NO_COMPILER}")
def test_discriminators_stay_eager_under_a_gradient_penalty() -> None:
    method = _method("pix2pix", gan_mode="wgan-gp", ngf=4, ndf=4, crop=64, size=64)
    notes = compile_nets(method, CPU)
    assert _compiled(method.nets["G"]) and not _compiled(method.nets["D"])
    assert notes and "wgan-gp" in notes[0]
    plain = _method("pix2pix", ngf=4, ndf=4, crop=64, size=64)
    assert compile_nets(plain, CPU) == [] and _compiled(plain.nets["D"])


@pytest.mark.skipif(NO_COMPILER is not None, reason=f"cannot compile here: {NO_COMPILER}")
def test_munit_compiles_the_parts_its_step_calls() -> None:
    method = _method("munit", dim=4, style_dim=2, mlp_dim=4, n_res=1, dis_dim=4, crop=64, size=64)
    compile_nets(method, CPU)
    gen = method.nets["gen"]
    for g in (gen.gen_a, gen.gen_b):
        assert all(_compiled(m) for m in (g.enc_style, g.enc_content, g.dec, g.mlp))
    assert _compiled(method.nets["dis_a"]) and _compiled(method.nets["dis_b"])


def test_saved_optimizer_state_resumes_with_this_runs_implementation() -> None:
    """A state saved by a non-fused Adam (a CPU run, or one from before Adam was fused on CUDA)
    loads into a fused one as fused, with its moments and step."""
    net = torch.nn.Linear(3, 2)
    old = adam(net.parameters(), 1e-3, 0.9, 0.999)
    net(torch.randn(4, 3)).sum().backward()
    old.step()
    fused = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    fused.load_state_dict(_with_our_implementation(old.state_dict(), fused))
    assert fused.param_groups[0]["fused"] is True
    state = fused.state[net.weight]
    torch.testing.assert_close(state["exp_avg"], old.state[net.weight]["exp_avg"])
    assert float(state["step"]) == 1.0
    fused.step()  # the fused kernel takes the loaded state
    two_groups = torch.optim.Adam([{"params": [net.weight]}, {"params": [net.bias]}], lr=1e-3)
    with pytest.raises(ValueError, match="parameter groups"):  # another layout: still refused, not cut to fit
        fused.load_state_dict(_with_our_implementation(two_groups.state_dict(), fused))


def test_compile_refused_in_one_line_without_a_compiler(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import frametrans.engine.compile as compile_mod
    from frametrans.train.trainer import train

    monkeypatch.setattr(compile_mod, "can_compile", lambda device: "no C++ compiler (g++/clang++) found")
    with pytest.raises(ValueError, match="^--compile: no C\\+\\+ compiler"):
        train("predictor", {"data": "moving-digits", "size": 32, "width": 4, "depth": 2, "iters": 1,
                            "batch_size": 2, "device": "cpu", "compile": True, "quiet": True}, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.skipif(NO_COMPILER is not None, reason=f"cannot compile here: {NO_COMPILER}")
def test_compiled_training_matches_eager_and_resumes(tmp_path: Any) -> None:
    """--compile: same losses, weights (names and values) and validation as eager within float
    tolerance; a compiled run resumes. Depth 1: the build (forward, backward, eval) is what costs,
    ~40 s on 2 cores."""
    import safetensors.torch

    from frametrans.train.trainer import train

    opts = {"data": "moving-digits", "size": 32, "width": 4, "depth": 1, "iters": 3, "batch_size": 4,
            "device": "cpu", "val_count": 4, "val_every": 3, "sample_every": 3, "save_every": 3, "quiet": True}
    eager = train("predictor", opts, tmp_path / "eager")
    compiled = train("predictor", dict(opts, compile=True), tmp_path / "compiled")
    assert compiled.last_losses["mse"] == pytest.approx(eager.last_losses["mse"], rel=1e-4)
    assert compiled.last_val["mse"] == pytest.approx(eager.last_val["mse"], rel=1e-4)
    a = safetensors.torch.load_file(str(tmp_path / "eager" / "predictor.safetensors"))
    b = safetensors.torch.load_file(str(tmp_path / "compiled" / "predictor.safetensors"))
    assert sorted(a) == sorted(b)  # no _orig_mod. prefixes: checkpoints load anywhere
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    resumed = train("predictor", {"iters": 4, "compile": True}, tmp_path / "compiled", resume=True)
    assert resumed.step == 4 and np.isfinite(resumed.last_losses["mse"])
