"""Every registered generator / discriminator / predictor: tiny config builds, runs, round-trips.

MUNIT generators (role "munit") run here too (forward = a2b with styles from the global RNG,
seeded per call); their own file tests styles, directions and the upstream format. A newly
registered architecture with one of the roles below needs an entry in tests/support TINY and VARIANTS here.
"""

from __future__ import annotations

import pytest
import torch

from frametrans import registry
from frametrans.models.layers import init_weights, make_norm
from support import TINY as SUPPORT_TINY

ROLES = ("generator", "munit", "discriminator", "predictor")

# name -> (changes to the one tiny-config table, tests/support TINY, that exercise non-default
# channel counts and depths here; spatial size of the test input)
VARIANTS = {
    "unet": (dict(in_channels=3, out_channels=2), 32),
    "resnet": (dict(in_channels=3, out_channels=2, n_blocks=2), 16),
    "patchgan": (dict(in_channels=6), 16),
    "pixelgan": (dict(in_channels=6), 8),
    "predictor": (dict(), 16),
    "munit_discriminator": (dict(in_channels=3), 16),
    "munit": (dict(), 16),
}
TINY = {name: ({**SUPPORT_TINY[name], **changes}, size) for name, (changes, size) in VARIANTS.items()}

NAMES = [n for n in registry.names() if registry.get(n).role in ROLES]


