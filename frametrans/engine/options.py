"""How to run a model: :class:`RunnerOptions`, frozen, checked once by :meth:`RunnerOptions.validate`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from frametrans.engine import backends
from frametrans.engine import compile as compiling

TILE_STATS = ("exact", "fast")
YUV_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class RunnerOptions:
    """How to run a model. None means: choose from the device, the model and the frame size.

    max_memory: bytes that inference may add to the peak (see :mod:`frametrans.engine.memory`);
        None: 60% of the free GPU memory, or a quarter of the free RAM (at most 8 GiB).
    row_bands: a frame over the budget runs whole, layer by layer in bands of rows (the untiled
        output, :mod:`frametrans.engine.streaming`); False, or a forward that cannot: in tiles.
    tile_stats: for tiles of models with per-frame normalization (InstanceNorm, AdaIN): ``exact``
        (the whole frame's statistics, measured layer by layer) or ``fast`` (from a downscaled copy,
        ~30 dB from the untiled output on real photos; frames over the budget run in tiles).
    compile: ``auto`` (compile a frame shape when a compiled package is cached, or when the job is
        long enough for compiling to pay; see :meth:`Runner.expect`), ``on`` (always; fails loudly
        if it cannot), ``off`` (eager only).
    cuda_graphs: replay CUDA graphs of the forward per static shape (CUDA only).
    cache_dir: where compiled packages and backend graphs go (default
        :func:`frametrans.engine.compile.cache_dir`).
    backend: what runs whole frames (:mod:`frametrans.engine.backends`): ``torch`` (the default
        here: exactly the module given runs), ``openvino``, ``onnxruntime`` (CPU only; not installed:
        a one-line error naming the pip command), or ``auto`` (the CLI's default; per shape, from
        measurements: the compiled torch forward when ``compile`` compiles it, else an installed
        backend when its graph is cached or the job pays for converting, else torch eager).
    yuv: video frames reach the model as their decoder's YUV 4:2:0 planes and the outputs leave as
        the encoder's, converted on the device (:mod:`frametrans.engine.yuv`; within one grey level
        of the host's RGB conversion): ``auto`` (on CUDA), ``on`` (also on the CPU), ``off``.
    """

    device: str = "auto"
    precision: str = "auto"
    batch_size: Optional[int] = None
    tile: Optional[int] = None
    tile_overlap: Optional[int] = None
    max_memory: Optional[int] = None
    tile_stats: str = "exact"
    row_bands: bool = True
    channels_last: bool = True
    compile: str = "auto"
    cuda_graphs: bool = False
    cache_dir: Optional[str] = None
    backend: str = "torch"
    yuv: str = "auto"

    def validate(self) -> None:
        """Reject impossible values before any work starts (one-line ValueError)."""
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.tile is not None and self.tile < 8:
            raise ValueError(f"--tile must be >= 8 pixels, got {self.tile}")
        if self.tile_overlap is not None and self.tile_overlap < 0:
            raise ValueError(f"--tile-overlap must be >= 0, got {self.tile_overlap}")
        if self.tile and self.tile_overlap is not None and self.tile_overlap >= self.tile:
            raise ValueError(
                f"--tile-overlap {self.tile_overlap} is too large for --tile {self.tile}: "
                "the overlap must be smaller than the tile"
            )
        if self.tile_stats not in TILE_STATS:
            raise ValueError(f"--tile-stats must be exact or fast, got {self.tile_stats!r}")
        if self.yuv not in YUV_MODES:
            raise ValueError(f"yuv must be one of {', '.join(YUV_MODES)}, got {self.yuv!r}")
        compiling.validate_mode(self.compile)
        backend = backends.validate_backend(self.backend)
        backends.require_installed(backend)
        if backend in backends.PACKAGES and self.cuda_graphs:
            raise backends.BackendUnavailable(f"--backend {backend} runs on the CPU: CUDA graphs need "
                                              "--backend torch")
