"""The device session: the one place that owns device, dtype, ``eval()``, ``inference_mode``,
``autocast`` and the low-precision weight copy of a model.

Everything that runs a model for inference goes through a :class:`Session`: the runner (apply,
predict-next), MUNIT style encoding and the benchmarks. A test greps the inference code for
``.eval()``, ``inference_mode``, ``autocast`` and model device moves outside this module.

    session = Session(model, device="auto", precision="auto")
    with session.inference():
        y = session.model(session.to_model_layout(x))

Precision: ``auto`` is bf16 on CPUs with bf16 units and on CUDA GPUs with bf16, fp16 on MPS, else
fp32 (:func:`frametrans.engine.device.resolve_precision`). Below fp32 the session keeps a
low-precision copy of the weights, shared by every session of the same module on the same device
(MUNIT variants) and rebuilt when the module's weights change (training steps); the module given
stays fp32 and is what receptive-field probes and compile keys read (``source``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import weakref
from typing import Dict, Iterator, Optional, Tuple, Union

import torch
from torch import nn

from frametrans.engine import device as devices

log = logging.getLogger("frametrans")

# One low-precision copy per (module, device, dtype, layout); it goes away with the module.
_PREPARED: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, Tuple[tuple, nn.Module]]]" = (
    weakref.WeakKeyDictionary())


def weights_stamp(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``model`` is replaced or modified in place
    (optimizer steps, ``load_state_dict``): storage address and autograd version counter."""
    tensors = list(model.parameters()) + list(model.buffers())
    return tuple((t.data_ptr(), t._version) for t in tensors)


def param_dtype(model: nn.Module) -> Optional[torch.dtype]:
    """The dtype of the first floating-point parameter (None for a parameter-free module)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


class Session:
    """One model on one device in one precision, ready for inference.

    model: any module; it is put in eval mode and moved to the device in place (weights unchanged).
    device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``.
    precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` (refused where the device lacks it).
    channels_last: run convolutions in NHWC (ignored on MPS).

    Attributes: ``device``, ``dtype`` (the compute dtype), ``source`` (the fp32 module on the
    device), ``model`` (what runs: ``source`` or its shared low-precision copy).
    """

    def __init__(self, model: nn.Module, device: Union[str, torch.device] = "auto",
                 precision: str = "auto", channels_last: bool = True) -> None:
        self.device = devices.resolve_device(device) if isinstance(device, str) else device
        self.dtype = devices.resolve_precision(precision, self.device)
        self.channels_last = channels_last and self.device.type != "mps"
        self.source = model.eval().to(self.device)
        self.model = self._prepare(self.source)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes per job: autotune conv algorithms
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and not devices.cpu_has_bf16():
            log.warning("bf16 on a CPU without bf16 units is emulated and much slower than fp32 "
                        "(measured 60x on an AVX2 CPU); --precision auto picks fp32 here")

    def _prepare(self, model: nn.Module) -> nn.Module:
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.dtype == torch.float32 or self.device.type == "mps":
            return model  # MPS: fp32 weights under fp16 autocast
        key = (str(self.device), self.dtype, self.channels_last)
        copies = _PREPARED.setdefault(model, {})
        stamp = weights_stamp(model)
        if key not in copies or copies[key][0] != stamp:
            low = copy.deepcopy(model).to(self.dtype)
            if self.channels_last:
                low = low.to(memory_format=torch.channels_last)
            copies[key] = (stamp, low.eval())
        return copies[key][1]

    # -- contexts -------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the session's dtype (nothing for fp32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """``inference_mode`` + autocast: wrap every forward pass in it."""
        with torch.inference_mode(), self.autocast():
            yield

    @staticmethod
    @contextlib.contextmanager
    def full_precision() -> Iterator[None]:
        """Autocast off inside an inference block (compiling, exporting)."""
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            yield

    # -- tensors --------------------------------------------------------------------------------

    def to_model_layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` on the device -> the running model's weight dtype and memory layout."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        weights = param_dtype(self.model)
        return x.to(weights) if weights is not None and x.is_floating_point() else x

    def sync(self) -> None:
        """Wait for queued device work (CUDA); nothing elsewhere."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def release_cached_memory(self) -> None:
        """Give cached device blocks back (CUDA), e.g. before a retry after out-of-memory."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def memory_in_use(self) -> int:
        """Bytes the device allocator holds for tensors now (CUDA); 0 elsewhere."""
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return 0
