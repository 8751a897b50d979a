"""Page-locked staging buffers for asynchronous host <-> CUDA copies, two per shape used in turn."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch


class PinnedBuffers:
    """Page-locked CPU buffers by key (two per key, used in turn), each with the CUDA event of its
    last asynchronous copy. At most ``keep`` keys are held; the oldest goes first (many frame sizes)."""

    def __init__(self, keep: int = 16) -> None:
        self.keep = keep
        self._rings: Dict[tuple, List[Tuple[torch.Tensor, "torch.cuda.Event"]]] = {}
        self._turns: Dict[tuple, int] = {}

    def get(self, key: tuple, dtype: torch.dtype) -> Tuple[torch.Tensor, "torch.cuda.Event"]:
        """A buffer of shape ``key`` (its int entries) and ``dtype``, and its event.

        Waits for the event of the buffer's previous use, so it is never overwritten while an
        asynchronous copy still reads or writes it; record the event after queueing the new copy.
        """
        shape = tuple(k for k in key if isinstance(k, int))
        full = (key, dtype)
        ring = self._rings.get(full)
        if ring is None:
            ring = [(torch.empty(shape, dtype=dtype, pin_memory=True), torch.cuda.Event()) for _ in range(2)]
            self._rings[full] = ring
            if len(self._rings) > self.keep:
                self._rings.pop(next(iter(self._rings)))
        turn = self._turns.get(full, 0)
        self._turns[full] = turn + 1
        buf, event = ring[turn % 2]
        event.synchronize()
        return buf, event

    def upload(self, tag: str, arrays: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        """Same-shape uint8 ``arrays`` stacked into a pinned buffer (keyed by ``tag`` and the shape)
        and copied to the CUDA ``device`` without waiting: ``[len(arrays), *shape]`` uint8 there."""
        buf, event = self.get((tag, len(arrays), *arrays[0].shape), torch.uint8)
        np.stack(arrays, out=buf.numpy())
        t = buf.to(device, non_blocking=True)
        event.record()  # the buffer may be refilled once this copy is done
        return t
