"""Shared measuring tools of the benchmarks: peak memory, synthetic frames, videos and folders,
FLOP counts, the device's dense-matmul peak, device names and small formatting helpers."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

#: Where a benchmark writes its progress lines (stderr by default; tables go to stdout).
Log = Callable[[str], None]


def to_stderr(msg: str) -> None:
    """The default :data:`Log`: one line on stderr, flushed."""
    print(msg, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA), so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def mib(n: int) -> str:
    """``123 MiB``, or ``-`` for 0 (not measured)."""
    return f"{n / 2**20:.0f} MiB" if n else "-"


def padded_size(height: int, width: int, multiple: int) -> Tuple[int, int]:
    """(padded height, padded width): up to the size multiple, at least the smallest useful side."""
    from frametrans.engine.padding import min_side

    least = min_side(multiple)
    return max(least, -(-height // multiple) * multiple), max(least, -(-width // multiple) * multiple)


@contextlib.contextmanager
def workdir(path: Optional[str]) -> Iterator[Path]:
    """``path`` (created), or a temporary folder removed afterwards when ``path`` is None."""
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="frametrans-bench-") as tmp:
        yield Path(tmp)


# ---------------------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory while the ``with`` block runs: CUDA allocator peak, else sampled CPU RSS.

    ``peak`` is bytes (absolute RSS on the CPU); ``added`` the rise over the start of the block.
    """

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def added(self) -> int:
        return max(0, self.peak - self.start)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ------------------------------------------------------------------------------------------ data


def make_frames(width: int, height: int, count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Moving colour gradients with a little noise (so codecs have real work), [H, W, 3] uint8."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        t = i / 10.0
        r = 127 + 120 * np.sin(xx / 23.0 + t)
        gch = 127 + 120 * np.sin(yy / 17.0 - 1.3 * t)
        b = 127 + 120 * np.sin((xx + yy) / 31.0 + 0.7 * t)
        img = np.stack([r, gch, b], axis=-1) + g.normal(0, 6, (height, width, 3))
        yield np.clip(img, 0, 255).astype(np.uint8)


def make_video(path: Path, width: int, height: int, count: int, fps: int = 25) -> Path:
    """An H.264 clip of :func:`make_frames` at ``path``."""
    from frametrans.io.video import VideoWriter

    with VideoWriter(path, fps=fps) as writer:
        for img in make_frames(width, height, count):
            writer.write(img)
    return path


def make_folder(folder: Path, width: int, height: int, count: int, ext: str = "png") -> Path:
    """A folder of frames ``frame_00000.png``... of :func:`make_frames`, written as ``frametrans
    apply`` writes that format (:func:`frametrans.io.images.write_image`)."""
    from frametrans.io.images import write_image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(make_frames(width, height, count)):
        write_image(folder / f"frame_{i:05d}.{ext.lstrip('.')}", img)
    return folder


# ------------------------------------------------------------------------------- FLOPs, devices


def model_flops(model: torch.nn.Module, forward, channels: int, height: int, width: int) -> Optional[float]:
    """FLOPs (2 x multiply-adds) of one forward on one [1, C, H, W] frame, counted on the meta device.

    The meta copy stays in its default (training) mode: the counter sees the same convolutions and
    matmuls either way, and nothing is computed."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            meta = type(model)(model.config)
        x = torch.empty(1, channels, height, width, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            forward(meta, x)
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - a model the counter cannot follow: no FLOP figures
        return None


def device_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Dense matmul FLOP/s in ``dtype`` on ``device``: the best of several timed products.

    No model runs here and the operands need no gradient, so no inference context is needed."""
    n = 4096 if device.type == "cuda" else 1024
    reps = 4 if device.type == "cuda" else 1
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    sync(device)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t0))
    return best


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "cpu")
    except OSError:
        import platform

        return platform.processor() or "cpu"


def device_name(device: torch.device) -> str:
    """GPU name; on the CPU its name, torch's thread count and vector capability."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{cpu_name()}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    return device.type


def mse_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error of two 8-bit images, in grey levels squared."""
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def psnr_of_mse_uint8(mse: float) -> float:
    """PSNR in dB for a mean squared error of 8-bit data (inf for 0)."""
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two 8-bit images (inf when equal)."""
    return psnr_of_mse_uint8(mse_uint8(a, b))
