"""The device session: the one place that owns device, dtype, ``eval()``, ``inference_mode``,
``autocast`` and the low-precision weight copy of a model.

Everything that runs a model for inference goes through a :class:`Session`: the runner (apply,
predict-next), MUNIT style encoding and the benchmarks. A test greps the inference code for
``.eval()``, ``inference_mode``, ``autocast`` and model device moves outside this module.

    session = Session(model, device="auto", precision="auto")
    with session.inference():
        y = session.model(session.to_model_layout(x))

Precision: ``auto`` is bf16 on CPUs where it is faster than fp32 (AMX, or AVX512-BF16 measured
faster) and on CUDA GPUs with bf16, fp16 on MPS, else fp32 (:func:`frametrans.engine.device.resolve_precision`). Below fp32 the session keeps a
low-precision copy of the weights, shared by every session of the same module on the same device
(MUNIT variants) and rebuilt when the module's weights change (training steps); the module given
stays fp32 and is what receptive-field probes and compile keys read (``source``).

Where the precision goes, and what stays fp32 in that copy (measured on the bundled models and a
random ResNet-9 ngf 64, 256x256 photos, worst / mean PSNR of the uint8 output against fp32):

- the image itself: rounded to bf16 (8 significant bits) it is already off by up to a quarter of a
  grey level, and every later layer carries that; the convolutions that read the frame at full
  resolution (the first 7x7 conv and the first stride-2 conv of a ResNet) stay fp32;
- the output: the last convolution (the one producing the model's output channels) runs in bf16
  and hands its result on in fp32, so the tanh runs in fp32 and its output is not rounded to bf16.
  Kept in fp32 it bought 0.0-0.1 dB on a random ResNet-9 ngf 64 and cost 13% of its bf16 forward
  (a 64-to-3-channel 7x7 conv at 256x256: 19 ms in fp32, 2.4 in bf16; Intel Xeon with AMX,
  2026-12-02: ``python examples/precision_cost.py --device cpu --batch 1``);
- normalization statistics and their outputs (InstanceNorm, BatchNorm, GroupNorm, LayerNorm, AdaIN):
  stay fp32, which also keeps the residual stream of the ResNet blocks (x + ...norm) in fp32.

Random ResNet-9: 40.0 / 41.6 dB with everything bf16, 41.0 / 42.7 with fp32 norms and output, 45.4 /
46.1 with the full-resolution convolutions too and the output conv in bf16 (45.5 / 46.2 with it in
fp32); bundled cyclegan 53.4 / 54.3 -> 57.0 / 57.4, munit 52.2 / 53.2 -> 55.4 / 56.0, pix2pix 55.5 /
56.5 -> 58.1 / 58.8 (each 0.5-1.9 dB below the copy with the output conv in fp32). Those convolutions are ~5% of
ResNet-9's multiply-adds. ``precision=auto`` then checks the model it was given: a small structured
probe frame runs in both precisions, and below :data:`AUTO_MIN_DB` the session runs fp32 and says so.
On the CPU it first tries the copy with every layer low-precision and keeps it when the probe passes
with :data:`LIGHT_MARGIN_DB` to spare (the bundled cyclegan, pix2pix and munit: 1.18-1.38x faster
in torch bf16 on an AMD Zen 5).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import threading
import weakref
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Set, Tuple, Union

import torch
from torch import nn

from frametrans.engine import device as devices
from frametrans.heap import keep_freed_memory

if TYPE_CHECKING:
    from frametrans.registry import IOContract

log = logging.getLogger("frametrans")

# One low-precision copy per (module, device, dtype, layout, keep_fp32); it goes away with the module.
_PREPARED: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, Tuple[tuple, nn.Module]]]" = (
    weakref.WeakKeyDictionary())
# precision=auto's verdict per (module, device, dtype, keep_fp32): (weights stamp, PSNR of the probe in dB)
_VERDICTS: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, Tuple[tuple, float]]]" = (
    weakref.WeakKeyDictionary())

#: Below this PSNR (dB) of the low-precision probe output against fp32, ``precision=auto`` runs fp32:
#: the issue's mean bar for bf16 output.
AUTO_MIN_DB = 45.0
#: On the CPU, ``precision=auto`` keeps no layer in fp32 when the probe passes the bar by this much
#: (see :meth:`Session._try_the_light_copy`).
LIGHT_MARGIN_DB = 3.5
_NORMS = (nn.InstanceNorm2d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
_NORM_NAMES = ("LayerNorm", "AdaptiveInstanceNorm2d")  # MUNIT's own norm layers
_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
#: What a low-precision copy keeps in fp32, from ``FRAMETRANS_KEEP_FP32`` (to measure what the rule
#: costs on a device): ``all`` (the default, but for precision auto on the CPU, which tries ``none``
#: first: norms and the full-resolution convolutions but the output's),
#: ``output`` (the output convolutions only), ``none`` (every layer in the low precision).
KEEP_FP32_MODES = ("all", "output", "none")


def keep_fp32_mode() -> str:
    """``FRAMETRANS_KEEP_FP32`` (default ``all``); a ValueError names the choices."""
    mode = os.environ.get("FRAMETRANS_KEEP_FP32", "all").strip().lower()
    if mode not in KEEP_FP32_MODES:
        raise ValueError(f"FRAMETRANS_KEEP_FP32={mode!r}: use all, output or none")
    return mode


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
    device), ``model`` (what runs: ``source`` or its shared low-precision copy), ``keep_fp32``
    (:data:`KEEP_FP32_MODES`: what that copy keeps in fp32).
    """

    def __init__(self, model: nn.Module, device: Union[str, torch.device] = "auto",
                 precision: str = "auto", channels_last: bool = True) -> None:
        keep_freed_memory()  # activations reuse pages from frame to frame (frametrans.heap)
        self.device = devices.resolve_device(device) if isinstance(device, str) else device
        self.dtype = devices.resolve_precision(precision, self.device)
        auto = (precision or "auto").lower() == "auto" and self.dtype != torch.float32 and self.device.type != "mps"
        self.channels_last = channels_last and self.device.type != "mps"
        self.source = model.eval().to(self.device)
        if self.channels_last:  # before any weights stamp is taken: copies and verdicts key on it
            self.source = self.source.to(memory_format=torch.channels_last)
        light = auto and self.device.type == "cpu" and "FRAMETRANS_KEEP_FP32" not in os.environ \
            and self._light_copy_may_pass()
        self.keep_fp32 = "none" if light else keep_fp32_mode()  # what a low-precision copy keeps in fp32
        self.model = self._prepare()
        self.precision_db: Optional[float] = None  # precision=auto's probe, when it ran
        if light:
            self._try_the_light_copy()
        if auto:
            self._check_auto_precision()
        devices.autotune_convolutions(self.device)  # fixed shapes per job
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and not devices.cpu_has_bf16():
            log.warning("bf16 on a CPU without bf16 units is emulated and much slower than fp32 "
                        "(measured 60x on an AVX2 CPU); --precision auto picks fp32 here")

    def _prepare(self) -> nn.Module:
        """``source`` (in its layout already) or its low-precision copy for ``keep_fp32``."""
        model = self.source
        if self.dtype == torch.float32 or self.device.type == "mps":
            return model  # MPS: fp32 weights under fp16 autocast
        key = self._copy_key(self.keep_fp32)
        copies = _PREPARED.setdefault(model, {})
        stamp = weights_stamp(model)
        if key not in copies or copies[key][0] != stamp:
            low = _low_precision_copy(model, self.dtype, self.device, self.keep_fp32)
            if self.channels_last:
                low = low.to(memory_format=torch.channels_last)
            copies[key] = (stamp, low.eval())
        return copies[key][1]

    def _try_the_light_copy(self) -> None:
        """precision=auto on the CPU: keep the all-low-precision copy (``keep_fp32="none"``) when
        its probe passes :data:`AUTO_MIN_DB` + :data:`LIGHT_MARGIN_DB`, else go on with the copy
        that keeps norms and frame in fp32 (``all``), which :meth:`_check_auto_precision`
        then judges. The margin: the probe frame read up to 3.2 dB better than 256x256 frames
        (munit: 50.2 against 47.0 dB), and the bundled models pass it (cyclegan 53.5, pix2pix 57.5,
        munit 50.2 dB) while a random ResNet-9 (41.8) and the bundled predictor (45.4) do not."""
        db, fresh = self._probe_verdict()
        passed = _light_passes(db)
        if fresh:
            log.debug("--precision auto: the all-%s copy is %s dB from fp32 on the probe frame: %s",
                      _NAMES[self.dtype], "?" if db is None else f"{db:.1f}",
                      "kept" if passed else "norms and frame stay fp32")
        if passed:
            return
        _PREPARED.get(self.source, {}).pop(self._copy_key("none"), None)
        self.keep_fp32, self.model = "all", self.source  # the light copy goes before the next is made
        self.model = self._prepare()

    def _light_copy_may_pass(self) -> bool:
        """False when the light copy cannot be judged (no I/O contract) or already failed for these
        weights: no copy is made just to be thrown away."""
        if contract_of(self.source) is None:
            return False
        verdict = self._current_verdict("none")
        return verdict is None or _light_passes(verdict[0])

    def all_low_db(self) -> Optional[float]:
        """The probe's PSNR (dB) of the copy with every layer in the low precision, when it was
        measured for these weights (precision auto on the CPU tries that copy first); else None."""
        verdict = self._current_verdict("none")
        return None if verdict is None else verdict[0]

    def _current_verdict(self, keep_fp32: str) -> Optional[Tuple[Optional[float]]]:
        """``(dB,)``: the probe's verdict on the copy for ``keep_fp32`` when it was measured for
        the current weights (dB None: the probe could not tell); None when it was not."""
        verdict = _VERDICTS.get(self.source, {}).get(self._verdict_key(keep_fp32))
        return (verdict[1],) if verdict is not None and verdict[0] == weights_stamp(self.source) else None

    def _copy_key(self, keep_fp32: str) -> tuple:
        """The key of a low-precision copy of ``source`` in ``_PREPARED``."""
        return str(self.device), self.dtype, self.channels_last, keep_fp32

    def _verdict_key(self, keep_fp32: str) -> tuple:
        """The key of a probe verdict on that copy in ``_VERDICTS``."""
        return str(self.device), self.dtype, keep_fp32

    def _probe_verdict(self) -> Tuple[Optional[float], bool]:
        """The probe's PSNR (dB) for the current copy, measured once per weights and shared by every
        session of the module (MUNIT variants); and whether it was measured just now."""
        verdict = self._current_verdict(self.keep_fp32)
        if verdict is not None:
            return verdict[0], False
        db = self._probe_db()
        _VERDICTS.setdefault(self.source, {})[self._verdict_key(self.keep_fp32)] = (weights_stamp(self.source), db)
        return db, True

    def _check_auto_precision(self) -> None:
        """precision=auto: run fp32 when the low-precision copy loses the picture on a probe frame."""
        db, fresh = self._probe_verdict()
        self.precision_db = db
        if db is None or db >= AUTO_MIN_DB:
            return
        if fresh:
            log.warning("--precision auto: %s output of this model is %.1f dB from fp32 on a probe "
                        "frame (< %.0f dB): running it in fp32", _NAMES[self.dtype], db, AUTO_MIN_DB)
        self.dtype = torch.float32
        self.model = self._prepare()

    def _probe_db(self) -> Optional[float]:
        """Worst PSNR (dB, uint8) of the low-precision copy against fp32 over the probe forwards;
        None for a module without an I/O contract or a forward the probe cannot call."""
        probe = _probe_input(self.source, self.device)
        if probe is None:
            return None
        x, fns, value_range = probe
        worst = float("inf")
        try:
            for fn in fns:
                with torch.inference_mode():
                    ref = fn(self.source, x)
                with self.inference():
                    low = fn(self.model, self.to_model_input(x))
                worst = min(worst, output_psnr(low, ref, value_range))
        except Exception as exc:  # noqa: BLE001 - the probe is advice; the model's own errors show later
            log.debug("precision probe failed: %s", exc)
            return None
        return worst

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
        # the compute dtype (its layers that stay fp32 cast their inputs up themselves), or MPS's
        # fp32 weights under fp16 autocast
        weights = self.dtype if self.model is not self.source else param_dtype(self.model)
        return x.to(weights) if weights is not None and x.is_floating_point() else x

    def to_model_input(self, x: torch.Tensor) -> torch.Tensor:
        """A frame batch ``x [B, C, H, W]`` (float32) as the model should get it: like
        :meth:`to_model_layout`, except that a low-precision copy gets it in float32, since its
        layers that read the frame run in fp32 and the others cast down by themselves (rounding the
        image to bf16 first cost ~1 dB on a ResNet-9)."""
        if self.model is self.source or not x.is_floating_point():
            return self.to_model_layout(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def sync(self) -> None:
        """Wait for the work queued on this thread's stream (CUDA; not the --temporal-flow torch
        flows on their own streams, so that timing a forward does not count them); nothing elsewhere."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def release_cached_memory(self) -> None:
        """Give cached device blocks back (CUDA), e.g. before a retry after out-of-memory."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def memory_in_use(self) -> int:
        """Bytes the device allocator holds for tensors now (CUDA); 0 elsewhere."""
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return 0


# -- mixed precision -------------------------------------------------------------------------------

_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORMS) or type(module).__name__ in _NORM_NAMES


