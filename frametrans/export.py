"""ONNX export of the registered generators, with their I/O contract in the file.

``frametrans export MODEL -o FILE.onnx`` (and :func:`export_onnx`) writes one ONNX graph per model
(per direction for MUNIT) that other runtimes (ONNX Runtime, OpenVINO, TensorRT, chaiNNer,
vs-mlrt) can run without frametrans:

- input ``image``: float32 [batch, C, height, width] in the model's value range (usually [-1, 1],
  the predictor: [0, 1]; C = channels x input frames), height and width multiples of
  ``size_multiple`` (pad first, crop the output back); batch, height and width are dynamic.
- MUNIT only, input ``style``: float32 [batch or 1, style_dim, 1, 1], a target-domain style code
  (N(0, I) samples, or a code from the style encoder). The direction is fixed per file.
- output ``output``: float32 [batch, C_out, height, width] in the same value range.

The file's ``metadata_props`` repeat that contract as strings: ``value_range`` ("-1.0,1.0"),
``size_multiple``, ``in_channels``, ``out_channels``, ``frames_in``, ``frames_out``,
``style_dim``, ``direction`` (MUNIT), ``architecture``, ``config`` (JSON), ``layout`` and
``frametrans_version``. The graph is traced in fp32 from the model as loaded (our checkpoints,
bundled names and upstream imports alike) and written atomically.

The same tracer makes the graphs that the OpenVINO and ONNX Runtime backends of the runner run
(:mod:`frametrans.engine.backends`).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from frametrans import __version__, registry
from frametrans.atomic import atomic_write_bytes

#: ONNX opset: 17 has every op the generators use (InstanceNormalization, Resize, Pad reflect) and
#: is read by ONNX Runtime >= 1.12, OpenVINO >= 2022.3 and TensorRT >= 8.5.
DEFAULT_OPSET = 17
EXPORTABLE_ROLES = ("generator", "munit", "predictor")
DIRECTIONS = ("a2b", "b2a")


class ExportError(ValueError):
    """The model cannot be exported as asked (one line that says why)."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote."""

    path: Path
    architecture: str
    inputs: Tuple[str, ...]
    metadata: Dict[str, str]
    size_bytes: int


class _Styled(nn.Module):
    """MUNIT translation in one direction as a two-input module: (image, style) -> image."""

    def __init__(self, model: nn.Module, direction: str) -> None:
        super().__init__()
        self.model = model
        self.direction = direction

    def forward(self, image: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.model.translate(image, style=style, direction=self.direction)


def check_exportable(model: nn.Module, direction: Optional[str]) -> registry.Architecture:
    """The model's architecture if it can be exported as asked; ExportError otherwise."""
    arch = registry.get(getattr(type(model), "arch_name", ""))
    if arch.role not in EXPORTABLE_ROLES:
        raise ExportError(f"{arch.name} is a {arch.role}, not a generator; export a generator "
                          f"({', '.join(exportable_names())})")
    takes_style = model.config.contract().takes_style
    if direction is not None and direction not in DIRECTIONS:
        raise ExportError(f"--direction must be a2b or b2a, got {direction!r}")
    if direction is not None and not takes_style:
        raise ExportError(f"--direction is for MUNIT models; {arch.name} has one direction")
    return arch


def example_inputs(model: nn.Module, batch: int = 2) -> Tuple[torch.Tensor, ...]:
    """Inputs to trace with: [batch, C, H, W] with H != W (so the two stay distinct dynamic axes),
    both the smallest sensible multiples of the size multiple; plus a style code for MUNIT."""
    from frametrans.engine.padding import min_side

    c = model.config.contract()
    m = c.size_multiple
    h = max(min_side(m), 2 * m, 16)
    lo, hi = c.value_range
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, c.in_channels * c.frames_in, h, h + m, generator=g) * (hi - lo) + lo
    if not c.takes_style:
        return (x,)
    return x, torch.randn(batch, c.style_dim, 1, 1, generator=g)


def onnx_bytes(module: nn.Module, inputs: Tuple[torch.Tensor, ...], names: Sequence[str],
               opset: int = DEFAULT_OPSET, output_names: Sequence[str] = ("output",),
               dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None) -> bytes:
    """Trace ``module`` (fp32, eval mode) on ``inputs`` into an ONNX model with dynamic batch,
    height and width (style codes: dynamic batch); output ``output``. Returns the serialized model.
    ``output_names`` / ``dynamic_axes``: other outputs, other dynamic axes (default: as above).

    Uses the TorchScript tracer (``dynamo=False``): it needs no extra package and keeps the
    spatial axes symbolic through the generators' shape checks and resizes.
    """
    dynamic = dynamic_axes
    if dynamic is None:
        dynamic = {name: ({0: "batch", 2: "height", 3: "width"} if t.dim() == 4 and t.shape[-1] > 1
                          else {0: "batch"}) for name, t in zip(names, inputs)}
        dynamic["output"] = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), _autocast_off():
        warnings.simplefilter("ignore")  # tracer chatter: shape checks turned constants, legacy notice
        torch.onnx.export(module, inputs, buf, dynamo=False, input_names=list(names),
                          output_names=list(output_names), dynamic_axes=dynamic, opset_version=opset,
                          do_constant_folding=True)
    return buf.getvalue()


