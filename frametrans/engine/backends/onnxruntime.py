"""The ONNX Runtime backend: the model's ONNX graph in an ``InferenceSession`` on the CPU.

One session serves every shape (the graph's batch, height and width are dynamic), with all graph
optimizations and as many intra-op threads as torch uses. ONNX Runtime computes in fp32 here: its
CPU provider has no bf16 convolutions.

Its threads do not spin waiting for work: ONNX Runtime's default keeps them busy after each run,
which took the cores from whatever ran next. On 2 cores of an AMD Zen 5 a torch forward of the
bundled cyclegan right after an ONNX Runtime run took 66.5 ms instead of 27.0, and the run itself
was no slower without spinning (26.2 against 28.2 ms); in `frametrans apply` the image and video
codec threads share those cores.
"""

from __future__ import annotations

from typing import List, Sequence

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
        for pool in ("intra", "inter"):  # idle threads sleep (see the module docstring)
            options.add_session_config_entry(f"session.{pool}_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        """float32 arrays in the graph's input order -> its outputs."""
        out = self.session.run(None, dict(zip(self.inputs, arrays)))
        return [np.ascontiguousarray(o, dtype=np.float32) for o in out]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run([to_numpy_input(x)])[0])