def _floating_to(args: tuple, dtype: torch.dtype) -> tuple:
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _cast_inputs(module: nn.Module, dtype: torch.dtype) -> None:
    """A low-precision layer takes low-precision inputs even where no autocast casts them (an
    fp32 layer may come before it, and compiling runs without autocast)."""
    module.register_forward_pre_hook(lambda _m, args: _floating_to(args, dtype))


def _keep_fp32(module: nn.Module, device_type: str, autocast_off: bool) -> None:
    """``module`` (in the low-precision copy) computes in fp32: fp32 weights, fp32 inputs and, for
    convolutions, autocast off around it (it would cast them back down)."""
    module.float()
    _hook_around(module, device_type, autocast_off, torch.float32)


#: Paddings that copy edge values, which the CPU's autocast runs in fp32 (it lists
#: reflection_pad and replication_pad): a bf16 frame is converted up, padded, and converted back
#: down by the next convolution, three passes over the frame for values that a copy keeps exact.
_EDGE_PADS = (nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
              nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d)


def _pad_as_is(module: nn.Module, device_type: str) -> None:
    """``module`` (an edge padding in the low-precision copy) pads its input in the input's own
    dtype: autocast off around it. The output's values are the same (a padding copies them), and
    the bundled munit at 640x360 in bf16 spent 12.6 of its 52 ms per frame padding two 32-channel
    frames through fp32 (AMD Zen 5)."""
    _hook_around(module, device_type, autocast_off=True, cast=None)


