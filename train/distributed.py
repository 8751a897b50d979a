"""Distributed data-parallel training: one process per device, one global batch split across them.

A DDP run reproduces the single-process run with the same global batch (up to float rounding):

- ``--batch-size`` is the *global* batch B. With W processes, rank r of step s trains on the
  samples ``s*B + r*B/W ... s*B + (r+1)*B/W - 1`` of the one (seed, sample counter) stream
  (:class:`frametrans.train.datasets.StepBatches`), so the union over ranks is exactly the
  single-process batch, and the saved sample counter resumes a run with any number of processes.
- Gradients are averaged over the ranks before every optimizer step (:meth:`DistContext.
  average_gradients`, called by :meth:`frametrans.train.base.Amp.step`). Every loss is a mean over
  the local batch, so the average of the local gradients is the gradient of the global mean. This
  is done by hand rather than with ``DistributedDataParallel`` wrappers: the GAN steps call several
  networks several times per iteration, freeze discriminators, and MUNIT calls encoder/decoder
  methods instead of ``forward``, all of which DDP's forward hooks do not see.
- Batch norm is synchronised (:class:`SyncBatchNorm`): statistics over the global batch, with a
  backward that all-reduces the gradient of the statistics (so double backward, as the gradient
  penalty needs, works too). torch's own ``nn.SyncBatchNorm`` refuses CPU tensors; this one works
  with gloo on the CPU and NCCL on CUDA.
- Random draws that span the batch are drawn for the global batch on every rank from identically
  seeded generators, and each rank keeps its slice (:class:`Shard`): gradient-penalty mixing weights,
  MUNIT style codes. The CycleGAN image pools see the gathered global batch of fakes on every rank.
- Logged losses are all-reduced means; a non-finite loss on any rank is non-finite on all, so every
  rank stops at the same step.

Not reproduced across different process counts: dropout masks (drawn from each process's global
torch RNG for its local batch). Rank 0 keeps the single-process RNG stream, the other ranks get their
own streams, and every rank's state is saved, so resuming with the same process count is exact.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import sys
import tempfile
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def env_world_size() -> int:
    """WORLD_SIZE from the environment (torchrun sets it), 1 when absent."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1


def under_launcher() -> bool:
    """True when torchrun (or another launcher setting RANK and WORLD_SIZE) started us."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def mark_collective(exc: BaseException, rank: int) -> BaseException:
    """Mark an error that every rank raises at the same point (so no rank is left waiting in a
    collective); the CLI prints it on rank 0 only."""
    exc.collective = True  # type: ignore[attr-defined]
    if rank > 0:
        exc.reported_by_rank0 = True  # type: ignore[attr-defined]
    return exc


# ---------------------------------------------------------------------------------------------
# a rank's slice of the global batch


class Shard:
    """This process's part of the global batch: ``rank`` of ``world`` equal slices.

    The single-process default (rank 0 of 1) makes every method an identity, so the step code is
    the same with and without DDP.
    """

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """The slice of a global-batch tensor [B, ...] that belongs to this rank: [B/W, ...]."""
        if self.world == 1:
            return t
        b = t.shape[0] // self.world
        return t[self.rank * b : (self.rank + 1) * b]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Local batches [b, ...] of all ranks, concatenated in rank order: [W*b, ...] (no grad)."""
        if self.world == 1:
            return t
        t = t.detach().contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t)
        return torch.cat(parts, 0)


