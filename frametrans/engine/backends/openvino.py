"""The OpenVINO backend: the model's ONNX graph compiled by OpenVINO's CPU plugin.

Each input shape gets a graph reshaped to that static shape and compiled once per process (a few
shapes are kept, least recently used first out); OpenVINO keeps the compiled blobs in
``<cache>/openvino`` so a later process loads them instead of compiling again. The precision is the
session's: ``INFERENCE_PRECISION_HINT`` bf16 for bf16, f32 for fp32 (set explicitly: on CPUs with
bf16 units OpenVINO would otherwise pick bf16 by itself), fp16 where the plugin has it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

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
        import openvino as ov

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

    def _request(self, shape: Tuple[int, ...]) -> Any:
        req = self._requests.get(shape)
        if req is not None:
            self._requests.move_to_end(shape)
            return req
        static = self.graph.clone()
        static.reshape({static.inputs[0].get_any_name(): list(shape)})
        req = self.core.compile_model(static, "CPU", self.config).create_infer_request()
        self._requests[shape] = req
        if len(self._requests) > MAX_SHAPES:
            self._requests.popitem(last=False)
        return req

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        req = self._request(tuple(x.shape))
        out = req.infer({0: to_numpy_input(x)})[0]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))  # the request reuses its buffer
