"""frametrans.heap: freed tensors' pages stay with the process (glibc), unless someone chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else "")

# Page faults per round of arrays of 20, 20 and 48 MB (the last over glibc's largest mmap threshold)
# allocated and freed together, as a forward does with its activations, before and after
# keep_freed_memory(), in a fresh process.
SCRIPT = """
import resource, numpy as np
def faults():
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        arrays = [np.ones(n) for n in (2_500_000, 2_500_000, 6_000_000)]  # 20, 20 and 48 MB
        del arrays
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) // 5
faults()
before = faults()
from frametrans.heap import keep_freed_memory
on = keep_freed_memory()
faults()
print(before, int(on), faults())
"""


def _run(**env: str) -> tuple[int, bool, int]:
    full = {k: v for k, v in os.environ.items() if k not in ("FRAMETRANS_MALLOC", "MALLOC_TRIM_THRESHOLD_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**full, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), out[1] == "1", int(out[2])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    before, on, after = _run()
    assert on and before > 500 and after < before / 10


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.parametrize("env", [{"FRAMETRANS_MALLOC": "default"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_opt_out_and_own_settings_are_left_alone(env):
    before, on, after = _run(**env)
    assert not on and after > 500


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.parametrize("entry", [
    "from frametrans.cli.main import main\ntry:\n    main(['models'])\nexcept SystemExit:\n    pass",
    "import torch\nfrom frametrans.engine.session import Session\nSession(torch.nn.Conv2d(3, 3, 1), device='cpu')",
])
def test_the_cli_and_sessions_tune_the_heap(entry):
    """Both entry points tune the heap, in a process that had not."""
    code = f"{entry}\nfrom frametrans import heap\nprint('tuned', heap._result)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "FRAMETRANS_MALLOC"}).stdout
    assert out.strip().splitlines()[-1] == "tuned True"
