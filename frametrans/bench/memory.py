"""``frametrans bench memory``: what one frame through the runner adds to the process's peak, each
run in a fresh process, untiled and under ``--max-memory``: peak growth against the budget, time
ratio and PSNR of the budgeted output against the untiled one.

The CPU figure is the resident set: ``/proc/self/clear_refs`` resets the peak (Linux), and the
growth is the peak during the job (VmHWM) over the resident set before the first frame (the model
loaded). On CUDA it is ``torch.cuda.max_memory_allocated`` over what was allocated before the job.

    python -m frametrans.bench.memory '{"model": "cyclegan", "image": "in.npy", ...}'

runs one measurement (the child side) and prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from frametrans.bench.common import Log, make_frames, mib, psnr_uint8, to_stderr
from frametrans.child import run_child


@dataclass
class MemoryBench:
    """Settings of :func:`bench_memory`. ``image``: a picture file (default: :func:`photo_mosaic`
    of ``width`` x ``height``, or a synthetic frame without scikit-image)."""

    model: str = "cyclegan"
    image: Optional[str] = None
    width: int = 1024
    height: int = 1024
    max_memory: int = 128 * 2**20
    tile_stats: str = "exact"
    row_bands: bool = True
    device: str = "cpu"
    precision: str = "fp32"
    threads: Optional[int] = None


def bench_memory(opts: MemoryBench, log: Log = to_stderr) -> Dict[str, Any]:
    """The untiled run and the budgeted run, each in its own process."""
    with tempfile.TemporaryDirectory(prefix="frametrans-bench-memory-") as tmp:
        frame = Path(tmp) / "in.npy"
        np.save(frame, _frame(opts))
        runs = {}
        for name, budget in (("untiled", None), ("budget", opts.max_memory)):
            runs[name] = measure_in_child(opts, frame, Path(tmp) / f"{name}.npy", budget)
            log(f"{name}: +{mib(runs[name]['growth'])} in {runs[name]['seconds']:.2f} s ({_how(runs[name])})")
        untiled = np.load(Path(tmp) / "untiled.npy")
        budgeted = np.load(Path(tmp) / "budget.npy")
    return {"setup": asdict(opts), "runs": runs, "psnr_db": psnr_uint8(budgeted, untiled),
            "ratio": runs["budget"]["seconds"] / runs["untiled"]["seconds"],
            "of_budget": runs["budget"]["growth"] / opts.max_memory}


def measure_in_child(opts: MemoryBench, frame: Path, out: Path, budget: Optional[int]) -> Dict[str, Any]:
    """One frame (``frame``, a .npy picture) through ``opts.model`` in a fresh Python process;
    the output goes to ``out`` (.npy). Returns the child's JSON: growth (bytes), seconds, plan."""
    args = {**asdict(opts), "frame": str(frame.resolve()), "out": str(out.resolve()), "budget": budget}
    if Path(opts.model).exists():  # a checkpoint path: the child runs in another folder
        args["model"] = str(Path(opts.model).resolve())
    res = run_child("frametrans.bench.memory", [json.dumps(args)])
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"the measuring process failed: {lines[-1]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _frame(opts: MemoryBench) -> np.ndarray:
    if opts.image:
        from frametrans.io.images import read_image

        image = read_image(opts.image).image
        return image if image.shape[2] == 3 else np.repeat(image[..., :1], 3, axis=2)
    try:
        return photo_mosaic(opts.height, opts.width)
    except ImportError:
        return next(make_frames(opts.width, opts.height, 1, 0))


def photo_mosaic(h: int, w: int) -> np.ndarray:
    """[h, w, 3] uint8: scikit-image's sample photos (astronaut, coffee, chelsea, rocket, retina) at
    their own scale, side by side, repeated: real picture statistics at any frame size."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.retina()]
    out = np.zeros((h, w, 3), np.uint8)
    y = k = 0
    while y < h:
        x, row = 0, 0
        while x < w:
            p = photos[k % len(photos)][..., :3]
            k += 1
            ph, pw = min(p.shape[0], h - y), min(p.shape[1], w - x)
            out[y:y + ph, x:x + pw] = p[:ph, :pw]
            x, row = x + pw, max(row, ph)
        y += row
    return out


def format_memory(result: Dict[str, Any]) -> str:
    """Four lines: the setting, the untiled run, the budgeted run, the ratio and PSNR."""
    s, runs = result["setup"], result["runs"]
    b = runs["budget"]
    picture = s["image"] or f"{s['width']}x{s['height']} photo mosaic"
    return "\n".join([
        f"{s['model']}, {picture}, {s['device']} "
        f"{s['precision']}, --max-memory {mib(s['max_memory'])}, --tile-stats {s['tile_stats']}",
        f"  untiled: +{mib(runs['untiled']['growth'])}, {runs['untiled']['seconds']:.2f} s",
        f"  budget:  +{mib(b['growth'])} = {result['of_budget']:.2f}x the budget, {b['seconds']:.2f} s "
        f"({_how(b)})",
        f"  budget / untiled: {result['ratio']:.2f}x time; PSNR {result['psnr_db']:.1f} dB",
    ])


def _how(run: Dict[str, Any]) -> str:
    """How the child ran its frame, in words."""
    if not run["tile"]:
        return "whole"
    if run.get("bands"):
        disk = f"{mib(run['spilled'])} kept on disk" if run["spilled"] else "nothing kept on disk"
        return f"whole, in row bands layer by layer; {disk}"
    return f"{run['tiles']} tiles of {run['tile']} px, statistics {run['stats']}"


# -- the child process -------------------------------------------------------------------------


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _child(args: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    from frametrans.apply import Translator
    from frametrans.engine.runner import RunnerOptions
    from frametrans.engine.tiling import plan_tiles

    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    image = np.load(args["frame"])
    runner = Translator.load(args["model"], RunnerOptions(  # MUNIT: one style, fixed by the seed
        device=args["device"], precision=args["precision"], compile="off", max_memory=args["budget"],
        tile_stats=args["tile_stats"], row_bands=args.get("row_bands", True))).variants[0].runner
    cuda = runner.device.type == "cuda"
    base = _reset_peak(runner.device) if cuda else _reset_peak(None)
    t0 = time.perf_counter()
    out = runner([image])[0]
    seconds = time.perf_counter() - t0
    growth = (torch.cuda.max_memory_allocated(runner.device) if cuda else _status("VmHWM:")) - base
    np.save(args["out"], out)
    plan = runner.plan(*image.shape[:2])
    tiles = 0
    if plan.tile:
        ph, pw = runner.memory.padded(*image.shape[:2])
        tiles = len(plan_tiles(ph, pw, plan.tile, plan.overlap, runner.contract.size_multiple))
    bands = [s for s in runner.streams.cache.values() if s is not None]
    return {"growth": growth, "seconds": seconds, "tile": plan.tile, "tiles": tiles, "stats": plan.stats,
            "bands": bool(bands), "spilled": sum(s.spilled_bytes() for s in bands)}


def _reset_peak(device) -> int:
    """Reset the peak counter; return what is held now (the baseline)."""
    if device is not None:
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS:")


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
