"""Device and precision choice: the only place that decides where and in what dtype models run,
and the process-wide backend switches that go with a device (cuDNN's autotuner)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import time
from typing import Iterator, Optional

import torch

log = logging.getLogger("frametrans")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; validates explicit names.

    Raises ValueError with a one-line message for unknown or unavailable devices.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' asked for, but MPS is not available here; use cpu")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    flags = _cpu_flags()
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        return True
    return bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()) and \
        torch.backends.cpu.get_cpu_capability() == "AVX512_BF16"


def _cpu_flags() -> str:
    return _cpu_field("flags")


def _cpu_field(name: str) -> str:
    """The value of the first ``name : value`` line of /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                field, _, value = line.partition(":")
                if field.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


#: How much faster than fp32 a bf16 convolution must run for ``precision=auto`` to pick bf16 on a CPU
#: without AMX. A whole model gains less than one convolution (the layers a low-precision copy keeps
#: in fp32 and the casts around them take part of it): on an AMD Zen 5 (AVX512-BF16, no AMX) the probe
#: convolution ran 1.85-2.14x faster and ResNet-9 ngf 64 1.44x; on an Intel Xeon with AVX512-BF16 and
#: no AMX ResNet-9 ran 0.74x (2026-11-30, before this probe existed: its verdict there is unmeasured).
BF16_MIN_SPEEDUP = 1.25


_MEASURING = threading.Lock()


@functools.lru_cache(maxsize=1)
def cpu_bf16_pays() -> bool:
    """True when bf16 is faster than fp32 on this CPU, decided once per process (the measurement
    is kept per machine, :func:`remembered_bf16_speedup`):

    - no bf16 units (AVX2 only): False, without measuring (bf16 is emulated, ~60x slower);
    - AMX tiles (``amx_bf16``): True (torch bf16 2.6-3.2x fp32 on Sapphire Rapids, issue 19;
      1.25-2.18x on the 2026-12-02 Xeon with AMX, over the bundled models and a ResNet-9);
    - AVX512-BF16 without AMX: measured, :func:`cpu_bf16_speedup` >= :data:`BF16_MIN_SPEEDUP`.
      CPUs of that kind differ: an AMD Zen 5 gains; an Intel Xeon measured on 2026-11-30 lost
      (a whole ResNet-9 there).
    """
    if not cpu_has_bf16():
        return False
    if "amx_bf16" in _cpu_flags():
        return True
    with _MEASURING:  # two threads' first sessions must not time the probe against each other
        speedup = remembered_bf16_speedup()
    log.debug("bf16 runs a 3x3 convolution %.2fx as fast as fp32 on this CPU (%d threads): --precision "
              "auto %s it (the bar is %.2fx)", speedup, torch.get_num_threads(),
              "prefers" if speedup >= BF16_MIN_SPEEDUP else "skips", BF16_MIN_SPEEDUP)
    return speedup >= BF16_MIN_SPEEDUP


#: Where :func:`remembered_bf16_speedup` keeps its measurements, in the cache folder.
SPEEDUP_FILE = "cpu-bf16.json"


def remembered_bf16_speedup() -> float:
    """:func:`cpu_bf16_speedup` for this CPU model, torch version and thread count: read from
    ``<cache>/cpu-bf16.json`` when an earlier process measured it, else measured now and added
    there (written atomically), so that every process on a machine (Ray workers, ``xargs -P``)
    decides alike and a run repeats the last one's precision. Delete the file to measure again."""
    from frametrans.atomic import atomic_write_text
    from frametrans.engine.compile import cache_dir

    cpu = "/".join(_cpu_field(f) for f in ("model name", "cpu family", "model", "stepping"))
    key = f"{cpu}|torch {torch.__version__}|{torch.get_num_threads()} threads"
    path = cache_dir() / SPEEDUP_FILE
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        table = {}
    table = table if isinstance(table, dict) else {}
    if isinstance(table.get(key), (int, float)) and table[key] > 0:
        return float(table[key])
    table[key] = round(cpu_bf16_speedup(), 3)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
    except OSError as exc:  # a read-only cache: measure again in the next process
        log.debug("could not keep the bf16 probe in %s: %s", path, exc)
    return table[key]


def cpu_bf16_speedup(channels: int = 64, side: int = 64, repeat: int = 5) -> float:
    """fp32 time over bf16 time of one 3x3 convolution, ``channels`` -> ``channels`` on a
    ``[1, channels, side, side]`` channels_last input (by default a 64-channel layer on a 64x64
    feature map, 0.3 GFLOP per call), best of ``repeat`` calls each after two warm-up
    calls, on this process's torch threads. About 20 ms on 2 cores of an AMD Zen 5. torch's global
    random generator is left as it was."""
    seconds = {}
    with torch.random.fork_rng(devices=[]):
        for dtype in (torch.float32, torch.bfloat16):
            seconds[dtype] = _best_call(dtype, channels, side, repeat)
    return seconds[torch.float32] / max(seconds[torch.bfloat16], 1e-9)


def _best_call(dtype: torch.dtype, channels: int, side: int, repeat: int) -> float:
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(1, channels, side, side).to(dtype=dtype, memory_format=torch.channels_last)
    with torch.no_grad():  # a bare layer, not a model: the session's contexts are not needed
        for _ in range(2):
            conv(x)
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return best


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on CPUs where it is faster than fp32 (:func:`cpu_bf16_pays`) and on
    CUDA with bf16, fp16 on MPS, else fp32.

    Explicit names the device lacks are refused (ValueError), never silently downgraded.
    """
    name = (name or "auto").lower()
    if name == "fp32":
        return torch.float32
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_bf16_pays() else torch.float32
    if name == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("--precision bf16: this GPU has no bf16; use fp16 or fp32")
        return torch.bfloat16
    if name == "fp16":
        if device.type == "cpu":
            raise ValueError("--precision fp16 is not supported on the CPU; use bf16 or fp32")
        return torch.float16
    raise ValueError(f"unknown precision {name!r}; use auto, fp32, bf16 or fp16")


def parse_memory(text: Optional[str]) -> Optional[int]:
    """'4G', '512M', '2.5GB', '1000000' -> bytes; None passes through."""
    if text is None:
        return None
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise ValueError(f"bad memory size {text!r}; use e.g. 4G or 512M") from None
    if value <= 0:
        raise ValueError(f"memory size must be > 0, got {text!r}")
    return int(value)


def default_memory_budget(device: torch.device) -> int:
    """Bytes of activations we allow one forward to use: 60% of free GPU memory, or on the CPU a
    quarter of the available RAM capped at 8 GiB."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 * 2**30
    return int(min(avail / 4, 8 * 2**30))


def set_cpu_threads(threads: Optional[int]) -> None:
    """Use ``threads`` intra-op threads (None: torch's default, one per core)."""
    if threads:
        torch.set_num_threads(threads)


def autotune_convolutions(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms for each new input shape and keep the
    fastest (process-wide, for the rest of the process): an apply job's frames and a training
    run's crops have one shape, so the first batch pays and the others gain. Elsewhere nothing."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def no_conv_autotuning(device: torch.device) -> Iterator[None]:
    """On CUDA, cuDNN's heuristic algorithm choice inside the block (the autotuner's setting is
    restored after it): for work of many shapes whose workspaces a memory budget must bound."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
