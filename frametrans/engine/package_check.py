"""Whether a compiled package loads and runs, checked once in a child process before a job uses it.

A compiled package is native code: a loader or kernel that crashes (a segmentation fault inside
torch's C++ package loader was seen with torch 2.11 loading a freshly built CUDA package) would take
the whole job with it, frames already decoded and the output half written. So the first time a
package is to be used, a child process loads it and runs one input of the job's shape, dtype and
memory format on the job's device; the job uses the package only when the child exits cleanly.

The verdict is kept beside the package (``<digest>.pt2.ok``, or ``<digest>.pt2.bad`` holding the
reason), so each package is checked once; a package rebuilt under the same name drops both.

    python -m frametrans.engine.package_check PACKAGE DEVICE SHAPE DTYPE FORMAT   (the child side)

SHAPE is ``N,C,H,W``; DTYPE ``float32`` / ``bfloat16`` / ``float16``; FORMAT ``channels_last`` or
``contiguous``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

log = logging.getLogger("frametrans")

#: Seconds the child may take: importing torch, initialising the device, loading and one forward.
CHECK_SECONDS = 180.0


def _marker(path: Path, verdict: str) -> Path:
    return path.with_name(f"{path.name}.{verdict}")


def forget(path: Path) -> None:
    """Drop the verdict kept for ``path`` (a package compiled again under the same name)."""
    for verdict in ("ok", "bad"):
        _marker(path, verdict).unlink(missing_ok=True)


def _write(marker: Path, text: str) -> None:
    """Write ``marker`` atomically; a read-only cache only costs the check again next time."""
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, marker)
    except OSError as exc:
        log.debug("could not record %s: %s", marker.name, exc)
        tmp.unlink(missing_ok=True)


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


def check(path: Path, example: torch.Tensor) -> Optional[str]:
    """None when the package at ``path`` loads and runs ``example``'s shape in a child process,
    else the reason (one line). Cached beside the package."""
    ok, bad = _marker(path, "ok"), _marker(path, "bad")
    if ok.exists():
        return None
    if bad.exists():
        return bad.read_text().strip() or "failed its check before"
    from frametrans.child import run_child

    fmt = "channels_last" if (example.dim() == 4 and not example.is_contiguous()
                              and example.is_contiguous(memory_format=torch.channels_last)) else "contiguous"
    args = [str(path.resolve()), str(example.device), ",".join(map(str, example.shape)),
            str(example.dtype).replace("torch.", ""), fmt]
    try:
        proc = run_child("frametrans.engine.package_check", args, timeout=CHECK_SECONDS)
        reason = None if proc.returncode == 0 else f"the compiled package failed to run ({_why(proc)})"
    except subprocess.TimeoutExpired:
        reason = f"the compiled package did not load and run within {CHECK_SECONDS:.0f} s"
    _write(ok if reason is None else bad, reason or "ok\n")
    return reason


def _run(argv: Sequence[str]) -> int:
    """The child: load the package, run zeros of the given shape once, synchronize."""
    from frametrans.engine.compile import load_package

    path, device, shape, dtype, fmt = argv
    x = torch.zeros(tuple(int(s) for s in shape.split(",")), dtype=getattr(torch, dtype), device=device)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y = load_package(Path(path))(x)  # compiled code records no autograd graph
    if y.device.type == "cuda":
        torch.cuda.synchronize(y.device)
    return 0 if y.shape[0] == x.shape[0] else 1


if __name__ == "__main__":
    sys.exit(_run(sys.argv[1:]))