@contextlib.contextmanager
def _autocast_off():
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield


def contract_metadata(model: nn.Module, direction: Optional[str], opset: int) -> Dict[str, str]:
    """The I/O contract as ONNX ``metadata_props`` (all strings)."""
    c = model.config.contract()
    meta = {
        "frametrans_version": __version__,
        "architecture": type(model).arch_name,
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "value_range": f"{float(c.value_range[0])},{float(c.value_range[1])}",
        "size_multiple": str(c.size_multiple),
        "in_channels": str(c.in_channels),
        "out_channels": str(c.out_channels),
        "frames_in": str(c.frames_in),
        "frames_out": str(c.frames_out),
        "style_dim": str(c.style_dim),
        "layout": "NCHW float32; batch, height, width dynamic; height and width multiples of size_multiple",
        "opset": str(opset),
    }
    if c.takes_style:
        meta["direction"] = direction or "a2b"
        meta["style_input"] = f"style: float32 [batch or 1, {c.style_dim}, 1, 1], target-domain style code"
    return meta


def with_metadata(data: bytes, metadata: Dict[str, str]) -> bytes:
    """``data`` (a serialized ONNX model) with ``metadata`` added to its metadata_props, checked."""
    import onnx

    proto = onnx.load_from_string(data)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "frametrans"
    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(model: nn.Module, path: Union[str, Path], direction: Optional[str] = None,
                opset: int = DEFAULT_OPSET) -> ExportResult:
    """Write ``model`` (a registered generator, fp32) to ``path`` as ONNX, atomically.

    direction: MUNIT only: ``a2b`` (default) or ``b2a``; the file takes a style code as its second
        input ``style``. ExportError for discriminators or a direction given to a one-way model.
    """
    arch = check_exportable(model, direction)
    _require("onnx", "export")
    from frametrans.engine.session import Session

    source = Session(model, "cpu", "fp32", channels_last=False).source
    takes_style = model.config.contract().takes_style
    module = _Styled(source, direction or "a2b") if takes_style else source
    names = ("image", "style") if takes_style else ("image",)
    metadata = contract_metadata(model, direction, opset)
    data = with_metadata(onnx_bytes(module, example_inputs(model), names, opset), metadata)
    path = Path(path)
    atomic_write_bytes(path, data)
    return ExportResult(path, arch.name, names, metadata, len(data))


def read_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


# ------------------------------------------------------------------------------------- checking


def to_uint8(y: np.ndarray, value_range: Tuple[float, float]) -> np.ndarray:
    """Model output [B, C, H, W] float in ``value_range`` -> uint8 [B, C, H, W], rounded as the
    runner does."""
    lo, hi = value_range
    return np.clip(np.rint((y.astype(np.float64) - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def photo_inputs(model: nn.Module, images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 images [H, W, 3] of one size (multiples of the size multiple) -> the model's input
    [B, C, H, W] float32 in its range (channels repeated or cut to C, frames repeated)."""
    c = model.config.contract()
    lo, hi = c.value_range
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0 * (hi - lo) + lo
    x = x[:, : c.in_channels] if x.shape[1] >= c.in_channels else x.repeat(1, c.in_channels, 1, 1)[:, : c.in_channels]
    return x.repeat(1, c.frames_in, 1, 1)


def check_onnx(path: Union[str, Path], model: nn.Module, inputs: torch.Tensor,
               direction: Optional[str] = None, seed: int = 0) -> int:
    """Largest grey-level difference (uint8, after the model-range -> [0, 255] mapping) between
    ONNX Runtime running ``path`` and torch fp32 running ``model`` on ``inputs`` [B, C, H, W]
    (MUNIT: with a style code drawn from ``seed``)."""
    _require("onnxruntime", "check")
    import onnxruntime as ort

    from frametrans.engine.session import Session

    source = Session(model, "cpu", "fp32", channels_last=False).source
    c = model.config.contract()
    feeds: Dict[str, np.ndarray] = {"image": inputs.numpy().astype(np.float32)}
    with torch.inference_mode():
        if c.takes_style:
            style = torch.randn(inputs.shape[0], c.style_dim, 1, 1, generator=torch.Generator().manual_seed(seed))
            feeds["style"] = style.numpy()
            ref = source.translate(inputs, style=style, direction=direction or "a2b")
        else:
            ref = source(inputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = sess.run(["output"], feeds)[0]
    a, b = to_uint8(ref.numpy(), c.value_range), to_uint8(got, c.value_range)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _require(package: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise ExportError(f"{what} needs the {package} package: pip install 'frametrans[onnx]'")


def exportable_names() -> List[str]:
    """Registered architectures that :func:`export_onnx` takes."""
    return [n for n in registry.names() if registry.get(n).role in EXPORTABLE_ROLES]
