"""Training data read through :mod:`frametrans.io`: the readers and extension lists ``frametrans
apply`` uses, so a picture trains as it is applied.

- images: :func:`frametrans.io.images.read_image` (EXIF orientation applied, palette/CMYK/... to
  RGB, ICC profiles to sRGB, 16-bit kept as uint16, alpha split off and dropped here, gray
  expanded to RGB);
- videos: :func:`frametrans.io.video.iter_video_frames` (rotation metadata applied: a phone clip
  trains upright, as it is applied), decoded once per run and held as uint8 (:func:`decode_video`),
  so later epochs never decode again;
- folders: :func:`frametrans.io.folders.list_images` (natural order, hidden files skipped) with
  ``frametrans.io``'s extension lists. A format that is both an image and a video (GIF) counts as a
  video here: every frame trains.

Errors are :class:`DataError`: one line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from frametrans.io.errors import InputError, first_line
from frametrans.io.folders import list_images as _io_list
from frametrans.io.images import IMAGE_EXTENSIONS, read_image
from frametrans.io.video import VIDEO_EXTENSIONS, iter_video_frames

#: Still-image extensions for training (frametrans.io's, without the ones that are also videos).
TRAIN_IMAGE_EXTENSIONS = IMAGE_EXTENSIONS - VIDEO_EXTENSIONS


class DataError(ValueError):
    """Training data that cannot be used; the message names the path and what was expected."""


def read_rgb(path: Path) -> np.ndarray:
    """An image file -> [H, W, 3] RGB, uint8 (or uint16 for 16-bit files), upright, in sRGB;
    gray expanded to RGB, alpha dropped."""
    try:
        image = read_image(path).image
    except InputError as exc:
        raise DataError(first_line(exc)) from None
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image if image.flags.writeable else image.copy()  # torch.from_numpy wants writable arrays


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 as it is; uint16 rounded to 8 bits (x / 257)."""
    if image.dtype == np.uint8:
        return image
    return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _listed(folder: Path, extensions: frozenset) -> List[Path]:
    try:
        return _io_list(folder, extensions=extensions)
    except InputError as exc:
        raise DataError(first_line(exc)) from None


def list_images(folder: Path) -> List[Path]:
    """Still images directly in ``folder``, in natural order (``img2`` before ``img10``)."""
    return _listed(folder, TRAIN_IMAGE_EXTENSIONS)


def list_videos(folder: Path) -> List[Path]:
    """Videos directly in ``folder``, in natural order."""
    return _listed(folder, VIDEO_EXTENSIONS)


def is_video(path: Path) -> bool:
    """A file with a video extension (frametrans.io's list)."""
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def decode_video(
    path: Path,
    every: int = 1,
    max_frames: Optional[int] = None,
    prepare: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> List[np.ndarray]:
    """Decode every ``every``-th frame of a video: a list of uint8 [H, W, 3] RGB arrays, upright
    (the rotation metadata applied).

    prepare: applied to each kept frame right away (e.g. a resize), so memory holds only what
        training uses. max_frames: stop after this many kept frames. The caller keeps the list for
        the whole run (the decode cache): no epoch decodes again.
    """
    if every < 1:
        raise DataError(f"frame step must be >= 1, got {every}")
    frames: List[np.ndarray] = []
    reader = iter_video_frames(path)
    try:
        for i, frame in enumerate(reader):
            if i % every:
                continue
            rgb = np.ascontiguousarray(frame.image)
            frames.append(prepare(rgb) if prepare is not None else rgb)
            if max_frames is not None and len(frames) >= max_frames:
                break
    except InputError as exc:  # unreadable, no video stream, truncated: name the file
        raise DataError(first_line(exc)) from None
    finally:
        reader.close()
    if not frames:
        raise DataError(f"{path}: no frames decoded")
    return frames
