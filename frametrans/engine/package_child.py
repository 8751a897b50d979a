"""Compiled packages are built and checked in child processes, so native crashes cannot take a job down.

A compiled package is native code, and so is the compiler that makes it. On an H200 (torch 2.11,
CUDA 13), loading a freshly built CUDA package segfaulted inside torch's C++ package loader, in the
process that had just compiled it: in a job, that kills every frame in flight and leaves the output
half written. So:

- :func:`build`: the job exports the forward (``torch.export``, in the job's process: it needs the
  model) and saves the exported program; a child compiles it with AOTInductor into the package, with
  the job's intra-op thread count (baked into CPU loops). The job never imports inductor.
- :func:`check`: before a job loads a package the first time, a child loads it and runs one input of
  the job's shape, dtype and memory format on the job's device. The job loads the package only when
  the child exits cleanly.

Verdicts are kept beside the package, stamped with its inode and size (a package replaced under the
same name is checked again): ``<digest>.pt2.ok``, or ``<digest>.pt2.bad`` with the reason when the
child crashed (killed by SIGSEGV, SIGBUS, SIGILL, SIGABRT or SIGFPE) or the package answered the
wrong batch. Other failures are not kept: a file that is no intact archive is ``damaged`` (the caller
compiles it again); a timeout, a kill or an error while loading or running it (out of memory, a busy
device) is ``transient`` (this job runs uncompiled, the next one checks again).

    python -m frametrans.engine.package_child build EXPORTED PACKAGE THREADS
    python -m frametrans.engine.package_child check PACKAGE DEVICE SHAPE DTYPE FORMAT

SHAPE is ``N,C,H,W``; DTYPE ``float32`` / ``bfloat16`` / ``float16``; FORMAT ``channels_last`` or
``contiguous``.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

log = logging.getLogger("frametrans")

#: Seconds a check may take: importing torch, initialising the device, loading and one forward.
CHECK_SECONDS = 180.0
#: Seconds a build may take (a cold CUDA build of a tiny ResNet took 60-95 s on the H200).
BUILD_SECONDS = 1800.0
#: Signals that mean the package (or its loader) crashed, rather than that someone stopped the child.
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGABRT, signal.SIGFPE}
#: The check child's exit status when the package is no intact archive (not when it cannot run it).
DAMAGED = 3
#: The check child's exit status when the package runs but answers the wrong batch: kept like a crash.
WRONG = 4
#: Inductor settings of every package: weights frozen into the graph and packaged in the library.
INDUCTOR_CONFIGS = {"freezing": True, "aot_inductor.package_constants_in_so": True}


@dataclass(frozen=True)
class Failure:
    """Why a package cannot be used: ``kind`` is ``crashed`` (kept), ``damaged`` or ``transient``."""

    kind: str
    reason: str


# ------------------------------------------------------------------------------------ verdicts


def _marker(path: Path, verdict: str) -> Path:
    return path.with_name(f"{path.name}.{verdict}")


def forget(path: Path) -> None:
    """Drop the verdicts kept for ``path``."""
    for verdict in ("ok", "bad"):
        _marker(path, verdict).unlink(missing_ok=True)


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_ino} {st.st_size}"


def _kept(path: Path) -> Optional[Failure]:
    """The verdict kept for this very file: None (ok), a crash, or no verdict (raises KeyError)."""
    try:
        stamp_now = _stamp(path)
    except OSError:  # gone (pruned by another process): no verdict; the check child says damaged
        raise KeyError(path.name) from None
    for verdict in ("ok", "bad"):
        try:
            stamp, _, reason = _marker(path, verdict).read_text().partition("\n")
        except OSError:
            continue
        if stamp.strip() == stamp_now:
            return None if verdict == "ok" else Failure("crashed", reason.strip())
    raise KeyError(path.name)


def _keep(path: Path, failure: Optional[Failure]) -> None:
    """Write the verdict atomically; a read-only cache only costs the check again next time."""
    from frametrans.atomic import atomic_write_text

    marker = _marker(path, "ok" if failure is None else "bad")
    try:
        atomic_write_text(marker, _stamp(path) + "\n" + (failure.reason if failure else "") + "\n")
    except OSError as exc:
        log.debug("could not record %s: %s", marker.name, exc)


# ------------------------------------------------------------------------------------ the parent side


def _why(proc: "subprocess.CompletedProcess[str]") -> str:
    """One line: the signal or exit status, and the child's last line of error output."""
    rc = proc.returncode
    if rc < 0:
        try:
            status = f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            status = f"killed by signal {-rc}"
    else:
        status = f"exit status {rc}"
    lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
    return status + (f": {lines[-1].strip()}" if lines else "")


