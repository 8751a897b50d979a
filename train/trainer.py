"""The training loop shared by every method.

``train(method, options, run_dir)`` is the whole API: options is the method's frozen options
dataclass (:mod:`frametrans.train.options`: ``Pix2PixOptions``, ``CycleGANOptions``, ...), or a dict
of option names with underscores (``batch_size``, ``lr``, ...), the keys a ``--config`` YAML file
holds. Per method defaults follow the reference implementations.

Run folder::

    RUN_DIR/config.yaml          resolved options (reusable with --config)
    RUN_DIR/state.pt             training state (plain containers, torch.load(weights_only=True))
    RUN_DIR/<generator>.safetensors   exported generator(s), loadable with load_model
    RUN_DIR/losses.jsonl         one record per --log-every steps: step, time, mean losses, lr
    RUN_DIR/val.jsonl            validation metrics per --val-every steps (paired data)
    RUN_DIR/losses.png           the loss curves
    RUN_DIR/samples/step_NNNNNNN.png   sample grids

Resume is exact: the networks, optimizers, scaler, pools, EMA, the method's private generators and
the global torch/CUDA/Python/NumPy RNG states are saved; the data stream is a pure function of
(seed, sample counter) (see :mod:`frametrans.train.datasets`) and the learning rate a pure function
of the step, so the saved counter restores both.

Distributed data parallel (``ddp=True`` under torchrun, or ``nproc=N`` local processes): the same
loop in every process, ``batch_size`` is the global batch split evenly over the processes, only
rank 0 writes the run folder; see :mod:`frametrans.train.distributed` for what makes the result
equal to the single-process run with the same global batch.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch

from frametrans.atomic import atomic_path, atomic_write_text
from frametrans.engine.device import autotune_convolutions, resolve_device
from frametrans.io.errors import first_line
from frametrans.train import cyclegan, munit, pix2pix, predictor
from frametrans.train.distributed import (DistContext, convert_batchnorm, env_world_size, mark_collective,
                                          rank_seed, spawn_local, under_launcher)
from frametrans.train.base import Amp, Method, compile_nets, lr_factor
from frametrans.train.common import build_unpaired_data
from frametrans.train.datasets import make_loader, steps_per_epoch
from frametrans.train.options import TrainOptions, as_layer, option_names, options_class, resolve
from frametrans.train.plot import plot_losses
from frametrans.train.schema import merge_layers, parse_layer, read_config_file

__all__ = ["train", "resolve_options", "option_names", "merge_layers", "read_config_file", "Trainer",
           "TrainResult", "TrainingStopped", "load_state", "clear_run_dir", "STATE_FILE", "CONFIG_FILE"]


STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
LOSSES_FILE = "losses.jsonl"
VAL_FILE = "val.jsonl"
PLOT_FILE = "losses.png"
SAMPLES_DIR = "samples"
STATE_FORMAT = "frametrans-train-state"
INVOCATION_ONLY = ("quiet",)  # options of one invocation, not of the run: kept out of config.yaml
STATE_VERSION = 1



@dataclass(frozen=True)
class MethodSpec:
    """A training method: its data builder and Method class (options: :mod:`.options`)."""

    build_data: Callable[[Any], Tuple[Any, List[Dict[str, torch.Tensor]], Optional[List[Dict[str, torch.Tensor]]]]]
    cls: type


METHODS: Dict[str, MethodSpec] = {
    "pix2pix": MethodSpec(pix2pix.build_data, pix2pix.Pix2Pix),
    "cyclegan": MethodSpec(build_unpaired_data, cyclegan.CycleGAN),
    "munit": MethodSpec(build_unpaired_data, munit.MUNITMethod),
    "predictor": MethodSpec(predictor.build_data, predictor.Predictor),
}


class TrainingStopped(RuntimeError):
    """The run stopped before its end (non-finite loss); the message says where the last good
    checkpoint is."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    total: int
    exports: List[Path] = field(default_factory=list)
    last_losses: Dict[str, float] = field(default_factory=dict)
    last_val: Optional[Dict[str, float]] = None
    rank: int = 0  # this process's rank (DDP); only rank 0 wrote the run folder
    world_size: int = 1


# ---------------------------------------------------------------------------------------------
# options


def _spec(method: str) -> MethodSpec:
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; use one of {', '.join(METHODS)}")
    return METHODS[method]


