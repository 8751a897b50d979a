"""``frametrans bench tiling``: one large frame untiled and tiled, interleaved: time ratio, PSNR of
the tiled output against the untiled one, the tile plan and the peak memory of each."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from frametrans.bench.common import Log, PeakMemory, make_frames, median, mib, psnr_uint8, to_stderr, workdir
from frametrans.bench.models import prepare_model

#: How the report names the runner plan's statistics modes (others are printed as they are).
_STATS_LABELS = {"none": "none (no frame-dependent norm)"}


@dataclass
class TilingBench:
    """Settings of :func:`bench_tiling`."""

    model: str = "resnet"
    config: Dict[str, Any] = field(default_factory=dict)
    width: int = 1920
    height: int = 1080
    tile: Optional[int] = None
    tile_overlap: Optional[int] = None
    max_memory: Optional[int] = None
    device: str = "auto"
    precision: str = "auto"
    repeat: int = 3
    seed: int = 0
    workdir: Optional[str] = None


def bench_tiling(opts: TilingBench, log: Log = to_stderr) -> Dict[str, Any]:
    """One frame untiled and tiled (``tile`` or a ``max_memory`` budget), interleaved: time ratio,
    PSNR of the tiled output against the untiled one, tile plan and peak memory of each."""
    from frametrans.checkpoint import load_model

    if not opts.tile and not opts.max_memory:
        raise ValueError("give --tile or --max-memory (what makes the tiled run tile)")
    with workdir(opts.workdir) as work:
        model = load_model(prepare_model(opts.model, work, opts.config, opts.seed))
        frame = next(make_frames(opts.width, opts.height, 1, opts.seed))
        whole, tiled = _runners(model, opts)
        layout = _layout(tiled, opts, model.config.contract().size_multiple)
        log(f"{opts.width}x{opts.height}: {layout['tiles']} tiles of {layout['tile_used']} px, overlap "
            f"{layout['overlap']}, tile area {layout['tile_area_ratio']:.2f}x the frame; norm statistics: "
            f"{layout['stats']}")
        tiled([frame])  # warm-up (and the receptive field probe)
        times, mems, outs = _rounds(opts, frame, whole, tiled, log)
        med = {k: median(v) for k, v in times.items()}
        layout["bands"] = any(v is not None for v in tiled.streams.cache.values())
        return {"setup": {**asdict(opts), **layout, "dtype": str(whole.dtype)},
                "seconds": times, "median": med, "ratio": med["tiled"] / med["untiled"],
                "psnr_db": psnr_uint8(outs["tiled"], outs["untiled"]),
                "peak_mem_bytes": {k: max(x.peak for x in v) for k, v in mems.items()},
                "added_mem_bytes": {k: max(x.added for x in v) for k, v in mems.items()}}


def _runners(model: Any, opts: TilingBench) -> Tuple[Any, Any]:
    """(a runner that never tiles, a runner that tiles by ``tile`` or the ``max_memory`` budget)."""
    from frametrans.engine.runner import Runner, RunnerOptions

    whole = Runner(model, RunnerOptions(device=opts.device, precision=opts.precision, batch_size=1,
                                        compile="off", max_memory=2**50))
    tiled = Runner(model, RunnerOptions(device=opts.device, precision=opts.precision, batch_size=1,
                                        compile="off", tile=opts.tile, tile_overlap=opts.tile_overlap,
                                        max_memory=opts.max_memory))
    return whole, tiled


def _layout(runner: Any, opts: TilingBench, multiple: int) -> Dict[str, Any]:
    """The tiled runner's plan for the frame: tile side, overlap, tile count, computed area over
    the frame's, and the normalization statistics mode."""
    from frametrans.engine.tiling import plan_tiles

    plan = runner.plan(opts.height, opts.width)
    if plan.tile is None:
        raise ValueError(f"the {opts.width}x{opts.height} frame fits the memory budget: nothing to tile")
    ph, pw = -(-opts.height // multiple) * multiple, -(-opts.width // multiple) * multiple
    boxes = plan_tiles(ph, pw, plan.tile, plan.overlap, multiple)
    area = sum(b.height * b.width for b in boxes) / (ph * pw)
    return {"tile_used": plan.tile, "overlap": plan.overlap, "tiles": len(boxes), "tile_area_ratio": area,
            "stats": _STATS_LABELS.get(plan.stats, plan.stats)}


def _rounds(opts: TilingBench, frame: np.ndarray, whole: Any, tiled: Any, log: Log
            ) -> Tuple[Dict[str, List[float]], Dict[str, List[PeakMemory]], Dict[str, np.ndarray]]:
    """``repeat`` interleaved rounds: seconds, memory peaks and the last output of each runner."""
    times: Dict[str, List[float]] = {"untiled": [], "tiled": []}
    mems: Dict[str, List[PeakMemory]] = {"untiled": [], "tiled": []}
    outs: Dict[str, np.ndarray] = {}
    for r in range(opts.repeat):
        for name, runner in (("untiled", whole), ("tiled", tiled)):
            with PeakMemory(whole.device) as mem:
                t = time.perf_counter()
                outs[name] = runner([frame])[0]
                times[name].append(time.perf_counter() - t)
            mems[name].append(mem)
        log(f"round {r + 1}/{opts.repeat}: untiled {times['untiled'][-1]:.2f} s, tiled {times['tiled'][-1]:.2f} s")
    return times, mems, outs


def format_tiling(result: Dict[str, Any]) -> str:
    """Four lines: the plan, each runner's median time and memory, the ratio and the PSNR."""
    s, med = result["setup"], result["median"]
    how = (f"{s['tiles']} tiles of {s['tile_used']} px, overlap {s['overlap']} (tile area "
           f"{s['tile_area_ratio']:.2f}x the frame), norm statistics '{s['stats']}'")
    if s.get("bands"):
        how = "over the budget: whole, in row bands layer by layer (not tiles)"
    return "\n".join([
        f"{s['width']}x{s['height']}, model {s['model']} {json.dumps(s['config']) if s['config'] else ''}, "
        f"{s['dtype'].replace('torch.', '')}: {how}",
        f"  untiled {med['untiled']:.3f} s, peak mem {mib(result['peak_mem_bytes']['untiled'])} "
        f"(+{mib(result['added_mem_bytes']['untiled'])})",
        f"  tiled   {med['tiled']:.3f} s, peak mem {mib(result['peak_mem_bytes']['tiled'])} "
        f"(+{mib(result['added_mem_bytes']['tiled'])})",
        f"  tiled / untiled: {result['ratio']:.2f}x time; PSNR tiled vs untiled {result['psnr_db']:.1f} dB",
    ])
