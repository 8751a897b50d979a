"""``--temporal stats`` on a backend: the smoothed statistics' state as graph inputs and outputs.

A forward smoothed by :class:`frametrans.engine.smoothing.NormSmoother` carries state from batch to
batch: each frame-dependent norm layer normalizes with an EMA of its statistics over the frames
before. An exported graph cannot hold that state, so the state goes through it instead::

    graph(image [B, C, H, W], weights [B, B + 1], state_0 [1, 2, ...], ..., state_{K-1})
        -> (output [B, C_out, H, W], state_0' [1, 2, ...], ..., state_{K-1}')

``weights`` is the EMA scan of the batch (:func:`frametrans.engine.smoothing.ema_weights`: the
factor and the scene cuts are inputs, so one graph serves every factor), ``state_k`` the mean and
variance the K statistics slots (one per norm layer call, in forward order) go on from, and
``state_k'`` the smoothed statistics of the batch's last frame. The scene-cut test (a thumbnail's
histograms) and the bookkeeping stay in the smoother: :class:`StatefulForward` asks it for the
batch's scan and state, runs the graph and commits the new state, exactly as the eager forward
does. Switching between torch and the backend mid-stream (``--backend auto`` times torch on a
shape's first batch) keeps one state.

Not served (they keep running in torch): models whose norm layers use batch statistics (a per-sample
loop the trace would fix to one batch size), and tiled frames (the runner sends those to torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from frametrans.engine.normstats import _patched_forwards, _Adapter
from frametrans.engine.smoothing import ForwardFn, NormSmoother, _sample_stats, ema, slot_key

__all__ = ["SmoothedGraph", "StatefulForward", "TOKEN", "servable"]

#: Added to the forward's cache token: the graph of a smoothed forward has other inputs and outputs.
TOKEN = "normsmooth-v1"

#: A backend's run: input arrays (float32, in the graph's input order) -> output arrays.
RunFn = Callable[[Sequence[np.ndarray]], list]


def servable(smoother: NormSmoother, source: nn.Module) -> Optional[str]:
    """None when a backend can serve ``source`` smoothed, else why not (one phrase)."""
    if any(a.kind == "batch" for _, _, a in smoother.layers(source)):
        return "its batch-norm layers use batch statistics"
    return None


class SmoothedGraph(nn.Module):
    """``forward(source, x)`` with ``source``'s frame-dependent norm layers smoothed, as a module with
    the state as inputs and outputs (see the module docstring); traced by the ONNX exporter.

    layers: ``(name, module, adapter)`` of the norm layers (:meth:`NormSmoother.layers`).
    ``keys`` / ``slots``: the statistics slots in forward order and their shapes ``[1, 2, ...]``,
    found by :meth:`discover`.
    """

    def __init__(self, source: nn.Module, forward: ForwardFn,
                 layers: list[tuple[str, nn.Module, _Adapter]]) -> None:
        super().__init__()
        self.model = source
        self.fn = forward
        self.layers = layers
        self.keys: list[str] = []
        self.slots: list[torch.Size] = []
        self.train(source.training)

    @torch.no_grad()
    def discover(self, x: Tensor) -> None:
        """Run one frame of ``x [B, C, H, W]`` to find the slots (order and shapes; they do not
        depend on the frame size)."""
        frame = x[:1].float()
        self.keys, self.slots = [], []
        _, last = self._run(frame, torch.tensor([[0.0, 1.0]]), {})
        self.keys = list(last)
        self.slots = [last[k].shape for k in self.keys]

    def example(self, x: Tensor) -> tuple[Tensor, ...]:
        """Inputs to trace with: ``x`` (float32), the weights of a batch that starts a stream, and
        zero states."""
        b = x.shape[0]
        weights = torch.zeros(b, b + 1)
        weights[:, 1:] = torch.eye(b)
        return (x.detach().float().contiguous(), weights, *[torch.zeros(s) for s in self.slots])

    def names(self) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
        """(input names, output names, dynamic axes) for the exporter."""
        states = [f"state_{i}" for i in range(len(self.keys))]
        inputs = ["image", "weights", *states]
        outputs = ["output", *[f"{s}_out" for s in states]]
        dynamic = {"image": {0: "batch", 2: "height", 3: "width"}, "weights": {0: "batch", 1: "batch_1"},
                   "output": {0: "batch", 2: "height", 3: "width"}}
        return inputs, outputs, dynamic

    def forward(self, x: Tensor, weights: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        y, last = self._run(x, weights, dict(zip(self.keys, past)))
        return (y, *[last[k] for k in self.keys])

    def _run(self, x: Tensor, weights: Tensor, past: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        last: dict[str, Tensor] = {}
        calls: dict[str, int] = {}

        def patch(name: str, adapter: _Adapter) -> Callable[[Tensor], Tensor]:
            def forward(t: Tensor) -> Tensor:
                key = slot_key(name, calls)
                stats = _sample_stats(adapter, t)
                state = past[key] if key in past else torch.zeros_like(stats[:1])
                smoothed = ema(weights, state, stats)
                last[key] = smoothed[-1:]
                return adapter.apply(t, smoothed[:, 0], smoothed[:, 1])

            return forward

        with _patched_forwards({m: patch(n, a) for n, m, a in self.layers}):
            y = self.fn(self.model, x)
        return y, last

    def export(self, x: Tensor, opset: int) -> bytes:
        """The ONNX graph (fp32), traced on ``x [B, C, H, W]``."""
        from frametrans.export import onnx_bytes

        if not self.keys:
            self.discover(x)
        inputs, outputs, dynamic = self.names()
        return onnx_bytes(self, self.example(x), inputs, opset, output_names=outputs, dynamic_axes=dynamic)


class StatefulForward:
    """A backend's run of a :class:`SmoothedGraph` as the runner's forward: ``x [B, C, H, W]`` (the
    CPU, any float dtype) -> ``[B, C_out, H, W]`` float32, with ``smoother``'s state read before
    and committed after (on success only, as the eager forward)."""

    def __init__(self, graph: SmoothedGraph, smoother: NormSmoother, run: RunFn, name: str) -> None:
        self.graph, self.smoother, self.run, self.name = graph, smoother, run, name

    def __call__(self, x: Tensor) -> Tensor:
        step = self.smoother.begin(x)
        past = [self.smoother.past(k, step) for k in self.graph.keys]
        has_past = all(p is not None for p in past)
        weights = step.scan.weights(has_past, torch.device("cpu"))
        states = [p.float().cpu() if has_past else torch.zeros(s) for p, s in zip(past, self.graph.slots)]
        arrays = [x.detach().float().contiguous().cpu().numpy(), weights.numpy(),
                  *[s.contiguous().numpy() for s in states]]
        out = self.run(arrays)  # float32 arrays of their own (the backends copy out of their buffers)
        self.smoother.commit(step, {k: torch.from_numpy(o) for k, o in zip(self.graph.keys, out[1:])})
        return torch.from_numpy(out[0])