def _failure(proc: "subprocess.CompletedProcess[str]") -> Optional[Failure]:
    rc = proc.returncode
    if rc == 0:
        return None
    reason = f"the compiled package failed to run in a check process ({_why(proc)})"
    if rc == WRONG or (rc < 0 and -rc in {int(s) for s in CRASH_SIGNALS}):
        return Failure("crashed", reason)
    return Failure("damaged" if rc == DAMAGED else "transient", reason)


def check(path: Path, example: torch.Tensor) -> Optional[Failure]:
    """None when the package at ``path`` loads and runs ``example``'s shape, dtype and memory format
    on its device in a child process, else why not. Each file is checked once (the verdict is kept)."""
    try:
        return _kept(path)
    except KeyError:
        pass
    from frametrans.child import run_child

    args = ["check", str(path.resolve()), str(example.device), ",".join(map(str, example.shape)),
            str(example.dtype).replace("torch.", ""), _format(example)]
    try:
        failure = _failure(run_child("frametrans.engine.package_child", args, timeout=CHECK_SECONDS))
    except subprocess.TimeoutExpired:
        failure = Failure("transient", f"the compiled package did not load and run within {CHECK_SECONDS:.0f} s")
    if failure is None or failure.kind == "crashed":
        _keep(path, failure)
    return failure


def build(exported: Path, package: Path) -> None:
    """Compile the saved exported program ``exported`` (``torch.export.save``) into ``package`` in a
    child process with this process's intra-op thread count. Raises RuntimeError (one line)."""
    from frametrans.child import run_child

    args = ["build", str(exported.resolve()), str(package.resolve()), str(torch.get_num_threads())]
    try:
        proc = run_child("frametrans.engine.package_child", args, timeout=BUILD_SECONDS)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"compiling did not finish within {BUILD_SECONDS:.0f} s") from None
    if proc.returncode != 0 or not package.exists():
        raise RuntimeError(f"compiling in a child process failed ({_why(proc)})")


def _format(x: torch.Tensor) -> str:
    cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return "channels_last" if cl else "contiguous"


# ------------------------------------------------------------------------------------ the child side


def _run_check(path: str, device: str, shape: str, dtype: str, fmt: str) -> int:
    """Run zeros of the shape through the package once. Exit :data:`DAMAGED` when the file is no
    intact archive, :data:`WRONG` when the output's batch differs; a device that cannot start or
    has no room fails with exit status 1 (transient), not as a damaged package."""
    import zipfile

    from frametrans.engine.compile import load_package

    x = torch.zeros(tuple(int(s) for s in shape.split(",")), dtype=getattr(torch, dtype), device=device)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        bad = f"{type(exc).__name__}: {exc}"
    if bad is not None:
        print(f"not an intact package archive ({bad})", file=sys.stderr)
        return DAMAGED
    y = load_package(Path(path))(x)  # compiled code records no autograd graph
    if y.device.type == "cuda":
        torch.cuda.synchronize(y.device)
    if y.shape[0] != x.shape[0]:
        print(f"output batch {y.shape[0]} for an input batch of {x.shape[0]}", file=sys.stderr)
        return WRONG
    return 0


def _run_build(exported: str, package: str, threads: str) -> int:
    import importlib

    torch.set_num_threads(int(threads))
    program = torch.export.load(exported)
    importlib.import_module("torch._inductor").aoti_compile_and_package(
        program, package_path=package, inductor_configs=dict(INDUCTOR_CONFIGS))
    return 0


_COMMANDS: Dict[str, object] = {"check": _run_check, "build": _run_build}


def main(argv: Sequence[str]) -> int:
    return _COMMANDS[argv[0]](*argv[1:])  # type: ignore[operator]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
