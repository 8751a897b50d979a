"""Inference backends behind the runner: torch (eager or AOTInductor-compiled), OpenVINO, ONNX Runtime.

A backend other than torch is a *forward*: a callable that takes the runner's padded batch
``x [B, C, H, W]`` (float, in the model's value range, any dtype and memory layout, on the CPU) and
returns the output batch ``[B, C_out, H, W]`` float32 on the CPU. It runs an ONNX graph of
``forward(session.source, x)`` traced in fp32 by :mod:`frametrans.export` and cached on disk under
the compile cache folder (``<cache>/onnx/<key>.onnx``, keyed like the compiled packages: model,
config, weights, forward token, opset, torch version); OpenVINO also keeps its compiled blobs there
(``<cache>/openvino``). Batching goes through it; tiles too, for models without per-frame
normalization. What it cannot serve keeps working through torch:

- tiled frames of models with InstanceNorm/AdaIN/LayerNorm: their whole-frame statistics are frozen
  inside the torch layers (:mod:`frametrans.engine.tiledstats`), which an exported graph cannot do;
- a batch whose output has NaN or inf is run again by torch in fp32 (the runner's guard);
- CUDA and MPS devices, CUDA graphs, AOTInductor (``--compile on``): torch only; an explicit
  backend with those is refused with one line.

The rule of ``--backend auto`` (measured with ``frametrans bench backends``; the numbers are in the
README's backend table):

1. not on the CPU: torch.
2. on the CPU, per frame shape: a compiled torch forward when ``--compile auto`` compiles it (a
   package is cached, or the job is long enough to pay for the cold compile) and, where the backend
   below serves the shape, only once both torch eager and the backend have been timed on it and the
   compiled forward is expected to beat the backend
   (:meth:`frametrans.engine.compile.CompilePolicy.should_compile`). AOTInductor bf16 was the
   fastest path on Sapphire Rapids (72 ms/frame against OpenVINO's 156 for ResNet-9 at 256x256),
   on a par on the 2026-12-02 Xeon with AMX (200 against OpenVINO bf16's 198, which failed the
   45 dB guard there), OpenVINO bf16 on an AMD Zen 5 (the bundled cyclegan at 640x360: 41 against 57).
3. otherwise, once the job is long enough to pay for converting (or loading a cached graph) at the
   eager speed measured on its first batch (:mod:`frametrans.engine.backends.serve`), and only for
   shapes where the backend then measures faster than torch eager here: OpenVINO when installed: 156 against 169-299 ms/frame for torch eager bf16 on
   Sapphire Rapids, and 364 against 1058 ms/frame in fp32 on this project's 2-core Xeon (ResNet-9,
   128x128), with ~0.5 s to convert and compile; not in bf16 for a model whose all-bf16 torch copy
   failed the session's probe (:data:`ALL_LOW`).
4. otherwise ONNX Runtime when it is installed and the precision is fp32 (405 against 1058 ms/frame
   in fp32 on the same Xeon); it has no bf16 on the CPU, and torch bf16 beats it where bf16 units
   exist.
5. otherwise torch eager.

It never picks a backend that is not installed; asking for one that is not installed is a one-line
error naming the pip command (:class:`BackendUnavailable`, exit status 2 in the CLI).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from frametrans.engine.session import AUTO_MIN_DB

log = logging.getLogger("frametrans")

BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
#: Backends whose low precision runs every layer in it: OpenVINO's CPU plugin ignores the marks that
#: would keep nodes in fp32 (2026.4: ``disable_fp16_compression`` on convolutions, MVN and tanh
#: changed neither the layers' runtime precision nor the output). Its bf16 then loses what torch's
#: all-bf16 copy loses: a random ResNet-9 ngf 64 at 256x256 42.1 dB, where that copy's probe read
#: 42.7 and torch's careful copy 45.4 (Xeon with AMX, 2026-12-02).
ALL_LOW = frozenset({"openvino"})
#: ``auto`` leaves such a backend alone, with no conversion and no guard probe (3-4 s of a 96-frame
#: job at 256x256), when the session's all-low-precision copy read this far below the bar.
ALL_LOW_SLACK_DB = 1.0
#: backend -> (the module it imports, the pip command that installs it)
PACKAGES = {
    "openvino": ("openvino", "pip install 'frametrans[openvino]'"),
    "onnxruntime": ("onnxruntime", "pip install 'frametrans[onnx]'"),
}

Forward = Callable[[torch.Tensor], torch.Tensor]


class BackendUnavailable(ValueError):
    """A backend asked for cannot run here (not installed, wrong device, wrong precision).
    ``param_hint`` makes the CLI print it as a bad ``--backend`` value (exit status 2)."""

    param_hint = "--backend"


def validate_backend(name: str) -> str:
    """The backend name, lower case; ValueError for an unknown one."""
    name = (name or "auto").lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; use {', '.join(BACKENDS)}")
    return name


#: Modules hidden while a backend's package is imported: ``import openvino`` sends a usage event
#: to Google Analytics (openvino_telemetry, on unless the user opted out) from a process it forks
#: off a thread. frametrans makes no network calls, and a fork from a thread can copy a lock another
#: thread holds: in a stream job (stdin's) the child never exited and the interpreter waited for it
#: at exit, forever. Without the module OpenVINO binds its own no-op stub (for the rest of the
#: process); the hiding ends with the import, so the user's own code still finds the package.
_HIDDEN_WHILE_IMPORTING = {"openvino": ("openvino_telemetry",)}


_IMPORTING = threading.Lock()
_ABSENT = object()


def import_package(name: str):
    """The module of backend ``name`` (``openvino``, ``onnxruntime``), imported without the
    modules of :data:`_HIDDEN_WHILE_IMPORTING`; ImportError when it is not installed. One import
    at a time: another thread waits for the module to be whole, and the hidden entries are put
    back as they were (absent, or the user's own None)."""
    module = PACKAGES[name][0]
    with _IMPORTING:
        if sys.modules.get(module) is not None:  # imported already (None there: importing it fails)
            return sys.modules[module]
        hidden = {m: sys.modules.get(m, _ABSENT) for m in _HIDDEN_WHILE_IMPORTING.get(module, ())}
        sys.modules.update({m: None for m in hidden})  # None: `import m` raises ImportError
        try:
            return importlib.import_module(module)
        finally:
            for m, was in hidden.items():
                if was is _ABSENT:
                    sys.modules.pop(m, None)
                else:
                    sys.modules[m] = was


def installed(name: str) -> bool:
    """True when the package of backend ``name`` imports (torch: always)."""
    if name == "torch":
        return True
    try:
        import_package(name)
    except ImportError:
        return False
    return True


def require_installed(name: str) -> None:
    """BackendUnavailable naming the pip command when backend ``name`` is not installed."""
    if name in PACKAGES and not installed(name):
        module, pip = PACKAGES[name]
        raise BackendUnavailable(f"--backend {name}: the {module} package is not installed; {pip}")


@dataclass(frozen=True)
class Choice:
    """The backend to run whole frames with, in which dtype, and why (for logs and reports).

    name: ``torch``, ``openvino`` or ``onnxruntime``. dtype: what the backend computes in (torch:
    the session's). explicit: asked for by name (then the compiled torch forward stays off).
    guarded: a low-precision dtype under ``--precision auto``: the backend's first output is checked
    against torch fp32; when it lost the picture, a backend asked for by name runs fp32 and one
    chosen by ``auto`` leaves the job to torch, on later runs too (:mod:`.serve`).
    """

    name: str
    dtype: torch.dtype
    reason: str
    explicit: bool = False
    guarded: bool = False


def choose(requested: str, device: torch.device, dtype: torch.dtype, precision: str = "auto",
           compile_mode: str = "auto", all_low_db: Optional[float] = None) -> Choice:
    """Apply the rule of the module docstring; BackendUnavailable for an impossible request.

    dtype: the session's compute dtype; precision: the ``--precision`` option as given (an explicit
    bf16 is refused by ONNX Runtime, ``auto`` lets it run fp32). all_low_db: the session's probe of
    its copy with every layer in ``dtype`` (:meth:`~frametrans.engine.session.Session.all_low_db`),
    when measured: ``auto`` leaves a backend in :data:`ALL_LOW` alone for a model whose copy fell
    :data:`ALL_LOW_SLACK_DB` below the bar.
    """
    choice = _choose(validate_backend(requested), device, dtype, precision, compile_mode)
    guarded = choice.name != "torch" and choice.dtype != torch.float32 and (precision or "auto").lower() == "auto"
    if guarded and not choice.explicit and choice.name in ALL_LOW and all_low_db is not None \
            and all_low_db < AUTO_MIN_DB - ALL_LOW_SLACK_DB:
        low = dtype_name(dtype)
        return Choice("torch", dtype, f"auto: {choice.name} computes every layer in {low}, and this model's "
                      f"all-{low} copy was {all_low_db:.1f} dB from fp32 on the probe (< {AUTO_MIN_DB:.0f} dB): "
                      f"torch runs its {low} copy that keeps norms and frame in fp32")
    return dataclasses.replace(choice, guarded=guarded)


def _choose(requested: str, device: torch.device, dtype: torch.dtype, precision: str, compile_mode: str) -> Choice:
    if requested == "torch":
        return Choice("torch", dtype, "asked for", explicit=True)
    if requested != "auto":
        return _explicit(requested, device, dtype, precision, compile_mode)
    if device.type != "cpu":
        return Choice("torch", dtype, f"auto: the other backends run on the CPU, this is {device.type}")
    if installed("openvino"):
        return Choice("openvino", dtype, "auto: OpenVINO is installed (faster than torch eager on the "
                      "CPU, measured); frames that --compile auto compiles run the compiled torch forward")
    if dtype == torch.float32 and installed("onnxruntime"):
        return Choice("onnxruntime", torch.float32, "auto: ONNX Runtime is installed and the precision "
                      "is fp32 (faster than torch eager fp32, measured)")
    why = ("no OpenVINO; ONNX Runtime has no bf16 and torch bf16 is faster" if installed("onnxruntime")
           else "neither OpenVINO nor ONNX Runtime is installed")
    return Choice("torch", dtype, f"auto: {why}")


def _explicit(name: str, device: torch.device, dtype: torch.dtype, precision: str, compile_mode: str) -> Choice:
    require_installed(name)
    if device.type != "cpu":
        raise BackendUnavailable(f"--backend {name} runs on the CPU, not {device.type}; use --device cpu "
                                 "or --backend torch")
    if compile_mode == "on":
        raise BackendUnavailable(f"--backend {name} with --compile on: compiling is for the torch forward; "
                                 "use --backend torch or --compile auto")
    if name == "onnxruntime" and dtype != torch.float32:
        if precision not in (None, "auto"):
            raise BackendUnavailable(f"--backend onnxruntime computes in fp32 on the CPU, not "
                                     f"{precision}; use --precision fp32 or auto, or --backend openvino")
        dtype = torch.float32
    return Choice(name, dtype, "asked for", explicit=True)


def build(choice: Choice, onnx_path: str, root: Path) -> Forward:
    """The forward of backend ``choice.name`` over the ONNX graph at ``onnx_path``; ``root``: the
    cache folder (OpenVINO keeps its compiled blobs in ``root/openvino``)."""
    if choice.name == "openvino":
        from frametrans.engine.backends.openvino import OpenVINOForward

        return OpenVINOForward(onnx_path, choice.dtype, root / "openvino")
    if choice.name == "onnxruntime":
        from frametrans.engine.backends.onnxruntime import OnnxRuntimeForward

        return OnnxRuntimeForward(onnx_path)
    raise ValueError(f"no forward to build for backend {choice.name!r}")


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def to_numpy_input(x: torch.Tensor):
    """``x [B, C, H, W]`` (any float dtype and layout, on the CPU) -> float32 NCHW-contiguous numpy."""
    return x.detach().float().contiguous().cpu().numpy()


def log_choice(choice: Optional[Choice]) -> None:
    """Say which backend was asked for (info), or which one ``auto`` may use (debug: with auto the
    backend takes over only the shapes whose job pays for it, and says so when it loads a graph)."""
    if choice is not None:
        (log.info if choice.explicit else log.debug)(
            "backend %s (%s): %s", choice.name, dtype_name(choice.dtype), choice.reason)
