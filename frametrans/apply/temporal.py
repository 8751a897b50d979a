"""``--temporal``: the model's outputs of a video, animation or stream, made consistent in frame
order: normalization statistics smoothed across time inside the model (``stats``,
:mod:`frametrans.engine.smoothing`), then blended along the input's flow (``flow``,
:mod:`frametrans.stabilize`); one state per output variant (MUNIT style), reset per stream."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from frametrans.apply.translator import Translator, run_variants
from frametrans.io.frame import Frame
from frametrans.stabilize import FlowStabilizer, Temporal

Results = Iterable[Tuple[Frame, List[Tuple[str, np.ndarray]]]]


def translate_stream(frames: Iterable[Frame], translator: Translator, temporal: Temporal,
                     on_error: Optional[Callable[[Frame, BaseException], None]] = None
                     ) -> Iterator[Tuple[Frame, List[Tuple[str, np.ndarray]]]]:
    """One stream's frames, in order -> ``(frame, [(suffix, output)...])`` for every variant, with
    ``temporal`` applied (nothing changes when it is off). A new stream starts from no past."""
    variants = translator.stream_variants(temporal.stats)
    yield from stabilized(run_variants(frames, translator, on_error, variants), temporal.flow)


def stabilized(results: Results, strength: float) -> Iterator[Tuple[Frame, List[Tuple[str, np.ndarray]]]]:
    """``(frame, [(suffix, output)...])`` in frame order -> the same with the outputs blended along
    the flow (unchanged when ``strength`` is 0)."""
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
