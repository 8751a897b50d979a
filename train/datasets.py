"""Training data: paired and unpaired images, frames from videos, and frame windows.

Layouts understood (``--data DIR``):

    paired (pix2pix)   DIR/train/*.png  each image A|B side by side (the reference's aligned layout),
                       held-out pairs in DIR/val (or DIR/test); DIR itself may hold the A|B images
                       or DIR/A + DIR/B, or DIR/trainA + DIR/trainB (+ valA/valB or testA/testB),
                       matched by file name without extension
    unpaired (CycleGAN, MUNIT)
                       DIR/trainA + DIR/trainB (or DIR/A + DIR/B); or --data-a/--data-b, each a
                       folder of images, a folder of videos or one video (every Nth frame is used)
    windows (predictor)
                       a video, a folder of frames (sorted by name), a folder of videos or of frame
                       folders; or the generated sources ``moving-digits`` / ``moving-mnist``

Determinism, and why there is no RNG state to carry around: every dataset here is indexed by the
*global sample counter* ``k`` (sample ``j`` of step ``s`` is ``k = s * batch + j``; with DDP each
process takes a contiguous slice of the global batch, see :class:`StepBatches`). The order of
epoch ``e`` is a permutation drawn from ``numpy.random.default_rng([seed, ORDER, e])`` and the
augmentation of sample ``k`` from ``default_rng([seed, AUGMENT, k])``. So the data of a step depend
only on (seed, step): a resumed run sees exactly the batches an uninterrupted one would, whatever
the number of loader workers, and the "data-order state" saved with a checkpoint is (seed, step).

Values: image samples are float32 [C, H, W] in [-1, 1] (tanh generators); windows are float32
[T, C, H, W] in [0, 1] (the predictor's range).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from frametrans.train.options import RESIZE_MODES
from frametrans.train.reading import (TRAIN_IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, DataError, decode_video, is_video,
                                      list_images, list_videos, read_rgb, to_uint8)

__all__ = ["DataError", "decode_video", "read_rgb", "Augment", "find_pairs", "find_domains", "PairedDataset",
           "UnpairedDataset", "WindowDataset", "load_sequences", "make_loader", "StepBatches", "batch_list",
           "steps_per_epoch", "data_path", "spread", "is_video", "list_images", "list_videos"]

GENERATED_SOURCES = ("moving-digits", "moving-mnist")

# stream ids mixed into the seeds, so order, augmentation and the B-domain draw are independent
_ORDER, _AUGMENT, _PICK_B = 0, 1, 2  # 3: generated sequences (frametrans.train.generated)


def spread(count: int, n: int) -> List[int]:
    """``count`` indices into ``range(n)`` spread evenly from first to last (repeats when count > n)."""
    return [int(i) for i in np.linspace(0, n - 1, num=count).round()] if n and count else []


# ---------------------------------------------------------------------------------------------
# augmentation (the reference's resize_and_crop + flip)


@dataclass(frozen=True)
class Augment:
    """Resize, random crop, random horizontal flip, to float [-1, 1] (or [0, 1] windows).

    load_size: ``square`` resizes to load_size x load_size (pix2pix/CycleGAN reference),
        ``short-side`` scales the short side to load_size (MUNIT reference), ``none`` keeps the size.
    crop: side of the random square crop. flip: random horizontal flip with probability 1/2.
    """

    load_size: int
    crop: int
    flip: bool = True
    resize: str = "square"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise DataError(f"unknown resize mode {self.resize!r}; use one of {', '.join(RESIZE_MODES)}")
        if self.crop < 1 or self.load_size < 1:
            raise DataError(f"sizes must be >= 1, got load size {self.load_size}, crop {self.crop}")
        if self.resize != "none" and self.crop > self.load_size:
            raise DataError(f"--crop {self.crop} is larger than --size {self.load_size}")

    def resized(self, img: np.ndarray) -> np.ndarray:
        """uint8 [H, W, C] -> resized uint8 array (bicubic, as the reference)."""
        h, w = img.shape[:2]
        if self.resize == "square":
            size = (self.load_size, self.load_size)
        elif self.resize == "short-side":
            scale = self.load_size / min(h, w)
            size = (max(self.crop, round(w * scale)), max(self.crop, round(h * scale)))
        else:
            return img
        if (w, h) == size:
            return img
        out = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)
        return out[..., None] if out.ndim == 2 else out

    def draw(self, rng: np.random.Generator, h: int, w: int) -> Tuple[int, int, bool]:
        """Crop corner (top, left) and flip for a resized image of h x w."""
        if h < self.crop or w < self.crop:
            raise DataError(f"image of {w}x{h} is smaller than --crop {self.crop}; use a smaller --crop")
        top = int(rng.integers(0, h - self.crop + 1))
        left = int(rng.integers(0, w - self.crop + 1))
        flip = bool(self.flip and rng.random() > 0.5)
        return top, left, flip

    def apply(self, img: np.ndarray, params: Tuple[int, int, bool]) -> torch.Tensor:
        """Resized uint8 [H, W, C] -> float32 [C, crop, crop] in [-1, 1]."""
        top, left, flip = params
        patch = img[top : top + self.crop, left : left + self.crop]
        if flip:
            patch = patch[:, ::-1]
        return to_tensor(patch)

    def center(self, img: np.ndarray) -> torch.Tensor:
        """Evaluation view: resize to crop x crop (the reference test setting), no randomness."""
        out = cv2.resize(img, (self.crop, self.crop), interpolation=cv2.INTER_CUBIC)
        return to_tensor(out[..., None] if out.ndim == 2 else out)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (or uint16) [H, W, C] -> float32 [C, H, W] in [-1, 1]."""
    half = 32767.5 if img.dtype == np.uint16 else 127.5
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    return t / half - 1.0