def build(name: str, **overrides: object) -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny model in eval mode with non-trivial weights and norm statistics, and an input."""
    if name not in TINY:
        pytest.fail(f"architecture {name!r} has no entry in tests/models/test_models.py VARIANTS")
    values, size = TINY[name]
    arch = registry.get(name)
    config = arch.config_from_dict({**values, **overrides})
    gen = torch.Generator().manual_seed(0)
    model = init_weights(arch.build(config), "normal", 0.2, generator=gen)
    for buf_name, buf in model.named_buffers():  # make eval-mode BatchNorm do something
        if buf_name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
        elif buf_name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
    model.eval()
    contract = config.contract()
    lo, hi = contract.value_range
    channels = contract.in_channels * contract.frames_in
    size = -(-size // contract.size_multiple) * contract.size_multiple
    x = lo + (hi - lo) * torch.rand(2, channels, size, size, generator=gen)
    return model, x


def outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    torch.manual_seed(1)  # MUNIT's forward samples its styles from the global RNG
    with torch.no_grad():
        y = model(x)
    return list(y) if isinstance(y, (list, tuple)) else [y]


def test_tiny_table_covers_registry() -> None:
    assert set(NAMES) <= set(TINY), sorted(set(NAMES) - set(TINY))


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_range(name: str) -> None:
    model, x = build(name)
    arch = registry.get(name)
    contract = model.config.contract()
    assert model.config == arch.config_cls(**TINY[name][0])
    for y in outputs(model, x):
        assert torch.isfinite(y).all()
        assert y.shape[0] == x.shape[0]
        assert y.shape[1] == contract.out_channels * contract.frames_out
        if arch.role == "discriminator":
            continue  # raw logits: any value
        assert y.shape[-2:] == x.shape[-2:]
        lo, hi = contract.value_range
        assert lo <= y.min().item() and y.max().item() <= hi


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_roundtrip(name: str) -> None:
    model, x = build(name)
    arch = registry.get(name)
    fresh = arch.build(arch.config_from_dict(model.config.to_dict())).eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    for a, b in zip(outputs(model, x), outputs(fresh, x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_train_mode_runs(name: str) -> None:
    model, x = build(name)
    model.train()
    for y in outputs(model, x):
        assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("unet", dict(norm="instance", dropout=True, num_downs=6)),
        ("unet", dict(norm="none", num_downs=2)),
        ("resnet", dict(norm="batch", dropout=True, padding="zero")),
        ("resnet", dict(norm="none", padding="replicate", n_blocks=0)),
        ("resnet", dict(upsample="resize")),
        ("patchgan", dict(norm="instance", n_layers=1)),
        ("pixelgan", dict(norm="none")),
        ("predictor", dict(depth=0)),
    ],
)
def test_variants(name: str, overrides: dict) -> None:
    model, x = build(name, **overrides)
    for y in outputs(model, x):
        assert torch.isfinite(y).all()


def test_upstream_parameter_counts() -> None:
    """Full-size upstream generators (counted on the meta device, no memory used)."""
    with torch.device("meta"):
        unet = registry.get("unet").build(registry.get("unet").config_cls())
        resnet = registry.get("resnet").build(registry.get("resnet").config_cls())
    assert sum(p.numel() for p in unet.parameters()) == 54_413_955  # upstream: 54.414 M
    assert sum(p.numel() for p in resnet.parameters()) == 11_378_179  # upstream: 11.378 M


@pytest.mark.parametrize("upsample, even", [("transpose", False), ("resize", True)])
def test_resnet_upsample_checkerboard(upsample: str, even: bool) -> None:
    """A flat input through the generator's 2x upsampling layers: transposed 3x3 stride-2 convs
    overlap unevenly and print a period-2 checkerboard; nearest resize + conv stays flat."""
    from frametrans.models.resnet import _upsample

    torch.manual_seed(0)
    up = torch.nn.Sequential(*_upsample(upsample, 4, 4, bias=False), *_upsample(upsample, 4, 2, bias=False))
    with torch.no_grad():
        y = up(torch.ones(1, 4, 8, 8))[..., 4:-4, 4:-4]  # away from the borders
    assert y.shape[-1] == 24
    spread = (y.amax(dim=(2, 3)) - y.amin(dim=(2, 3))).max().item()
    assert (spread < 1e-5) == even, spread


def test_unet_dropout_levels() -> None:
    """Dropout only in the 8*ngf middle levels, like upstream (none for num_downs=5)."""
    cfg = registry.get("unet").config_cls
    count = lambda m: sum(isinstance(x, torch.nn.Dropout) for x in m.modules())  # noqa: E731
    with torch.device("meta"):
        assert count(registry.get("unet").build(cfg(num_downs=5, dropout=True))) == 0
        assert count(registry.get("unet").build(cfg(num_downs=8, dropout=True))) == 3


def test_patchgan_output_size() -> None:
    model, x = build("patchgan", n_layers=3)
    x = torch.zeros(1, 6, 64, 64)
    (y,) = outputs(model, x)
    assert y.shape == (1, 1, 64 // 8 - 2, 64 // 8 - 2)


@pytest.mark.parametrize("steps", [0, 1, 2, 5])
def test_predictor_rollout(steps: int) -> None:
    model, x = build("predictor")
    with torch.no_grad():
        y = model.rollout(x, steps)
        first = model(x)
    assert y.shape == (x.shape[0], steps, *x.shape[-2:])
    assert ((0 <= y) & (y <= 1)).all()
    n = min(steps, 2)
    assert torch.equal(y[:, :n], first[:, :n])


def test_predictor_rollout_feeds_back() -> None:
    model, x = build("predictor")  # context 3, horizon 2
    with torch.no_grad():
        y = model.rollout(x, 4)
        second = model(torch.cat([x, y[:, :2]], dim=1)[:, -3:])
    assert torch.equal(y[:, 2:4], second)


@pytest.mark.parametrize(
    "name, values, size, match",
    [
        ("unet", dict(num_downs=5, ngf=4), 24, "multiple of 32"),
        ("resnet", dict(ngf=4, n_blocks=1), 18, "multiple of 4"),
        ("predictor", dict(context=3, width=4, depth=2), 16, "input channels"),
    ],
)
def test_bad_input_is_refused(name: str, values: dict, size: int, match: str) -> None:
    arch = registry.get(name)
    model = arch.build(arch.config_from_dict(values)).eval()
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(1, 3 if name != "predictor" else 1, size, size))


@pytest.mark.parametrize(
    "name, values, match",
    [
        ("unet", dict(norm="group"), "norm='group'"),
        ("unet", dict(num_downs=1), "num_downs"),
        ("resnet", dict(padding="circular"), "padding"),
        ("resnet", dict(upsample="bilinear"), "upsample"),
        ("patchgan", dict(n_layers=0), "n_layers"),
        ("predictor", dict(horizon=0), "horizon"),
    ],
)
def test_bad_config_is_refused(name: str, values: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        registry.get(name).config_from_dict(values)


def test_make_norm_and_init() -> None:
    assert isinstance(make_norm("none", 4), torch.nn.Identity)
    inorm = make_norm("instance", 4)
    assert not inorm.affine and inorm.running_mean is None
    with pytest.raises(ValueError, match="norm='layer'"):
        make_norm("layer", 4)
    for kind in ("normal", "xavier", "kaiming", "orthogonal"):
        a = init_weights(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)),
                         kind, 0.02, generator=torch.Generator().manual_seed(1))
        b = init_weights(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)),
                         kind, 0.02, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a[0].weight, b[0].weight)
        assert torch.count_nonzero(a[0].bias) == 0 and torch.count_nonzero(a[1].bias) == 0
    with pytest.raises(ValueError, match="init kind"):
        init_weights(torch.nn.Linear(2, 2), "uniform")