def resolve_options(method: str, *layers: Mapping[str, Any]) -> TrainOptions:
    """The full, checked options of ``method``: its defaults overridden by ``layers`` (dicts of
    option name -> value, lowest priority first); see :func:`frametrans.train.options.resolve`."""
    return resolve(method, *layers)[0]


# ---------------------------------------------------------------------------------------------
# checkpoints


def _plain_numpy_state() -> Dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _restore_numpy_state(s: Dict[str, Any]) -> None:
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))


def rng_state(device: torch.device, own_device_only: bool = False) -> Dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, Python, NumPy) as plain containers.

    own_device_only: the CUDA state of ``device`` alone (a DDP process owns one GPU and must not
    touch the others), as a one-element list."""
    cuda: List[torch.Tensor] = []
    if device.type == "cuda":
        cuda = [torch.cuda.get_rng_state(device)] if own_device_only else torch.cuda.get_rng_state_all()
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate(),
            "numpy": _plain_numpy_state()}


def restore_rng_state(state: Dict[str, Any], device: torch.device, own_device_only: bool = False) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda"):
        if own_device_only:
            saved = state["cuda"]
            index = device.index or 0
            torch.cuda.set_rng_state(saved[index] if len(saved) > index else saved[0], device)
        else:
            torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    _restore_numpy_state(state["numpy"])


def load_state(path: Path) -> Dict[str, Any]:
    """Read a state.pt safely (weights_only) and check it is ours."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no training state to resume from") from None
    except Exception as exc:
        raise ValueError(f"{path}: unreadable training state ({first_line(exc)[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a frametrans training state")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: training state version {state.get('version')}, this frametrans reads {STATE_VERSION}")
    return state


def _read_jsonl(path: Path, max_step: Optional[int] = None) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if max_step is None or rec.get("step", 0) <= max_step:
                out.append(rec)
    return out


def _json_line(record: Dict[str, Any]) -> str:
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                       for k, v in record.items()}) + "\n"


# ---------------------------------------------------------------------------------------------
# the loop