# ---------------------------------------------------------------------------------------------
# image sources: a list of images, read on demand (folders) or held decoded (video frames)


class ImageSource:
    """``len(source)`` images; ``source.get(i)`` -> uint8 [H, W, 3]; ``source.name(i)``."""

    description = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def name(self, i: int) -> str:
        return str(i)


class FolderImages(ImageSource):
    """Image files, read on demand with :func:`read_rgb` (frametrans.io)."""

    def __init__(self, paths: Sequence[Path], description: str) -> None:
        self.paths = list(paths)
        self.description = description

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> np.ndarray:
        return read_rgb(self.paths[i])

    def name(self, i: int) -> str:
        return self.paths[i].name


class MemoryImages(ImageSource):
    """Video frames decoded once per run (:func:`decode_video`), resized to the load size and held
    as uint8 [H, W, 3]: the decode cache; every epoch (and every loader worker) reads them here."""

    def __init__(self, frames: List[np.ndarray], description: str) -> None:
        self.frames = frames
        self.description = description

    def __len__(self) -> int:
        return len(self.frames)

    def get(self, i: int) -> np.ndarray:
        return self.frames[i]


def domain_source(path: Path, augment: Augment, frame_every: int, max_frames: Optional[int]) -> ImageSource:
    """One image domain: a folder of images, a folder of videos, or a video file."""
    if is_video(path):
        frames = decode_video(path, frame_every, max_frames, augment.resized)
        return MemoryImages(frames, f"{path} (every {frame_every}. frame: {len(frames)})")
    if path.is_dir():
        images = list_images(path)
        if images:
            return FolderImages(images, f"{path} ({len(images)} images)")
        videos = list_videos(path)
        if videos:
            frames: List[np.ndarray] = []
            for v in videos:
                left = None if max_frames is None else max_frames - len(frames)
                if left is not None and left <= 0:
                    break
                frames += decode_video(v, frame_every, left, augment.resized)
            return MemoryImages(frames, f"{path} ({len(videos)} videos, {len(frames)} frames)")
        raise DataError(f"{path}: no images ({', '.join(sorted(TRAIN_IMAGE_EXTENSIONS))}) or videos in this folder")
    if path.exists():
        raise DataError(f"{path}: expected a folder of images or a video ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    raise DataError(f"{path}: no such file or folder")


# ---------------------------------------------------------------------------------------------
# pairs


class PairSource:
    """``len(pairs)`` pairs; ``pairs.get(i)`` -> (A, B) uint8 [H, W, 3] each."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class AlignedPairs(PairSource):
    """Images holding A (left half) and B (right half) side by side."""

    def __init__(self, paths: List[Path], description: str) -> None:
        super().__init__(description)
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        img = read_rgb(self.paths[i])
        half = img.shape[1] // 2
        if half < 1:
            raise DataError(f"{self.paths[i]}: too narrow to hold A|B side by side")
        return img[:, :half], img[:, half : 2 * half]


class MatchedPairs(PairSource):
    """A and B in two folders, matched by file name without extension."""

    def __init__(self, folder_a: Path, folder_b: Path) -> None:
        a = {p.stem: p for p in list_images(folder_a)}
        b = {p.stem: p for p in list_images(folder_b)}
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        if only_a or only_b:
            example = f"{folder_a / only_a[0]}.*" if only_a else f"{folder_b / only_b[0]}.*"
            raise DataError(
                f"{folder_a} and {folder_b} do not match by file name: {len(only_a)} A images and "
                f"{len(only_b)} B images have no partner (e.g. {example})"
            )
        if not a:
            raise DataError(f"{folder_a}: no images")
        super().__init__(f"{folder_a} + {folder_b} ({len(a)} pairs)")
        names = sorted(a)
        self.paths = [(a[n], b[n]) for n in names]

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        pa, pb = self.paths[i]
        return read_rgb(pa), read_rgb(pb)


def find_pairs(root: Path, split: str = "train") -> Optional[PairSource]:
    """The ``split`` pairs of a paired dataset at ``root`` (see the module docstring).

    split: ``train`` or ``val`` (which falls back to ``test``). None when there is no such split
    (for ``val``); DataError when ``root`` holds no training pairs in a known layout.
    """
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: paired data must be a folder (train/ with A|B images, or A/ + B/)")
    splits = ["train"] if split == "train" else ["val", "test"]
    for name in splits:
        if (root / name).is_dir() and list_images(root / name):
            paths = list_images(root / name)
            return AlignedPairs(paths, f"{root / name} ({len(paths)} A|B images)")
        if (root / f"{name}A").is_dir() and (root / f"{name}B").is_dir():
            return MatchedPairs(root / f"{name}A", root / f"{name}B")
    if split == "train":
        if (root / "A").is_dir() and (root / "B").is_dir():
            return MatchedPairs(root / "A", root / "B")
        paths = list_images(root)
        if paths:
            return AlignedPairs(paths, f"{root} ({len(paths)} A|B images)")
        raise DataError(
            f"{root}: no paired data: expected train/ (A|B side by side), A/ + B/ or trainA/ + "
            "trainB/ matched by file name, or A|B images directly in the folder"
        )
    return None


def find_domains(
    data: Optional[Path],
    data_a: Optional[Path],
    data_b: Optional[Path],
    augment: Augment,
    frame_every: int = 1,
    max_frames: Optional[int] = None,
) -> Tuple[ImageSource, ImageSource]:
    """The two image domains of an unpaired dataset: --data DIR (trainA/trainB or A/B) or
    --data-a X --data-b Y (each a folder or a video)."""
    if data_a is not None or data_b is not None:
        if data_a is None or data_b is None:
            raise DataError("give both --data-a and --data-b (one source per domain)")
        return (domain_source(data_a, augment, frame_every, max_frames),
                domain_source(data_b, augment, frame_every, max_frames))
    if data is None:
        raise DataError("no training data: give --data DIR (with trainA/ and trainB/) or --data-a and --data-b")
    if is_video(data):
        raise DataError(f"{data}: one video is one domain; give --data-a VIDEO_A --data-b VIDEO_B")
    for a, b in (("trainA", "trainB"), ("A", "B")):
        if (data / a).is_dir() and (data / b).is_dir():
            return (domain_source(data / a, augment, frame_every, max_frames),
                    domain_source(data / b, augment, frame_every, max_frames))
    raise DataError(f"{data}: expected trainA/ + trainB/ (or A/ + B/) inside, or use --data-a/--data-b")


# ---------------------------------------------------------------------------------------------
# datasets indexed by the global sample counter


class EpochOrder:
    """Sample counter k -> item index: a fresh permutation of ``n`` items every epoch."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise DataError("the dataset is empty")
        self.n = n
        self.seed = seed
        self._epoch = -1
        self._perm = np.arange(n)

    def __call__(self, k: int) -> int:
        epoch, pos = divmod(k, self.n)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, _ORDER, epoch]).permutation(self.n)
            self._epoch = epoch
        return int(self._perm[pos])


