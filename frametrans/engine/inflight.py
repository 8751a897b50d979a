"""A batch the runner has launched and not yet handed out, and its deferred finite test.

On CUDA a launched batch's outputs are being copied back into pinned memory while the host hands out
the batch before; the per-frame finite test of a half-precision output travels with them and is read
at hand-out (:class:`Recheck`), so that reading it never makes the host wait for the forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np
import torch

from frametrans.engine.memory import Plan
from frametrans.io.frame import Frame

if TYPE_CHECKING:
    from frametrans.engine.runner import Runner

__all__ = ["Launched", "Recheck", "finite_flags"]


@dataclass
class Launched:
    """A batch whose outputs are computed (CPU) or queued (CUDA) but not yet handed out."""

    frames: Optional[List[Frame]]
    out: torch.Tensor  # [B, H, W, C] integers (planes: [B, H*3/2, W] uint8), on the CPU (pinned on CUDA)
    dtype: np.dtype
    event: Optional["torch.cuda.Event"] = None
    planes: bool = False  # the outputs are YUV 4:2:0 planes (inputs came as planes)
    recheck: Optional["Recheck"] = None  # the finite test, read when the batch is handed out


@dataclass
class Recheck:
    """What a batch whose finite test was deferred needs: the per-frame result (``finite`` [B] bool,
    on the CPU, pinned on CUDA) and what a run in fp32 takes."""

    finite: torch.Tensor
    runner: "Runner"  # the one that launched it (a twin of another depth may hand it out)
    images: Sequence[np.ndarray]
    max_value: float
    plan: Plan
    labels: List[str]


def finite_flags(y: torch.Tensor) -> torch.Tensor:
    """[B] bool: each sample of ``y`` [B, ...] is all finite (NaN carries through max and min, an
    infinity shows in one of them; no full-size temporaries, no false alarm from an overflowing sum)."""
    dims = tuple(range(1, y.dim()))
    return torch.isfinite(y.amax(dims)) & torch.isfinite(y.amin(dims))