def _hook_around(module: nn.Module, device_type: str, autocast_off: bool, cast: Optional[torch.dtype]) -> None:
    """Hooks on ``module``: autocast off while it runs (``autocast_off``, where it is on), its
    floating-point inputs cast to ``cast`` (None: as they come). The entered contexts are kept per
    thread: sessions share the copy, and threads may run it at once with different autocast states."""
    local = threading.local()

    def before(_m: nn.Module, args: tuple) -> Optional[tuple]:
        ctx = None
        if autocast_off and torch.is_autocast_enabled(device_type):
            ctx = torch.autocast(device_type, enabled=False)
            ctx.__enter__()
        local.__dict__.setdefault("contexts", []).append(ctx)
        return None if cast is None else _floating_to(args, cast)

    def after(_m: nn.Module, _args: tuple, _out: object) -> None:
        contexts = local.__dict__.get("contexts")
        ctx = contexts.pop() if contexts else None
        if ctx is not None:
            ctx.__exit__(None, None, None)

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after, always_call=True)


def _low_precision_copy(model: nn.Module, dtype: torch.dtype, device: torch.device, mode: str) -> nn.Module:
    """A copy of ``model`` in ``dtype`` with :func:`full_precision_modules` (``mode``) kept in fp32;
    the output convolutions, when in ``dtype``, hand their result on in fp32 (so the tanh after
    them runs in fp32 and its output is not rounded to ``dtype``)."""
    keep = full_precision_modules(model, device, mode)
    outputs = output_convolutions(model)
    low = copy.deepcopy(model).to(dtype)
    for name, module in low.named_modules():
        if name in keep:
            _keep_fp32(module, device.type, autocast_off=isinstance(module, _CONVS))
            continue
        if any(True for _ in module.parameters(recurse=False)):
            _cast_inputs(module, dtype)  # also without autocast (compiling)
        elif isinstance(module, _EDGE_PADS):
            _pad_as_is(module, device.type)
        if name in outputs:
            module.register_forward_hook(lambda _m, _args, out: out.float())
    return low