def augment_rng(seed: int, k: int) -> np.random.Generator:
    """The generator that draws the augmentation of sample ``k``."""
    return np.random.default_rng([seed, _AUGMENT, k])


class TrainDataset(torch.utils.data.Dataset):
    """Base: ``dataset[k]`` is sample ``k`` of the endless stream; ``epoch_size`` items per epoch
    (None for generated data, which has no epochs)."""

    epoch_size: Optional[int] = None
    description = ""

    def __len__(self) -> int:  # the sampler decides the range; this only satisfies the protocol
        return 2**62


class PairedDataset(TrainDataset):
    """pix2pix: {"A": [3, crop, crop], "B": [3, crop, crop]} in [-1, 1], same crop and flip."""

    def __init__(self, pairs: PairSource, augment: Augment, seed: int, direction: str = "AtoB") -> None:
        if direction not in ("AtoB", "BtoA"):
            raise DataError(f"unknown direction {direction!r}; use AtoB or BtoA")
        self.pairs, self.augment, self.seed, self.direction = pairs, augment, seed, direction
        self.order = EpochOrder(len(pairs), seed)
        self.epoch_size = len(pairs)
        self.description = pairs.description

    def __getitem__(self, k: int) -> Dict[str, torch.Tensor]:
        a, b = self.pairs.get(self.order(k))
        a, b = self.augment.resized(a), self.augment.resized(b)
        if a.shape != b.shape:  # matched folders may differ in size; the reference resizes both
            b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_CUBIC)
        params = self.augment.draw(augment_rng(self.seed, k), *a.shape[:2])
        ta, tb = self.augment.apply(a, params), self.augment.apply(b, params)
        return {"A": ta, "B": tb} if self.direction == "AtoB" else {"A": tb, "B": ta}

    def evaluation(self, count: int) -> List[Dict[str, torch.Tensor]]:
        """``count`` pairs spread evenly over the file order, resized to crop x crop (no randomness)."""
        out = []
        for i in spread(min(count, len(self.pairs)), len(self.pairs)):
            a, b = self.pairs.get(i)
            ta, tb = self.augment.center(a), self.augment.center(b)
            out.append({"A": ta, "B": tb} if self.direction == "AtoB" else {"A": tb, "B": ta})
        return out


