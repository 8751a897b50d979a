"""Moving MNIST: digits bouncing in a square frame, generated on the fly.

The protocol of Srivastava et al. (2015) as OpenSTL and most papers use it: two 28x28 digits in a
64x64 frame, 20 frames (10 given, 10 predicted), one channel, values in [0, 1]. Each digit starts
at a uniform random position of the (size - digit size) canvas, moves ``step_length`` (0.1) of the
canvas per frame in a uniform random direction, and bounces off the borders (the position is
clamped to the border and the velocity component flipped). Digits are pasted with ``max``.

Two digit sources:

- ``moving-mnist``: the 10,000 MNIST test digits from ``t10k-images-idx3-ubyte.gz`` (the MNIST
  training split is not needed); digits 0-7999 make training (and validation) sequences, digits
  8000-9999 the test sequences.
- ``moving-digits``: scikit-learn's bundled 8x8 digits upsampled to 28x28, a stand-in that works on
  any machine without downloads (tests, smoke runs). Not comparable with published numbers.

Sequences are drawn from explicit ``numpy.random.Generator`` objects, so a seed fixes a test set
exactly, whatever the batch size used to render it.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

__all__ = [
    "SOURCES", "TEST_SEED", "VALIDATION_SEED", "MovingDigits", "load_digits", "read_idx_images",
    "resize_digits", "default_mnist_dir", "make_datasets", "DataSourceError", "Datasets", "Trajectories",
]

SOURCES = ("moving-mnist", "moving-digits")
#: Seeds of the fixed evaluation sets: the test set uses the test digits, validation the training
#: digits. Different seeds, different digits: validation never peeks at the test set.
TEST_SEED = 20_240_601
VALIDATION_SEED = 20_240_602

MNIST_IMAGES = "t10k-images-idx3-ubyte.gz"
MNIST_TRAIN_DIGITS = 8000  # digits [0, 8000) train, [8000, 10000) test
SKLEARN_TRAIN_DIGITS = 1400  # of the 1797 scikit-learn digits: [0, 1400) train, [1400, 1797) test


class DataSourceError(ValueError):
    """The digits for a data source cannot be found or read (one-line message)."""


# ---------------------------------------------------------------------------------------------
# digit sources


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX image file (``*-images-idx3-ubyte[.gz]``): uint8 [N, rows, cols]."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataSourceError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 16 or data[:4] != b"\x00\x00\x08\x03":
        raise DataSourceError(f"{path}: not an IDX image file (magic {data[:4].hex() or 'none'}, want 00000803)")
    n, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    if len(data) != 16 + n * rows * cols:
        raise DataSourceError(
            f"{path}: truncated or padded IDX file: {len(data)} bytes, header says {n}x{rows}x{cols}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols).copy()


def default_mnist_dir() -> Path:
    """``$FRAMETRANS_MNIST_DIR``, else ``../shared/data/mnist`` beside the repository root."""
    env = os.environ.get("FRAMETRANS_MNIST_DIR")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data" / "mnist"


def resize_digits(digits: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 digits [N, h, w] to [N, size, size] (bilinear, antialiased when shrinking)."""
    import torch
    import torch.nn.functional as F

    if digits.shape[1:] == (size, size):
        return digits
    x = torch.from_numpy(digits.astype(np.float32))[:, None]
    shrink = size < max(digits.shape[1:])
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return y[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def load_digits(source: str, mnist_dir: Optional[str | os.PathLike] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Training and test digits of a data source: two uint8 arrays [N, 28, 28], values 0..255.

    source: ``"moving-mnist"`` (MNIST t10k digits 0-7999 / 8000-9999; ``mnist_dir`` holds
        ``t10k-images-idx3-ubyte.gz``, default :func:`default_mnist_dir`) or ``"moving-digits"``
        (scikit-learn's 1797 8x8 digits, bilinearly upsampled to 28x28; 0-1399 / 1400-1796).
    """
    if source == "moving-mnist":
        folder = Path(mnist_dir) if mnist_dir is not None else default_mnist_dir()
        path = folder / MNIST_IMAGES
        if not path.is_file():
            raise DataSourceError(
                f"{path}: not found; put the MNIST {MNIST_IMAGES} there, set FRAMETRANS_MNIST_DIR, "
                "or use --data moving-digits (bundled with scikit-learn)"
            )
        digits = read_idx_images(path)
        if digits.shape != (10000, 28, 28):
            raise DataSourceError(f"{path}: expected 10000 28x28 digits, found {digits.shape}")
        return digits[:MNIST_TRAIN_DIGITS], digits[MNIST_TRAIN_DIGITS:]
    if source == "moving-digits":
        from sklearn.datasets import load_digits as sklearn_digits

        small = sklearn_digits().images  # [1797, 8, 8] float, 0..16
        scaled = np.clip(np.round(small * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        digits = resize_digits(scaled, 28)
        return digits[:SKLEARN_TRAIN_DIGITS], digits[SKLEARN_TRAIN_DIGITS:]
    raise DataSourceError(f"unknown data source {source!r}; use one of {', '.join(SOURCES)}")


# ---------------------------------------------------------------------------------------------
# sequences


@dataclass
class Trajectories:
    """Drawn parameters of ``n`` sequences: which digits, and where they are in every frame.

    digit: [n, num_digits] indices into the digit array. top, left: [n, num_digits, frames] int
    pixel offsets of each digit's top-left corner.
    """

    digit: np.ndarray
    top: np.ndarray
    left: np.ndarray

    def __len__(self) -> int:
        return int(self.digit.shape[0])

    def __getitem__(self, s: slice) -> "Trajectories":
        return Trajectories(self.digit[s], self.top[s], self.left[s])


def trajectories(start: np.ndarray, theta: np.ndarray, frames: int, step_length: float,
                 canvas: int) -> np.ndarray:
    """Top-left offsets of every digit in every frame: int64 [B, digits, frames, 2] (y, x).

    start: float64 [B, digits, 2] in [0, 1) (y, x); theta: float64 [B, digits], the direction in
    radians. The standard generator, one set of array ops per frame: step ``step_length``, then
    every coordinate at or beyond a border is clamped to it and its velocity flipped; offsets are
    ``int(canvas * position)``. The host generator and the training one
    (:mod:`frametrans.train.generated`) both draw their paths here.
    """
    pos = np.array(start, dtype=np.float64)
    vel = np.stack([np.sin(theta), np.cos(theta)], axis=-1) * step_length
    path = np.empty((frames,) + pos.shape)
    hit = np.empty(pos.shape, dtype=bool)
    for i in range(frames):
        pos += vel
        np.logical_or(pos <= 0.0, pos >= 1.0, out=hit)
        np.negative(vel, out=vel, where=hit)  # bounce: vel[hit] = -vel[hit]
        np.minimum(np.maximum(pos, 0.0, out=pos), 1.0, out=pos)
        path[i] = pos
    return (canvas * np.moveaxis(path, 0, -2)).astype(np.int64)


class MovingDigits:
    """Generator of bouncing-digit sequences.

    digits: uint8 [N, d, d] (from :func:`load_digits`). size: frame side in pixels. num_digits:
    digits per sequence. frames: frames per sequence (context + horizon). digit_size: resize the
    digits to this side first (None: keep them; useful for small frames). step_length: distance
    per frame as a fraction of the free canvas (0.1, as the standard generator).
    """

    def __init__(self, digits: np.ndarray, size: int = 64, num_digits: int = 2, frames: int = 20,
                 digit_size: Optional[int] = None, step_length: float = 0.1) -> None:
        digits = np.asarray(digits)
        if digits.ndim != 3 or digits.shape[1] != digits.shape[2] or len(digits) == 0:
            raise ValueError(f"digits must be a non-empty [N, d, d] array, got shape {digits.shape}")
        if digits.dtype != np.uint8:
            raise ValueError(f"digits must be uint8 (0..255), got {digits.dtype}")
        if digit_size is not None:
            digits = resize_digits(digits, digit_size)
        if digits.shape[1] > size:
            raise ValueError(f"digits of {digits.shape[1]} px do not fit frames of {size} px")
        if num_digits < 1 or frames < 1:
            raise ValueError(f"num_digits and frames must be >= 1, got {num_digits}, {frames}")
        self.digits = digits
        self.size = int(size)
        self.num_digits = int(num_digits)
        self.frames = int(frames)
        self.step_length = float(step_length)

    @property
    def digit_size(self) -> int:
        return int(self.digits.shape[1])

    # -- drawing -------------------------------------------------------------------------------

    def draw(self, n: int, rng: np.random.Generator) -> Trajectories:
        """Draw the digits and trajectories of ``n`` sequences (cheap; no pixels yet)."""
        shape = (n, self.num_digits)
        digit = rng.integers(0, len(self.digits), size=shape)
        y = rng.random(shape)
        x = rng.random(shape)
        theta = rng.random(shape) * 2 * np.pi
        offsets = trajectories(np.stack([y, x], axis=-1), theta, self.frames, self.step_length,
                               self.size - self.digit_size)  # [n, num_digits, frames, 2]
        return Trajectories(digit, offsets[..., 0], offsets[..., 1])

    def render(self, traj: Trajectories) -> np.ndarray:
        """Paint sequences: uint8 [n, frames, 1, size, size], values 0..255."""
        n, f, s, d = len(traj), self.frames, self.size, self.digit_size
        out = np.zeros((n, f, s, s), dtype=np.uint8)
        tops, lefts, which = traj.top.tolist(), traj.left.tolist(), traj.digit.tolist()
        for b in range(n):  # plain slices: cheaper than fancy indexing, whatever n
            for k in range(self.num_digits):
                patch = self.digits[which[b][k]]
                for i in range(f):
                    top, left = tops[b][k][i], lefts[b][k][i]
                    box = out[b, i, top : top + d, left : left + d]
                    np.maximum(box, patch, out=box)
        return out[:, :, None]

    # -- public ---------------------------------------------------------------------------------

    def sample(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """``batch`` fresh sequences: float32 [batch, frames, 1, size, size] in [0, 1]."""
        return to_float(self.render(self.draw(batch, rng)))

    def fixed_set(self, n: int, seed: int, uint8: bool = False) -> np.ndarray:
        """A deterministic set of ``n`` sequences: float32 [n, frames, 1, size, size] in [0, 1]
        (uint8 0..255 with ``uint8=True``, 4x smaller). Same seed, same digits -> same array."""
        seqs = self.render(self.draw(n, np.random.default_rng(seed)))
        return seqs if uint8 else to_float(seqs)

    def iter_fixed_set(self, n: int, seed: int, batch: int = 256) -> Iterator[np.ndarray]:
        """:meth:`fixed_set` in chunks of ``batch`` sequences (float32), for sets too large for
        memory (10,000 Moving MNIST sequences are 3.3 GB as float32). Concatenated, the chunks
        equal ``fixed_set(n, seed)`` exactly."""
        traj = self.draw(n, np.random.default_rng(seed))
        for i in range(0, n, batch):
            yield to_float(self.render(traj[i : i + batch]))


def to_float(seqs: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 in [0, 1]."""
    return seqs.astype(np.float32) / np.float32(255.0)


@dataclass
class Datasets:
    """The three splits of a benchmark source: a training generator, and generators over the
    training / test digits for the fixed validation / test sets (seeds :data:`VALIDATION_SEED`,
    :data:`TEST_SEED`)."""

    train: MovingDigits
    test: MovingDigits

    def validation_set(self, n: int, uint8: bool = False) -> np.ndarray:
        return self.train.fixed_set(n, VALIDATION_SEED, uint8=uint8)

    def test_set(self, n: int, uint8: bool = False) -> np.ndarray:
        return self.test.fixed_set(n, TEST_SEED, uint8=uint8)


def make_datasets(source: str, size: int = 64, num_digits: int = 2, frames: int = 20,
                  digit_size: Optional[int] = None,
                  mnist_dir: Optional[str | os.PathLike] = None) -> Datasets:
    """Training and test generators of ``source`` (see :func:`load_digits`) with one geometry."""
    train_digits, test_digits = load_digits(source, mnist_dir)
    kwargs = dict(size=size, num_digits=num_digits, frames=frames, digit_size=digit_size)
    return Datasets(MovingDigits(train_digits, **kwargs), MovingDigits(test_digits, **kwargs))
