"""Moving digits generated in whole batches, their pixels on the training device.

The same sequences as :class:`frametrans.data.MovingDigits` (two digits bouncing in a square frame:
uniform start, uniform direction, ``step_length`` of the free canvas per frame, clamped and
reflected at the borders, pasted with ``max``), a batch at a time instead of a Python loop per
sample:

- the random draws of sample ``k`` are a counter-based hash of (seed, stream, k, draw)
  (:func:`uniforms`): no generator state, so sample ``k`` is the same whatever the batch it falls
  in, the number of DDP processes, or a resume in between;
- the draws and the trajectories are a few numbers per sample ([batch, digits, frames, 2]), made on
  the host by the host generator's own :func:`~frametrans.data.moving_digits.trajectories`;
  they go to the device in one copy (:func:`placements`);
- the digit sprites live on the device (uploaded once, :class:`DeviceDigits`), and compositing is
  one ``scatter_`` per digit into a uint8 [batch, frames, size, size] canvas there, the digits'
  canvases combined with ``maximum`` (:func:`composite`): about 15 device ops a batch whatever the
  number of frames, where drawing and stepping on the device took ~630 (a small model on a GPU is
  bound by launches: each op is one).

:class:`GeneratedWindows` is the predictor's training source for ``--data moving-mnist`` and
``--data moving-digits``; its fixed validation set is still the host generator's (seeded), so
validation numbers stay comparable with the benchmark's.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from frametrans.data.moving_digits import trajectories
from frametrans.train.datasets import DataError, TrainDataset

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
GENERATE_STREAM = 3  # the stream id of generated sequences among the data streams (order 0, augment 1, ...)
DRAWS_PER_DIGIT = 4  # which digit, start y, start x, direction


def _mul32(x, c: int):  # x: int64 array or int, values in [0, 2**32)
    """(x * c) mod 2**32, in 16-bit halves so that no product leaves int64. Works on Python ints
    too (the same hash anywhere)."""
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
    """``n`` uniform draws in [0, 1) for each sample counter in ``ks`` (int64, any device):
    float64 [len(ks), n] on the CPU, computed there with numpy.

    A pure function of (seed, stream, k, draw index); 53 random bits each."""
    base = 0
    for word in (seed & _M32, (seed >> 32) & _M32, stream & _M32):
        base = _combine(base, word)
    k = ks.detach().to("cpu", torch.int64).numpy()
    h = _combine(_combine(np.full_like(k, base), k & _M32), (k >> 32) & _M32)  # [B]
    h = _combine(h[:, None], np.arange(n, dtype=np.int64)[None, :])  # [B, n]
    hi = _fmix32(h ^ 0x5BD1E995)  # two 32-bit words per draw: 27 + 26 bits
    lo = _fmix32(h ^ 0x1B873593)
    u = ((hi >> 5).astype(np.float64) * 67108864.0 + (lo >> 6).astype(np.float64)) / 9007199254740992.0
    return torch.from_numpy(u)


def placements(digit: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
    """Where :func:`composite` pastes: int64 [B, digits, 1 + frames], per digit its sprite index,
    then the flat index of its top-left pixel in each frame of a [B * frames * size * size] canvas.

    digit: int [B, digits]; offsets: int64 [B, digits, frames, 2] (y, x), from :func:`trajectories`."""
    b, _, f, _ = offsets.shape
    frame0 = (np.arange(b, dtype=np.int64)[:, None] * f + np.arange(f, dtype=np.int64)[None, :]) * (size * size)
    corner = frame0[:, None, :] + offsets[..., 0] * size + offsets[..., 1]
    return np.concatenate([np.asarray(digit, dtype=np.int64)[..., None], corner], axis=-1)


def sprite_box(d: int, size: int, device: torch.device) -> torch.Tensor:
    """int64 [1, d * d]: the flat canvas offsets of a d x d sprite's pixels from its top-left one."""
    return (torch.arange(d, device=device)[:, None] * size + torch.arange(d, device=device)[None, :]).view(1, -1)


