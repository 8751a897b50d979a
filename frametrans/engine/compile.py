"""The compiled fast path: ahead-of-time compiled forward passes, cached on disk.

A model's forward pass for one input shape is exported (``torch.export``) and compiled by
AOTInductor with weight freezing (constant folding, conv+norm fusion, oneDNN weight prepacking on the
CPU), in the runner's dtype and memory format, into a ``.pt2`` package under the cache folder
(:func:`cache_dir`, default ``~/.cache/frametrans``). A later process with the same model, shape,
dtype, device and thread count loads the package in a fraction of a second instead of compiling
again (cold compiles take tens of seconds; see ``frametrans bench compile``).

Why AOTInductor rather than ``torch.compile``: with freezing, ``torch.compile`` re-traces and
re-runs its freezing passes in every process even when its FX graph cache hits (measured ~25 s
"warm" against ~65 s cold for ResNet-9 on a 2-core CPU), while loading a package takes ~0.1 s.

The artifact key covers everything the generated code depends on: torch version, device type and
model (CPU capability, GPU name), intra-op thread count (baked into the OpenMP loops), input shape,
dtype and memory format, the architecture and config, a hash of the weights and a token for the
forward function. Packages are written atomically; an unreadable one is compiled again. The compiler
runs in a child process, and before a job uses a package the first time another child loads and runs
it (:mod:`frametrans.engine.package_child`): a package that crashes there is never loaded into the
job, which runs uncompiled instead.

The policy (``compile`` = ``auto`` | ``on`` | ``off``) lives in :class:`CompilePolicy`: ``auto``
compiles a shape only when a package is already cached, or (on the CPU) when the job's remaining
frames times the time compilation saves per frame (measured on the eager pass) exceeds the expected
compile time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from frametrans.engine import package_child

log = logging.getLogger("frametrans")

COMPILE_MODES = ("auto", "on", "off")
#: Version of the key layout and export recipe; bump to invalidate old packages. 3: bf16 packages
#: had been cached under their fp32 twin's key (the input dtype was the only dtype in the key) and
#: must not be loaded by fp32 runs.
RECIPE = 3

Forward = Callable[[torch.Tensor], torch.Tensor]


def validate_mode(mode: str) -> str:
    mode = (mode or "auto").lower()
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; use auto, on or off")
    return mode


def cache_dir() -> Path:
    """``$FRAMETRANS_CACHE_DIR``, else ``$XDG_CACHE_HOME/frametrans``, else ``~/.cache/frametrans``."""
    env = os.environ.get("FRAMETRANS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "frametrans"


def use_inductor_cache(root: Optional[Path] = None) -> Path:
    """Point inductor's own caches (FX graph cache, compiled kernels) under our cache folder,
    unless the user set ``TORCHINDUCTOR_CACHE_DIR``. Returns the folder inductor uses."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((root or cache_dir()) / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def can_compile(device: torch.device) -> Optional[str]:
    """None when AOTInductor can compile for ``device`` here, else the reason it cannot."""
    if device.type not in ("cpu", "cuda"):
        return f"compilation is not supported on {device.type}"
    # find_spec, not import: importing inductor costs seconds, and a cached package loads without it
    try:
        found = importlib.util.find_spec("torch._inductor") is not None
    except (ImportError, ValueError):
        found = False
    if not found or not hasattr(torch, "export"):
        return f"torch {torch.__version__} has no AOTInductor"
    cxx = os.environ.get("CXX")
    if not (cxx and shutil.which(cxx)) and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++/clang++) found"
    return None


# ------------------------------------------------------------------------------------------ keys


def weights_digest(model: nn.Module) -> str:
    """Hash of every parameter and buffer (names, dtypes, shapes, bytes); ~0.1 s per 50 MB."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.view(torch.int16)
        elif t.dtype == torch.bool:
            t = t.to(torch.uint8)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def device_signature(device: torch.device) -> str:
    """What the generated code is specialised for on this machine."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda:{props.name}:{props.major}.{props.minor}:{torch.version.cuda}"
    return f"{cpu_identity()}:{torch.get_num_threads()}threads"


