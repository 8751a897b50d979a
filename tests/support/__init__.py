"""Tiny configs for every registered architecture, and small builders shared by tests."""

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from frametrans import registry

#: The README's sample: 75 frames of Big Buck Bunny, 640x360 H.264 yuv420p, with audio.
SAMPLE_CLIP = Path(__file__).resolve().parents[2] / "examples" / "data" / "clip.mp4"

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
        raise KeyError(f"add a tiny config for the new architecture {name!r} to tests/support/__init__.py")
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


def segment_clip(path, frames=60, size=(64, 48), fps=25, gop=10, audio=True, open_gop=False,
              vfr=False):
    """A small H.264 clip with B-frames, a keyframe every ``gop`` frames and an AAC track.

    vfr: irregular frame durations (1/1000 s time base); open_gop: x264 open GOPs.
    """
    w, h = size
    options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "3",
               "preset": "fast", "crf": "20"}
    if open_gop:
        options["x264-params"] = "open-gop=1"
    tb = Fraction(1, 1000) if vfr else Fraction(1, fps)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps, options=options)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.codec_context.time_base = tb
        if audio:
            a = c.add_stream("aac", rate=48000)
            a.layout = "mono"
        pts = 0
        for i in range(frames):
            img = np.stack([(xx * 4 + i * 5) % 256, (yy * 5 + i * 3) % 256, (xx + yy + i * 7) % 256], -1)
            img = np.clip(img + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = pts, tb
            pts += int(rng.integers(20, 60)) if vfr else 1
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if audio:
            n = int(48000 * frames / fps)
            samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)[None]
            af = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            af.sample_rate, af.pts = 48000, 0
            for p in [*a.encode(af), *a.encode(None)]:
                c.mux(p)
    return Path(path)


def decoded(path):
    """(pts in seconds, RGB frames) of the first video stream, and the audio packets' bytes."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [(f.pts * v.time_base, f.to_ndarray(format="rgb24")) for f in c.decode(v)]
    with av.open(str(path)) as c:
        audio = [bytes(p) for p in c.demux(*c.streams.audio) if p.size] if c.streams.audio else []
    return [t for t, _ in frames], [f for _, f in frames], audio
