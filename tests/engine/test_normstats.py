"""Frozen normalization statistics make tiled inference match the full-frame pass.

Numbers measured on the tiny InstanceNorm ResNet-like net below (random weights, 136x200 frame,
tile 96, overlap 64 = suggest_overlap(radius 16)), tiled vs untiled:

    naive tiling (each tile normalizes itself)   max abs diff 1.35     PSNR 18 dB
    frozen full-frame statistics                 max abs diff 2.0e-6   PSNR 137 dB
    frozen statistics from a 0.5x copy           max abs diff 0.42     PSNR 28 dB  (0.25x: 0.89, 21.5 dB)
    frozen statistics computed tile by tile      max abs diff 1.9e-6   PSNR 137 dB

Tolerances asserted: frozen (full or tiled statistics) <= 1e-4 max abs diff; naive >= 0.1 and at
least 1000x worse; downscaled >= 20 dB and at least 3 dB better than naive.
(PSNR with peak-to-peak 2, outputs in [-1, 1].)
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from frametrans.engine.normstats import (
    collect_norm_stats,
    frame_dependent_norm_layers,
    frozen_norm_stats,
    has_frame_dependent_norm,
)
from frametrans.engine.tiledstats import collect_norm_stats_tiled, run_tiled_frozen
from frametrans.engine.receptive import receptive_field, suggest_overlap
from frametrans.engine.tiling import run_tiled

MULTIPLE = 2
TILE = 96


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0) -> float:
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def image(batch: int = 1, height: int = 136, width: int = 200, noise: float = 0.05) -> torch.Tensor:
    """Smooth colour gradients and waves plus a little noise, in [-1, 1]: a stand-in for a photo."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    frames = []
    for b in range(batch):
        base = torch.stack([torch.sin(6 * xx + 3 * yy + b), torch.cos(5 * yy - 2 * xx), xx * yy * 2 - 1]) * 0.8
        frames.append(base + noise * torch.randn(3, height, width, generator=gen))
    return torch.stack(frames).clamp(-1, 1)


class ResBlock(nn.Module):
    def __init__(self, c: int, norm) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def tiny_net(norm=nn.InstanceNorm2d, affine_first: bool = True, seed: int = 0) -> nn.Module:
    """conv7-IN-ReLU, stride-2 conv-IN-ReLU, 2 resblocks, transposed conv-IN-ReLU, conv7, tanh."""
    torch.manual_seed(seed)
    first = nn.InstanceNorm2d(8, affine=True) if (affine_first and norm is nn.InstanceNorm2d) else norm(8)
    return nn.Sequential(
        nn.ReflectionPad2d(3), nn.Conv2d(3, 8, 7), first, nn.ReLU(True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), norm(16), nn.ReLU(True),
        ResBlock(16, norm), ResBlock(16, norm),
        nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1), norm(8), nn.ReLU(True),
        nn.ReflectionPad2d(3), nn.Conv2d(8, 3, 7), nn.Tanh(),
    )  # fmt: skip


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return tiny_net()


@pytest.fixture(scope="module")
def overlap(net) -> int:
    radius = receptive_field(net, 3, MULTIPLE, probe=96)
    assert 10 <= radius <= 24  # 16 measured
    return suggest_overlap(radius, TILE, MULTIPLE)


# --------------------------------------------------------------------------------------------------
# detection


def test_frame_dependent_detection():
    assert has_frame_dependent_norm(tiny_net())
    assert len(frame_dependent_norm_layers(tiny_net())) == 7
    assert not has_frame_dependent_norm(nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU()))
    bn = tiny_net(nn.BatchNorm2d)
    assert has_frame_dependent_norm(bn.train())  # batch statistics
    assert not has_frame_dependent_norm(bn.eval())  # running statistics: nothing to do
    tracked = nn.InstanceNorm2d(4, track_running_stats=True)
    assert has_frame_dependent_norm(tracked.train()) and not has_frame_dependent_norm(tracked.eval())
    assert has_frame_dependent_norm(nn.GroupNorm(2, 4))
    assert not has_frame_dependent_norm(nn.LayerNorm(4))  # per position
    with pytest.raises(NotImplementedError, match="cannot be tiled"):
        has_frame_dependent_norm(nn.LayerNorm([4, 8, 8]))

    class LayerNorm(nn.Module):  # named like MUNIT's, attributes don't line up
        def forward(self, x):
            return x

    with pytest.raises(NotImplementedError, match="norm_stats"):
        has_frame_dependent_norm(nn.Sequential(LayerNorm()))


