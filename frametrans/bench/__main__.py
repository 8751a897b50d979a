"""``python -m frametrans.bench reference CKPT IN_DIR OUT_DIR [DEVICE]``: the reference loop as
its own process (imports, model load and all), for whole-process comparisons
(:func:`frametrans.bench.processes.bench_processes`), with glibc's default heap
(:mod:`frametrans.heap` stays off) and torch's own InstanceNorm, as upstream's test.py runs
(pix2pix and CycleGAN generators)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from frametrans.bench.apply import reference_loop

USAGE = "usage: python -m frametrans.bench reference CKPT IN_DIR OUT_DIR [DEVICE]"


def reference_main(argv: Sequence[str]) -> int:
    """Run the reference loop on ``IN_DIR`` into ``OUT_DIR``; ``DEVICE`` auto: CUDA when there is one."""
    if len(argv) < 3:
        print(USAGE, file=sys.stderr)
        return 2
    from frametrans.checkpoint import load_model

    os.environ["FRAMETRANS_MALLOC"] = "default"  # glibc's own heap, as upstream's test.py runs with
    name = argv[3] if len(argv) > 3 else "auto"
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          ("cpu" if name == "auto" else name))
    n = reference_loop(load_model(argv[0]), Path(argv[1]), Path(argv[2]), device)
    print(f"{n} images", file=sys.stderr)
    return 0


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "reference":
        return reference_main(argv[1:])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
