"""Tiny configs for every registered architecture, shared by tests."""

from frametrans import registry

TINY = {
    "unet": dict(num_downs=5, ngf=4),
    "resnet": dict(ngf=4, n_blocks=1),
    "patchgan": dict(ndf=4, n_layers=2),
    "pixelgan": dict(ndf=4),
    "munit": dict(dim=4, style_dim=3, n_res=1, mlp_dim=8),
    "munit_discriminator": dict(dim=4, n_layer=2, num_scales=2),
    "predictor": dict(channels=1, context=3, horizon=2, width=4, depth=2),
}


def tiny_config(name: str):
    if name not in TINY:
        raise KeyError(f"add a tiny config for the new architecture {name!r} to tests/tests_support.py")
    return registry.get(name).config_cls(**TINY[name])