# --------------------------------------------------------------------------------------------------
# the InstanceNorm net: frozen vs naive vs downscaled vs tiled statistics


def test_frozen_full_frame_reproduces_model(net):
    x = image()
    with torch.no_grad():
        full = net(x)
        stats = collect_norm_stats(net, x)
        assert set(stats) == set(frame_dependent_norm_layers(net))
        assert all(m.shape == v.shape and m.shape[:2] == (1, m.shape[1]) for m, v in stats.values())
        with frozen_norm_stats(net, stats):
            again = net(x)
    assert (again - full).abs().max() <= 1e-5


def test_instance_norm_tiled_frozen_matches_untiled(net, overlap):
    x = image()
    with torch.no_grad():
        full = net(x)
        naive = run_tiled(net, x, TILE, overlap, MULTIPLE)
        frozen = run_tiled_frozen(net, x, TILE, overlap, MULTIPLE)
    err_frozen = (frozen - full).abs().max().item()
    err_naive = (naive - full).abs().max().item()
    assert err_frozen <= 1e-4, err_frozen
    assert err_naive >= 0.1 and err_naive >= 1000 * err_frozen, (err_naive, err_frozen)
    assert psnr(frozen, full) > 90 > 30 > psnr(naive, full)


def test_downscaled_stats_are_close(net, overlap):
    x = image()
    with torch.no_grad():
        full = net(x)
        naive = run_tiled(net, x, TILE, overlap, MULTIPLE)
        half = run_tiled_frozen(net, x, TILE, overlap, MULTIPLE, stats="downscaled", stats_scale=0.5)
        stats_half = collect_norm_stats(net, x, 0.5, multiple=MULTIPLE)
    assert psnr(half, full) >= 20  # measured 28.1 dB on this frame
    assert psnr(half, full) >= psnr(naive, full) + 3
    exact = collect_norm_stats(net, x)
    first = frame_dependent_norm_layers(net)[0]
    assert torch.allclose(stats_half[first][0], exact[first][0], atol=0.05)  # means survive downscaling


def test_tiled_stats_equal_full_frame_stats(net, overlap):
    x = image()
    with torch.no_grad():
        full = net(x)
        exact = collect_norm_stats(net, x)
        tiled = collect_norm_stats_tiled(net, x, TILE, overlap, MULTIPLE, batch_tiles=4)
        out = run_tiled_frozen(net, x, TILE, overlap, MULTIPLE, stats="tiled")
    assert set(tiled) == set(exact)
    for name in exact:
        for a, b in zip(tiled[name], exact[name]):
            assert a.shape == b.shape
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name
    assert (out - full).abs().max() <= 1e-4


def test_two_frames_each_with_its_own_stats(net, overlap):
    x = image(batch=2)
    with torch.no_grad():
        full = net(x)  # instance norm: per-sample statistics
        out = run_tiled_frozen(net, x, TILE, overlap, MULTIPLE, batch_tiles=5)
    assert (out - full).abs().max() <= 1e-4


def test_bad_arguments(net, overlap):
    x = image()
    with pytest.raises(ValueError, match="unknown stats method"):
        run_tiled_frozen(net, x, TILE, overlap, MULTIPLE, stats="exact")
    with pytest.raises(ValueError, match="stats scale"):
        collect_norm_stats(net, x, 1.5)
    with pytest.raises(ValueError, match="one frame"):
        collect_norm_stats_tiled(net, image(batch=2), TILE, overlap, MULTIPLE)


# --------------------------------------------------------------------------------------------------
# the context manager