def cpu_identity() -> str:
    """The CPU: torch's capability and the model name (no thread count)."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"cpu:{torch.backends.cpu.get_cpu_capability()}:{model}"


@dataclass(frozen=True)
class ArtifactKey:
    """Identifies one compiled package; ``digest`` is its file name."""

    model: str  # architecture + config + weights digest (+ forward token)
    shape: Tuple[int, ...]
    dtype: str
    channels_last: bool
    device: str

    @property
    def digest(self) -> str:
        text = json.dumps([RECIPE, torch.__version__, self.model, list(self.shape), self.dtype,
                           self.channels_last, self.device])
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def model_identity(model: nn.Module, source: Optional[nn.Module] = None, token: str = "") -> str:
    """Architecture, config and weights of ``source`` (the fp32 original) plus a forward token."""
    src = source if source is not None else model
    config = getattr(src, "config", None)
    cfg = json.dumps(config.to_dict(), sort_keys=True) if hasattr(config, "to_dict") else repr(config)
    return f"{type(src).__module__}.{type(src).__qualname__}|{cfg}|{weights_digest(src)}|{token}"


# ------------------------------------------------------------------------------------ compiling


class _Wrapped(nn.Module):
    """A module whose forward is ``fn(model, x)`` (the runner's forward), for export."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model = model
        self.fn = fn
        self.train(model.training)  # the session put ``model`` in eval mode; the wrapper follows it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, x)


def package_path(key: ArtifactKey, root: Optional[Path] = None) -> Path:
    return (root or cache_dir()) / "aoti" / f"{key.digest}.pt2"


def load_package(path: Path) -> Forward:
    """Load a compiled package; the returned callable maps a tensor to a tensor.

    Uses the C++ package loader directly (~0.1 s): ``torch._inductor.aoti_load_package`` would
    first import inductor and dynamo (seconds), which a process that only runs a cached package
    does not need. Our packages take one tensor and return one.
    """
    loader_cls = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader_cls is not None:
        loader = loader_cls(str(path), "model", False, 1, -1)

        def run(x: torch.Tensor) -> torch.Tensor:
            return loader.boxed_run([x])[0]

        return run
    compiled = importlib.import_module("torch._inductor").aoti_load_package(str(path))

    def run_wrapped(x: torch.Tensor) -> torch.Tensor:
        out = compiled(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    return run_wrapped


def compile_package(model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                    example: torch.Tensor, path: Path) -> Path:
    """Export ``fn(model, example)`` here and compile it with AOTInductor (freezing on) into ``path``
    in a child process (:func:`frametrans.engine.package_child.build`).

    ``model`` must already be in its final device, dtype, memory format and ``eval()`` mode.
    Written to a temporary name and renamed, so a concurrent reader never sees half a package.
    """
    use_inductor_cache(path.parent.parent)  # the child inherits the variable
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False), torch.no_grad():
        exported = torch.export.export(_Wrapped(model, fn), (example,), strict=False)
    owner = f"{os.getpid()}-{threading.get_ident()}"
    program = path.with_name(f".{path.stem}.{owner}.exported.pt2")
    tmp = path.with_name(f".{path.stem}.{owner}.tmp.pt2")
    try:
        torch.export.save(exported, str(program))
        package_child.build(program, tmp)
        os.replace(tmp, path)
    finally:
        for leftover in (program, tmp):
            leftover.unlink(missing_ok=True)
    return path


class PackageUnusable(RuntimeError):
    """A compiled package that its check process could not run (:mod:`package_child`)."""


def get_compiled(model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                 example: torch.Tensor, key: ArtifactKey, root: Optional[Path] = None
                 ) -> Tuple[Forward, bool, float]:
    """The compiled forward for ``key``: loaded from the cache, else compiled and cached. Either way
    the package has run in a child process first (:func:`package_child.check`); one that crashed
    there raises :class:`PackageUnusable`, a damaged one is compiled again.

    Returns ``(forward, was_cached, seconds spent)``.
    """
    path = package_path(key, root)
    t0 = time.perf_counter()
    if path.exists():
        failure = package_child.check(path, example)
        if failure is None:
            try:
                forward = load_package(path)
                with contextlib.suppress(OSError):
                    os.utime(path)  # recently used: pruned last
                return forward, True, time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001 - a stale or damaged package: compile it again
                failure = package_child.Failure("damaged", f"{type(exc).__name__}: {exc}")
        if failure.kind != "damaged":
            _unusable(path, failure)
        log.warning("compiled package %s unreadable (%s); compiling again", path.name, failure.reason)
        path.unlink(missing_ok=True)
        package_child.forget(path)
    log.info("compiling the model for %s %s (once; cached in %s)", tuple(example.shape),
             str(example.dtype).replace("torch.", ""), path.parent)
    compile_package(model, fn, example, path)
    package_child.forget(path)
    prune(path.parent, keep=path)
    failure = package_child.check(path, example)
    if failure is not None:
        _unusable(path, failure)
    return load_package(path), False, time.perf_counter() - t0


def _unusable(path: Path, failure: "package_child.Failure") -> None:
    hint = (f"; delete {path.name}.bad in {path.parent} to try it again" if failure.kind == "crashed"
            else "; it is checked again next time")
    raise PackageUnusable(failure.reason + hint)


#: Most bytes of compiled packages kept (``FRAMETRANS_CACHE_MAX_BYTES`` overrides); least recently
#: used go first. A ResNet-9 package is ~47 MB (its weights are inside).
CACHE_MAX_BYTES = 4 * 2**30
#: Age after which a temporary file of an unfinished build is someone's leftover, not a build in flight.
LEFTOVER_SECONDS = 86400.0


def prune(folder: Path, keep: Optional[Path] = None, pattern: str = "*.pt2") -> None:
    """Delete the least recently used files ``pattern`` in ``folder`` (compiled packages; the
    backends' graphs use it too) beyond ``FRAMETRANS_CACHE_MAX_BYTES`` (default
    :data:`CACHE_MAX_BYTES`), never ``keep``; and temporary files (``.NAME...``) of builds a killed
    process left behind, a day after they were last written."""
    try:
        limit = int(os.environ.get("FRAMETRANS_CACHE_MAX_BYTES", CACHE_MAX_BYTES))
    except ValueError:
        limit = CACHE_MAX_BYTES
    try:
        for left in folder.glob("." + pattern):
            if time.time() - left.stat().st_mtime > LEFTOVER_SECONDS:
                left.unlink(missing_ok=True)
        files = sorted((p for p in folder.glob(pattern) if not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for p in files:
            total += p.stat().st_size
            if total > limit and p != keep:
                p.unlink(missing_ok=True)
                package_child.forget(p)
    except OSError as exc:  # a shared or read-only cache: not worth failing a job over
        log.debug("could not prune %s: %s", folder, exc)


def is_cached(key: ArtifactKey, root: Optional[Path] = None) -> bool:
    return package_path(key, root).exists()


# --------------------------------------------------------------------------------------- policy


#: Expected fraction of the eager time that compilation saves, by (device type, dtype).
#: Measured: ResNet-9 256x256 on 2 AVX2 cores, fp32, ~0.2 (1.22-1.31x); the issue's Sapphire Rapids
#: bf16 numbers give 0.12 -> 0.057 s, ~0.5; bf16 elsewhere saved less: 0.39 on an AMD Zen 5, 0.24 on
#: the 2026-12-02 Xeon with AMX (263 -> 200 ms/frame; there a 500-frame job built a package in 69 s
#: and about broke even). CUDA: a conservative guess (not measured here).
SAVING = {("cpu", torch.float32): 0.2, ("cpu", torch.bfloat16): 0.5, ("cuda", torch.float32): 0.2,
          ("cuda", torch.bfloat16): 0.3, ("cuda", torch.float16): 0.3}
#: Devices where ``auto`` builds a package when the job pays for it. Not CUDA: on the H200 (torch 2.11,
#: 2026-11-30) a cold build of even a tiny ResNet took 60-95 s, and loading the package crashed the
#: loader once; ``auto`` uses a CUDA package only when one is cached and passed its check (built by
#: ``--compile on``, which stays available).
AUTO_BUILD_DEVICES = ("cpu",)
#: Expected cold compile time in seconds (measured 40-65 s for ResNet-9 on a busy 2-core CPU,
#: 15-20 s on a quiet Sapphire Rapids). ``FRAMETRANS_COMPILE_SECONDS`` overrides.
COMPILE_SECONDS = 40.0
@dataclass
class CompilePolicy:
    """Decides, per input shape, whether to compile. Pure bookkeeping: no torch work here.

    A job of unknown length (a stream on stdin, ``open_ended_from`` set) is expected to run as
    many more frames as it has run since it started: it pays no cold compile up front, and
    compiles once the frames already done would have paid for it.
    """

    mode: str = "auto"
    expected_frames: int = 0  # frames run + frames still expected (Runner.expect); 0: no hint
    done_frames: int = 0
    open_ended_from: Optional[int] = None  # done_frames when an open-ended job started
    failed: Dict[Tuple[int, ...], str] = field(default_factory=dict)

    def compile_seconds(self) -> float:
        try:
            return float(os.environ.get("FRAMETRANS_COMPILE_SECONDS", COMPILE_SECONDS))
        except ValueError:
            return COMPILE_SECONDS

    def remaining(self) -> int:
        """Frames still expected in this job."""
        if self.open_ended_from is not None:
            return self.done_frames - self.open_ended_from
        return max(0, self.expected_frames - self.done_frames)

    def should_compile(self, shape: Tuple[int, ...], cached: bool, eager_seconds_per_frame: Optional[float],
                       device: torch.device, dtype: torch.dtype, rival_seconds_per_frame: Optional[float] = None
                       ) -> bool:
        """``on``: always; ``off``: never; ``auto``: when cached, or on :data:`AUTO_BUILD_DEVICES`
        when it pays for this job. ``rival_seconds_per_frame``: what another backend measured for
        this shape (OpenVINO, ONNX Runtime): then the compiled forward (expected at eager x (1 -
        saving)) must beat it, cached or not, and its gain over it pay for a cold build. On an AMD
        Zen 5 OpenVINO bf16 ran the bundled cyclegan at 640x360 in 41 ms/frame, the compiled torch
        forward in 57; on Sapphire Rapids the compiled forward won (72 against 156 ms, issue 19)."""
        if self.mode == "off" or shape in self.failed:
            return False
        if self.mode == "on" or (cached and rival_seconds_per_frame is None):
            return True
        if eager_seconds_per_frame is None:
            return False  # decide after one eager batch has been timed
        compiled = eager_seconds_per_frame * (1 - SAVING.get((device.type, dtype), 0.2))
        rival = float("inf") if rival_seconds_per_frame is None else rival_seconds_per_frame
        gain = min(eager_seconds_per_frame, rival) - compiled
        if cached or gain <= 0:
            return gain > 0
        return device.type in AUTO_BUILD_DEVICES and gain * self.remaining() > self.compile_seconds()

    def break_even_frames(self, eager_seconds_per_frame: float, device: torch.device,
                          dtype: torch.dtype) -> float:
        saving = SAVING.get((device.type, dtype), 0.2) * eager_seconds_per_frame
        return float("inf") if saving <= 0 else self.compile_seconds() / saving


# ------------------------------------------------------------------------------------ CUDA graphs


class CudaGraphForward:
    """Replay one captured CUDA graph of ``fn`` for inputs of one static shape (CUDA only).

    The output tensor is a static buffer, valid until the next call: consume it (convert to
    uint8, copy) before calling again, in stream order, as the runner does.
    """

    def __init__(self, fn: Forward, example: torch.Tensor, warmup: int = 3) -> None:
        if example.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA tensor")
        self.static_in = example.clone()
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(self.static_in)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads' CUDA work during the capture (the --temporal-flow torch
        # flows, on streams of their own) does not invalidate it
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.static_out = fn(self.static_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.static_in.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.static_out
