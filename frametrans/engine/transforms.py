"""Conversions between uint8/uint16 HWC images and model tensors. Pure functions, no state."""

from __future__ import annotations

import functools

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch


def images_to_tensor(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Stack same-size images [H,W,C] (uint8 or uint16) into a uint8/uint16-valued tensor.

    Returns [B,C,H,W] on ``device`` in the images' integer dtype (uint16 travels as int32).
    The integers travel to the device and are converted there (4x less copying than float).
    """
    batch = np.stack([im if im.ndim == 3 else im[..., None] for im in images])
    if batch.dtype == np.uint16:
        batch = batch.astype(np.int32)
    t = torch.from_numpy(batch).permute(0, 3, 1, 2)
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t


def to_model_range(x: torch.Tensor, value_range: Tuple[float, float], max_value: float,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer pixels [0, max_value] -> float in ``value_range`` (e.g. (-1, 1))."""
    lo, hi = value_range
    return (x.to(dtype) * ((hi - lo) / max_value) + lo).contiguous()


@functools.lru_cache(maxsize=8)
def _byte_table(lo: float, hi: float) -> np.ndarray:
    """float32 [1, 256]: byte value i -> i * ((hi - lo) / 255) + lo, made by the same float32 torch
    operations as :func:`to_model_range` (so the lookup gives the same bits)."""
    table = torch.arange(256, dtype=torch.float32).mul_((hi - lo) / 255.0).add_(lo).numpy().reshape(1, 256)
    table.setflags(write=False)  # shared by every caller (cached)
    return table


def bytes_to_model_range(x: torch.Tensor, value_range: Tuple[float, float]) -> Optional[torch.Tensor]:
    """uint8 pixels ``x`` [B, C, H, W] on the CPU -> float32 in ``value_range``, in the same memory
    layout (NCHW- or channels_last-contiguous), by one table lookup per value (OpenCV's LUT): one
    pass over the frame instead of a cast, a multiply and an add (1.2 against 2.5 ms for a 1280x720
    frame on one core). The same values as ``x.float() * ((hi - lo) / 255) + lo``. None where this
    does not apply (not uint8, not on the CPU, another layout): use the arithmetic."""
    if x.dtype != torch.uint8 or x.device.type != "cpu":
        return None
    rows = _memory_rows(x)
    return None if rows is None else _in_layout_of(x, _look_up(rows, _byte_table(*value_range)))


def _memory_rows(x: torch.Tensor) -> Optional[np.ndarray]:
    """A non-empty CPU tensor ``x`` [B, C, H, W], NCHW- or channels_last-contiguous, as a 2-D numpy
    view of its memory in the order it lies there; None for other shapes and layouts."""
    if x.dim() != 4 or x.numel() == 0:
        return None
    if x.is_contiguous():
        return x.numpy().reshape(-1, x.shape[-1])
    if x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).numpy().reshape(-1, x.shape[3] * x.shape[1])
    return None