def test_context_manager_restores_forwards_and_hooks(net):
    x = image(height=32, width=32)
    layer = net[2]
    fired = []
    pre = layer.register_forward_pre_hook(lambda m, args: fired.append("pre"))
    post = layer.register_forward_hook(lambda m, args, out: fired.append("post"))
    try:
        with torch.no_grad():
            before = net(x)
            stats = collect_norm_stats(net, x[..., :16, :16])  # different statistics on purpose
            hooks = (dict(layer._forward_pre_hooks), dict(layer._forward_hooks))
            with frozen_norm_stats(net, stats) as model:
                assert model is net and "forward" in layer.__dict__
                changed = net(x)
            assert all("forward" not in m.__dict__ for m in net.modules())
            assert (dict(layer._forward_pre_hooks), dict(layer._forward_hooks)) == hooks
            fired.clear()
            after = net(x)
        assert fired == ["pre", "post"]  # our hooks survived and still run
        assert torch.equal(before, after)
        assert (changed - before).abs().max() > 1e-3

        with pytest.raises(ZeroDivisionError):  # restored on exceptions too
            with frozen_norm_stats(net, stats):
                1 / 0
        assert all("forward" not in m.__dict__ for m in net.modules())
    finally:
        pre.remove()
        post.remove()


def test_context_manager_keeps_an_existing_instance_forward():
    norm = nn.InstanceNorm2d(2)
    model = nn.Sequential(nn.Conv2d(2, 2, 1), norm)
    original = lambda x: x * 2  # noqa: E731 - someone else's patch
    norm.forward = original
    stats = {"1": (torch.zeros(1, 2, 1, 1), torch.ones(1, 2, 1, 1))}
    with frozen_norm_stats(model, stats):
        assert norm.forward is not original
    assert norm.forward is original
    del norm.forward


def test_stats_errors(net):
    x = image(height=32, width=32)
    with torch.no_grad():
        stats2 = collect_norm_stats(net, torch.cat([x, x]))  # statistics of a batch of 2
        with frozen_norm_stats(net, stats2):
            net(torch.cat([x, x]))  # same batch: per sample, fine
            with pytest.raises(ValueError, match="collect statistics per frame"):
                net(torch.cat([x, x, x]))
        stats = collect_norm_stats(net, x)
        missing = dict(stats)
        missing.pop(next(iter(missing)))
        with frozen_norm_stats(net, missing), pytest.raises(RuntimeError, match="no statistics were recorded"):
            net(x)
        with pytest.raises(KeyError, match="not in the model"):
            with frozen_norm_stats(net, {"nope": stats[next(iter(stats))]}):
                pass

    norm = nn.InstanceNorm2d(3)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = norm

        def forward(self, t):
            return self.norm(self.norm(t))

    with pytest.raises(NotImplementedError, match="more than once"):
        collect_norm_stats(Twice(), x)


def test_no_frame_dependent_norm_is_a_no_op():
    model = tiny_net(nn.BatchNorm2d).eval()
    x = image(height=64, width=64)
    assert collect_norm_stats(model, x) == {}
    with torch.no_grad(), frozen_norm_stats(model, {}):
        out = run_tiled_frozen(model, x, 32, 30, MULTIPLE)
        assert torch.equal(out, run_tiled(model, x, 32, 30, MULTIPLE))


# --------------------------------------------------------------------------------------------------
# other layer kinds


def test_batch_norm_in_batch_stat_mode(overlap):
    model = tiny_net(nn.BatchNorm2d).train()
    reference = copy.deepcopy(model)
    x = image()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        full = reference(x)  # train mode: batch statistics of this one frame
        out = run_tiled_frozen(model, x, TILE, overlap, MULTIPLE)
        naive = run_tiled(copy.deepcopy(model), x, TILE, overlap, MULTIPLE)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no running-stat updates
    assert model.training
    assert (out - full).abs().max() <= 1e-4
    assert (naive - full).abs().max() > 0.05


def test_group_norm(overlap):
    model = tiny_net(lambda c: nn.GroupNorm(4, c))
    x = image()
    with torch.no_grad():
        full = model(x)
        out = run_tiled_frozen(model, x, TILE, overlap, MULTIPLE)
        tiled_stats = run_tiled_frozen(model, x, TILE, overlap, MULTIPLE, stats="tiled")
    assert (out - full).abs().max() <= 1e-4
    assert (tiled_stats - full).abs().max() <= 1e-4