def output_convolutions(model: nn.Module) -> Set[str]:
    """Names of the convolutions producing the model's output channels (from its I/O contract;
    none without one)."""
    c = contract_of(model)
    if c is None:
        return set()
    channels = c.out_channels * c.frames_out
    return {name for name, m in model.named_modules() if isinstance(m, _CONVS) and m.out_channels == channels}


def full_precision_modules(model: nn.Module, device: torch.device, mode: str = "all") -> Set[str]:
    """Names of the modules of ``model`` that a low-precision copy keeps in fp32 (see the module
    docstring): normalization layers and the convolutions other than the output's whose input is
    the frame's full resolution (found with one forward of a small probe frame). ``mode``
    (:data:`KEEP_FP32_MODES`): ``output`` keeps the output convolutions only, ``none`` none."""
    if mode == "none":
        return set()
    if mode == "output":
        return output_convolutions(model)
    keep = {name for name, m in model.named_modules() if _is_norm(m)}
    probe = _probe_input(model, device)
    if probe is None:
        return keep
    x, fns, _ = probe
    sizes: Dict[str, Tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(_size_recorder(sizes, name))
             for name, m in model.named_modules() if isinstance(m, _CONVS)]
    try:
        with torch.inference_mode():
            for fn in fns:
                fn(model, x)
    except Exception as exc:  # noqa: BLE001 - then only the norms stay fp32
        log.debug("full-resolution probe failed: %s", exc)
    finally:
        for h in hooks:
            h.remove()
    full = {name for name, (h, w) in sizes.items() if h >= x.shape[-2] and w >= x.shape[-1]}
    return keep | (full - output_convolutions(model))


