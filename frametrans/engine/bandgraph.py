"""A model's forward as a graph of row-band operations, for :mod:`frametrans.engine.streaming`.

The forward ``fn(model, x)`` is traced with ``torch.fx`` (no compute on the frame), the
frame-dependent normalization layers kept whole (they are what streaming is for). Shapes come
from the layers' own geometry (:meth:`Step.out_size`), not from meta tensors: those would import
sympy and 150 MB with it on first use. Each node that carries an image-shaped tensor ``[1, C, H, W]`` becomes a
:class:`Step` of one of four kinds, by how its output rows depend on its input rows:

- ``input``: the frame;
- ``point``: row ``r`` of the output needs row ``r`` of every input (activations, additions,
  channel concatenation, a normalization with known statistics, eval-mode batch norm, dropout);
- ``window``: a convolution, pooling, padding, transposed convolution or integer nearest-neighbour
  upsampling: rows ``[a, b)`` of the output need a contiguous range of input rows
  (:meth:`Step.source`);
- ``norm``: a frame-dependent normalization layer: pointwise once its input's whole-frame
  statistics are known.

Everything else that does not depend on the frame's pixels (a MUNIT style code and its MLP, shape
checks) is a constant, evaluated once. Anything else that does (global pooling, attention,
reshapes across rows, bilinear resizing) makes the model :class:`Unstreamable`; the caller then
uses the tiled path instead.

In-place operations (``nn.ReLU(inplace=True)`` in a U-Net's skip) are made explicit: later users
of the tensor an in-place step overwrote read that step's output, as they do in eager mode.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from frametrans.engine.normstats import _adapter_for

__all__ = ["BandGraph", "Step", "Unstreamable", "trace_bands"]


class Unstreamable(Exception):
    """The forward has an operation that does not run in row bands (the message says which)."""


_POINT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.SELU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh,
                  nn.Sigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
                  nn.BatchNorm2d, nn.InstanceNorm2d)
_PADS = (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.ConstantPad2d)
_POINT_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
                    torch.add, torch.sub, torch.mul, torch.div, torch.tanh, torch.sigmoid, torch.relu,
                    torch.clamp, torch.rsqrt, torch.sqrt, torch.exp, F.relu, F.leaky_relu, F.tanh, F.sigmoid,
                    F.gelu, F.silu, F.elu, F.hardtanh, F.dropout}
_POINT_METHODS = {"add", "sub", "mul", "div", "relu", "tanh", "sigmoid", "clamp", "contiguous", "float",
                  "to", "add_", "mul_", "relu_", "clamp_", "neg", "sqrt", "rsqrt", "exp"}
_INPLACE_METHODS = {"add_", "mul_", "relu_", "clamp_"}


@dataclass
class Step:
    """One image-shaped node: ``kind`` (input, point, window, norm), its fx ``node``, the banded
    inputs (``inputs``, node names), the full-frame output ``shape`` [1, C, H, W], and for windows
    (``op``: conv, transpose, pad, upsample) the geometry as (vertical, horizontal) pairs:
    ``kernel, stride, padding, dilation, output_padding`` of convolutions and pools, ``pad``
    ((top, bottom), (left, right)) of paddings, ``scale`` of upsampling."""

    name: str
    kind: str
    node: fx.Node
    shape: Tuple[int, int, int, int]
    inputs: List[str] = field(default_factory=list)
    op: str = ""
    kernel: Tuple[int, int] = (1, 1)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    output_padding: Tuple[int, int] = (0, 0)
    pad: Tuple[Tuple[int, int], Tuple[int, int]] = ((0, 0), (0, 0))
    scale: Tuple[int, int] = (1, 1)
    inplace: bool = False

    @property
    def height(self) -> int:
        return self.shape[2]

    def out_size(self, axis: int, n: int) -> int:
        """The output size along ``axis`` (0: rows, 1: columns) of a window for an input of ``n``."""
        k, s, p, d = self.kernel[axis], self.stride[axis], self.padding[axis], self.dilation[axis]
        if self.op == "conv":
            return (n + 2 * p - d * (k - 1) - 1) // s + 1
        if self.op == "transpose":
            return (n - 1) * s - 2 * p + d * (k - 1) + self.output_padding[axis] + 1
        if self.op == "pad":
            return n + sum(self.pad[axis])
        return n * self.scale[axis]

    def source(self, a: int, b: int, h_in: int) -> Tuple[int, int, int]:
        """For output rows ``[a, b)`` of a window: input rows ``[lo, hi)`` to run it on, and the
        output row that the band's first output row stands for (``origin``). Rows of the band's
        output outside ``[a - origin, b - origin)`` may be wrong (padding applied at band edges
        that are not frame edges) and are cut off by the caller."""
        k, s, p, d = self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]
        if self.op == "conv":
            need_lo, need_hi = a * s - p, (b - 1) * s - p + d * (k - 1) + 1
            lo = 0 if need_lo <= 0 else need_lo - need_lo % s
            return lo, min(h_in, need_hi), lo // s
        if self.op == "pad":
            top, bottom = self.pad[0]
            lo, hi = max(0, a - top), min(h_in, b - top)
            if lo == 0:
                hi = max(hi, min(h_in, top + 1))  # the rows a reflection at the top reads
            if hi == h_in:
                lo = min(lo, max(0, h_in - 1 - bottom))
            return lo, hi, lo
        if self.op == "transpose":
            lo = max(0, -(-(a + p - d * (k - 1)) // s))
            hi = min(h_in, (b - 1 + p) // s + 1)
            while hi < h_in and (hi - lo - 1) * s - 2 * p + d * (k - 1) + self.output_padding[0] + 1 < b - lo * s:
                hi += 1
            return lo, hi, lo * s
        lo, hi = a // self.scale[0], min(h_in, (b - 1) // self.scale[0] + 1)
        return lo, hi, lo * self.scale[0]


@dataclass
class BandGraph:
    """The traced forward: the fx ``graph``, the traced ``root`` (holding the model as ``m``, and
    the tensor constants), the image-shaped ``steps`` by name in execution order, the name of the
    ``output`` step, and each step's ``users`` (step names; ``output`` for the graph's output)."""

    graph: fx.Graph
    root: nn.Module
    steps: Dict[str, Step]
    output: str
    users: Dict[str, List[str]]


class _Root(nn.Module):
    """What is traced: ``fn(m, x)`` with the model registered as ``m``, so that the graph's module
    names resolve in any copy of the model with the same structure (the session's bf16 copy)."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.m = model
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.m, x)


