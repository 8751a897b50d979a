"""Moving digits generated on the training device, a whole batch at a time.

The same sequences as :class:`frametrans.data.MovingDigits` (two digits bouncing in a square frame:
uniform start, uniform direction, ``step_length`` of the free canvas per frame, clamped and
reflected at the borders, pasted with ``max``), drawn with tensor ops instead of a Python loop per
sample on the host:

- the digit sprites are uploaded to the device once (:class:`DeviceDigits`);
- the random draws of sample ``k`` are a counter-based hash of (seed, stream, k, draw), computed
  on the device for the whole batch (:func:`uniforms`): no generator state, so sample ``k`` is the
  same whatever the batch it falls in, the number of DDP processes, or a resume in between;
- the trajectories are ``frames`` vectorised steps over [batch, digits, 2] (float64, as numpy);
- compositing is one ``scatter_`` per digit into a uint8 [batch, frames, size, size] canvas,
  the digits' canvases combined with ``maximum``.

:class:`GeneratedWindows` is the predictor's training source for ``--data moving-mnist`` and
``--data moving-digits``; its fixed validation set is still the host generator's (seeded), so
validation numbers stay comparable with the benchmark's.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from frametrans.train.datasets import DataError, TrainDataset

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
GENERATE_STREAM = 3  # the stream id of generated sequences among the data streams (order 0, augment 1, ...)
DRAWS_PER_DIGIT = 4  # which digit, start y, start x, direction


def _mul32(x, c: int):  # x: int64 tensor or int, values in [0, 2**32)
    """(x * c) mod 2**32, in 16-bit halves so that no product leaves int64 (signed overflow is
    undefined in torch kernels). Works on Python ints too (the same hash on the host)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser: every input bit flips each output bit with probability ~1/2."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _combine(h, v):
    """Fold the 32-bit value ``v`` into the 32-bit hash ``h`` (boost's hash_combine, then a finaliser)."""
    return _fmix32((h ^ ((v + _GOLDEN + ((h << 6) & _M32) + (h >> 2)) & _M32)) & _M32)


