"""The device session: the one owner of eval(), inference_mode, autocast and device moves."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch

from frametrans import registry
from frametrans.engine.session import Session
from support import tiny_config

ROOT = Path(__file__).resolve().parents[2] / "frametrans"
# the inference wing: everything that runs models for inference
WING = ["apply", "engine", "scale", "bench", "predict_next.py"]
FORBIDDEN = {
    ".eval()": re.compile(r"\.eval\(\)"),
    "inference_mode": re.compile(r"inference_mode\((?!False)"),
    "autocast": re.compile(r"\bautocast\("),
    "a model moved to a device": re.compile(r"\w*(model|net|source|module)\w*(\.\w+\(\))*\.to\((?!memory_format)"),
}


def _code_only(path: Path) -> str:
    """The file's code with comments and strings (docstrings) blanked out."""
    out = []
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    for tok in tokens:
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            continue
        out.append(tok.string)
    return "".join(out)


def _wing_files():
    for name in WING:
        p = ROOT / name
        yield from (sorted(p.rglob("*.py")) if p.is_dir() else [p])


def test_only_the_session_touches_eval_inference_mode_autocast_and_devices():
    session = ROOT / "engine" / "session.py"
    offenders = []
    for path in _wing_files():
        if path == session:
            continue
        code = _code_only(path)
        for what, pattern in FORBIDDEN.items():
            if pattern.search(code):
                offenders.append(f"{path.relative_to(ROOT)}: {what}")
    assert not offenders, offenders
    missing = [what for what, p in FORBIDDEN.items() if not p.search(_code_only(session))]
    assert not missing, f"the patterns do not see what session.py does: {missing}"


def test_the_grep_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""model.eval() in a docstring is fine"""\nx = 1  # model.eval() too\n'
                   'def f(model):\n    model.eval()\n    return model.to(dev)\n')
    code = _code_only(bad)
    assert FORBIDDEN[".eval()"].search(code)
    assert FORBIDDEN["a model moved to a device"].search(code)
    assert not FORBIDDEN[".eval()"].search(_code_only(_doc_only(tmp_path)))


def _doc_only(tmp_path: Path) -> Path:
    p = tmp_path / "doc.py"
    p.write_text('"""model.eval() and torch.autocast( in prose"""\n# session.model.to(device)\n')
    return p


def test_session_shares_one_low_precision_copy_and_keeps_fp32_weights():
    model = registry.get("resnet").build(tiny_config("resnet"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = Session(model, "cpu", "bf16")
    b = Session(model, "cpu", "bf16")
    assert a.model is b.model and a.source is model and not model.training
    weights = dict(a.model.named_parameters())
    assert weights["model.10.conv_block.1.weight"].dtype == torch.bfloat16  # a residual block's conv
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert Session(model, "cpu", "fp32").model is model


@pytest.mark.parametrize("keep_fp32", ["all", "none"])
def test_edge_paddings_of_the_low_precision_copy_pad_in_its_dtype(monkeypatch, keep_fp32):
    """CPU autocast runs reflection/replication pads in fp32; in the session's copy they pad in their
    input's dtype (bf16 after a bf16 layer: the next layer casts to bf16 anyway), and the output is
    the same, bit for bit."""
    import copy

    monkeypatch.setenv("FRAMETRANS_KEEP_FP32", keep_fp32)
    model = registry.get("resnet").build(tiny_config("resnet"))
    s = Session(model, "cpu", "bf16")
    pads = [m for m in s.model.modules() if isinstance(m, torch.nn.ReflectionPad2d)]
    dtypes = []
    for m in pads:
        m.register_forward_hook(lambda _m, args, out: dtypes.append((args[0].dtype, out.dtype)))
    plain = copy.deepcopy(s.model)  # the copy's hooks, less the ones that turn autocast off
    for m in plain.modules():
        if isinstance(m, torch.nn.ReflectionPad2d):
            m._forward_pre_hooks.clear(), m._forward_hooks.clear()
    x = s.to_model_input(torch.rand(2, 3, 24, 20) * 2 - 1)
    with s.inference():
        y, ref = s.model(x), plain(x)
    assert pads and dtypes and all(a == b for a, b in dtypes)
    assert (torch.bfloat16, torch.bfloat16) in dtypes or keep_fp32 == "all"  # "all": norms feed fp32
    assert torch.equal(y, ref)


def test_session_inference_context():
    model = registry.get("resnet").build(tiny_config("resnet"))
    s = Session(model, "cpu", "bf16")
    x = s.to_model_layout(torch.rand(1, 3, 16, 16))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    with s.inference():
        assert torch.is_inference_mode_enabled()
        y = s.model(x)
        with s.full_precision():
            assert not torch.is_autocast_enabled("cpu")
    assert y.shape == (1, 3, 16, 16) and not torch.is_inference_mode_enabled()
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        Session(model, "cpu", "fp16")
    assert np.isfinite(y.float().numpy()).all()


def test_conv_autotuning_is_switched_on_for_cuda_only(monkeypatch):
    """The one place that sets cuDNN's autotuner: on for a CUDA session or training run (for the
    rest of the process), untouched for other devices; bands switch it off for their block only."""
    from frametrans.engine import device as devices

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    devices.autotune_convolutions(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    devices.autotune_convolutions(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True
    with devices.no_conv_autotuning(torch.device("cuda")):
        assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cudnn.benchmark is True


def test_autocast_hooks_keep_their_contexts_per_thread():
    """Two threads through one shared copy, interleaved: each restores its own autocast state."""
    import threading

    from frametrans.engine.session import _EDGE_PADS

    model = registry.get("resnet").build(tiny_config("resnet"))
    pad = next(m for m in Session(model, "cpu", "bf16").model.modules() if isinstance(m, _EDGE_PADS))
    (before,), (after,) = pad._forward_pre_hooks.values(), pad._forward_hooks.values()
    x = (torch.zeros(1, 3, 4, 4),)
    steps = {name: threading.Event() for name in ("a_in", "b_in", "a_out")}
    seen = {}

    def thread_a():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            before(pad, x)
            steps["a_in"].set(), steps["b_in"].wait(5)
            after(pad, x, None)
            seen["a"] = torch.is_autocast_enabled("cpu")  # its own context exited: on again
            steps["a_out"].set()

    def thread_b():  # no autocast here
        steps["a_in"].wait(5)
        before(pad, x)
        steps["b_in"].set(), steps["a_out"].wait(5)
        after(pad, x, None)
        seen["b"] = torch.is_autocast_enabled("cpu")

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    [t.start() for t in threads], [t.join(10) for t in threads]
    assert seen == {"a": True, "b": False}
