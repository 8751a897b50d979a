"""What every training method shares: mixed precision, EMA, the LR schedule, the method interface.

A method (pix2pix, CycleGAN, MUNIT, predictor) owns its networks, optimizers, pools and random
generators, and implements one training step. It keeps no global state: two methods can live in one
process, and the step code only touches ``self``, so the networks can later be wrapped in
DistributedDataParallel without changing the loop.
"""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from frametrans.checkpoint import save_model
from frametrans.train.distributed import Shard
from frametrans.train.options import LR_POLICIES, PRECISIONS, TrainOptions

# ---------------------------------------------------------------------------------------------
# mixed precision


class Amp:
    """Autocast and loss scaling for one run.

    precision: ``fp32`` (no autocast), ``bf16`` (autocast to bfloat16 on CPU or CUDA, no scaling
    needed) or ``fp16`` (autocast to float16 with a GradScaler; CUDA only).
    One scaler serves all optimizers: ``backward`` and ``step`` per loss/optimizer, ``update`` once
    per iteration (the PyTorch recipe for several models and optimizers).
    grad_sync: called with the optimizer before each step; DDP sets it to average the gradients
    over the processes (:meth:`frametrans.train.distributed.DistContext.optimizer_sync`).
    """

    def __init__(self, device: torch.device, precision: str) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError(f"--precision fp16 needs CUDA (device is {device}); use bf16 or fp32")
        self.device = device
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.grad_sync: Optional[Callable[[torch.optim.Optimizer], None]] = None

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.precision != "fp32")

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.grad_sync is not None:  # DDP: (scaled) gradients averaged before unscale/inf check
            self.grad_sync(optimizer)
        self.scaler.step(optimizer)

    def update(self) -> None:
        self.scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# exponential moving average of the generator(s)