_VALUE = "frametrans_value"
_UNKNOWN = object()


class _Tracer(fx.Tracer):
    """fx tracing where everything that does not depend on the frame's pixels has its real value
    (``node.meta["frametrans_value"]``): the frame's shape, a style code, its MLP, so that shape
    checks and style code work while tracing. Frame-dependent normalization layers are leaves."""

    def __init__(self, frame_shape: Tuple[int, ...], device: torch.device) -> None:
        super().__init__()
        self.frame_shape, self.device = torch.Size(frame_shape), device
        self.folding = False
        self.steps: Dict[str, Step] = {}  # image-shaped nodes, classified as they are traced

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return (_adapter_for(m) is not None or isinstance(m, _POINT_MODULES)
                or super().is_leaf_module(m, qualified_name))

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        if kind == "placeholder":
            self.steps[node.name] = Step(node.name, "input", node, tuple(self.frame_shape))
        elif not _is_fact(node) and any(a.name in self.steps for a in node.all_input_nodes):
            self.steps[node.name] = _banded_step(node, self.root, self.steps)
        else:
            value = self._fold(kind, target, args, kwargs)
            if value is not _UNKNOWN:
                node.meta[_VALUE] = value
        return proxy

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: Dict[str, Any]) -> Any:
        return attr_val if self.folding else super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        return forward(*args, **kwargs) if self.folding else super().call_module(m, forward, args, kwargs)

    def to_bool(self, obj: fx.Proxy) -> bool:
        value = obj.node.meta.get(_VALUE, _UNKNOWN)
        return super().to_bool(obj) if value is _UNKNOWN else bool(value)

    def iter(self, obj: fx.Proxy) -> Any:
        value = obj.node.meta.get(_VALUE, _UNKNOWN)
        return super().iter(obj) if value is _UNKNOWN else iter(value)

    def _fold(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        fact = self._frame_fact(kind, target, args)
        if fact is not _UNKNOWN:
            return fact
        known = True

        def value(a: Any) -> Any:
            nonlocal known
            if isinstance(a, fx.Proxy):
                found = a.node.meta.get(_VALUE, _UNKNOWN)
                known = known and found is not _UNKNOWN
                return found
            return a

        args, kwargs = fx.node.map_aggregate((args, kwargs), value)
        if not known:
            return _UNKNOWN
        self.folding = True
        try:
            return _evaluate(self.root, kind, target, args, kwargs)
        except Exception:  # noqa: BLE001 - no value then; a step that needs one says so
            return _UNKNOWN
        finally:
            self.folding = False

    def _frame_fact(self, kind: str, target: Any, args: tuple) -> Any:
        """``t.shape``, ``t.size()``, ``t.dim()``, ``t.device`` of an image tensor, ``x.dtype``
        of the frame (float32 while tracing; the real one when the frame runs)."""
        if not args or not isinstance(args[0], fx.Proxy) or args[0].node.name not in self.steps:
            return _UNKNOWN
        step = self.steps[args[0].node.name]
        shape = torch.Size(step.shape)
        if kind == "call_function" and target is getattr:
            facts = {"shape": shape, "device": self.device}
            if step.kind == "input":
                facts["dtype"] = torch.float32
            return facts.get(args[1], _UNKNOWN)
        if kind == "call_method" and target == "dim":
            return len(shape)
        if kind == "call_method" and target == "size":
            return shape if len(args) == 1 else shape[args[1]]
        return _UNKNOWN


def _evaluate(root: nn.Module, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
    if kind == "get_attr":
        value: Any = root
        for atom in target.split("."):
            value = getattr(value, atom)
        return value
    if kind == "call_module":
        return root.get_submodule(target)(*args, **kwargs)
    if kind == "call_function":
        return target(*args, **kwargs)
    if kind == "call_method":
        return getattr(args[0], target)(*args[1:], **kwargs)
    raise Unstreamable(f"cannot run {kind} {target}")


def trace_bands(model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                shape: Tuple[int, int, int, int]) -> BandGraph:
    """Trace ``fn(model, x)`` for one frame ``x`` of ``shape`` [1, C, H, W]. Raises
    :class:`Unstreamable`."""
    root = _Root(model, fn)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    tracer = _Tracer(shape, device)
    try:
        graph = tracer.trace(root)
    except Unstreamable:
        raise
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: not streamable
        raise Unstreamable(f"the forward does not trace ({type(exc).__name__}: {_first(exc)})") from None
    _resolve_inplace(graph, root)
    return _finish(graph, root, tracer.steps)


def _first(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:120]


def _resolve_inplace(graph: fx.Graph, root: nn.Module) -> None:
    """Users of a tensor that come after an in-place step on it read the step's output instead."""
    nodes = list(graph.nodes)
    for position, node in enumerate(nodes):
        if not _is_inplace(node, root) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        target = node.args[0]
        later = set(nodes[position + 1:])
        for user in list(target.users):
            if user is not node and user in later:
                user.replace_input_with(target, node)


def _is_inplace(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return bool(getattr(root.get_submodule(node.target), "inplace", False))
    if node.op == "call_method":
        return node.target in _INPLACE_METHODS
    if node.op == "call_function":
        return bool(node.kwargs.get("inplace", False))
    return False


def _finish(graph: fx.Graph, root: nn.Module, steps: Dict[str, Step]) -> BandGraph:
    """The graph with its steps' inputs as they are after :func:`_resolve_inplace`, the output
    step and each step's users."""
    for step in steps.values():
        step.inputs = [a.name for a in step.node.all_input_nodes if a.name in steps]
    result = next(n for n in graph.nodes if n.op == "output").args[0]
    if not isinstance(result, fx.Node) or result.name not in steps:
        raise Unstreamable("the forward's output is not one image tensor")
    users = {name: [u.name for u in step.node.users if u.name in steps or u.op == "output"]
             for name, step in steps.items()}
    return BandGraph(graph=graph, root=root, steps=steps, output=result.name, users=users)


def _is_fact(node: fx.Node) -> bool:
    """A shape, dtype or device of an image tensor (evaluated once when the frame runs)."""
    return (node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "device", "dtype")) \
        or (node.op == "call_method" and node.target in ("size", "dim"))


def _banded_step(node: fx.Node, root: nn.Module, steps: Dict[str, Step]) -> Step:
    banded = [a.name for a in node.all_input_nodes if a.name in steps]
    first = steps[banded[0]]
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        if _adapter_for(module) is not None:
            return Step(node.name, "norm", node, first.shape, banded)
        window = _window_geometry(module)
        if window is not None:
            return _window(node, banded, first, window, getattr(module, "out_channels", first.shape[1]))
        if isinstance(module, _POINT_MODULES):
            return Step(node.name, "point", node, first.shape, banded, inplace=bool(getattr(module, "inplace", False)))
        raise Unstreamable(f"{node.name}: {type(module).__name__} does not run in row bands")
    if node.op == "call_function":
        if node.target is F.interpolate:
            return _window(node, banded, first, _interpolate_geometry(node), first.shape[1])
        if node.target in (torch.cat, torch.concat):
            return _concatenation(node, banded, steps)
        if node.target in _POINT_FUNCTIONS:
            return _point(node, banded, steps, inplace=bool(node.kwargs.get("inplace", False)))
    if node.op == "call_method" and node.target in _POINT_METHODS:
        return _point(node, banded, steps, inplace=node.target in _INPLACE_METHODS)
    raise Unstreamable(f"{node.name}: {node.op} {getattr(node.target, '__name__', node.target)} "
                       "does not run in row bands")


def _window(node: fx.Node, banded: List[str], first: Step, geometry: Dict[str, Any], channels: int) -> Step:
    if len(banded) != 1:
        raise Unstreamable(f"{node.name}: a window over two image tensors")
    step = Step(node.name, "window", node, first.shape, banded, **geometry)
    h, w = step.out_size(0, first.shape[2]), step.out_size(1, first.shape[3])
    if h < 1 or w < 1:
        raise Unstreamable(f"{node.name}: the frame is too small for it")
    step.shape = (1, int(channels), h, w)
    return step


def _concatenation(node: fx.Node, banded: List[str], steps: Dict[str, Step]) -> Step:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    if dim not in (1, -3) or not all(isinstance(t, fx.Node) and t.name in steps for t in tensors):
        raise Unstreamable(f"{node.name}: concatenation other than of image tensors along channels")
    shapes = [steps[t.name].shape for t in tensors]
    if len({s[2:] for s in shapes}) != 1:
        raise Unstreamable(f"{node.name}: concatenation of tensors of other sizes")
    return Step(node.name, "point", node, (1, sum(s[1] for s in shapes), *shapes[0][2:]), banded)


def _point(node: fx.Node, banded: List[str], steps: Dict[str, Step], inplace: bool = False) -> Step:
    shapes = [steps[n].shape for n in banded]
    for arg in node.all_input_nodes:
        value = arg.meta.get(_VALUE, _UNKNOWN)
        if arg.name in steps or isinstance(value, (int, float, bool)):
            continue
        if not isinstance(value, torch.Tensor):
            raise Unstreamable(f"{node.name}: an operand the tracer could not compute ({arg.name})")
        shapes.append(tuple(value.shape))
    shape = _broadcast(node.name, shapes)
    if len(shape) != 4 or any(steps[n].shape[2:] != shape[2:] for n in banded):
        raise Unstreamable(f"{node.name}: an operation across image tensors of other sizes ({shapes})")
    return Step(node.name, "point", node, shape, banded, inplace=inplace)  # type: ignore[arg-type]


def _broadcast(name: str, shapes: List[Tuple[int, ...]]) -> Tuple[int, ...]:
    """numpy broadcasting of ``shapes`` (``torch.broadcast_shapes`` would import sympy)."""
    rank = max(len(s) for s in shapes)
    out = []
    for sizes in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes]):
        big = {n for n in sizes if n != 1}
        if len(big) > 1:
            raise Unstreamable(f"{name}: operands of shapes {shapes} do not broadcast")
        out.append(big.pop() if big else 1)
    return tuple(out)


