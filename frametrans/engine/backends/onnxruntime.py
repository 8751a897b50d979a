"""The ONNX Runtime backend: the model's ONNX graph in an ``InferenceSession`` on the CPU.

One session serves every shape (the graph's batch, height and width are dynamic), with all graph
optimizations and as many intra-op threads as torch uses. ONNX Runtime computes in fp32 here: its
CPU provider has no bf16 convolutions.
"""

from __future__ import annotations

import numpy as np
import torch

from frametrans.engine.backends import to_numpy_input


class OnnxRuntimeForward:
    """``x [B, C, H, W]`` float (any dtype) on the CPU -> output ``[B, C_out, H, W]`` float32."""

    name = "onnxruntime"
    dtype = torch.float32

    def __init__(self, onnx_path: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: to_numpy_input(x)})[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