class ContrastNorm(nn.Module):
    """A made-up layer with the protocol: per-sample mean/variance over (C, H, W)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def norm_stats(self, x):
        var, mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
        return mean, var

    def forward_with_stats(self, x, mean, var):
        return (x - mean) * torch.rsqrt(var + 1e-5) * self.scale.view(1, -1, 1, 1)

    def forward(self, x):
        return self.forward_with_stats(x, *self.norm_stats(x))


def test_protocol_layer(overlap):
    model = tiny_net(ContrastNorm)
    x = image()
    with torch.no_grad():
        full = model(x)
        out = run_tiled_frozen(model, x, TILE, overlap, MULTIPLE)
        tiled_stats = run_tiled_frozen(model, x, TILE, overlap, MULTIPLE, stats="tiled")
        naive = run_tiled(model, x, TILE, overlap, MULTIPLE)
    assert (out - full).abs().max() <= 1e-4
    assert (tiled_stats - full).abs().max() <= 1e-4
    assert (naive - full).abs().max() > 0.05


class LayerNorm(nn.Module):
    """Upstream MUNIT's LayerNorm, verbatim in behaviour, without the protocol (name-based fallback)."""

    def __init__(self, num_features, eps=1e-5, affine=True):
        super().__init__()
        self.num_features, self.affine, self.eps = num_features, affine, eps
        if self.affine:
            self.gamma = nn.Parameter(torch.rand(num_features))
            self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        shape = [-1] + [1] * (x.dim() - 1)
        mean = x.view(x.size(0), -1).mean(1).view(*shape)
        std = x.view(x.size(0), -1).std(1).view(*shape)
        x = (x - mean) / (std + self.eps)
        if self.affine:
            shape = [1, -1] + [1] * (x.dim() - 2)
            x = x * self.gamma.view(*shape) + self.beta.view(*shape)
        return x


def test_munit_layernorm_by_name(overlap):
    model = tiny_net(LayerNorm)
    x = image()
    with torch.no_grad():
        full = model(x)
        stats = collect_norm_stats(model, x)
        with frozen_norm_stats(model, stats):
            again = model(x)
        out = run_tiled_frozen(model, x, TILE, overlap, MULTIPLE)
    assert (again - full).abs().max() <= 1e-5
    assert (out - full).abs().max() <= 1e-4


# --------------------------------------------------------------------------------------------------
# the project's own generators, when they are there


def test_resnet_generator_tiled():
    resnet = pytest.importorskip("frametrans.models.resnet")
    torch.manual_seed(0)
    model = resnet.ResnetGenerator(resnet.ResnetConfig(ngf=8, n_blocks=2))
    multiple, tile = 4, 96
    radius = receptive_field(model, 3, multiple, probe=128)
    overlap = suggest_overlap(radius, tile, multiple)  # radius 27: overlap 92 (= tile - 4)
    overlap = min(overlap, 64)  # keep the test fast; the margin (16) is then below the radius
    x = image(height=136, width=200)
    with torch.no_grad():
        full = model(x)
        naive = run_tiled(model, x, tile, overlap, multiple)
        frozen = run_tiled_frozen(model, x, tile, overlap, multiple)
    # Measured: naive 17.6 dB, frozen 79.6 dB (max abs 2.9e-3: radius 27 > zero margin 16).
    assert psnr(frozen, full) >= 50
    assert psnr(naive, full) <= 30
    assert (frozen - full).abs().max() * 50 < (naive - full).abs().max()


def test_munit_tiled():
    munit = pytest.importorskip("frametrans.models.munit")
    torch.manual_seed(0)
    model = munit.MUNIT(munit.MUNITConfig(dim=8, n_res=1, mlp_dim=16, n_downsample=2))
    style = model.sample_style(1, torch.Generator().manual_seed(1))

    def translate(t: torch.Tensor) -> torch.Tensor:
        return model.translate(t, style=style)

    x = image(height=128, width=192)
    with torch.no_grad():
        full = translate(x)
        naive = run_tiled(translate, x, 96, 64, 4)
        frozen = run_tiled_frozen(model, x, 96, 64, 4, fn=translate)
        tiled_stats = run_tiled_frozen(model, x, 96, 64, 4, fn=translate, stats="tiled")
    assert psnr(frozen, full) >= 50
    assert (tiled_stats - frozen).abs().max() <= 1e-4
    assert psnr(naive, full) <= 30