class Trainer:
    """One training run of ``method`` with resolved ``options`` into ``run_dir``.

    resume: continue from ``run_dir/state.pt`` (the caller merged the saved config into options).
    dist: this process's place in a DDP run (None: a single process). Every rank runs the same
        loop on its slice of each global batch; only rank 0 writes to ``run_dir``.
    notes: log lines about the options (defaults fitted to the data), said when training starts.
    """

    def __init__(self, method: str, options: TrainOptions, run_dir: Path, resume: bool = False,
                 dist: Optional[DistContext] = None, notes: Sequence[str] = ()) -> None:
        self.spec = _spec(method)
        self.method_name = method
        self.options = options
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.dist = dist
        self.rank = dist.rank if dist is not None else 0
        self.world = dist.world if dist is not None else 1
        self.is_main = self.rank == 0
        self.device = dist.device if dist is not None else resolve_device(options.device)
        self.amp = Amp(self.device, options.precision)
        if dist is not None:
            self.amp.grad_sync = dist.optimizer_sync
        self.notes = tuple(notes)
        self.records: List[Dict[str, Any]] = []
        self.saved_step: Optional[int] = None
        self.elapsed0 = 0.0

    # -- setup ----------------------------------------------------------------------------------

    def _build(self) -> None:
        o = self.options
        torch.manual_seed(o.seed)  # global RNG: weight init of some modules, dropout
        random.seed(o.seed)
        np.random.seed(o.seed % 2**32)
        self.train_data, self.sample_items, self.val_items = self.spec.build_data(o)
        per_epoch = None if o.iters is not None else steps_per_epoch(self.train_data, o.batch_size)
        self.total = int(o.iters) if o.iters is not None else int(math.ceil(o.epochs * per_epoch))
        if o.batch_size % self.world:
            raise ValueError(f"--batch-size {o.batch_size} is the global batch and must split evenly over "
                             f"{self.world} processes; use a multiple of {self.world}")
        self.method: Method = self.spec.cls(o, self.device, self.amp)
        autotune_convolutions(self.device)  # a run's crop and batch are fixed
        if self.dist is not None:
            self.method.shard = self.dist.shard
            for net in self.method.nets.values():  # statistics over the global batch
                convert_batchnorm(net)
            self.dist.broadcast_modules(list(self.method.nets.values()))
        if o.ema > 0:
            self.method.enable_ema(o.ema)  # its copies stay eager: they only export and evaluate
        if o.compile:
            self.notes += tuple(compile_nets(self.method, self.device))
        self.step = 0
        self.sample = 0  # data stream position (global sample counter)
        if self.resume:
            state = load_state(self.run_dir / STATE_FILE)
            if state["method"] != self.method_name:
                raise ValueError(f"{self.run_dir}: holds a {state['method']} run, not {self.method_name}")
            if state["data"]["seed"] != o.seed:
                raise ValueError(f"--seed {o.seed} differs from the saved run's {state['data']['seed']}; "
                                 "resume with the same seed (it fixes the data order)")
            self.method.load_state_dict(state["train"])
            self._restore_rng(state)
            self.step = int(state["step"])
            self.sample = int(state["data"]["sample"])
            self.elapsed0 = float(state.get("elapsed", 0.0))
            self.saved_step = self.step
        elif self.rank > 0:  # own dropout masks; rank 0 keeps the single-process stream
            torch.manual_seed(rank_seed(o.seed, self.rank))
        if self.is_main:
            self._write_config()
            self._trim_logs()

    def _restore_rng(self, state: Dict[str, Any]) -> None:
        """The global RNG states: this rank's own when the run was saved by as many processes,
        else rank 0 takes the saved single stream and the others a stream derived from the step
        (only dropout masks depend on it)."""
        if self.dist is None:
            restore_rng_state(state["rng"], self.device)
            return
        ranks = state.get("rng_ranks") or []
        if len(ranks) == self.world:
            restore_rng_state(ranks[self.rank], self.device, own_device_only=True)
            return
        restore_rng_state(state["rng"], self.device, own_device_only=True)
        if self.rank > 0:
            torch.manual_seed(rank_seed(self.options.seed, self.rank, int(state["step"])))

    def _write_config(self) -> None:
        import yaml

        o = self.options
        length = f"{self.total} iterations" + ("" if o.iters is not None else f" ({o.epochs} epochs)")
        header = (f"# frametrans train {self.method_name}: resolved options ({length}).\n"
                  f"# data: {self.train_data.description}\n"
                  f"# Reuse with: frametrans train {self.method_name} --config {CONFIG_FILE} -o NEW_DIR\n")
        run_options = {k: v for k, v in o.to_dict().items() if k not in INVOCATION_ONLY}
        body = yaml.safe_dump({"method": self.method_name, **run_options}, sort_keys=False)
        atomic_write_text(self.run_dir / CONFIG_FILE, header + body)

    def _trim_logs(self) -> None:
        """On resume keep only log records up to the saved step (later ones were not
        checkpointed and will be redone); a fresh run starts with no logs."""
        for name in (LOSSES_FILE, VAL_FILE):
            path = self.run_dir / name
            if not self.resume:
                path.unlink(missing_ok=True)
                continue
            records = _read_jsonl(path, self.step)
            if path.exists():
                atomic_write_text(path, "".join(_json_line(r) for r in records))
            if name == LOSSES_FILE:
                self.records = records

    # -- outputs --------------------------------------------------------------------------------

    def _provenance(self) -> Dict[str, Any]:
        from frametrans import __version__

        return {
            "trainer": "frametrans.train", "frametrans_version": __version__,
            "method": self.method_name, "step": self.step, "total_steps": self.total,
            "data": self.train_data.description,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "ema": self.options.ema, "precision": self.options.precision,
            "options": {k: v for k, v in self.options.to_dict().items() if k not in INVOCATION_ONLY},
        }

    def save(self) -> List[Path]:
        """Export the generator(s), then write state.pt; both atomically. With DDP only rank 0
        writes (the RNG states of all ranks go into its state.pt); the others wait for it."""
        rng_ranks = None
        if self.dist is not None:
            rng_ranks = self.dist.gather_objects(rng_state(self.device, own_device_only=True))
        if self.is_main:
            exports = self._write_checkpoint(rng_ranks)
        else:
            exports = [self.run_dir / name for name in self.method.exports.values()]
        self.saved_step = self.step
        if self.dist is not None:
            self.dist.barrier()
        return exports

    def _write_checkpoint(self, rng_ranks: Optional[List[Dict[str, Any]]]) -> List[Path]:
        exports = self.method.export(self.run_dir, self._provenance())
        o = self.options
        state = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "method": self.method_name,
            "step": self.step, "total": self.total, "elapsed": self._elapsed(),
            "options": o.to_dict(),
            "train": self.method.state_dict(),
            "rng": rng_ranks[0] if rng_ranks else rng_state(self.device),
            "data": {"seed": o.seed, "sample": self.sample, "batch_size": o.batch_size},
            "schedule": {"policy": o.lr_policy, "total": self.total, "decay_start": o.decay_start,
                         "step_size": o.step_size, "gamma": o.gamma, "base_lr": o.lr},
        }
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
            state["world_size"] = self.world
        with atomic_path(self.run_dir / STATE_FILE) as tmp:
            torch.save(state, str(tmp))
        plot_losses(self.records, self.run_dir / PLOT_FILE)
        return exports

    def _elapsed(self) -> float:
        return self.elapsed0 + (time.perf_counter() - self.t0)

    def _write_samples(self) -> None:
        import cv2

        from frametrans.atomic import atomic_write_bytes

        if not self.sample_items:
            return
        from frametrans.train.datasets import batch_list

        grid = self.method.samples(batch_list(self.sample_items))
        ok, data = cv2.imencode(".png", np.ascontiguousarray(grid[..., ::-1]))
        if ok:
            atomic_write_bytes(self.run_dir / SAMPLES_DIR / f"step_{self.step:07d}.png", data.tobytes())

    def _validate(self) -> Optional[Dict[str, float]]:
        if not self.val_items:
            return None
        metrics = self.method.validate(self.val_items, max(1, min(16, self.options.batch_size * 2)))
        if metrics is None:
            return None
        record = {"step": self.step, "time": round(self._elapsed(), 3), **metrics}
        with open(self.run_dir / VAL_FILE, "a", encoding="utf-8") as f:
            f.write(_json_line(record))
        return metrics

    def _say(self, text: str) -> None:
        if not self.options.quiet and self.is_main:
            if self.bar is not None and not self.bar.disable:
                self.bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr, flush=True)

    # -- run ------------------------------------------------------------------------------------

    def run(self, until: Optional[int] = None) -> TrainResult:
        """Train to the end (or to step ``until``, saving there, as an interrupted run would)."""
        from tqdm import tqdm

        self.t0 = time.perf_counter()
        self.bar = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist is None:
            self._build()
        else:  # a setup error on any rank stops every rank, instead of leaving some in a collective
            error: Optional[BaseException] = None
            try:
                self._build()
            except Exception as exc:
                error = exc
            self.dist.agree(error)
        o, method = self.options, self.method
        end = self.total if until is None else min(self.total, until)
        result = TrainResult(self.run_dir, self.step, self.total, rank=self.rank, world_size=self.world)
        if self.step >= end:
            return result
        loader = make_loader(self.train_data, o.batch_size, self.sample, o.workers,
                             pin_memory=self.device.type == "cuda", rank=self.rank, world=self.world,
                             device=self.device)
        self.t0 = time.perf_counter()  # "time" in the logs: training time, setup excluded
        self.bar = tqdm(total=self.total, initial=self.step, file=sys.stderr, unit="it",
                        disable=o.quiet or not sys.stderr.isatty() or not self.is_main,
                        dynamic_ncols=True, desc=self.method_name)
        procs = "" if self.dist is None else f" x {self.world} processes ({self.dist.backend})"
        for note in self.notes:
            self._say(note)
        self._say(f"{self.method_name}: {self.train_data.description}; "
                  f"steps {self.step} -> {end} of {self.total}; device {self.device}{procs}, {o.precision}")
        pending: Dict[str, List[float]] = {}
        unread = _UnreadLosses()  # the device's losses, read once per log record or checkpoint
        log_file = open(self.run_dir / LOSSES_FILE, "a", encoding="utf-8") if self.is_main else None
        exports: List[Path] = []
        try:
            while self.step < end:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in next(loader).items()}
                method.train()
                lr = method.set_lr(lr_factor(self.step, self.total, o.lr_policy, o.decay_start,
                                             o.step_size, o.gamma))
                losses = method.step(batch)
                if self.dist is not None:  # the global-batch means, the same on every rank
                    losses = self.dist.mean_losses(losses)
                unread.add(self.step + 1, losses)
                method.after_step()
                self.step += 1
                self.sample += o.batch_size
                due = self._due(end)
                for step, values in unread.read() if due or unread.full() else ():  # one wait
                    self._check_finite(values, step)
                    for k, v in values.items():
                        pending.setdefault(k, []).append(v)
                    result.last_losses = values
                if "log" in due and log_file is not None:
                    record = {"step": self.step, "time": round(self._elapsed(), 3),
                              **{k: float(np.mean(v)) for k, v in pending.items()}, "lr": lr}
                    log_file.write(_json_line(record))
                    log_file.flush()
                    self.records.append(record)
                    pending = {}
                    shown = [k for k in record if k not in ("step", "time", "lr")][:5]
                    self.bar.set_postfix({k: f"{record[k]:.3g}" for k in shown}, refresh=False)
                self.bar.update(1)
                if "samples" in due and self.is_main:
                    self._write_samples()
                if "val" in due and self.is_main:
                    metrics = self._validate()
                    if metrics is not None:
                        result.last_val = metrics
                        self._say(f"step {self.step}: val " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
                if "save" in due:
                    exports = self.save()
                    self._say(f"step {self.step}/{self.total}: saved {', '.join(p.name for p in exports)} "
                              f"and {STATE_FILE} in {self.run_dir}")
        finally:
            if log_file is not None:
                log_file.close()
            self.bar.close()
        result.step, result.exports = self.step, exports
        return result

    def _due(self, end: int) -> Set[str]:
        """What this step writes: a log record, samples, validation, a checkpoint (``log``,
        ``samples``, ``val``, ``save``; the last step logs and saves). Where it writes anything,
        the losses are read and checked first."""
        o, step = self.options, self.step
        return {name for name, on in (("log", step % o.log_every == 0 or step == end),
                                      ("samples", step % o.sample_every == 0),
                                      ("val", step % o.val_every == 0),
                                      ("save", step % o.save_every == 0 or step == end)) if on}

    def _check_finite(self, losses: Dict[str, float], step: int) -> None:
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if not bad:
            return
        name, value = next(iter(bad.items()))
        if self.saved_step is not None:
            kept = f"last good checkpoint: {self.run_dir / STATE_FILE} (step {self.saved_step})"
        else:
            kept = "no checkpoint was written yet"
        if self.is_main:
            plot_losses(self.records, self.run_dir / PLOT_FILE)
        exc = TrainingStopped(
            f"loss {name} became {value} at step {step}; training stopped, {kept}. "
            "Try a lower --lr, --precision fp32, or check the data"
        )
        raise exc if self.dist is None else mark_collective(exc, self.rank)


class _UnreadLosses:
    """Each step's losses (0-dim tensors on the device) until they are read: all at once, with one
    wait for the device (a read per step would make the host wait for every step's kernels before
    it queues the next step's)."""

    #: Steps held at most: each holds a few 0-dim device tensors (512 bytes of GPU memory apiece in
    #: PyTorch's caching allocator), so a run that logs rarely is read this often anyway.
    LIMIT = 100

    def __init__(self) -> None:
        self.steps: List[Tuple[int, Dict[str, torch.Tensor]]] = []

    def add(self, step: int, losses: Dict[str, torch.Tensor]) -> None:
        self.steps.append((step, losses))

    def full(self) -> bool:
        return len(self.steps) >= self.LIMIT

    def read(self) -> List[Tuple[int, Dict[str, float]]]:
        """(step, {name: value}) of every step added since the last read, in step order."""
        if not self.steps:
            return []
        keys = [list(losses) for _, losses in self.steps]
        values = [v for _, losses in self.steps for v in losses.values()]
        device = next((v.device for v in values if isinstance(v, torch.Tensor)), None)
        tensors = [v if isinstance(v, torch.Tensor) else torch.tensor(float(v), device=device) for v in values]
        # one stack (views of 0-dim tensors: no copy each), one cast, one copy to the host
        flat = torch.stack([t.detach().reshape(()) for t in tensors]).to(torch.float64).tolist()
        out, i = [], 0
        for (step, _), names in zip(self.steps, keys):
            out.append((step, dict(zip(names, flat[i:i + len(names)]))))
            i += len(names)
        self.steps = []
        return out


def train(method: str, options: Union[TrainOptions, Mapping[str, Any]], run_dir: str | Path,
          resume: bool = False, overwrite: bool = False, until: Optional[int] = None, ddp: bool = False,
          nproc: Optional[int] = None) -> TrainResult:
    """Train ``method`` ('pix2pix', 'cyclegan', 'munit', 'predictor') into ``run_dir``.

    options: the method's options object (``Pix2PixOptions``, ``CycleGANOptions``, ``MUNITOptions``,
        ``PredictorOptions`` from :mod:`frametrans.train.options`), or a dict of option name ->
        value (see :func:`option_names`) merged over the method's defaults. With ``resume``, they
        override the options saved in ``run_dir/config.yaml``: a dict's keys, or the fields of an
        options object that differ from the class defaults.
    resume: continue from ``run_dir/state.pt``. overwrite: start over in a non-empty ``run_dir``
        (removes only what a run writes there). Without either, a non-empty ``run_dir`` is refused.
    until: stop (and save) at this step, as if interrupted there; the schedule still spans the run.
    ddp: distributed data parallel in the process group torchrun describes (RANK, WORLD_SIZE,
        LOCAL_RANK, MASTER_ADDR, MASTER_PORT); on by itself when torchrun started more than one
        process. ``batch_size`` is the global batch, split evenly over the processes.
    nproc: outside torchrun, start this many local processes (torch.multiprocessing) and run DDP
        in them; returns rank 0's result.
    Every rank returns a TrainResult (``rank`` tells which); only rank 0 writes ``run_dir``.
    """
    if nproc is not None:
        if nproc < 1:
            raise ValueError(f"--nproc must be >= 1, got {nproc}")
        if under_launcher():
            if nproc != env_world_size():
                raise ValueError(f"--nproc {nproc} under torchrun, which started {env_world_size()} processes; "
                                 "leave --nproc out (torchrun's --nproc-per-node/--nnodes decide)")
        elif nproc > 1 or ddp:
            return spawn_local(nproc, train, method, options, run_dir, resume=resume, overwrite=overwrite,
                               until=until, ddp=True)
    run_dir = Path(run_dir)
    if not (ddp or (under_launcher() and env_world_size() > 1)):
        single, said = _resolve_run(method, options, run_dir, resume, overwrite)
        if overwrite and run_dir.is_dir():
            clear_run_dir(run_dir)
        return Trainer(method, single, run_dir, resume=resume, notes=said).run(until=until)

    # DDP: every rank checks the run folder and options (reading only); the errors are agreed on
    # once the process group stands, so all ranks stop together with the same message
    error: Optional[BaseException] = None
    resolved: Optional[TrainOptions] = None
    notes: List[str] = []
    try:
        resolved, notes = _resolve_run(method, options, run_dir, resume, overwrite)
    except Exception as exc:
        error = exc
    ctx = DistContext.from_env(resolved.device if resolved is not None else _device_of(options))
    try:
        ctx.agree(error)
        assert resolved is not None
        if overwrite and ctx.is_main and run_dir.is_dir():
            clear_run_dir(run_dir)
        return Trainer(method, resolved, run_dir, resume=resume, dist=ctx, notes=notes).run(until=until)
    finally:
        ctx.close()


def _device_of(options: Union[TrainOptions, Mapping[str, Any]]) -> Optional[str]:
    return options.device if isinstance(options, TrainOptions) else options.get("device")


def _resolve_run(method: str, options: Union[TrainOptions, Mapping[str, Any]], run_dir: Path, resume: bool,
                 overwrite: bool) -> Tuple[TrainOptions, List[str]]:
    """Check the run folder against resume/overwrite and resolve the options (reads only); also
    returns the notes on defaults fitted to the data. A resumed run's saved config.yaml is parsed
    and checked by the method's options schema."""
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir}: exists and is not a folder")
    layers: List[Dict[str, Any]] = []
    if resume:
        if not (run_dir / STATE_FILE).is_file():
            raise ValueError(f"{run_dir}: no {STATE_FILE} to resume from")
        config = run_dir / CONFIG_FILE
        saved = read_config_file(config) if config.is_file() else {}
        saved_method = saved.pop("method", method)
        if saved_method != method:
            raise ValueError(f"{run_dir}: holds a {saved_method} run, not {method}")
        layers.append(parse_layer(options_class(method), saved, str(config)))
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"{run_dir} is not empty; pass --resume to continue that run or --overwrite to start over")
    layers.append(as_layer(method, options))
    return resolve(method, *layers)


OWNED_FILES = (STATE_FILE, CONFIG_FILE, LOSSES_FILE, VAL_FILE, PLOT_FILE, "G.safetensors",
               "G_A.safetensors", "G_B.safetensors", "munit.safetensors", "predictor.safetensors")


def clear_run_dir(run_dir: Path) -> None:
    """Remove what a previous run wrote (for --overwrite): our files and sample grids, nothing else."""
    for name in OWNED_FILES:
        (run_dir / name).unlink(missing_ok=True)
    samples = run_dir / SAMPLES_DIR
    if samples.is_dir():
        for p in samples.glob("step_*.png"):
            p.unlink()
        if not any(samples.iterdir()):
            samples.rmdir()
