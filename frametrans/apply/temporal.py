"""``--temporal``: the model's outputs of a video, animation or stream, stabilized in frame order
(:mod:`frametrans.stabilize`); one stabilizer per output variant (MUNIT style)."""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Tuple

import numpy as np

from frametrans.io.frame import Frame
from frametrans.stabilize import FlowStabilizer

Results = Iterable[Tuple[Frame, List[Tuple[str, np.ndarray]]]]


def stabilized(results: Results, strength: float) -> Iterator[Tuple[Frame, List[Tuple[str, np.ndarray]]]]:
    """``(frame, [(suffix, output)...])`` in frame order -> the same with stabilized outputs
    (unchanged when ``strength`` is 0)."""
    if strength <= 0:
        yield from results
        return
    stabilizers: Dict[str, FlowStabilizer] = {}
    for frame, outs in results:
        yield frame, [(suffix, stabilizers.setdefault(suffix, FlowStabilizer(strength)).step(frame.image, out))
                      for suffix, out in outs]


def stabilized_one(results: Iterable[Tuple[Frame, np.ndarray]], strength: float
                   ) -> Iterator[Tuple[Frame, np.ndarray]]:
    """:func:`stabilized` for a single output per frame (raw streams)."""
    for frame, outs in stabilized(((f, [("", o)]) for f, o in results), strength):
        yield frame, outs[0][1]