class UnpairedDataset(TrainDataset):
    """CycleGAN/MUNIT: {"A": [3, crop, crop], "B": [3, crop, crop]} in [-1, 1], independent.

    As the reference: an epoch is max(len A, len B) samples; A follows the epoch order, B is drawn
    at random for each sample; each image gets its own crop and flip.
    """

    def __init__(self, a: ImageSource, b: ImageSource, augment: Augment, seed: int) -> None:
        if len(a) == 0 or len(b) == 0:
            raise DataError("an image domain is empty")
        self.a, self.b, self.augment, self.seed = a, b, augment, seed
        self.epoch_size = max(len(a), len(b))
        self.order = EpochOrder(self.epoch_size, seed)
        self.description = f"A: {a.description}; B: {b.description}"

    def __getitem__(self, k: int) -> Dict[str, torch.Tensor]:
        rng = augment_rng(self.seed, k)
        ia = self.order(k) % len(self.a)
        ib = int(np.random.default_rng([self.seed, _PICK_B, k]).integers(len(self.b)))
        out = {}
        for key, source, i in (("A", self.a, ia), ("B", self.b, ib)):
            img = self.augment.resized(source.get(i))
            out[key] = self.augment.apply(img, self.augment.draw(rng, *img.shape[:2]))
        return out

    def evaluation(self, count: int) -> List[Dict[str, torch.Tensor]]:
        """``count`` fixed (A, B) couples spread evenly over each domain, resized to crop x crop, for
        sample grids (frames of one clip in a row would all look alike)."""
        return [{"A": self.augment.center(self.a.get(i)), "B": self.augment.center(self.b.get(j))}
                for i, j in zip(spread(count, len(self.a)), spread(count, len(self.b)))]