# --------------------------------------------------------------------------------------------------
# the statistics themselves: torch's batch-norm kernel on the CPU, var_mean where it cannot serve


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_statistics_come_from_the_fused_kernel_and_match_float64(monkeypatch, dtype, channels_last):
    """InstanceNorm's per-(sample, channel) and MUNIT LayerNorm's per-sample statistics on the CPU
    come from the batch-norm kernel (var_mean is not called) and match a float64 reference."""
    from frametrans.engine import normstats

    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 16, 24, 40, generator=gen) * torch.linspace(0.5, 4, 16).view(1, -1, 1, 1) + 5).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref_var, ref_mean = torch.var_mean(x.double(), dim=(2, 3), keepdim=True, correction=0)
    ln_var, ln_mean = torch.var_mean(x.double().flatten(1), dim=1, correction=1)
    layer_norm = normstats._adapter_for(LayerNorm(16))
    monkeypatch.setattr(torch, "var_mean", lambda *a, **k: pytest.fail("var_mean called"))
    mean, var = normstats._adapter_for(nn.InstanceNorm2d(16)).stats(x)
    lmean, lvar = layer_norm.stats(x)
    assert mean.shape == var.shape == (3, 16, 1, 1) and mean.dtype == var.dtype == torch.float32
    assert lmean.shape == lvar.shape == (3, 1, 1, 1)
    tol = 1e-4 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(mean.double(), ref_mean, rtol=tol, atol=0)
    assert torch.allclose(var.double(), ref_var, rtol=tol, atol=0)
    assert torch.allclose(lmean.double().flatten(), ln_mean, rtol=tol, atol=0)
    assert torch.allclose(lvar.double().flatten(), ln_var, rtol=tol, atol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is deprecated; ONNX export uses it
def test_statistics_fall_back_to_var_mean_where_the_kernel_cannot_serve():
    """One value per channel, or a trace (an ONNX graph): var_mean, with the same results."""
    from frametrans.engine.normstats import _per_channel_stats
    from frametrans.models.norms import fused_applies as _fused_stats_apply

    x = torch.randn(2, 4, 6, 6)
    assert _fused_stats_apply(x) and not _fused_stats_apply(x[:, :, :1, :1])
    traced = torch.jit.trace(lambda t: torch.cat(_per_channel_stats(t, (2, 3))), (x,))
    assert "var_mean" in str(traced.graph) and "batch_norm" not in str(traced.graph)
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    assert torch.allclose(traced(x), torch.cat([mean, var]), atol=1e-6)
    assert torch.allclose(torch.cat(_per_channel_stats(x, (2, 3))), torch.cat([mean, var]), atol=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_normalize_per_channel_and_per_sample_matches_the_formula_eager_and_traced(dtype):
    """The fused per-sample normalization: statistics per channel or one per sample, affine
    parameters per channel or per sample and channel (AdaIN); eager and traced agree with the
    float64 formula, in the input's dtype and memory format."""
    from frametrans.models.norms import normalize as _normalize

    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 6, 10, 12, generator=gen) * 3 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    cases = {
        "channel": (torch.rand(2, 6, 1, 1, generator=gen), torch.rand(2, 6, 1, 1, generator=gen) + 0.5,
                    torch.rand(1, 6, generator=gen), None, 1e-5),
        "sample": (torch.rand(2, 1, 1, 1, generator=gen), torch.rand(2, 1, 1, 1, generator=gen) + 0.5,
                   torch.rand(2, 6, generator=gen), torch.rand(2, 6, generator=gen), 0.0),
        "shared": (torch.rand(1, 6, 1, 1, generator=gen), torch.rand(1, 6, 1, 1, generator=gen) + 0.5,
                   None, torch.rand(1, 6, generator=gen), 1e-3),
    }
    for name, (mean, var, weight, bias, eps) in cases.items():
        ref = (x.double() - mean.double()) / torch.sqrt(var.double() + eps)
        ref = ref * (1 if weight is None else weight.double().view(-1, 6, 1, 1))
        ref = ref + (0 if bias is None else bias.double().view(-1, 6, 1, 1))
        eager = _normalize(x, mean, var, weight, bias, eps)
        traced = torch.jit.trace(lambda t: _normalize(t, mean, var, weight, bias, eps), (x,))(x)
        tol = 0.05 if dtype == torch.bfloat16 else 1e-5
        for got in (eager, traced):
            assert got.dtype == dtype and got.shape == x.shape, name
            assert (got.double() - ref).abs().max() <= tol, name
        assert eager.is_contiguous(memory_format=torch.channels_last), name