# ---------------------------------------------------------------------------------------------
# synchronised batch norm that works on the CPU


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks of the gradients (itself, so twice
    differentiable)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _AllReduceSum.apply(grad.contiguous())


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``x`` over all ranks."""
    return _AllReduceSum.apply(x)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics span the global batch of all ranks.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``; in eval mode, or without
    an initialised process group of more than one rank, it *is* ``nn.BatchNorm2d``. Per channel,
    the sums of x and x^2 and the count are all-reduced once (accumulated in float64, so
    E[x^2] - E[x]^2 does not cancel badly); the running statistics get the global mean and
    unbiased variance, as a single process would.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, x.dim())]
        c = x.shape[1]
        local_count = x.numel() // max(1, c)
        if local_count * dist.get_world_size() <= 1:  # as F.batch_norm (local batches are equal here)
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
        xf = x.float()
        count = torch.full((1,), float(local_count), dtype=torch.float64, device=x.device)
        stats = torch.cat([xf.sum(dims, dtype=torch.float64), (xf * xf).sum(dims, dtype=torch.float64), count])
        stats = all_reduce_sum(stats)
        n = stats[2 * c]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        shape = [1, c] + [1] * (x.dim() - 2)
        invstd = torch.rsqrt(var + self.eps).float()
        y = (xf - mean.float().view(shape)) * invstd.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                unbiased = var * (n / (n - 1))
                self.running_mean.mul_(1.0 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(unbiased.detach().to(self.running_var.dtype), alpha=factor)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> int:
    """Replace every BatchNorm{1,2,3}d inside ``module`` by :class:`SyncBatchNorm`, in place,
    sharing the parameter and buffer tensors (optimizers built on them stay valid).
    Returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm):
            new = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats, device="meta")
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(new, buf, getattr(child, buf))
            new.train(child.training)
            setattr(module, name, new)
            replaced += 1
        else:
            replaced += convert_batchnorm(child)
    return replaced


# ---------------------------------------------------------------------------------------------
# the process group of one run