class EMA:
    """Shadow copies of ``modules`` whose parameters track ``decay * shadow + (1 - decay) * live``.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so
    the average is not dominated by the random initial weights. Buffers (BatchNorm statistics) are
    copied from the live module.
    """

    def __init__(self, modules: Dict[str, nn.Module], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema must be between 0 and 1 (e.g. 0.999), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow: Dict[str, nn.Module] = {}
        for name, module in modules.items():
            twin = copy.deepcopy(module).eval()
            twin.requires_grad_(False)
            self.shadow[name] = twin

    @torch.no_grad()
    def update(self, modules: Dict[str, nn.Module]) -> None:
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for name, module in modules.items():
            twin = self.shadow[name]
            for p_ema, p in zip(twin.parameters(), module.parameters()):
                p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - d)
            for b_ema, b in zip(twin.buffers(), module.buffers()):
                b_ema.copy_(b)
        self.updates += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates,
                "modules": {k: m.state_dict() for k, m in self.shadow.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for k, m in self.shadow.items():
            m.load_state_dict(state["modules"][k])


# ---------------------------------------------------------------------------------------------
# learning-rate schedule: a pure function of the step, so the saved state is the step


def lr_factor(step: int, total: int, policy: str, decay_start: float = 0.5,
              step_size: int = 100_000, gamma: float = 0.5) -> float:
    """Multiplier of the base learning rate at 0-based iteration ``step`` of ``total``.

    linear:   1 until ``decay_start * total``, then linearly down, reaching 0 just after the last
              iteration (the reference: n_epochs constant + n_epochs_decay linear, here in steps)
    constant: 1
    step:     gamma ** (step // step_size) (MUNIT)
    cosine:   cosine from 1 to 0 after ``decay_start * total`` (1 before)
    """
    if policy == "constant":
        return 1.0
    if policy == "step":
        return gamma ** (step // max(1, step_size))
    start = int(round(decay_start * total))
    if step < start:
        return 1.0
    span = max(1, total - start)
    t = min(1.0, (step - start) / span)
    if policy == "linear":
        return 1.0 - t
    if policy == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown --lr-policy {policy!r}; use one of {', '.join(LR_POLICIES)}")


# ---------------------------------------------------------------------------------------------
# helpers for the step code


def set_requires_grad(modules: Iterable[nn.Module], flag: bool) -> None:
    """Freeze / unfreeze discriminators around the generator update (saves their gradients)."""
    for m in modules:
        m.requires_grad_(flag)


@contextlib.contextmanager
def eval_mode(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Modules in eval mode inside the block, their previous modes restored afterwards."""
    modules = list(modules)
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def seeded(seed: int, *stream: int) -> torch.Generator:
    """A CPU torch.Generator for one purpose, derived from the run seed and a stream id."""
    mixed = int(np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(mixed & ((1 << 63) - 1))


def to_uint8_image(t: torch.Tensor, value_range: Sequence[float] = (-1.0, 1.0)) -> np.ndarray:
    """[C, H, W] float in ``value_range`` -> uint8 [H, W, 3] (gray repeated to RGB)."""
    lo, hi = value_range
    x = ((t.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[torch.Tensor]], value_range: Sequence[float] = (-1.0, 1.0),
               pad: int = 2) -> np.ndarray:
    """Rows of [C, H, W] tensors -> one uint8 [H', W', 3] RGB grid with a white gutter.

    Cells smaller than 96 px are enlarged by an integer factor (nearest neighbour)."""
    cells = [[to_uint8_image(t, value_range) for t in row] for row in rows]
    scale = max(1, 96 // max(c.shape[0] for row in cells for c in row))  # tiny crops: enlarge
    if scale > 1:
        cells = [[c.repeat(scale, 0).repeat(scale, 1) for c in row] for row in cells]
    h = max(c.shape[0] for row in cells for c in row)
    w = max(c.shape[1] for row in cells for c in row)
    ncols = max(len(row) for row in cells)
    grid = np.full((len(cells) * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
    return grid


# ---------------------------------------------------------------------------------------------
# the method interface


class Method:
    """Base of the training methods.

    Subclasses fill ``nets`` (every trained network), ``optimizers``, ``pools``, ``rngs`` and
    ``exports`` (generator net name -> exported file name), and implement :meth:`step`,
    :meth:`samples` and (for paired data) :meth:`validate`.

    ``shard`` is this process's part of the global batch (DDP; identity for one process): random
    draws over the batch are made for the global batch and sliced with ``shard.local``, and
    batch-wide state (image pools) sees ``shard.gather`` of the local tensors, so a DDP step
    computes what the single-process step computes.
    """

    name = ""

    def __init__(self, options: TrainOptions, device: torch.device, amp: Amp) -> None:
        self.options = options
        self.device = device
        self.amp = amp
        self.nets: Dict[str, nn.Module] = {}
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.pools: Dict[str, Any] = {}
        self.rngs: Dict[str, torch.Generator] = {}
        self.exports: Dict[str, str] = {}
        self.ema: Optional[EMA] = None
        self.shard = Shard()

    # -- to implement -----------------------------------------------------------------------

    def step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One iteration on a batch already on ``self.device``; returns the losses, detached 0-dim
        tensors on the device: reading them waits for the device, which the trainer does once per
        ``--log-every`` steps, not per step (the host can queue the next step's work meanwhile)."""
        raise NotImplementedError

    def samples(self, batch: Dict[str, torch.Tensor]) -> np.ndarray:
        """A uint8 [H, W, 3] grid: per row input | output | target (or reconstruction)."""
        raise NotImplementedError

    def validate(self, items: List[Dict[str, torch.Tensor]], batch_size: int) -> Optional[Dict[str, float]]:
        """Metrics on held-out samples (None for methods without paired targets)."""
        return None

    # -- shared -------------------------------------------------------------------------------

    def enable_ema(self, decay: float) -> None:
        self.ema = EMA({k: self.nets[k] for k in self.exports}, decay)

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update({k: self.nets[k] for k in self.exports})

    def generators(self) -> Dict[str, nn.Module]:
        """The modules to export and to evaluate: the EMA copies when EMA is on."""
        if self.ema is not None:
            return dict(self.ema.shadow)
        return {k: self.nets[k] for k in self.exports}

    def set_lr(self, factor: float) -> float:
        """Set every optimizer's learning rate to its base rate times ``factor``; returns the
        generator's (first optimizer's) rate."""
        first = None
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * factor
                first = group["lr"] if first is None else first
        return float(first or 0.0)

    def train(self) -> None:
        for net in self.nets.values():
            net.train()

    def compile_units(self) -> List[nn.Module]:
        """The modules whose ``forward`` the training step calls (what ``--compile`` compiles):
        every network, unless a method calls its networks' parts directly."""
        return list(self.nets.values())

    def export(self, run_dir: Path, provenance: Dict[str, Any]) -> List[Path]:
        """Write each generator with :func:`frametrans.checkpoint.save_model` (atomically)."""
        return [save_model(module, Path(run_dir) / self.exports[key], provenance=provenance)
                for key, module in self.generators().items()]

    def state_dict(self) -> Dict[str, Any]:
        """All nets, optimizers, scaler, pools, EMA and private generators, as plain containers."""
        return {
            "method": self.name,
            "nets": {k: m.state_dict() for k, m in self.nets.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scaler": self.amp.state_dict(),
            "pools": {k: p.state_dict() for k, p in self.pools.items()},
            "rngs": {k: g.get_state() for k, g in self.rngs.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("method") != self.name:
            raise ValueError(f"the saved state is of method {state.get('method')!r}, not {self.name!r}")
        _same_keys("networks", state["nets"], self.nets)
        for k, m in self.nets.items():
            m.load_state_dict(state["nets"][k])
        for k, o in self.optimizers.items():
            base_lrs = [g["initial_lr"] for g in o.param_groups]  # this run's --lr wins
            o.load_state_dict(_with_our_implementation(state["optimizers"][k], o))
            for g, lr in zip(o.param_groups, base_lrs):
                g["initial_lr"] = lr
        self.amp.load_state_dict(state.get("scaler") or {})
        for k, p in self.pools.items():
            p.load_state_dict(state["pools"][k], device=self.device)
        for k, g in self.rngs.items():
            g.set_state(state["rngs"][k])
        if (state.get("ema") is None) != (self.ema is None):
            raise ValueError("--ema differs from the saved run; resume with the same --ema")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


def _with_our_implementation(saved: Dict[str, Any], opt: torch.optim.Optimizer) -> Dict[str, Any]:
    """The saved optimizer state with this run's implementation flags (``fused``, ``foreach``) in
    its groups: a state saved on the CPU (or before Adam was fused on CUDA) resumes fused on CUDA,
    and torch then places its step counters where the fused kernel wants them. A state with another
    number of groups is returned as it is, for torch to refuse."""
    if len(saved["param_groups"]) != len(opt.param_groups):
        return saved
    ours = [{k: g.get(k) for k in ("fused", "foreach")} for g in opt.param_groups]
    groups = [dict(g, **impl) for g, impl in zip(saved["param_groups"], ours)]
    return dict(saved, param_groups=groups)


def _same_keys(what: str, saved: Dict[str, Any], ours: Dict[str, Any]) -> None:
    if set(saved) != set(ours):
        raise ValueError(f"saved {what} {sorted(saved)} differ from this run's {sorted(ours)}")


def adam(params: Iterable[nn.Parameter], lr: float, beta1: float, beta2: float,
         weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with ``initial_lr`` recorded in each group (the schedule scales from it). On CUDA the
    fused implementation: one kernel per step for all parameters instead of a few per tensor
    (small models like the predictor are launch-bound there)."""
    params = list(params)
    on_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    opt = torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay,
                           fused=True if on_cuda else None)
    for group in opt.param_groups:
        group["initial_lr"] = lr
    return opt


def compile_nets(method: Method, device: torch.device) -> List[str]:
    """``--compile``: compile ``method.compile_units()`` in place (``nn.Module.compile``: the
    weights, their names and the optimizers stay the same, so checkpoints and resume do not
    change). Discriminators stay eager under a gradient penalty (``--gan-mode wgan-gp``
    differentiates them twice, which compiled modules cannot). Refused in one line where inductor
    cannot build for ``device``. Returns the log lines to show."""
    from frametrans.engine.compile import can_compile, use_inductor_cache

    why = can_compile(device)
    if why is not None:
        raise ValueError(f"--compile: {why}; train without --compile")
    use_inductor_cache()  # builds are cached: a resumed run starts in seconds
    gan = getattr(method, "gan", None)
    eager = ({id(net) for k, net in method.nets.items() if k not in method.exports}
             if gan is not None and gan.needs_gradient_penalty else set())
    for unit in method.compile_units():
        if id(unit) not in eager:
            unit.compile()
    if eager:
        return ["--compile: the discriminators stay eager (the wgan-gp penalty differentiates them twice, "
                "which torch.compile does not support)"]
    return []