def _pair(v: Any) -> Tuple[int, int]:
    """A conv/pool parameter (an int or an (h, w) pair) as (vertical, horizontal)."""
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _window_geometry(module: nn.Module) -> Optional[Dict[str, Any]]:
    """The geometry of a windowed module, None if it is not one. Raises for windows that cannot
    run in bands (ceil-mode pools, circular or 'same' padding, resizing to a fixed size)."""
    if isinstance(module, nn.ConvTranspose2d):
        return dict(op="transpose", kernel=_pair(module.kernel_size), stride=_pair(module.stride),
                    padding=_pair(module.padding), dilation=_pair(module.dilation),
                    output_padding=_pair(module.output_padding))
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        if getattr(module, "ceil_mode", False) or getattr(module, "padding_mode", "zeros") == "circular" \
                or isinstance(module.padding, str):
            raise Unstreamable(f"{type(module).__name__} with ceil_mode, circular or named padding")
        stride = module.stride if module.stride is not None else module.kernel_size
        return dict(op="conv", kernel=_pair(module.kernel_size), stride=_pair(stride),
                    padding=_pair(module.padding), dilation=_pair(getattr(module, "dilation", 1)))
    if isinstance(module, _PADS):
        left, right, top, bottom = module.padding
        if min(left, right, top, bottom) < 0:
            raise Unstreamable("negative padding")
        return dict(op="pad", pad=((top, bottom), (left, right)))
    if isinstance(module, nn.Upsample):
        return _upsample_geometry(module.mode, module.size, module.scale_factor)
    return None


def _upsample_geometry(mode: str, size: Any, scale: Any) -> Dict[str, Any]:
    factors = _pair(scale) if scale is not None and all(
        float(f) == int(f) for f in (scale if isinstance(scale, (tuple, list)) else [scale])) else None
    if mode not in ("nearest", "nearest-exact") or size is not None or factors is None:
        raise Unstreamable(f"upsampling mode {mode!r}, size {size}, scale {scale}: only integer nearest runs in bands")
    return dict(op="upsample", scale=factors)


def _interpolate_geometry(node: fx.Node) -> Dict[str, Any]:
    def arg(position: int, name: str, default: Any) -> Any:
        return node.kwargs.get(name, node.args[position] if len(node.args) > position else default)

    return _upsample_geometry(arg(3, "mode", "nearest"), arg(1, "size", None), arg(2, "scale_factor", None))
