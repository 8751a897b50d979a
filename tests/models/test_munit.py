"""MUNIT generators, discriminator and importer of upstream ``gen_*.pt`` files (tiny configs)."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from frametrans import registry
from frametrans.importers.munit import import_munit, looks_like_munit
from frametrans.models.munit import (
    MUNIT,
    AdaINGenerator,
    LayerNorm,
    MultiScaleDiscriminator,
    MUNITConfig,
    MUNITDiscriminatorConfig,
)

TINY = MUNITConfig(dim=8, style_dim=4, mlp_dim=16, n_res=1)
H, W = 16, 24


def _model(config: MUNITConfig = TINY, seed: int = 0) -> MUNIT:
    torch.manual_seed(seed)
    model = MUNIT(config).eval()
    # random LayerNorm betas and biases, so that no check passes by accident of zero init
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "bias")):
                p.normal_(0.0, 0.1)
    return model


def _images(batch: int = 2, seed: int = 1, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, H, W, generator=g) * 2 - 1


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Config and registry
# --------------------------------------------------------------------------------------------


def test_registered_with_contract():
    arch = registry.get("munit")
    assert arch.module_cls is MUNIT and arch.config_cls is MUNITConfig and arch.role == "munit"
    c = MUNITConfig(n_downsample=3, in_channels=1, style_dim=5).contract()
    assert c.value_range == (-1.0, 1.0) and c.size_multiple == 8
    assert (c.in_channels, c.out_channels, c.style_dim) == (1, 1, 5) and c.takes_style

    dis = registry.get("munit_discriminator")
    assert dis.module_cls is MultiScaleDiscriminator and dis.role == "discriminator"
    dc = MUNITDiscriminatorConfig(in_channels=1).contract()
    assert (dc.size_multiple, dc.in_channels, dc.out_channels, dc.style_dim) == (1, 1, 1, 0)


def test_config_roundtrip_and_validation():
    arch = registry.get("munit")
    assert arch.config_from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="activ"):
        arch.config_from_dict({"activ": "gelu"})
    with pytest.raises(ValueError, match="pad_type"):
        MUNIT(MUNITConfig(pad_type="circular"))
    with pytest.raises(ValueError, match="n_style_downsample"):
        MUNITConfig(n_style_downsample=1).validate()


# --------------------------------------------------------------------------------------------
# Translation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["a2b", "b2a"])
def test_translate_shape_range(direction):
    model = _model()
    x = _images(2)
    with torch.no_grad():
        y = model.translate(x, direction=direction, generator=_seeded(0))
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0


def test_encode_decode_shapes():
    model = _model()
    x = _images(2)
    with torch.no_grad():
        content, style = model.gen_a.encode(x)
        recon = model.gen_a(x)
        s_b = model.encode_style(x, "b")
    assert content.shape == (2, TINY.dim * 4, H // 4, W // 4)
    assert style.shape == s_b.shape == (2, TINY.style_dim, 1, 1)
    assert recon.shape == x.shape and isinstance(model.gen_a, AdaINGenerator)
    with pytest.raises(ValueError, match="domain"):
        model.encode_style(x, "c")


def test_seed_reproducible_and_styles_matter():
    model = _model()
    x = _images(2)
    with torch.no_grad():
        y1 = model.translate(x, generator=_seeded(7))
        y2 = model.translate(x, generator=_seeded(7))
        y3 = model.translate(x, generator=_seeded(8))
        s = torch.randn(2, TINY.style_dim, 1, 1, generator=_seeded(7))
        y_given = model.translate(x, style=s)
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, y3, atol=1e-4)
    # a sampled style is exactly N(0, 1) drawn from the generator
    torch.testing.assert_close(y1, y_given)


def test_given_style_broadcast_and_example_guided():
    model = _model()
    x = _images(3)
    style_image = _images(1, seed=5)
    with torch.no_grad():
        s = model.encode_style(style_image, "b")
        y = model.translate(x, style=s)
        y_expanded = model.translate(x, style=s.expand(3, -1, -1, -1))
        y_flat = model.translate(x, style=s.flatten(1))
        other = model.translate(x, style=-s)
    torch.testing.assert_close(y, y_expanded)
    torch.testing.assert_close(y, y_flat)
    assert not torch.allclose(y, other, atol=1e-4)
    with pytest.raises(ValueError, match="style code"):
        model.translate(x, style=torch.zeros(2, TINY.style_dim, 1, 1))


def test_batch_equals_single_passes():
    """IN, LayerNorm and AdaIN statistics are per sample: batching changes nothing."""
    model = _model()
    x = _images(3)
    s = torch.randn(3, TINY.style_dim, 1, 1, generator=_seeded(3))
    with torch.no_grad():
        batched = model.translate(x, style=s)
        single = torch.cat([model.translate(x[i : i + 1], style=s[i : i + 1]) for i in range(3)])
        batched_ba = model.translate(x, style=s, direction="b2a")
        single_ba = torch.cat(
            [model.translate(x[i : i + 1], style=s[i : i + 1], direction="b2a") for i in range(3)]
        )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched_ba, single_ba, atol=1e-5, rtol=1e-5)


def test_forward_is_a2b_with_sampled_style():
    model = _model()
    x = _images(2)
    torch.manual_seed(11)
    with torch.no_grad():
        y = model(x)
    torch.manual_seed(11)
    s = torch.randn(2, TINY.style_dim, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(y, model.gen_b.decode(model.gen_a.encode_content(x), s))


def test_decode_keeps_no_state():
    """Decoding leaves no AdaIN parameters behind on the modules."""
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs_before = {n: set(vars(m)) for n, m in model.named_modules()}
    with torch.no_grad():
        model.translate(_images(2), generator=_seeded(0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert attrs_before == {n: set(vars(m)) for n, m in model.named_modules()}


def test_backward_runs():
    model = _model().train()
    y = model.translate(_images(2), generator=_seeded(0))
    y.mean().backward()
    assert model.gen_b.mlp.model[0].fc.weight.grad is not None
    assert model.gen_a.enc_content.model[0].conv.weight.grad is not None


def test_layernorm_matches_hand_computation():
    torch.manual_seed(0)
    ln = LayerNorm(3)
    with torch.no_grad():
        ln.beta.normal_()
    x = torch.randn(2, 3, 4, 5)
    out = ln(x)
    for b in range(2):
        values = x[b].flatten().tolist()
        n = len(values)
        mean = sum(values) / n
        std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5  # unbiased
        for c in range(3):
            expected = (x[b, c] - mean) / (std + 1e-5) * ln.gamma[c] + ln.beta[c]
            torch.testing.assert_close(out[b, c], expected, atol=1e-5, rtol=1e-5)
    assert 0.0 <= ln.gamma.min() and ln.gamma.max() < 1.0  # uniform init


def test_adain_uses_per_sample_statistics():
    model = _model()
    adain = model.gen_b.dec.adain_layers()[0]
    x = torch.randn(2, adain.num_features, 3, 4)
    w = torch.rand(2, adain.num_features) + 0.5
    b = torch.randn(2, adain.num_features)
    out = adain.modulate(adain(x), w, b)
    mean = x.mean((2, 3), keepdim=True)
    var = x.var((2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * w[:, :, None, None] + b[:, :, None, None]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", ["ln", "adain"])
def test_norm_stats_protocol(layer):
    """forward == forward_with_stats(norm_stats): what tiled inference relies on."""
    model = _model()
    norm = model.gen_b.dec.model[2].norm if layer == "ln" else model.gen_b.dec.adain_layers()[0]
    x = torch.randn(2, norm.num_features, 5, 6)
    mean, var = norm.norm_stats(x)
    torch.testing.assert_close(norm.forward_with_stats(x, mean, var), norm(x), atol=1e-5, rtol=1e-5)
    wide = norm.forward_with_stats(x.double(), mean.float(), var.float())
    assert wide.dtype == torch.float64  # follows x, not the statistics


def test_tiled_inference_with_frozen_stats():
    normstats = pytest.importorskip("frametrans.engine.normstats")
    model = _model()
    x = _images(1)
    style = torch.randn(1, TINY.style_dim, 1, 1, generator=_seeded(2))

    def fn(t: torch.Tensor) -> torch.Tensor:
        return model.translate(t, style=style)

    with torch.no_grad():
        full = fn(x)
        stats = normstats.collect_norm_stats(model, x, fn=fn)
        assert any(name.startswith("gen_b.dec.model.2.norm") for name in stats)
        with normstats.frozen_norm_stats(model, stats):
            frozen = fn(x)
    torch.testing.assert_close(frozen, full, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------


def test_state_dict_roundtrip_same_outputs():
    model = _model(seed=0)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = _model(seed=123)
    other.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    x = _images(2)
    with torch.no_grad():
        expected = model.translate(x, generator=_seeded(1))
        actual = other.translate(x, generator=_seeded(1))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Importer
# --------------------------------------------------------------------------------------------


def _upstream_file(model: MUNIT) -> dict:
    """What ``torch.load(gen_XXXX.pt)`` returns: {'a': AdaINGen state dict, 'b': ...}."""
    sd = model.state_dict()
    out = {}
    for d in ("a", "b"):
        prefix = f"gen_{d}."
        out[d] = {k[len(prefix) :]: v.clone() for k, v in sd.items() if k.startswith(prefix)}
    return out


def test_keys_follow_upstream_naming():
    keys = set(_upstream_file(_model())["a"])
    expected = {
        "enc_style.model.0.conv.weight",
        "enc_style.model.4.conv.bias",  # n_style_downsample=4: blocks 0..4
        "enc_style.model.6.weight",  # 5: AdaptiveAvgPool2d, 6: the 1x1 conv to style_dim
        "enc_content.model.0.conv.weight",
        "enc_content.model.2.conv.bias",
        "enc_content.model.3.model.0.model.1.conv.weight",  # ResBlocks after 2 downsamplings
        "dec.model.0.model.0.model.0.norm.running_mean",
        "dec.model.0.model.0.model.1.norm.running_var",
        "dec.model.2.norm.gamma",  # 1: Upsample, 2: Conv2dBlock with LayerNorm
        "dec.model.4.norm.beta",
        "dec.model.5.conv.weight",
        "mlp.model.0.fc.weight",
        "mlp.model.2.fc.bias",
    }
    assert expected <= keys
    # content-encoder instance norms carry nothing, as upstream master
    assert not any(k.startswith("enc_content") and ".norm." in k for k in keys)
    sd = _model().gen_a.state_dict()
    assert sd["mlp.model.2.fc.weight"].shape == (4 * TINY.n_res * TINY.content_dim, TINY.mlp_dim)


def _assert_same_outputs(a: MUNIT, b: MUNIT) -> None:
    x = _images(2)
    with torch.no_grad():
        for direction in ("a2b", "b2a"):
            torch.testing.assert_close(
                a.translate(x, direction=direction, generator=_seeded(4)),
                b.translate(x, direction=direction, generator=_seeded(4)),
                rtol=0,
                atol=0,
            )


@pytest.mark.parametrize("prefix", ["", "module."])
def test_import_roundtrip(prefix):
    model = _model()
    upstream = _upstream_file(model)
    upstream = {d: {prefix + k: v for k, v in sd.items()} for d, sd in upstream.items()}
    assert looks_like_munit(upstream)
    name, config, weights = import_munit(upstream)
    assert name == "munit"
    assert config == TINY
    imported = MUNIT(config).eval()
    imported.load_state_dict(weights, strict=True)
    _assert_same_outputs(model, imported)


def test_import_infers_other_sizes_and_prelu():
    cfg = MUNITConfig(in_channels=1, dim=4, style_dim=3, n_downsample=3, n_res=2, mlp_dim=8,
                      activ="prelu", n_style_downsample=2, n_mlp_blocks=4)
    _, config, weights = import_munit(_upstream_file(_model(cfg)))
    assert config == cfg
    MUNIT(config).load_state_dict(weights, strict=True)


def test_import_yaml_overrides_pad_and_activ():
    cfg = MUNITConfig(dim=8, style_dim=4, mlp_dim=16, n_res=1, pad_type="zero", activ="lrelu")
    model = _model(cfg)
    upstream = _upstream_file(model)
    # without the yaml, the invisible choices fall back to upstream's defaults
    _, default_cfg, _ = import_munit(upstream)
    assert (default_cfg.pad_type, default_cfg.activ) == ("reflect", "relu")

    yaml_config = {
        "gen": {"dim": 8, "mlp_dim": 16, "style_dim": 4, "activ": "lrelu", "n_downsample": 2,
                "n_res": 1, "pad_type": "zero"},
        "input_dim_a": 3,
        "input_dim_b": 3,
    }
    _, config, weights = import_munit(upstream, yaml_config)
    assert config == cfg
    imported = MUNIT(config).eval()
    imported.load_state_dict(weights, strict=True)
    _assert_same_outputs(model, imported)


def test_import_drops_stale_instance_norm_stats_and_fills_adain_buffers():
    model = _model()
    upstream = _upstream_file(model)
    for sd in upstream.values():
        for key in ("enc_content.model.0.norm", "enc_content.model.3.model.0.model.1.norm"):
            sd[key + ".running_mean"] = torch.zeros(8)
            sd[key + ".running_var"] = torch.ones(8)
        del sd["dec.model.0.model.0.model.0.norm.running_mean"]
    _, config, weights = import_munit(upstream)
    imported = MUNIT(config).eval()
    imported.load_state_dict(weights, strict=True)
    _assert_same_outputs(model, imported)


def test_import_errors():
    upstream = _upstream_file(_model())
    assert not looks_like_munit({"state_dict": {}})
    assert not looks_like_munit(upstream["a"])
    with pytest.raises(ValueError, match="'a' and 'b'"):
        import_munit(upstream["a"])

    bad = copy.deepcopy(upstream)
    bad["b"]["mlp.model.0.fc.weight"] = torch.zeros(32, TINY.style_dim)
    with pytest.raises(ValueError, match="differ"):
        import_munit(bad)

    bad = copy.deepcopy(upstream)
    for d in bad:
        bad[d]["dec.model.2.norm.gamma"] = torch.zeros(5)
    with pytest.raises(ValueError, match="dec.model.2.norm.gamma has shape"):
        import_munit(bad)

    bad = copy.deepcopy(upstream)
    for d in bad:
        bad[d]["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected 2 key"):
        import_munit(bad)

    with pytest.raises(ValueError, match="yaml says dim=16"):
        import_munit(upstream, {"gen": {"dim": 16}})
    with pytest.raises(ValueError, match="PReLU"):
        import_munit(upstream, {"gen": {"activ": "prelu"}})
    with pytest.raises(ValueError, match="pad_type"):
        import_munit(upstream, {"gen": {"pad_type": "mirror"}})

    for message in _messages_of_errors(upstream):
        assert "\n" not in message


def _messages_of_errors(upstream: dict) -> list[str]:
    messages = []
    for bad_input in ({"a": {}, "b": {}}, {"a": upstream["a"], "b": 3}):
        with pytest.raises(ValueError) as err:
            import_munit(bad_input)
        messages.append(str(err.value))
    return messages


# --------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["none", "in", "ln", "bn"])
def test_discriminator_scales(norm):
    torch.manual_seed(0)
    d = MultiScaleDiscriminator(MUNITDiscriminatorConfig(dim=4, n_layer=3, num_scales=3, norm=norm))
    x = torch.rand(2, 3, 64, 80) * 2 - 1
    outs = d(x)
    # three stride-2 convs per scale (floor((n - 2) / 2) + 1 each); the input halves between scales
    assert [tuple(o.shape) for o in outs] == [(2, 1, 8, 10), (2, 1, 4, 5), (2, 1, 2, 2)]
    assert all(torch.isfinite(o).all() for o in outs)
    assert "cnns.2.0.conv.weight" in d.state_dict()