# ---------------------------------------------------------------------------------------------
# frame windows for the predictor


def _prepare_frame(img: np.ndarray, channels: int, size: Optional[int]) -> np.ndarray:
    """RGB uint8 (or uint16) -> [H, W, channels] uint8, short side scaled to ``size`` (None: unchanged)."""
    img = to_uint8(img)
    if channels == 1:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
    elif channels != 3:
        raise DataError(f"frames can have 1 or 3 channels, not {channels}")
    if size is not None:
        h, w = img.shape[:2]
        scale = size / min(h, w)
        if scale != 1.0:
            img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
            img = img[..., None] if img.ndim == 2 else img
    return img


def load_sequences(path: Path, channels: int, size: Optional[int], max_frames: Optional[int] = None) -> List[np.ndarray]:
    """Frame sequences at ``path``: uint8 arrays [T, H, W, channels], short side = ``size``.

    A video, a folder of frames (one sequence, sorted by name), a folder of videos, or a folder of
    frame folders (one sequence each).
    """
    prep = lambda img: _prepare_frame(img, channels, size)  # noqa: E731
    if is_video(path):
        return [np.stack(decode_video(path, 1, max_frames, prep))]
    if not path.is_dir():
        raise DataError(f"{path}: expected a video, a folder of frames or a folder of videos")
    images = list_images(path)
    if images:
        return [np.stack([prep(read_rgb(p)) for p in images[:max_frames]])]
    seqs = [np.stack(decode_video(v, 1, max_frames, prep)) for v in list_videos(path)]
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        frames = list_images(sub)
        if frames:
            seqs.append(np.stack([prep(read_rgb(p)) for p in frames[:max_frames]]))
    if not seqs:
        raise DataError(f"{path}: no frames, videos or frame folders found")
    return seqs  # windows never span sequences, so frame sizes may differ between them


class WindowDataset(TrainDataset):
    """Sliding windows of ``length`` frames, ``stride`` frames apart, from frame sequences:
    {"frames": float32 [length, C, crop, crop] in [0, 1]} with a random crop (and flip)."""

    def __init__(self, sequences: List[np.ndarray], length: int, stride: int, crop: int,
                 seed: int, flip: bool = False, description: str = "") -> None:
        if stride < 1:
            raise DataError(f"--stride must be >= 1, got {stride}")
        span = (length - 1) * stride + 1
        index = [(s, t) for s, seq in enumerate(sequences) for t in range(len(seq) - span + 1)]
        if not index:
            longest = max((len(s) for s in sequences), default=0)
            raise DataError(
                f"no window of {length} frames at stride {stride} ({span} frames) fits: the longest "
                f"sequence has {longest} frames; use a smaller --stride, --context or --horizon"
            )
        small = [s.shape[1:3] for s in sequences if min(s.shape[1:3]) < crop]
        if small:
            raise DataError(f"frames of {small[0][1]}x{small[0][0]} are smaller than --crop {crop}")
        self.sequences, self.length, self.stride, self.crop = sequences, length, stride, crop
        self.seed, self.flip = seed, flip
        self.index = np.asarray(index, dtype=np.int64)
        self.epoch_size = len(index)
        self.order = EpochOrder(len(index), seed)
        self.description = description or f"{len(sequences)} sequences, {len(index)} windows"

    def window(self, i: int, rng: Optional[np.random.Generator]) -> torch.Tensor:
        s, t = (int(v) for v in self.index[i])
        seq = self.sequences[s]
        frames = seq[t : t + (self.length - 1) * self.stride + 1 : self.stride]  # [L, H, W, C]
        h, w = frames.shape[1:3]
        if rng is None:  # evaluation: centre crop
            top, left, flip = (h - self.crop) // 2, (w - self.crop) // 2, False
        else:
            top = int(rng.integers(0, h - self.crop + 1))
            left = int(rng.integers(0, w - self.crop + 1))
            flip = bool(self.flip and rng.random() > 0.5)
        patch = frames[:, top : top + self.crop, left : left + self.crop]
        if flip:
            patch = patch[:, :, ::-1]
        t_ = torch.from_numpy(np.ascontiguousarray(patch)).permute(0, 3, 1, 2).float()
        return t_ / 255.0

    def __getitem__(self, k: int) -> Dict[str, torch.Tensor]:
        return {"frames": self.window(self.order(k), augment_rng(self.seed, k))}

    def evaluation(self, count: int) -> List[Dict[str, torch.Tensor]]:
        """``count`` windows spread evenly over the data, centre-cropped."""
        return [{"frames": self.window(i, None)} for i in spread(min(count, len(self.index)), len(self.index))]


