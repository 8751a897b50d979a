"""Importing pytorch-CycleGAN-and-pix2pix generator state dicts.

The reference below rebuilds upstream's module layout (models/networks.py: UnetGenerator,
UnetSkipConnectionBlock, ResnetGenerator, ResnetBlock) in its own words, built the way upstream
builds it (innermost U-Net block first, an explicit list per level), so that both the key names
and the forward computation are checked against something that is not our model code.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from frametrans import registry
from frametrans.importers.upstream import import_upstream_generator, looks_like_upstream


# --- minimal reference of upstream's layout ---------------------------------------------------


def ref_norm(norm: str, c: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(c)
    if norm == "instance":
        return nn.InstanceNorm2d(c)  # affine=False, no running stats (upstream today)
    return nn.Identity()


class RefUnetBlock(nn.Module):
    def __init__(self, outer, inner, norm, in_nc=None, sub=None, outermost=False, dropout=False):
        super().__init__()
        self.outermost = outermost
        bias = norm == "instance"
        down = nn.Conv2d(in_nc or outer, inner, 4, 2, 1, bias=bias)
        if outermost:
            seq = [down, sub, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif sub is None:
            seq = [nn.LeakyReLU(0.2), down, nn.ReLU(),
                   nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias), ref_norm(norm, outer)]
        else:
            seq = [nn.LeakyReLU(0.2), down, ref_norm(norm, inner), sub, nn.ReLU(),
                   nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias), ref_norm(norm, outer)]
            seq += [nn.Dropout(0.5)] if dropout else []
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class RefUnet(nn.Module):
    def __init__(self, in_nc, out_nc, num_downs, ngf, norm, dropout):
        super().__init__()
        b = RefUnetBlock(ngf * 8, ngf * 8, norm)
        for _ in range(num_downs - 5):
            b = RefUnetBlock(ngf * 8, ngf * 8, norm, sub=b, dropout=dropout)
        for mult in (4, 2, 1):
            b = RefUnetBlock(ngf * mult, ngf * mult * 2, norm, sub=b)
        self.model = RefUnetBlock(out_nc, ngf, norm, in_nc=in_nc, sub=b, outermost=True)

    def forward(self, x):
        return self.model(x)


class RefResBlock(nn.Module):
    def __init__(self, dim, norm, dropout, padding):
        super().__init__()
        pad = [nn.ReflectionPad2d(1)] if padding == "reflect" else []
        p, bias = int(padding == "zero"), norm == "instance"
        seq = pad + [nn.Conv2d(dim, dim, 3, padding=p, bias=bias), ref_norm(norm, dim), nn.ReLU()]
        seq += [nn.Dropout(0.5)] if dropout else []
        seq += pad + [nn.Conv2d(dim, dim, 3, padding=p, bias=bias), ref_norm(norm, dim)]
        self.conv_block = nn.Sequential(*seq)

    def forward(self, x):
        return x + self.conv_block(x)


class RefResnet(nn.Module):
    def __init__(self, seq):
        super().__init__()
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


def ref_resnet(in_nc, out_nc, ngf, n_blocks, norm, dropout, padding="reflect") -> nn.Module:
    bias = norm == "instance"
    seq = [nn.ReflectionPad2d(3), nn.Conv2d(in_nc, ngf, 7, bias=bias), ref_norm(norm, ngf),
           nn.ReLU()]
    for m in (1, 2):
        seq += [nn.Conv2d(ngf * m, ngf * m * 2, 3, 2, 1, bias=bias), ref_norm(norm, ngf * m * 2),
                nn.ReLU()]
    seq += [RefResBlock(ngf * 4, norm, dropout, padding) for _ in range(n_blocks)]
    for m in (4, 2):
        seq += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1, bias=bias),
                ref_norm(norm, ngf * m // 2), nn.ReLU()]
    seq += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_nc, 7), nn.Tanh()]
    return RefResnet(seq)


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            r = torch.rand(t.shape, generator=gen) if name.endswith("running_var") else None
            t.copy_(r + 0.5 if r is not None else torch.randn(t.shape, generator=gen) * 0.2)
    return net.eval()


def old_instance_file(net: nn.Module, state: dict) -> dict:
    """Add the InstanceNorm statistics that files from before torch 0.4 carry."""
    state = dict(state)
    for name, m in net.named_modules():
        if isinstance(m, nn.InstanceNorm2d):
            state[f"{name}.running_mean"] = torch.zeros(m.num_features)
            state[f"{name}.running_var"] = torch.ones(m.num_features)
            state[f"{name}.num_batches_tracked"] = torch.tensor(0)
    return state


def check(ref: nn.Module, state: dict, arch: str, expected: dict, size: int) -> None:
    name, config, clean = import_upstream_generator(state)
    assert name == arch
    assert config.to_dict() == {**config.to_dict(), **expected}
    ours = registry.get(name).build(config).eval()
    ours.load_state_dict(clean, strict=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, config.in_channels, size, size, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(ours(x * 2 - 1), ref(x * 2 - 1), atol=1e-6, rtol=0)


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_downs, ngf, norm, dropout, prefix",
    [
        (7, 2, "batch", False, ""),  # unet_128
        (8, 2, "batch", True, "module."),  # unet_256, DataParallel
        (7, 3, "instance", True, ""),
        (8, 2, "instance", False, "_orig_mod."),  # torch.compile
        (5, 2, "none", False, "module._orig_mod."),
        (9, 1, "batch", False, ""),  # any other depth
    ],
)
def test_unet(num_downs, ngf, norm, dropout, prefix) -> None:
    ref = randomize(RefUnet(3, 2, num_downs, ngf, norm, dropout))
    state = {prefix + k: v for k, v in ref.state_dict().items()}
    assert looks_like_upstream(state)
    expected = dict(in_channels=3, out_channels=2, num_downs=num_downs, ngf=ngf, norm=norm,
                    dropout=False)
    check(ref, state, "unet", expected, 2**num_downs)


@pytest.mark.parametrize(
    "n_blocks, norm, dropout, padding, prefix",
    [
        (6, "batch", False, "reflect", ""),  # resnet_6blocks
        (9, "instance", False, "reflect", "module."),  # resnet_9blocks
        (9, "batch", True, "reflect", ""),
        (6, "instance", True, "reflect", "module."),
        (6, "instance", False, "zero", ""),
        (2, "batch", True, "zero", "_orig_mod."),
        (3, "none", False, "reflect", ""),
        (0, "instance", False, "reflect", ""),
    ],
)
def test_resnet(n_blocks, norm, dropout, padding, prefix) -> None:
    ref = randomize(ref_resnet(1, 3, 4, n_blocks, norm, dropout, padding))
    state = {prefix + k: v for k, v in ref.state_dict().items()}
    assert looks_like_upstream(state)
    expected = dict(in_channels=1, out_channels=3, ngf=4, n_blocks=n_blocks, norm=norm,
                    dropout=dropout, padding=padding)
    check(ref, state, "resnet", expected, 16)


def test_old_instance_norm_file_resnet() -> None:
    ref = randomize(ref_resnet(3, 3, 4, 9, "instance", False))
    state = old_instance_file(ref, ref.state_dict())
    assert any(k.endswith("running_mean") for k in state)
    check(ref, state, "resnet", dict(in_channels=3, n_blocks=9, norm="instance"), 16)
    _, _, clean = import_upstream_generator(state)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert not any(k.endswith(stats) for k in clean)


def test_old_instance_norm_file_unet_via_torch_save() -> None:
    ref = randomize(RefUnet(3, 3, 7, 2, "instance", False))
    state = old_instance_file(ref, {"module." + k: v for k, v in ref.state_dict().items()})
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    check(ref, loaded, "unet", dict(in_channels=3, num_downs=7, ngf=2, norm="instance"), 128)


def test_batch_norm_file_without_num_batches_tracked() -> None:
    ref = randomize(ref_resnet(3, 3, 4, 2, "batch", False))
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    check(ref, state, "resnet", dict(n_blocks=2, norm="batch"), 16)


def test_input_is_not_modified() -> None:
    ref = randomize(ref_resnet(3, 3, 4, 1, "instance", False))
    state = old_instance_file(ref, {"module." + k: v for k, v in ref.state_dict().items()})
    keys = list(state)
    import_upstream_generator(state)
    assert list(state) == keys


def test_unknown_layout_is_refused() -> None:
    state = {"encoder.0.weight": torch.zeros(4, 3, 3, 3)}
    assert not looks_like_upstream(state)
    assert not looks_like_upstream({})
    with pytest.raises(ValueError, match="not an upstream .*found \\['encoder.0.weight'\\]"):
        import_upstream_generator(state)


def test_shape_that_does_not_fit_is_refused() -> None:
    state = randomize(ref_resnet(3, 3, 4, 2, "batch", False)).state_dict()
    state["model.10.conv_block.5.weight"] = torch.zeros(16, 8, 3, 3)
    match = r"model.10.conv_block.5.weight has \[16, 8, 3, 3\].*expects \[16, 16, 3, 3\]"
    with pytest.raises(ValueError, match=match):
        import_upstream_generator(state)


def test_missing_and_extra_keys_are_refused() -> None:
    state = dict(randomize(RefUnet(3, 3, 6, 2, "batch", False)).state_dict())
    del state["model.model.1.model.2.weight"]
    state["model.model.9.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="missing 1 key.*unexpected 1"):
        import_upstream_generator(state)


def test_mixed_norm_evidence_is_refused() -> None:
    state = dict(randomize(ref_resnet(3, 3, 4, 1, "batch", False)).state_dict())
    state["model.1.bias"] = torch.zeros(4)
    with pytest.raises(ValueError, match="both norm weights"):
        import_upstream_generator(state)


def test_non_consecutive_blocks_are_refused() -> None:
    state = dict(randomize(ref_resnet(3, 3, 4, 3, "instance", False)).state_dict())
    state = {k: v for k, v in state.items() if not k.startswith("model.11.")}
    with pytest.raises(ValueError, match="residual blocks at"):
        import_upstream_generator(state)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("make, old_stats", [
    (lambda: RefUnet(3, 3, 5, 1, "instance", False), True),  # smallest: the dropped stats weigh most
    (lambda: ref_resnet(1, 3, 1, 2, "instance", False), True),
    (lambda: ref_resnet(3, 3, 2, 1, "batch", True), False),
], ids=["unet-ngf1-old-instance", "resnet-ngf1-old-instance", "resnet-batch"])
def test_files_load_through_the_checked_path(tmp_path, make, old_stats, zip_format) -> None:
    """Real files go through load_model's checks (record sizes, layout on "meta", bytes against
    what the model needs) and still load, including old files whose statistics are dropped."""
    from frametrans.checkpoint import load_model

    ref = randomize(make())
    state = dict(ref.state_dict())
    if old_stats:
        state = old_instance_file(ref, state)
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    ours = load_model(path).eval()
    x = torch.rand(1, ours.config.in_channels, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x * 2 - 1), ref(x * 2 - 1), atol=1e-6, rtol=0)