def composite(sprites: torch.Tensor, placed: torch.Tensor, size: int, box: torch.Tensor) -> torch.Tensor:
    """Paste the sprites where :func:`placements` says, with ``max``: float32 [B, frames, 1, size,
    size] in [0, 1], on ``sprites.device``.

    sprites: uint8 [N, d, d]; placed: int64 [B, digits, 1 + frames] on the same device, every
    sprite inside its frame; box: :func:`sprite_box` of the sprites (made once). Each digit is
    scattered into its own uint8 canvas (one sprite per frame: no index repeats), the canvases
    combined with ``maximum``.
    """
    b, nd, f = placed.shape[0], placed.shape[1], placed.shape[2] - 1
    d = sprites.shape[-1]
    out: Optional[torch.Tensor] = None
    for k in range(nd):
        index = (placed[:, k, 1:].reshape(-1, 1) + box).view(-1)  # [B * F * d * d]
        values = sprites[placed[:, k, 0]].view(b, 1, d * d).expand(-1, f, -1).reshape(-1)
        canvas = torch.zeros(b * f * size * size, dtype=sprites.dtype, device=sprites.device).scatter_(0, index, values)
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
        self.box = sprite_box(digits.shape[1], self.size, self.device)

    def draws(self, seed: int, ks: torch.Tensor) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(digit int64 [B, digits], start float64 [B, digits, 2], theta float64 [B, digits]) of
        the samples ``ks``, on the host."""
        u = uniforms(seed, GENERATE_STREAM, ks, DRAWS_PER_DIGIT * self.num_digits).numpy()
        u = u.reshape(-1, self.num_digits, DRAWS_PER_DIGIT)
        n = self.sprites.shape[0]
        digit = np.minimum((u[..., 0] * n).astype(np.int64), n - 1)
        return digit, u[..., 1:3], u[..., 3] * (2 * math.pi)

    def render(self, digit, start, theta) -> torch.Tensor:
        """Sequences from drawn parameters (numpy arrays or CPU tensors): float32 [B, frames, 1,
        size, size] in [0, 1], on the device."""
        canvas = self.size - self.sprites.shape[-1]
        offsets = trajectories(np.asarray(start, dtype=np.float64), np.asarray(theta, dtype=np.float64),
                               self.frames, self.step_length, canvas)
        placed = torch.from_numpy(placements(np.asarray(digit), offsets, self.size))
        if self.device.type == "cuda":  # from page-locked memory: the copy waits for no earlier work
            placed = placed.pin_memory().to(self.device, non_blocking=True)
        return composite(self.sprites, placed.to(self.device), self.size, self.box)

    def batch(self, seed: int, ks: torch.Tensor) -> torch.Tensor:
        """The sequences of sample counters ``ks``: float32 [len(ks), frames, 1, size, size]."""
        return self.render(*self.draws(seed, ks))


class GeneratedWindows(TrainDataset):
    """Moving digits drawn on the training device: batches of {"frames": float32 [B, frames, 1,
    size, size] in [0, 1]}, sample ``k`` a pure function of (seed, k).

    The trainer asks for whole batches (:meth:`batch`) on its device; indexing (``ds[k]``) makes
    one sample on the CPU (the same values: the draws are made on the host either way).
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
        """The samples with counters ``ks`` (int64 [B]), their pixels made on ``device``."""
        return {"frames": self.on(device).batch(self.seed, ks)}

    def __getitem__(self, k: int) -> Dict[str, torch.Tensor]:
        frames = self.batch(torch.tensor([k]), torch.device("cpu"))["frames"][0]
        return {"frames": frames}

    def evaluation(self, count: int) -> List[Dict[str, torch.Tensor]]:
        """The fixed validation set (training digits, a seed of its own), drawn on the host."""
        seqs = self.splits.validation_set(count)
        return [{"frames": torch.from_numpy(s)} for s in seqs]
