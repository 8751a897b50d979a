"""frametrans.models.norms: the fused CPU normalization equals torch's own within float rounding,
and steps aside where it must (autograd, traces, other devices)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from frametrans.models import norms
from frametrans.models.munit import AdaptiveInstanceNorm2d, LayerNorm


def _x(dtype=torch.float32, channels_last=True, b=2, c=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, c, 12, 20, generator=gen) * torch.linspace(0.5, 3, c).view(1, -1, 1, 1) + 2).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])  # float64: torch's own
@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_matches_torch(affine, dtype, channels_last):
    ours, theirs = norms.InstanceNorm2d(8, affine=affine), nn.InstanceNorm2d(8, affine=affine)
    if affine:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5), theirs.bias.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    if dtype == torch.float64:  # a float64 model: torch's own op
        ours, theirs = ours.double(), theirs.double()
    x = _x(dtype, channels_last)
    with torch.inference_mode():
        got, ref = ours(x), theirs(x)
        if dtype == torch.bfloat16:  # torch's own bf16 op is off by up to 2 steps of bf16: the exact result, rounded
            ref = theirs.double()(x.double()).to(dtype)
    assert got.dtype == dtype and got.shape == x.shape
    assert got.is_contiguous(memory_format=torch.channels_last) == (channels_last and dtype != torch.float64)
    tol = 0.02 if dtype == torch.bfloat16 else 1e-5
    assert (got.double() - ref.double()).abs().max() <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["strided", "permuted", "batch slice"])
def test_instance_norm_of_views_that_are_not_dense(dtype, layout):
    """The samples' outputs are written into one output tensor: inputs in no dense layout (a
    strided or permuted view) are made contiguous first, not written through their strides."""
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4, 8, 20, 14, generator=gen) * 2 + 1
    x = {"strided": base[:3, :, ::2], "permuted": base.permute(0, 1, 3, 2),
         "batch slice": base.contiguous(memory_format=torch.channels_last)[1:4]}[layout].to(dtype)
    with torch.inference_mode():
        got = norms.instance_norm(x)
    ref = F.instance_norm(x.double())
    assert (got.double() - ref).abs().max() <= (0.02 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("shape", [(2, 256, 32, 32), (1, 64, 96, 96)])
def test_bf16_instance_norm_is_as_close_as_rounding_the_fp32_result(shape):
    """A convolution's output before its norm has a large mean against its spread; normalizing it in
    bf16 must cost no more than rounding the fp32 result to bf16 (the batch-norm kernel's one-call
    training mode was 8x that, from the mean rounded to bf16, once per norm layer of a model)."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(*shape, generator=gen) * 0.1 + 1).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = F.instance_norm(x.double())
        got = norms.instance_norm(x)

    def rms(t):
        return float(t.double().pow(2).mean().sqrt())
    rounding = rms(ref.to(torch.bfloat16).double() - ref)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    assert rms(got.double() - ref) <= 1.2 * rounding


def test_training_and_autograd_keep_torchs_own_ops(monkeypatch):
    """With autograd the layer is torch's own (training resumes bit for bit); without, the fused kernel."""
    layer = norms.InstanceNorm2d(8, affine=True)
    calls = []
    real = F.instance_norm
    monkeypatch.setattr(F, "instance_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = _x().requires_grad_()
    layer(x).sum().backward()
    assert calls and x.grad is not None
    calls.clear()
    with torch.no_grad():
        layer(_x())
    assert not calls


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")  # torch's own code
def test_traced_graphs_keep_instance_norm():
    """An ONNX export traces torch's own instance norm, not a training-mode batch norm."""
    layer = norms.InstanceNorm2d(8).eval()
    with torch.no_grad():
        graph = str(torch.jit.trace(layer, (_x(),)).graph)
    assert "instance_norm" in graph and "aten::batch_norm" not in graph


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_munit_protocol_layers_fused_against_float64(dtype):
    """MUNIT's AdaIN and LayerNorm on the fused path: statistics and output against the plain
    operations in float64 (which the kernel does not take)."""
    x = _x(dtype)
    tol = 0.03 if dtype == torch.bfloat16 else 1e-5
    for layer in (AdaptiveInstanceNorm2d(8), LayerNorm(8)):
        with torch.no_grad():
            stats, out = layer.norm_stats(x), layer(x)
            ref_stats, ref = layer.double().norm_stats(x.double()), layer(x.double())
            layer.float()
        for a, b in zip(stats, ref_stats):
            assert a.shape == b.shape and torch.allclose(a.double(), b, rtol=1e-4, atol=1e-6), type(layer)
        assert out.dtype == dtype and (out.double() - ref).abs().max() <= tol, type(layer)


def test_normalize_refuses_nothing_on_one_value_per_channel():
    """A 1x1 frame has one value per channel: the plain operations serve it."""
    x = torch.randn(2, 4, 1, 1)
    assert not norms.fused_applies(x)
    out = norms.normalize(x, torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1), None, None, 0.0)
    assert torch.allclose(out, x)


def test_fx_tracing_running_statistics_and_empty_batches_behave_as_torchs():
    """torch.fx traces through the layer; with running statistics it is torch's own layer (they are
    updated in training and used in eval); an empty batch gives an empty output."""
    model = nn.Sequential(nn.Conv2d(8, 8, 1), norms.InstanceNorm2d(8, affine=True))
    traced = torch.fx.symbolic_trace(model)
    assert "instance_norm" in str(traced.graph)
    with torch.no_grad():
        assert torch.allclose(traced(_x()), model(_x()), atol=1e-5)
    ours, theirs = norms.InstanceNorm2d(8, track_running_stats=True), nn.InstanceNorm2d(8, track_running_stats=True)
    x = _x()
    with torch.no_grad():
        ours(x), theirs(x)
    assert torch.equal(ours.running_mean, theirs.running_mean) and ours.running_mean.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))
    empty = _x()[:0]
    with torch.inference_mode():
        assert norms.InstanceNorm2d(8)(empty).shape == empty.shape
        assert norms.channel_moments(_x())[0].shape == (2, 8, 1, 1)