def _size_recorder(sizes: Dict[str, Tuple[int, int]], name: str):
    def record(_m: nn.Module, args: tuple) -> None:
        sizes.setdefault(name, tuple(args[0].shape[-2:]))
    return record


def _probe_input(model: nn.Module, device: torch.device
                 ) -> Optional[Tuple[torch.Tensor, List[Callable], Tuple[float, float]]]:
    """A structured probe frame [1, C, H, W] (smooth colours and fine noise, ~64 px, in the model's
    range), the forwards to probe (MUNIT: both directions with a seeded style) and the value range;
    None for a module without an I/O contract."""
    c = contract_of(model)
    if c is None:
        return None
    m = c.size_multiple
    side = max(-(-64 // m) * m, 2 * m if 1 < m <= 16 else m)
    g = torch.Generator().manual_seed(0)
    x = probe_frame(c, side, side, g).to(device)
    lo, hi = c.value_range
    if c.takes_style and hasattr(model, "translate"):
        style = torch.randn(1, c.style_dim, 1, 1, generator=g).to(device)
        fns = [lambda net, t, d=d: net.translate(t, style=style, direction=d) for d in ("a2b", "b2a")]
    else:
        fns = [lambda net, t: net(t)]
    return x, fns, (float(lo), float(hi))


def contract_of(model: nn.Module) -> Optional[IOContract]:
    """The I/O contract of a registered architecture (``model.config.contract()``); None for a
    module without one."""
    config = getattr(model, "config", None)
    return config.contract() if config is not None and hasattr(config, "contract") else None


def probe_frame(contract: IOContract, height: int, width: int,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A structured frame [1, C, height, width] float32 on the CPU in the model's value range
    (``contract``): smooth colours plus fine noise, content that any precision loss shows on (a
    flat or black frame would hide it)."""
    g = generator or torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    channels = contract.in_channels * contract.frames_in
    base = torch.stack([torch.sin(xx / 5 + k) * torch.cos(yy / 7 - k) for k in range(channels)])
    x = ((base + 1) / 2 + 0.05 * torch.randn(base.shape, generator=g)).clamp(0, 1)[None]
    lo, hi = contract.value_range
    return x * (hi - lo) + lo


def output_psnr(a: torch.Tensor, b: torch.Tensor, value_range: Tuple[float, float]) -> float:
    """PSNR in dB of two model outputs after the runner's mapping to uint8 (inf when equal, 0 when
    either has NaN: a lost picture, where ``min`` over frames would otherwise skip a NaN)."""
    lo, hi = value_range

    def u8(t: torch.Tensor) -> torch.Tensor:
        return ((t.float() - lo) / (hi - lo) * 255).round().clamp(0, 255)

    mse = float(((u8(a) - u8(b)) ** 2).mean())
    if math.isnan(mse):
        return 0.0
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _light_passes(db: Optional[float]) -> bool:
    """Whether a probe verdict lets precision=auto keep the all-low-precision copy."""
    return db is not None and db >= AUTO_MIN_DB + LIGHT_MARGIN_DB