def _in_layout_of(x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Values laid out as :func:`_memory_rows` gave ``x``'s -> a tensor [B, C, H, W] with ``x``'s
    memory layout."""
    b, c, h, w = x.shape
    t = torch.from_numpy(rows)
    return t.reshape(b, c, h, w) if x.is_contiguous() else t.reshape(b, h, w, c).permute(0, 3, 1, 2)


_LUT_CHUNK = 1 << 17  # values per cv2.LUT call: below 2**18, where OpenCV would spread it over its threads


def _look_up(flat: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[flat]``: [R, K] uint8 -> [R, K] float32, in blocks of rows on this thread (OpenCV's
    own threads would cost more CPU than they save wall time while the codec pools share the cores)."""
    import cv2

    out = np.empty(flat.shape, np.float32)
    rows = max(1, _LUT_CHUNK // flat.shape[1])
    for r in range(0, flat.shape[0], rows):
        cv2.LUT(flat[r:r + rows], table, dst=out[r:r + rows])
    return out


def from_model_range(y: torch.Tensor, value_range: Tuple[float, float], max_value: float,
                     in_place: bool = False) -> torch.Tensor:
    """Float in ``value_range`` -> rounded, clamped pixel values [0, max_value] as float32.

    ``in_place``: a float32 ``y`` is overwritten (the caller owns it and is done with it): no new
    frame-sized tensor, whose first touch of fresh memory costs as much as the arithmetic on the CPU.
    Otherwise ``y`` is kept."""
    lo, hi = value_range
    f = y.float()
    scaled = f.sub_(lo) if f is not y or in_place else f.sub(lo)
    return scaled.mul_(max_value / (hi - lo)).round_().clamp_(0, max_value)


def numpy_casts_faster(x: torch.Tensor) -> bool:
    """Whether numpy converts this CPU tensor between integers and floats faster than torch: its
    casts run ~3x faster than torch's on one thread (0.8 against 2.4 ms for a 1280x720 frame), but
    on one thread only, while torch splits a cast over its threads (the default is one per core)."""
    return x.device.type == "cpu" and torch.get_num_threads() < 3


def has_internal_overlap(x: torch.Tensor) -> bool:
    """Whether several elements of ``x`` share memory (an ``expand``ed view: stride 0 on a dimension
    longer than 1); such a tensor cannot be written in place."""
    return any(stride == 0 and size > 1 for stride, size in zip(x.stride(), x.shape))


def pixels_to_integers(y: torch.Tensor, dtype: np.dtype) -> torch.Tensor:
    """Rounded, clamped pixel values [B, C, H, W] float32 -> [B, H, W, C] integers holding
    ``dtype`` (uint8; int32 for uint16, which torch cannot hold everywhere). uint8 goes through
    numpy where that is faster (:func:`numpy_casts_faster`); the values are whole numbers in range,
    so both give the same."""
    nhwc = y.permute(0, 2, 3, 1)
    if dtype == np.uint8 and y.dtype == torch.float32 and numpy_casts_faster(y):
        return torch.from_numpy(nhwc.numpy().astype(np.uint8))
    return nhwc.to(torch.int32 if dtype == np.uint16 else torch.uint8)


def model_output_to_bytes(y: torch.Tensor, value_range: Tuple[float, float]) -> Optional[torch.Tensor]:
    """The model's float32 output ``y`` [B, C, H, W] in ``value_range`` on the CPU, which the caller
    owns (it is overwritten) -> [B, H, W, C] uint8, the same bytes as :func:`from_model_range` and
    :func:`pixels_to_integers` (rounded half to even, clamped) in four passes instead of six:
    scaled and clamped in place, then rounded and cast in one saturating OpenCV conversion. None
    where this does not apply (not float32, not on the CPU, not NCHW- or channels_last-contiguous):
    use those two."""
    if y.dtype != torch.float32 or y.device.type != "cpu":
        return None
    rows = _memory_rows(y)
    if rows is None:
        return None
    lo, hi = value_range
    y.sub_(lo).mul_(255.0 / (hi - lo)).clamp_(0, 255)  # clamped first: the cast saturates only within int32
    return _in_layout_of(y, _round_to_bytes(rows)).permute(0, 2, 3, 1)


def _round_to_bytes(flat: np.ndarray) -> np.ndarray:
    """[R, K] float32 pixel values already clamped to [0, 255] -> uint8, rounded half to even
    (OpenCV's saturating conversion, which is what torch's round and a cast give for values in
    [0, 255]). ``convertScaleAbs`` with scale 1 and shift 0 takes |x| of values that are never
    negative: the same bytes as ``cv2.add(flat, 0, dtype=CV_8U)`` at 1.3-2.6x its speed (1.2
    against 1.7 ms for a 1280x720 frame on one AVX2 core)."""
    import cv2

    return cv2.convertScaleAbs(flat)


def tensor_to_images(y: torch.Tensor, dtype: np.dtype) -> List[np.ndarray]:
    """[B,C,H,W] float pixel values -> list of [H,W,C] numpy arrays of ``dtype`` (C=1 kept as HxWx1)."""
    arr = pixels_to_integers(y, dtype).to("cpu").numpy()
    return [a.astype(dtype, copy=False) for a in arr]


@functools.lru_cache(maxsize=16)
def _luma_weights(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """BT.601 luma weights [1, 3, 1, 1] on ``device`` (made once: a copy from host memory waits for
    the device)."""
    return torch.tensor([0.299, 0.587, 0.114], dtype=dtype, device=device).view(1, 3, 1, 1)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Adapt [B,C,H,W] to the model's channel count: gray->RGB repeats, RGB->gray uses BT.601 luma."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1 and c == 3:
        return (x * _luma_weights(x.dtype, x.device)).sum(1, keepdim=True)
    raise ValueError(f"cannot adapt a {c}-channel image to a {channels}-channel model")


def match_frame_channels(x: torch.Tensor, frames: int, channels: int) -> torch.Tensor:
    """[B, T*C, H, W] (``frames`` = T frames stacked along channels, oldest first) -> [B, T*channels,
    H, W], each frame adapted by :func:`match_channels`. ``frames == 1`` is :func:`match_channels`."""
    if frames == 1:
        return match_channels(x, channels)
    b, c, h, w = x.shape
    if c % frames:
        raise ValueError(f"{c} channels are not {frames} stacked frames")
    per_frame = match_channels(x.reshape(b * frames, c // frames, h, w), channels)
    return per_frame.reshape(b, frames * channels, h, w)