def ddp_device(name: Optional[str], local_rank: int) -> torch.device:
    """The device of the process with ``local_rank``: cuda:LOCAL_RANK or the CPU."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but CUDA is not available here; use --device cpu")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"process with LOCAL_RANK {local_rank} has no GPU: this node has {count}; "
                             f"start at most {count} processes per node")
        return torch.device("cuda", local_rank)
    raise ValueError(f"--device {name!r} with DDP: use auto, cpu or cuda (each process takes cuda:LOCAL_RANK)")


@dataclass
class DistContext:
    """Rank, world size and device of this process, and the collectives the trainer uses."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world)

    @classmethod
    def from_env(cls, device_name: Optional[str]) -> "DistContext":
        """Join the process group described by torchrun's environment (RANK, WORLD_SIZE,
        LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL on cuda:LOCAL_RANK, else gloo on the CPU."""
        if not under_launcher():
            raise ValueError(
                "--ddp: no torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); start with "
                "`torchrun --nproc-per-node N -m frametrans.cli train ...` or add --nproc N"
            )
        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local_rank = int(os.environ.get("LOCAL_RANK", rank))
        except ValueError:
            raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
        device = ddp_device(device_name, local_rank)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        owns = False
        if dist.is_initialized():
            if dist.get_world_size() != world or dist.get_rank() != rank:
                raise ValueError("an initialised process group disagrees with RANK/WORLD_SIZE")
            backend = str(dist.get_backend())
        else:
            missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
            if missing:
                raise ValueError(f"--ddp: {' and '.join(missing)} not set; start with torchrun")
            dist.init_process_group(backend, rank=rank, world_size=world)
            owns = True
        return cls(rank, world, local_rank, device, backend, owns)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    # -- collectives ------------------------------------------------------------------------

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def gather_objects(self, obj: Any) -> List[Any]:
        """``obj`` of every rank, in rank order, on every rank."""
        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def agree(self, error: Optional[BaseException]) -> None:
        """Every rank reports whether its setup failed; if any did, every rank raises (its own
        error, or the first failing rank's message), so no rank waits forever in a collective."""
        reports = self.gather_objects(None if error is None else (type(error).__name__, str(error)))
        failed = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
        if not failed:
            return
        if error is not None:
            exc = error
        else:
            r, (kind, message) = failed[0]
            exc = ValueError(message if self.world == 1 else f"process {r} of {self.world}: {message}")
        raise mark_collective(exc, self.rank)

    def mean_losses(self, losses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The mean over ranks of each loss (0-dim tensors, or floats; every rank gets the same
        0-dim tensors), without waiting for the device: one all-reduce queued on it."""
        keys = list(losses)
        t = torch.stack([torch.as_tensor(losses[k], device=self.device).detach().reshape(())
                         for k in keys]).to(torch.float64)  # one stack, one cast
        dist.all_reduce(t)
        t /= self.world
        return dict(zip(keys, t.unbind()))

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks (one all-reduce per dtype)."""
        grads = [p.grad for p in params if p.grad is not None]
        by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            flat = torch._utils._flatten_dense_tensors(group)
            dist.all_reduce(flat)
            flat /= self.world
            for g, synced in zip(group, torch._utils._unflatten_dense_tensors(flat, group)):
                g.copy_(synced)

    def optimizer_sync(self, optimizer: torch.optim.Optimizer) -> None:
        self.average_gradients(p for group in optimizer.param_groups for p in group["params"])

    @torch.no_grad()
    def broadcast_modules(self, modules: Sequence[nn.Module]) -> None:
        """Make every rank's parameters and buffers equal to rank 0's."""
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                dist.broadcast(t.data, 0)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The global torch RNG seed of ``rank`` > 0 from ``step`` on (rank 0 keeps ``seed``, as a
    single process; the step matters only when resuming with a different number of processes)."""
    mixed = np.random.SeedSequence([seed, 1000, rank, step]).generate_state(1, dtype=np.uint64)[0]
    return int(mixed) & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------
# local launch without torchrun


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_entry(local_rank: int, nproc: int, port: int, outdir: str, threads: Optional[int],
                 target: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if threads:
        torch.set_num_threads(threads)
    try:
        outcome: Any = ("ok", target(*args, **kwargs))
    except BaseException as exc:  # reported to the parent, which raises it
        outcome = ("error", exc, traceback.format_exc())
    try:
        data = pickle.dumps(outcome)
    except Exception:
        outcome = ("error", RuntimeError(str(outcome[1])), outcome[2] if len(outcome) > 2 else "")
        data = pickle.dumps(outcome)
    with open(os.path.join(outdir, f"rank{local_rank}.pkl"), "wb") as f:
        f.write(data)
    if outcome[0] == "error" and not getattr(outcome[1], "collective", False):
        sys.exit(1)  # the parent stops the other processes, which may wait in a collective


def spawn_local(nproc: int, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``target(*args, **kwargs)`` in ``nproc`` fresh processes that form a process group on
    127.0.0.1 (a free port), as torchrun would; returns rank 0's return value, or raises the error
    of rank 0 (else of the first rank that failed).

    Each process gets cpu_count // nproc torch threads unless OMP_NUM_THREADS is set.
    """
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    threads = None if os.environ.get("OMP_NUM_THREADS") else max(1, (os.cpu_count() or 1) // nproc)
    outdir = tempfile.mkdtemp(prefix="frametrans-ddp-")
    try:
        try:
            mp.start_processes(_spawn_entry, args=(nproc, free_port(), outdir, threads, target, args, kwargs),
                               nprocs=nproc, join=True, start_method="spawn")
            crash = None
        except (mp.ProcessExitedException, mp.ProcessRaisedException) as exc:
            crash = exc
        outcomes: Dict[int, Any] = {}
        for r in range(nproc):
            path = os.path.join(outdir, f"rank{r}.pkl")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    outcomes[r] = pickle.load(f)  # written just now by our own children
        errors = {r: o for r, o in outcomes.items() if o[0] == "error"}
        if errors:
            r = 0 if 0 in errors else min(errors)
            _, exc, tb = errors[r]
            if not isinstance(exc, (ValueError, RuntimeError, OSError)):
                exc.add_note(f"in process {r} of {nproc}:\n{tb}")
            raise exc
        if crash is not None or 0 not in outcomes:
            raise RuntimeError(f"a training process died without a report ({crash})")
        return outcomes[0][1]
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
