"""The OpenVINO backend: the model's ONNX graph compiled by OpenVINO's CPU plugin.

Each set of input shapes gets a graph reshaped to those static shapes and compiled once per process (a few
shapes are kept, least recently used first out); OpenVINO keeps the compiled blobs in
``<cache>/openvino`` so a later process loads them instead of compiling again. The precision is the
session's: ``INFERENCE_PRECISION_HINT`` bf16 for bf16, f32 for fp32 (set explicitly: on CPUs with
bf16 units OpenVINO would otherwise pick bf16 by itself), fp16 where the plugin has it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from frametrans.engine import compile as compiling
from frametrans.engine.backends import to_numpy_input

log = logging.getLogger("frametrans")

#: Compiled shapes kept per forward (each holds its own copy of the prepacked weights).
MAX_SHAPES = 8
_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


class OpenVINOForward:
    """``x [B, C, H, W]`` float (any dtype) on the CPU -> output ``[B, C_out, H, W]`` float32.

    onnx_path: the graph (read once; the file may go away afterwards). dtype: compute precision.
    """

    name = "openvino"

    def __init__(self, onnx_path: str, dtype: torch.dtype, cache: Optional[Path] = None) -> None:
        from frametrans.engine.backends import import_package

        ov = import_package("openvino")  # without its telemetry
        self.core = ov.Core()
        cache = cache or compiling.cache_dir() / "openvino"
        try:
            cache.mkdir(parents=True, exist_ok=True)
            self.core.set_property({"CACHE_DIR": str(cache)})
        except OSError as exc:  # a read-only cache: compile every time
            log.debug("OpenVINO cache %s unusable: %s", cache, exc)
        self.graph = self.core.read_model(str(onnx_path))
        self.dtype = dtype
        self.config: Dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS.get(dtype, "f32"),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        }
        self._requests: "OrderedDict[Tuple[int, ...], Any]" = OrderedDict()

    def _request(self, shapes: Tuple[Tuple[int, ...], ...]) -> Any:
        """The infer request compiled for these input shapes (one per graph input, in order)."""
        req = self._requests.get(shapes)
        if req is not None:
            self._requests.move_to_end(shapes)
            return req
        static = self.graph.clone()
        static.reshape({port.get_any_name(): list(shape) for port, shape in zip(static.inputs, shapes)})
        req = self.core.compile_model(static, "CPU", self.config).create_infer_request()
        self._requests[shapes] = req
        if len(self._requests) > MAX_SHAPES:
            self._requests.popitem(last=False)
        return req

    def run(self, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        """float32 arrays in the graph's input order -> its outputs (copies: the request reuses its
        buffers)."""
        req = self._request(tuple(tuple(a.shape) for a in arrays))
        result = req.infer(dict(enumerate(arrays)))
        return [np.array(result[i], dtype=np.float32, copy=True) for i in range(len(result))]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run([to_numpy_input(x)])[0])
