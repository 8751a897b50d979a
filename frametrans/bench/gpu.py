"""``frametrans bench gpu``: the GPU table of issue 15 in one call, one JSON and one Markdown file.

Each row is one of the existing benchmarks, run with fixed settings (:func:`plan`):

- model and end to end (:func:`frametrans.bench.apply.bench_apply`, compile off): ResNet-9 (ngf 64)
  and U-Net-256 at 256x256 (batch 16) and 1920x1080 (batch 4): model only, apply video, apply
  folder, the fraction of the device's measured matmul peak;
- the host ceiling (:func:`frametrans.bench.pipeline.bench_pipeline`, the null model) at the same
  sizes, so each end-to-end rate is shown against min(model only, ceiling); at 1080p also the
  video ceiling with ``--yuv off`` (frames converted to RGB on the host), against the default's planes;
- 3840x2160 within ``--max-memory 4G`` (:func:`frametrans.bench.memory.bench_memory`, the bundled
  cyclegan, fresh processes): the peak CUDA memory the frame adds, untiled and within the budget;
- training steps/s of cyclegan (256 crop, batch 1) and the predictor (64, batch 16)
  (:func:`frametrans.bench.training.bench_training`);
- compile on (:func:`frametrans.bench.compile.bench_compile`): cold and warm build, compiled against
  eager, ResNet-9 and U-Net-256 at 256, batch 16; last, each in a child process whose timeout is
  what is left of the time budget (a build that does not end is a row that says so).

The rows run in that order within ``budget_s`` seconds (330 by default: the table takes under 6
minutes); a row that no longer fits is listed as skipped. A failing row is listed with its error,
the others still run. ``quick`` shrinks every size, frame count and model so that the same code
runs in well under a minute on a CPU (``--device cpu --quick``, a smoke test; compiles skipped).

    python -m frametrans.bench.gpu KIND 'JSON'   runs one row (the child side), prints one JSON line
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Tuple

from frametrans.bench.common import Log, to_stderr
from frametrans.child import run_child

GIB = 2**30


@dataclass
class GpuBench:
    """Settings of :func:`bench_gpu`. device: ``cuda`` (or ``cuda:N``); ``cpu`` only with ``quick``."""

    device: str = "cuda"
    quick: bool = False
    budget_s: float = 330.0
    precision: str = "bf16"


@dataclass(frozen=True)
class Piece:
    """One row: which table, its label, which benchmark (``kind``) with which settings."""

    table: str
    label: str
    kind: str
    settings: Dict[str, Any] = field(default_factory=dict)
    isolated: bool = False  # in a child process, with the time left as its timeout


# ------------------------------------------------------------------------------------ the rows


def _sizes(quick: bool) -> Dict[str, Any]:
    """Frame sizes, models, batches and lengths of the full table, or their tiny stand-ins."""
    if quick:
        return {"small": (32, 32), "large": (64, 48), "uhd": (512, 384), "budget": 64 * 2**20, "stats": "fast",
                "resnet": {"ngf": 4, "n_blocks": 1}, "unet": {"num_downs": 3, "ngf": 4},
                "batch": (2, 2), "frames": (4, 2), "repeat": (1, 1), "steps": (2, 1)}
    return {"small": (256, 256), "large": (1920, 1080), "uhd": (3840, 2160), "budget": 4 * GIB, "stats": "exact",
            "resnet": {}, "unet": {}, "batch": (16, 4), "frames": (256, 32), "repeat": (2, 1),
            "steps": (20, 5)}


def _training_options(quick: bool) -> Dict[str, Dict[str, Any]]:
    if quick:
        return {"cyclegan": dict(size=36, crop=32, ngf=4, n_blocks=1, ndf=4, n_layers_d=2, pool_size=2,
                                 batch_size=2),
                "predictor": dict(data="moving-digits", size=32, context=3, horizon=2, width=4, depth=2,
                                  batch_size=4, val_count=4)}
    return {"cyclegan": dict(size=286, crop=256, batch_size=1),
            "predictor": dict(data="moving-digits", size=64, batch_size=16)}


def _apply_pieces(opts: GpuBench, z: Dict[str, Any], which: int) -> List[Piece]:
    """Model-only and end-to-end rows, and the host ceiling, at the small (0) or large (1) size."""
    w, h = z["small"] if which == 0 else z["large"]
    common = dict(width=w, height=h, batch=z["batch"][which], frames=z["frames"][which],
                  repeat=z["repeat"][which], device=opts.device, precision=opts.precision)
    rows = [Piece("apply", f"{name} {w}x{h}, b{common['batch']}", "apply",
                  dict(common, model=arch, config=z[arch], compile="off", reference=False))
            for arch, name in (("resnet", "ResNet-9"), ("unet", "U-Net-256"))]
    ceiling = dict(width=w, height=h, frames=z["frames"][which], repeat=z["repeat"][which], device=opts.device)
    rows.append(Piece("ceiling", f"{w}x{h}", "pipeline", dict(ceiling, inputs=("video", "png"))))
    if which == 1:  # what converting video frames on the device (--yuv auto on CUDA) gains over the host
        rows.append(Piece("ceiling", f"{w}x{h}, --yuv off", "pipeline", dict(ceiling, inputs=("video",), yuv="off")))
    return rows


def plan(opts: GpuBench) -> List[Piece]:
    """Every row of the table, in the order they run."""
    z = _sizes(opts.quick)
    w, h = z["uhd"]
    pieces = _apply_pieces(opts, z, 0)
    pieces.append(Piece("memory", f"cyclegan {w}x{h}, --max-memory {z['budget'] // 2**20} MiB", "memory",
                        dict(model="cyclegan", width=w, height=h, max_memory=z["budget"], tile_stats=z["stats"],
                             device=opts.device, precision=opts.precision)))
    steps, warmup = z["steps"]
    for method, o in _training_options(opts.quick).items():
        pieces.append(Piece("training", f"{method}, batch {o['batch_size']}", "training",
                            dict(method=method, options=o, steps=steps, warmup=warmup, device=opts.device)))
    pieces += _apply_pieces(opts, z, 1)
    sw, sh = z["small"]
    for arch, name in (("resnet", "ResNet-9"), ("unet", "U-Net-256")):
        pieces.append(Piece("compile", f"{name} {sw}x{sh}, b{z['batch'][0]}", "compile",
                            dict(model=arch, config=z[arch], width=sw, height=sh, batch=z["batch"][0],
                                 device=opts.device, precision=opts.precision, repeat=3), isolated=True))
    return pieces


def run_kind(kind: str, settings: Dict[str, Any], log: Log = to_stderr) -> Dict[str, Any]:
    """Run one benchmark by name with its settings (a dict of its options dataclass)."""
    if kind == "apply":
        from frametrans.bench.apply import ApplyBench, bench_apply

        return bench_apply(ApplyBench(**settings), log)
    if kind == "pipeline":
        from frametrans.bench.pipeline import PipelineBench, bench_pipeline

        return bench_pipeline(PipelineBench(**{**settings, "inputs": tuple(settings["inputs"])}), log)
    if kind == "memory":
        from frametrans.bench.memory import MemoryBench, bench_memory

        return bench_memory(MemoryBench(**settings), log)
    if kind == "training":
        from frametrans.bench.training import TrainingBench, bench_training

        return bench_training(TrainingBench(**settings), log)
    if kind == "compile":
        from frametrans.bench.compile import CompileBench, bench_compile

        return bench_compile(CompileBench(**settings), log)
    raise ValueError(f"unknown benchmark kind {kind!r}")


# ------------------------------------------------------------------------------------ running


def _run_isolated(piece: Piece, timeout: float) -> Dict[str, Any]:
    """``python -m frametrans.bench.gpu KIND JSON`` with ``timeout``; its last stdout line."""
    proc = run_child("frametrans.bench.gpu", [piece.kind, json.dumps(piece.settings)], timeout=timeout)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"the child process failed ({proc.returncode}): {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_piece(piece: Piece, opts: GpuBench, left: float, log: Log) -> Dict[str, Any]:
    """One row's record: status ok / error / timeout / skipped, seconds, result or why."""
    row: Dict[str, Any] = {"table": piece.table, "label": piece.label, "kind": piece.kind,
                           "settings": piece.settings}
    if piece.isolated and opts.quick:
        return {**row, "status": "skipped", "why": "--quick: cold compiles take minutes on a CPU"}
    if left <= 0:
        return {**row, "status": "skipped", "why": f"the time budget ({opts.budget_s:.0f} s) was spent"}
    log(f"== {piece.table}: {piece.label}")
    t0 = time.perf_counter()
    try:
        result = (_run_isolated(piece, max(10.0, left)) if piece.isolated
                  else run_kind(piece.kind, piece.settings, log))
        row.update(status="ok", result=result)
    except subprocess.TimeoutExpired:
        row.update(status="timeout", why=f"did not finish within {max(10.0, left):.0f} s (the time left)")
    except Exception as exc:  # noqa: BLE001 - one failing row must not cost the others
        from frametrans.io.errors import first_line

        row.update(status="error", why=f"{type(exc).__name__}: {first_line(exc)}")
    row["seconds"] = time.perf_counter() - t0
    log(f"   {row['status']} in {row['seconds']:.1f} s" + (f": {row['why']}" if "why" in row else ""))
    return row