def uniforms(seed: int, stream: int, ks: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` uniform draws in [0, 1) for each sample counter in ``ks``: float64 [len(ks), n].

    A pure function of (seed, stream, k, draw index), on ``ks.device``; 53 random bits each."""
    base = 0
    for word in (seed & _M32, (seed >> 32) & _M32, stream & _M32):  # on the host: plain ints
        base = _combine(base, word)
    ks = ks.to(torch.int64)
    h = _combine(_combine(torch.full_like(ks, base), ks & _M32), (ks >> 32) & _M32)  # [B]
    j = torch.arange(n, device=ks.device, dtype=torch.int64)
    h = _combine(h[:, None], j[None, :])  # [B, n]
    hi = _fmix32(h ^ 0x5BD1E995)  # two 32-bit words per draw: 27 + 26 bits
    lo = _fmix32(h ^ 0x1B873593)
    return ((hi >> 5).to(torch.float64) * 67108864.0 + (lo >> 6).to(torch.float64)) / 9007199254740992.0


def trajectories(start: torch.Tensor, theta: torch.Tensor, frames: int, step_length: float,
                 canvas: int) -> torch.Tensor:
    """Top-left offsets of every digit in every frame: int64 [B, digits, frames, 2] (y, x).

    start: float64 [B, digits, 2] in [0, 1) (y, x); theta: float64 [B, digits], the direction in
    radians. The standard generator: step, then every coordinate at or beyond a border is clamped
    to it and its velocity flipped; offsets are ``int(canvas * position)``.
    """
    pos = start.clone()
    vel = torch.stack([torch.sin(theta), torch.cos(theta)], dim=-1) * step_length
    path = []
    for _ in range(frames):
        pos = pos + vel
        hit = (pos <= 0.0) | (pos >= 1.0)
        vel = torch.where(hit, -vel, vel)
        pos = pos.clamp(0.0, 1.0)
        path.append(pos)
    return (canvas * torch.stack(path, dim=2)).to(torch.int64)


def composite(sprites: torch.Tensor, digit: torch.Tensor, offsets: torch.Tensor, size: int) -> torch.Tensor:
    """Paste the sprites at their offsets with ``max``: float32 [B, frames, 1, size, size] in [0, 1].

    sprites: uint8 [N, d, d]; digit: int64 [B, digits] indices into them; offsets: int64
    [B, digits, frames, 2] with 0 <= offset <= size - d. Each digit is scattered into its own
    uint8 canvas (one sprite per frame: no index repeats), the canvases combined with ``maximum``.
    """
    b, nd, f, _ = offsets.shape
    d = sprites.shape[-1]
    dev = sprites.device
    frame0 = (torch.arange(b, device=dev)[:, None] * f + torch.arange(f, device=dev)[None, :]) * (size * size)
    box = (torch.arange(d, device=dev)[:, None] * size + torch.arange(d, device=dev)[None, :]).view(1, -1)
    out: Optional[torch.Tensor] = None
    for k in range(nd):
        corner = frame0 + offsets[:, k, :, 0] * size + offsets[:, k, :, 1]  # [B, F]
        index = (corner.view(-1, 1) + box).view(-1)  # [B * F * d * d]
        values = sprites[digit[:, k]].view(b, 1, d * d).expand(-1, f, -1).reshape(-1)
        canvas = torch.zeros(b * f * size * size, dtype=sprites.dtype, device=dev).scatter_(0, index, values)
        out = canvas if out is None else torch.maximum(out, canvas, out=out)
    assert out is not None
    return out.to(torch.float32).div_(255.0).view(b, f, 1, size, size)


class DeviceDigits:
    """A moving-digits generator whose sprites live on ``device`` (uploaded once).

    digits: uint8 [N, d, d] (already at the digit size); size: frame side; frames per sequence.
    """

    def __init__(self, digits: np.ndarray, size: int, num_digits: int, frames: int,
                 device: torch.device, step_length: float = 0.1) -> None:
        if digits.ndim != 3 or digits.shape[1] != digits.shape[2] or digits.shape[1] > size:
            raise DataError(f"digits of shape {digits.shape} do not fit frames of {size} px")
        self.sprites = torch.from_numpy(np.ascontiguousarray(digits, dtype=np.uint8)).to(device)
        self.size, self.num_digits, self.frames = int(size), int(num_digits), int(frames)
        self.step_length = float(step_length)
        self.device = torch.device(device)

    def draws(self, seed: int, ks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(digit int64 [B, digits], start float64 [B, digits, 2], theta float64 [B, digits]) of
        the samples ``ks``."""
        u = uniforms(seed, GENERATE_STREAM, ks.to(self.device), DRAWS_PER_DIGIT * self.num_digits)
        u = u.view(-1, self.num_digits, DRAWS_PER_DIGIT)
        digit = (u[..., 0] * self.sprites.shape[0]).to(torch.int64).clamp_(max=self.sprites.shape[0] - 1)
        return digit, u[..., 1:3], u[..., 3] * (2 * math.pi)

    def render(self, digit: torch.Tensor, start: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Sequences from drawn parameters: float32 [B, frames, 1, size, size] in [0, 1]."""
        canvas = self.size - self.sprites.shape[-1]
        offsets = trajectories(start, theta, self.frames, self.step_length, canvas)
        return composite(self.sprites, digit, offsets, self.size)

    def batch(self, seed: int, ks: torch.Tensor) -> torch.Tensor:
        """The sequences of sample counters ``ks``: float32 [len(ks), frames, 1, size, size]."""
        return self.render(*self.draws(seed, ks))


class GeneratedWindows(TrainDataset):
    """Moving digits drawn on the training device: batches of {"frames": float32 [B, frames, 1,
    size, size] in [0, 1]}, sample ``k`` a pure function of (seed, k).

    The trainer asks for whole batches (:meth:`batch`) on its device; indexing (``ds[k]``) makes
    one sample on the CPU (the same values, up to the device's sin/cos rounding).
    """

    makes_batches = True

    def __init__(self, source: str, size: int, frames: int, seed: int,
                 mnist_dir: Optional[str] = None, num_digits: int = 2) -> None:
        from frametrans.data import make_datasets

        # the standard geometry is 28 px digits in 64 px frames; smaller frames get smaller digits
        digit_size = None if size >= 64 else max(4, round(28 * size / 64))
        try:
            self.splits = make_datasets(source, size=size, num_digits=num_digits, frames=frames,
                                        digit_size=digit_size, mnist_dir=mnist_dir)
        except ValueError as exc:
            raise DataError(str(exc)) from None
        self.seed = seed
        self.epoch_size = None
        self.description = f"{source}: {num_digits} digits in {size}x{size}, {frames} frames, generated on the device"
        self._generators: Dict[str, DeviceDigits] = {}

    def on(self, device: torch.device) -> DeviceDigits:
        """The generator with its sprites on ``device`` (uploaded on first use)."""
        key = str(device)
        if key not in self._generators:
            t = self.splits.train
            self._generators[key] = DeviceDigits(t.digits, t.size, t.num_digits, t.frames, device, t.step_length)
        return self._generators[key]

    def batch(self, ks: torch.Tensor, device: torch.device) -> Dict[str, torch.Tensor]:
        """The samples with counters ``ks`` (int64 [B]), made on ``device``."""
        return {"frames": self.on(device).batch(self.seed, ks)}

    def __getitem__(self, k: int) -> Dict[str, torch.Tensor]:
        frames = self.batch(torch.tensor([k]), torch.device("cpu"))["frames"][0]
        return {"frames": frames}

    def evaluation(self, count: int) -> List[Dict[str, torch.Tensor]]:
        """The fixed validation set (training digits, a seed of its own), drawn on the host."""
        seqs = self.splits.validation_set(count)
        return [{"frames": torch.from_numpy(s)} for s in seqs]
