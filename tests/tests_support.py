"""Tiny configs for every registered architecture, and small builders shared by tests."""

import math

import numpy as np

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


def tiny_model(name: str = "resnet", seed: int = 0, **overrides):
    """A tiny, seeded model of a registered architecture, config fields overridable."""
    import torch

    torch.manual_seed(seed)
    cfg = tiny_config(name)
    if overrides:
        cfg = type(cfg)(**{**cfg.to_dict(), **overrides})
    return registry.get(name).build(cfg)


def smooth_images(n: int = 3, h: int = 40, w: int = 52, seed: int = 0, dtype=np.uint8):
    """``n`` [h, w, 3] images: smooth content plus noise, real structure for a model to respond to."""
    g = np.random.default_rng(seed)
    top = 65535 if dtype == np.uint16 else 255
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        base = (np.sin(xx / 5.0 + i)[..., None] * np.cos(yy / 7.0)[..., None] * [1.0, 0.6, -0.8] + 1) / 2
        img = base + g.normal(0, 0.05, (h, w, 3))
        out.append(np.clip(img * top, 0, top).astype(dtype))
    return out


def psnr(a: np.ndarray, b: np.ndarray, top: float = 255.0) -> float:
    """PSNR in dB of two integer images (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(top**2 / mse)


def tiny_resnet_file(folder):
    """A tiny seeded ResNet generator (ngf 4, one block) saved as ``folder/tiny.safetensors``."""
    import torch

    from frametrans.checkpoint import save_model
    from frametrans.models.resnet import ResnetConfig, ResnetGenerator

    torch.manual_seed(0)
    return save_model(ResnetGenerator(ResnetConfig(ngf=4, n_blocks=1)), folder / "tiny.safetensors")