def bench_gpu(opts: GpuBench, log: Log = to_stderr) -> Dict[str, Any]:
    """Every row of :func:`plan` within the time budget; returns ``setup`` and ``rows``."""
    t0 = time.perf_counter()
    rows = [_run_piece(p, opts, opts.budget_s - (time.perf_counter() - t0), log) for p in plan(opts)]
    return {"setup": {**asdict(opts), **_machine(opts.device), "seconds": time.perf_counter() - t0},
            "rows": rows}


def _machine(device: str) -> Dict[str, Any]:
    import torch

    from frametrans.bench.common import device_name
    from frametrans.engine.pipeline import default_workers

    dev = torch.device(device)
    return {"device_name": device_name(dev), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cores": default_workers(), "date": datetime.date.today().isoformat(),
            "command": "frametrans bench gpu" + (f" --device {device}" if device != "cuda" else "")}


# ---------------------------------------------------------------------------------- the tables


def _cells(row: Dict[str, Any], n: int, fill: Callable[[Dict[str, Any]], List[str]]) -> List[str]:
    """The row's cells, or its status and why in the first one (the rest empty)."""
    if row["status"] != "ok":
        return [f"{row['status']}: {row.get('why', '')}"] + [""] * (n - 1)
    return fill(row["result"])


def _ceilings(rows: List[Dict[str, Any]]) -> Dict[Tuple[int, int, str], float]:
    """(width, height, input) -> the null model's apply frames/s."""
    out = {}
    for r in rows:
        if r["table"] == "ceiling" and r["status"] == "ok" and r["settings"].get("yuv", "auto") != "off":
            s = r["settings"]
            for x in r["result"]["rows"]:
                out[(s["width"], s["height"], "folder" if x["input"] == "png" else x["input"])] = x["apply_fps"]
    return out


