"""The ONNX graph a backend runs: ``forward(source, x)`` traced in fp32, cached on disk.

One graph per model, forward and opset (batch, height and width are dynamic axes), at
``<cache>/onnx/<key>.onnx`` beside the compiled packages (:func:`frametrans.engine.compile.cache_dir`);
the key covers the architecture, config, weights, the forward's ``cache_token``, the opset and the
torch version (:func:`frametrans.engine.compile.model_identity`). A forward without a
``cache_token`` (a closure the key cannot name) is traced into a private temporary file each time.
Files are written atomically; least recently used graphs beyond the cache size limit are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch import nn

from frametrans.atomic import atomic_write_bytes
from frametrans.engine import compile as compiling

log = logging.getLogger("frametrans")

#: Version of the graph recipe; bump to invalidate cached graphs.
RECIPE = 1


OPSET = 17


def graph_key(identity: str, opset: int = OPSET) -> str:
    text = json.dumps([RECIPE, torch.__version__, identity, opset])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def graph_path(source: nn.Module, token: str, root: Path, opset: int = OPSET) -> Path:
    """Where the graph of ``forward(source, x)`` (named by ``token``) is cached."""
    return root / "onnx" / f"{graph_key(compiling.model_identity(source, source, token), opset)}.onnx"


#: Traces a graph: (example input batch, opset) -> serialized ONNX model.
Exporter = Callable[[torch.Tensor, int], bytes]


def plain_exporter(source: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> Exporter:
    """The graph of ``fn(source, x)``: input ``image``, output ``output``."""
    def export(example: torch.Tensor, opset: int) -> bytes:
        from frametrans.export import onnx_bytes

        x = example.detach().float().contiguous()
        return onnx_bytes(compiling._Wrapped(source, fn), (x,), ["image"], opset)

    return export


@contextlib.contextmanager
def onnx_graph(source: nn.Module, export: Exporter, example: torch.Tensor, root: Path, token: Optional[str],
               opset: int = OPSET) -> Iterator[Tuple[Path, bool, float]]:
    """Yield ``(path of the ONNX graph, was cached, seconds spent)`` for the graph ``export`` traces
    (e.g. :func:`plain_exporter`).

    source: the fp32 module in eval mode (its identity keys the cache); example: one input batch
    [B, C, H, W] (its shape only seeds the trace). token: ``""`` for the default forward, the
    forward's ``cache_token``, or None: not cacheable, the graph lives in a temporary file for the
    duration of the block.
    """
    t0 = time.perf_counter()
    if token is None:
        fd, name = tempfile.mkstemp(suffix=".onnx", prefix="frametrans-")
        os.close(fd)
        try:
            Path(name).write_bytes(export(example, opset))
            yield Path(name), False, time.perf_counter() - t0
        finally:
            Path(name).unlink(missing_ok=True)
        return
    path = graph_path(source, token, root, opset)
    cached = path.exists()
    if cached:
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: pruned last
    else:
        log.info("converting the model to ONNX (once; cached in %s)", path.parent)
        atomic_write_bytes(path, export(example, opset))
        prune(path.parent, keep=path)
    yield path, cached, time.perf_counter() - t0


#: The precision guard's verdicts on a cached graph (:mod:`frametrans.engine.backends.serve`):
#: ``<graph>.onnx`` + this, JSON; removed with their graph.
GUARD_SUFFIX = ".guard.json"


def prune(folder: Path, keep: Optional[Path] = None) -> None:
    """Remove the least recently used graphs beyond the compile cache's size limit, and the guard
    verdicts (and their leftover temporary files) of graphs that are gone."""
    compiling.prune(folder, keep, pattern="*.onnx")
    compiling.prune(folder, None, pattern="*.onnx" + GUARD_SUFFIX)  # leftovers of killed writes only
    try:
        for verdicts in folder.glob("*.onnx" + GUARD_SUFFIX):
            if not verdicts.with_name(verdicts.name[: -len(GUARD_SUFFIX)]).exists():
                verdicts.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("could not prune %s: %s", folder, exc)
