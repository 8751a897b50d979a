"""Which whole-frame batches a backend serves, and the backend itself, built on first use.

:class:`BackendServer` sits in the runner between the compiled torch forward and torch eager. A
backend asked for by name serves every whole-frame batch. Under ``--backend auto`` it decides per
input shape, from what it measures on this machine, like ``--compile auto`` does:

- only when the job pays for it: the eager time per frame (timed on the first batch of the shape)
  x the expected saving (:data:`SAVING`) x the frames still expected in the job must exceed the
  cost of getting the backend ready: :data:`LOAD_SECONDS` when the model's graph is cached on
  disk, else :data:`CONVERT_SECONDS`. A job of unknown length never pays up front, an open-ended
  stream does once the frames it has run would have; a short job always stays on torch (so a
  cached graph never takes over a job of a few frames);
- after a shape has run twice on the backend, its time per frame is compared with torch eager's
  for that shape: when the backend is not faster here, that shape goes back to torch (logged).

A conversion that fails under ``auto`` is logged and torch keeps running; under an explicit backend
it is an error (one line). Under ``--precision auto`` a low-precision backend is checked on its
first batch (:meth:`BackendServer._guard`); the verdict is kept beside the cached graph
(:data:`GUARD_SUFFIX`), and a later ``auto`` run of the same model, backend version and frame size
that failed it leaves the backend alone from the start.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Set, Tuple

import torch
from torch import nn

from frametrans.atomic import atomic_write_text
from frametrans.engine import backends
from frametrans.engine import compile as compiling
from frametrans.engine.backends.graph import GUARD_SUFFIX, Exporter, graph_path, onnx_graph, plain_exporter
from frametrans.engine.backends.stateful import SmoothedGraph, StatefulForward, servable
from frametrans.engine import session as sessions
from frametrans.engine.session import Session, output_psnr

log = logging.getLogger("frametrans")

Shape = Tuple[int, ...]
#: Expected fraction of torch eager's time per frame that a backend saves, by (backend, dtype).
#: Measured for ResNet-9 (ngf 64): OpenVINO bf16 156 against torch eager bf16 169-299 ms/frame at
#: 256x256 on Sapphire Rapids (~0.3); OpenVINO fp32 364 and ONNX Runtime fp32 405 against torch
#: eager fp32 1058 ms/frame at 128x128 on a 2-core Xeon (0.6, but 587 against 545-784 on Sapphire
#: Rapids): 0.3 is the conservative middle.
SAVING = {("openvino", torch.bfloat16): 0.3, ("openvino", torch.float32): 0.3,
          ("onnxruntime", torch.float32): 0.3}
#: Expected seconds to trace the ONNX graph and compile it for one shape: the slowest measured on 2
#: cores (ResNet-9 on the 2026-11-30 Xeon: ~1.5 s trace, ~0.5 s OpenVINO compile; the bundled
#: cyclegan and munit, plain and ``--temporal stats``, and ResNet-9: 0.3-0.9 s on an AMD Zen 5). It
#: was 3 s, which kept the first ``--temporal stats`` run of the 75-frame sample clip in torch eager
#: bf16 on the Zen 5 (3x the time of off) while later runs loaded the cached graph.
#: ``FRAMETRANS_CONVERT_SECONDS`` overrides.
CONVERT_SECONDS = 2.0
#: Expected seconds to load a cached graph and compile it for one shape (~0.1 s load, ~0.5 s compile).
LOAD_SECONDS = 1.0


def convert_seconds() -> float:
    try:
        return float(os.environ.get("FRAMETRANS_CONVERT_SECONDS", CONVERT_SECONDS))
    except ValueError:
        return CONVERT_SECONDS


class BackendServer:
    """Runs whole-frame batches on the chosen backend when it should (see the module docstring).

    choice: from :func:`frametrans.engine.backends.choose` (not ``torch``). source: the fp32 module
    in eval mode; forward: the runner's ``forward(model, x)``; root: the cache folder.
    """

    def __init__(self, choice: backends.Choice, source: nn.Module,
                 forward: Callable[[nn.Module, torch.Tensor], torch.Tensor], token: Optional[str],
                 root: Path) -> None:
        self.choice = choice
        self.source, self.forward, self.token, self.root = source, forward, token, root
        self.fn: Optional[backends.Forward] = None
        self.failed: Optional[str] = None
        self.convert_seconds = 0.0  # spent tracing and loading, for reports
        self._slower: Set[Shape] = set()
        self._runs: Dict[Shape, int] = {}
        self._seconds: Dict[Shape, float] = {}
        self._path: Optional[Path] = None
        self._table: Optional[Dict[str, float]] = None  # the guard's kept verdicts
        # under --backend auto and --precision auto: kept verdicts decide, per frame size
        self._auto_guard = choice.guarded and not choice.explicit
        self._lossy: Dict[Tuple[int, int], bool] = {}  # frame size -> failed before
        self._told_tiles = False

    @classmethod
    def serving(cls, choice: backends.Choice, source: nn.Module,
                forward: Callable[[nn.Module, torch.Tensor], torch.Tensor], token: Optional[str],
                root: Path) -> Optional["BackendServer"]:
        """The server for ``choice`` (logged), or None for torch. ``token`` names the forward in the
        cache ("" for the plain ``model(x)``, else its ``cache_token``); None: not cached."""
        backends.log_choice(choice)
        if choice.name == "torch" or not _stateful_servable(choice, source, forward):
            return None
        return cls(choice, source, forward, token, root)

    def tile_forward(self, torch_fn: backends.Forward, frame_norms: bool,
                     remaining: Callable[[], int]) -> backends.Forward:
        """How tiles run: through the backend when it serves their shape, except for models with
        per-frame normalization (``frame_norms``: their whole-frame statistics are frozen inside
        the torch layers), whose tiles run through ``torch_fn``."""
        if frame_norms:
            if self.choice.explicit and not self._told_tiles:
                self._told_tiles = True
                log.info("backend %s: tiled frames of this model run through torch (the whole-frame "
                         "statistics of its normalization layers are frozen inside torch's layers)", self.name)
            return torch_fn

        def fn(t: torch.Tensor) -> torch.Tensor:
            y = self(t) if self.wants(tuple(t.shape), None, remaining()) else None
            return torch_fn(t) if y is None else y

        return fn

    @property
    def name(self) -> str:
        return self.choice.name

    def cached(self) -> bool:
        """True when the model's graph is on disk already (cheaper to get ready)."""
        if self.token is None:
            return False
        if self._path is None:
            self._path = graph_path(self.source, self.token, self.root)
        return self._path.exists()

    def wants(self, shape: Shape, eager_seconds: Optional[float], remaining: int) -> bool:
        """Whether the backend should run a batch of ``shape`` (per-frame eager seconds if timed)."""
        if self.failed is not None or shape in self._slower:
            return False
        if self._auto_guard and self._failed_before(shape):
            return False
        if self.choice.explicit or self.fn is not None:
            return True
        if eager_seconds is None:
            return False
        saving = SAVING.get((self.name, self.choice.dtype), 0.3) * eager_seconds
        return saving * remaining > (LOAD_SECONDS if self.cached() else convert_seconds())

    def rival_seconds(self, shape: Shape, eager_seconds: Optional[float], remaining: int
                      ) -> Tuple[bool, Optional[float]]:
        """For ``--compile auto`` under ``--backend auto``: (wait, seconds). ``seconds``: the
        backend's measured time per frame for ``shape``, None when it does not serve the shape;
        ``wait``: decide later, because torch eager has not been timed on the shape yet, or the
        backend will serve it but has not been timed (its second batch is)."""
        if eager_seconds is None:  # a built backend takes new shapes untimed: nothing to wait for
            return self.fn is None and self.failed is None, None
        if shape in self._seconds and shape not in self._slower:
            return False, self._seconds[shape]
        return self.wants(shape, eager_seconds, remaining) and shape not in self._slower, None

    def __call__(self, x: torch.Tensor, eager_seconds: Optional[float] = None) -> Optional[torch.Tensor]:
        """The backend's output for ``x [B, C, H, W]`` (float32, CPU), or None when it failed to
        convert under ``auto`` or stepped aside at the precision guard (torch then runs it)."""
        if self.fn is None and not self._build(x):
            return None
        if self.choice.guarded:
            return self._guard(x)
        shape = tuple(x.shape)
        n = self._runs[shape] = self._runs.get(shape, 0) + 1
        if n != 2 or eager_seconds is None or self.choice.explicit:
            return self.fn(x)
        t0 = time.perf_counter()
        y = self.fn(x)
        per_frame = (time.perf_counter() - t0) / shape[0]
        self._seconds[shape] = per_frame
        if per_frame >= eager_seconds:
            self._slower.add(shape)
            log.info("backend %s: %.0f ms/frame for %s, torch eager %.0f: torch runs this shape",
                     self.name, per_frame * 1e3, shape, eager_seconds * 1e3)
        return y

    def _guard(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The first batch of a low-precision backend under ``--precision auto``: below the
        session's bar (:data:`~frametrans.engine.session.AUTO_MIN_DB`) on :meth:`_probe_db`, the
        backend asked for by name is built again in fp32 and runs the batch (warned). Under
        ``--backend auto`` it steps aside instead (warned; None: torch runs this batch and the rest)
        and torch runs its own low-precision copy, which passed the session's probe (a small frame,
        against the same bar; the session runs fp32 where it did not, and then no backend is
        guarded). Not the backend in fp32: a guard only runs where the session chose bf16, i.e.
        where bf16 pays, and there torch bf16 beat OpenVINO fp32 on every machine measured (ResNet-9
        ngf 64, 256x256, batch 4: 290 against 530 ms/frame on a Xeon with AMX, 142-171 against
        208-222 on an AMD Zen 5); building and timing the fp32 backend cost ~9 s of a 38 s job on the
        AMX Xeon before torch took the shape back.

        OpenVINO's bf16 keeps no layer in fp32, so it can lose more than torch's careful bf16 copy:
        ResNet-9 ngf 64 with random weights measured 42.1 dB against torch bf16's 44.5 (AMD Zen 5 and
        Sapphire Rapids; the bundled models 47.3-60.4 dB)."""
        self.choice = dataclasses.replace(self.choice, guarded=False)
        self._runs[tuple(x.shape)] = 1  # the probe was this shape's warm-up: the next run is timed
        db = self._probe_db(x)
        if db is not None:
            self._remember(tuple(x.shape), db)
        if db is None or db >= sessions.AUTO_MIN_DB:
            return self.fn(x)
        low = backends.dtype_name(self.choice.dtype)
        instead = f"{self.name} runs it in fp32" if self.choice.explicit else \
            f"torch runs its own {low} copy (which passed the session's probe)"
        log.warning("--precision auto: the %s %s output of this model is %.1f dB from torch fp32 on a probe "
                    "frame (< %.0f dB): %s", self.name, low, db, sessions.AUTO_MIN_DB, instead)
        self.fn = None
        if not self.choice.explicit:
            self.failed = f"{low} output {db:.1f} dB from fp32"
            return None
        self.choice = dataclasses.replace(self.choice, dtype=torch.float32)
        return self.fn(x) if self._build(x) else None

    # -- the guard's verdicts, kept beside the graph -----------------------------------------------

    def _verdicts_file(self) -> Optional[Path]:
        """``<graph>.guard.json``: the guard's verdicts on this model's graph (None: not cached)."""
        if self.token is None:
            return None
        if self._path is None:
            self._path = graph_path(self.source, self.token, self.root)
        return self._path.with_name(self._path.name + GUARD_SUFFIX)

    def _verdict_key(self, shape: Shape) -> str:
        """What a verdict depends on: backend, precision, the backend's version, the CPU and the
        frame size (the weights and the forward are in the graph's own key)."""
        return f"{self.name} {backends.dtype_name(self.choice.dtype)} {_version(self.name)} {_cpu()} " \
               f"{shape[-1]}x{shape[-2]}"

    def _verdicts(self) -> Dict[str, float]:
        """The kept verdicts (read once per server)."""
        if self._table is None:
            path = self._verdicts_file()
            try:
                table = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
            except (OSError, ValueError):
                table = {}
            self._table = {k: float(v) for k, v in table.items() if isinstance(v, (int, float))} \
                if isinstance(table, dict) else {}
        return self._table

    def _remember(self, shape: Shape, db: float) -> None:
        """Keep the guard's PSNR for this shape (written atomically; a cache that cannot be written
        only costs the next run the probe)."""
        path = self._verdicts_file()
        if path is None or not math.isfinite(db):
            return
        self._table = None  # another process may have added verdicts since
        table = {**self._verdicts(), self._verdict_key(shape): round(db, 2)}
        self._table = table
        try:
            atomic_write_text(path, json.dumps(table, indent=1, sort_keys=True))
        except OSError as exc:
            log.debug("backend %s: could not keep the precision verdict: %s", self.name, exc)

    def _failed_before(self, shape: Shape) -> bool:
        """Under ``--backend auto`` and ``--precision auto``: True when an earlier run's guard found
        the backend's low-precision output below the bar at this frame size (for these weights and
        forward, this backend version and CPU): torch runs it, with no conversion, compile and probe
        to find that out again (~3.5 s a run for a ResNet-9 at 256x256 on the 2-core Xeon with AMX).
        Said once per size, as information (the run that measured it warned). Before the backend is
        built it steps aside for the whole job, as the guard does; once built (another size passed),
        only this size goes to torch."""
        size = (int(shape[-2]), int(shape[-1]))
        if size in self._lossy:
            return self._lossy[size]
        db = self._verdicts().get(self._verdict_key(shape))
        self._lossy[size] = lossy = db is not None and db < sessions.AUTO_MIN_DB
        if not lossy:
            return False
        low = backends.dtype_name(self.choice.dtype)
        log.info("--precision auto: the %s %s output of this model was %.1f dB from torch fp32 on a %dx%d "
                 "probe frame of an earlier run (< %.0f dB; kept in %s): torch runs its own %s copy (which "
                 "passed the session's probe)", self.name, low, db, size[1], size[0], sessions.AUTO_MIN_DB,
                 self._verdicts_file(), low)
        if self.fn is None:
            self.failed = f"{low} output {db:.1f} dB from fp32 (an earlier run)"
        return True

    def _probe_db(self, x: torch.Tensor) -> Optional[float]:
        """PSNR (dB, uint8) of the backend against torch fp32 on a structured frame of the batch's
        size, run as the first frame of a batch of ``x``'s shape (no other shape to compile); NaN
        counts as 0 dB. None when it cannot tell: no value range, a smoothed forward (its state
        must advance once per frame), or the probe failed."""
        c = sessions.contract_of(self.source)
        if c is None or getattr(self.forward, "smoother", None) is not None:
            return None
        probe = sessions.probe_frame(c, *x.shape[-2:])
        batch = x.clone()
        batch[:1] = probe.to(x.dtype)
        try:
            y = self.fn(batch)
            with Session.full_precision():
                ref = self.forward(self.source, probe)
        except Exception as exc:  # noqa: BLE001 - the probe is advice; the model's own errors show later
            log.debug("backend %s: precision probe failed: %s", self.name, exc)
            return None
        return output_psnr(y[:1], ref, c.value_range)

    def _build(self, x: torch.Tensor) -> bool:
        t0 = time.perf_counter()
        try:
            export, wrap = self._graph()
            with onnx_graph(self.source, export, x, self.root, self.token) as got:
                path, was_cached, _ = got
                self.fn = wrap(backends.build(self.choice, str(path), self.root), x)
        except Exception as exc:  # noqa: BLE001 - an unexportable model: torch still runs it
            self.failed = f"{type(exc).__name__}: {_first_line(exc)}"
            if self.choice.explicit:
                raise RuntimeError(f"--backend {self.name}: converting the model failed ({self.failed}); "
                                   "use --backend torch") from exc
            log.warning("backend %s: converting the model failed (%s); running it with torch",
                        self.name, self.failed)
            return False
        self.convert_seconds += time.perf_counter() - t0
        log.info("backend %s (%s): %s graph in %.1f s", self.name, backends.dtype_name(self.choice.dtype),
                 "loaded the cached" if was_cached else "converted the", self.convert_seconds)
        return True

    def _graph(self) -> Tuple[Exporter, Callable[[Any, torch.Tensor], backends.Forward]]:
        """How to trace the forward's graph, and how to run the built backend as the forward. A
        smoothed forward (``--temporal stats``, :mod:`frametrans.engine.backends.stateful`) passes
        its statistics' state through the graph."""
        smoother = getattr(self.forward, "smoother", None)
        if smoother is None:
            return plain_exporter(self.source, self.forward), lambda fn, _x: fn
        graph = SmoothedGraph(self.source, self.forward.__wrapped__, smoother.layers(self.source))

        def wrap(fn: Any, x: torch.Tensor) -> backends.Forward:
            if not graph.keys:  # the graph came from the cache: find its state slots
                graph.discover(x)
            return StatefulForward(graph, smoother, fn.run, self.name)

        return graph.export, wrap


def _stateful_servable(choice: backends.Choice, source: nn.Module,
                       forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> bool:
    """False (torch runs it; logged) when ``forward`` is smoothed and the backend cannot carry its
    state; an explicit backend is then refused (:class:`~frametrans.engine.backends.BackendUnavailable`)."""
    smoother = getattr(forward, "smoother", None)
    why = None if smoother is None else servable(smoother, source)
    if why is None:
        return True
    if choice.explicit:
        raise backends.BackendUnavailable(f"--backend {choice.name} cannot run --temporal stats for this "
                                          f"model ({why}); use --backend torch or auto")
    log.info("--temporal stats: torch runs this model, not %s (%s)", choice.name, why)
    return False


@functools.lru_cache(maxsize=None)
def _cpu() -> str:
    """The CPU a verdict was measured on (a cache folder may be shared between machines)."""
    return compiling.cpu_identity()


@functools.lru_cache(maxsize=None)
def _version(name: str) -> str:
    """The installed version of backend ``name``'s package, without importing it ("?" if unknown)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(backends.PACKAGES[name][0])
    except (PackageNotFoundError, KeyError):
        return "?"


def _first_line(exc: BaseException) -> str:
    from frametrans.io.errors import first_line

    return first_line(exc)