# ---------------------------------------------------------------------------------------------
# batching


class StepBatches(torch.utils.data.Sampler):
    """Endless batches of consecutive sample counters, from ``start``: [start, start + B), ...

    With ``world`` > 1 processes (DDP), ``batch_size`` is still the global batch B and this rank
    yields only its slice of each: [k + rank * B/W, k + (rank + 1) * B/W) for k = start, start + B,
    ... The slices of all ranks together are the single-process batch, so the data of a step
    depend only on (seed, step), whatever the number of processes.
    """

    def __init__(self, batch_size: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        if world < 1 or not 0 <= rank < world:
            raise DataError(f"rank {rank} of {world} processes is not a valid data shard")
        if batch_size % world:
            raise DataError(f"--batch-size {batch_size} (the global batch) does not split evenly over "
                            f"{world} processes; use a multiple of {world}")
        self.batch_size = batch_size
        self.start = start
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[List[int]]:
        local = self.batch_size // self.world
        k = self.start + self.rank * local
        while True:
            yield list(range(k, k + local))
            k += self.batch_size


def make_loader(dataset: TrainDataset, batch_size: int, start: int, workers: int,
                pin_memory: bool = False, rank: int = 0, world: int = 1,
                device: Optional[torch.device] = None) -> Iterator[Dict[str, torch.Tensor]]:
    """An endless iterator over batches of the samples ``start``, ``start + 1``, ...

    workers: loader processes (0: load in this process). The batches do not depend on it.
    rank, world: this process's shard of the global batch ``batch_size`` (see :class:`StepBatches`).
    device: where a dataset that makes whole batches itself (``makes_batches``: the generated
    sources) makes them; such datasets use no loader processes.
    """
    if workers < 0:
        raise DataError(f"--workers must be >= 0, got {workers}")
    if getattr(dataset, "makes_batches", False):
        return _made_batches(dataset, StepBatches(batch_size, start, rank, world), device or torch.device("cpu"))
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(batch_size, start, rank, world), num_workers=workers,
        pin_memory=pin_memory, persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        # the loader draws a worker base seed when iterated; from its own generator, not the
        # global RNG, so creating a loader on resume does not shift the training's random draws
        generator=torch.Generator().manual_seed(0),
    )
    return iter(loader)


def _made_batches(dataset: Any, steps: StepBatches, device: torch.device) -> Iterator[Dict[str, torch.Tensor]]:
    for ks in steps:  # consecutive sample counters, on the host: the draws are made there
        yield dataset.batch(torch.arange(ks[0], ks[-1] + 1, dtype=torch.int64), device)


def batch_list(items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Stack a list of samples into one batch."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def steps_per_epoch(dataset: TrainDataset, batch_size: int) -> int:
    if dataset.epoch_size is None:
        raise DataError("generated data has no epochs; give --iters instead of --epochs")
    return max(1, math.ceil(dataset.epoch_size / batch_size))


def data_path(value: Optional[str]) -> Optional[Path]:
    return None if value is None else Path(os.path.expanduser(value))