def _apply_cells(result: Dict[str, Any], ceil: Dict[Tuple[int, int, str], float]) -> List[str]:
    s = result["setup"]
    by = {r["phase"].split(" (")[0]: r for r in result["rows"]}
    model = by["model only"]["frames_per_s"]
    cells = [f"{model:.1f}"]
    for kind in ("video", "folder"):
        r = by.get(f"apply {kind}")
        bound = min(model, ceil.get((s["width"], s["height"], kind), float("inf")))
        cells.append("-" if r is None else f"{r['frames_per_s']:.1f} ({r['vs_model']:.2f}x model, "
                                           f"{r['frames_per_s'] / bound:.2f}x bound)")
    frac = by["model only"].get("peak_fraction")
    cells.append(f"{100 * frac:.0f}%" if frac else "-")
    return cells


def _table(head: List[str], lines: List[List[str]]) -> List[str]:
    return (["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            + ["| " + " | ".join(cells) + " |" for cells in lines])


def _ceiling_lines(row: Dict[str, Any]) -> List[List[str]]:
    if row["status"] != "ok":
        return [[row["label"]] + _cells(row, 5, lambda r: [])]
    return [[row["label"], f"{x['input']}", f"{x['codec_fps']:.1f}", f"{x['apply_fps']:.1f}",
             f"{x['ratio']:.2f}x", f"{x['runner_fps']:.1f}"] for x in row["result"]["rows"]]


def _memory_cells(r: Dict[str, Any]) -> List[str]:
    b, u = r["runs"]["budget"], r["runs"]["untiled"]
    ok = "yes" if b["growth"] <= r["setup"]["max_memory"] else "NO"
    return [f"{u['growth'] / 2**20:.0f} MiB", f"{b['growth'] / 2**20:.0f} MiB ({r['of_budget']:.2f}x)", ok,
            f"{b['tiles']} x {b['tile']} px" if b["tile"] else "untiled", f"{r['ratio']:.2f}x",
            f"{r['psnr_db']:.1f} dB"]


def _compile_cells(r: Dict[str, Any]) -> List[str]:
    med = r["seconds_per_frame"]
    return [f"{r['cold_seconds']:.1f}", f"{r['warm_seconds']:.2f}", f"{1 / med['eager']:.1f}",
            f"{1 / med['compiled']:.1f}", f"{r['speedup_vs_eager']:.2f}x"]


def format_gpu(result: Dict[str, Any]) -> str:
    """The Markdown: the machine, then one table per part of :func:`plan`."""
    s, rows = result["setup"], result["rows"]
    of = lambda table: [r for r in rows if r["table"] == table]  # noqa: E731
    ceil = _ceilings(rows)
    md = [f"# frametrans bench gpu: {s['device_name']}", "",
          f"`{s['command']}`{' --quick' if s['quick'] else ''}, {s['precision']}, torch {s['torch']}, CUDA "
          f"{s['cuda']}, {s['cores']} host cores, {s['date']}, {s['seconds']:.0f} s", "",
          "## Model and end to end (compile off); bound = min(model only, host ceiling)", ""]
    md += _table(["model, size, batch", "model only f/s", "apply video f/s", "apply folder f/s", "of peak"],
                 [[r["label"]] + _cells(r, 4, lambda x: _apply_cells(x, ceil)) for r in of("apply")])
    md += ["", "## Host ceiling: the null model through apply, against the raw codec", ""]
    md += _table(["size", "input", "codec f/s", "apply f/s", "apply / codec", "null runner f/s"],
                 [line for r in of("ceiling") for line in _ceiling_lines(r)])
    md += ["", "## One large frame within --max-memory (peak the frame adds)", ""]
    md += _table(["model, size, budget", "untiled", "within the budget", "within?", "tiles", "time", "PSNR"],
                 [[r["label"]] + _cells(r, 6, _memory_cells) for r in of("memory")])
    md += ["", "## Training", ""]
    md += _table(["method, batch", "steps/s", "samples/s"],
                 [[r["label"]] + _cells(r, 2, lambda x: [f"{x['steps_per_s']:.2f}", f"{x['samples_per_s']:.1f}"])
                  for r in of("training")])
    md += ["", "## Compile on (model only)", ""]
    md += _table(["model, size, batch", "cold build s", "warm load s", "eager f/s", "compiled f/s", "speed-up"],
                 [[r["label"]] + _cells(r, 5, _compile_cells) for r in of("compile")])
    return "\n".join(md) + "\n"


def main(argv: List[str]) -> int:
    """The child side: ``KIND JSON`` -> one JSON line on stdout (logs on stderr)."""
    if len(argv) != 2:
        print("usage: python -m frametrans.bench.gpu KIND 'JSON'", file=sys.stderr)
        return 2
    print(json.dumps(run_kind(argv[0], json.loads(argv[1])), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
