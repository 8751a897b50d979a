"""``frametrans bench processes``: whole processes, start-up, model load and compile/cache load
included: ``python -m frametrans.cli apply`` against the reference loop run as
``python -m frametrans.bench reference`` (:mod:`frametrans.bench.__main__`)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from frametrans.bench.common import (Log, make_folder, make_video, median, mse_uint8, psnr_of_mse_uint8,
                                     to_stderr, workdir)
from frametrans.bench.models import prepare_model
from frametrans.child import run_child


@dataclass
class ProcessBench:
    """Settings of :func:`bench_processes`."""

    model: str = "resnet"
    config: Dict[str, Any] = field(default_factory=dict)
    width: int = 256
    height: int = 256
    frames: int = 96
    batch: Optional[int] = None
    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"
    repeat: int = 1
    seed: int = 0
    workdir: Optional[str] = None
    video: bool = False
    cold: bool = False  # every frametrans run with an empty cache folder (FRAMETRANS_CACHE_DIR)


def bench_processes(opts: ProcessBench, log: Log = to_stderr) -> Dict[str, Any]:
    """Wall time of whole processes on the same folder (or video): ``frametrans apply`` against the
    reference loop, alternating, ``repeat`` times; start-up, model load and compile included.

    Both run as ``python -m MODULE`` with this interpreter, the environment passed through and the
    folder this frametrans was imported from first on ``PYTHONPATH``
    (:func:`~frametrans.bench.common.run_child`): a ``pip install --target DIR`` found through
    ``PYTHONPATH`` is the one the children run."""
    with workdir(opts.workdir) as work:
        work = work.resolve()  # the children run in another folder
        ckpt = Path(prepare_model(opts.model, work, opts.config, opts.seed)).resolve()
        folder = make_folder(work / "in_frames", opts.width, opts.height, opts.frames)
        src = make_video(work / "in.mp4", opts.width, opts.height, opts.frames) if opts.video else folder
        dst = work / ("out.mp4" if opts.video else "out_frames")
        ours = _apply_args(opts, ckpt, src, dst)
        ref = ["reference", str(ckpt), str(folder), str(work / "ref_out"),
               opts.device if opts.device != "auto" else "auto"]
        runs = (("frametrans apply", "frametrans.cli", ours), ("reference loop", "frametrans.bench", ref))
        times: Dict[str, List[float]] = {"frametrans apply": [], "reference loop": []}
        for r in range(opts.repeat):
            for name, module, args in runs:
                env = None
                cache = work / "cold-cache" if opts.cold and module == "frametrans.cli" else None
                if cache is not None:
                    shutil.rmtree(cache, ignore_errors=True)
                    env = {"FRAMETRANS_CACHE_DIR": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
                times[name].append(_run_timed(name, module, args, env))
                if cache is not None:
                    shutil.rmtree(cache, ignore_errors=True)
            log(f"round {r + 1}/{opts.repeat}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()))
        med = {k: median(v) for k, v in times.items()}
        command = " ".join([sys.executable, "-m", "frametrans.cli", *ours])
        return {"setup": {**asdict(opts), "checkpoint": str(ckpt), "command": command},
                "seconds": times, "median": med,
                "speedup": med["reference loop"] / med["frametrans apply"],
                "psnr_vs_reference_db": None if opts.video else _psnr_to_reference(work / "ref_out", dst)}


def _psnr_to_reference(ref_dir: Path, out_dir: Path) -> Dict[str, float]:
    """PSNR (dB, 8-bit) of frametrans' output frames against the reference loop's (its fp32 output,
    ``NAME_fake.png`` beside our ``NAME.png``): ``worst`` frame, and ``mean``: from the mean squared
    error over all frames. The reference truncates to 8 bits where frametrans rounds, so the same
    fp32 output reads ~51 dB, not inf. A missing frame is an error."""
    from frametrans.io.images import read_image

    errors = []
    for ref in sorted(ref_dir.glob("*_fake.png")):
        ours = out_dir / (ref.name[: -len("_fake.png")] + ".png")
        errors.append(mse_uint8(read_image(ours).image, read_image(ref).image))
    if not errors:
        raise RuntimeError(f"no reference frames in {ref_dir}")
    return {"worst": psnr_of_mse_uint8(max(errors)), "mean": psnr_of_mse_uint8(sum(errors) / len(errors))}


def _apply_args(opts: ProcessBench, ckpt: Path, src: Path, dst: Path) -> List[str]:
    """The arguments of ``frametrans apply`` for these settings."""
    args = ["apply", str(src), "-o", str(dst), "-m", str(ckpt), "--device", opts.device,
            "--precision", opts.precision, "--compile", opts.compile, "--overwrite", "--quiet"]
    if opts.batch:
        args += ["--batch-size", str(opts.batch)]
    return args


def _run_timed(name: str, module: str, args: List[str], env: Optional[Dict[str, str]] = None) -> float:
    """Wall seconds of one ``python -m module args`` (``env``: added to its environment); a failure
    raises with the end of its stderr."""
    t = time.perf_counter()
    proc = run_child(module, args, extra_env=env)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return seconds


def format_processes(result: Dict[str, Any]) -> str:
    """A few lines: median wall time and frames/s of each process, the speed-up, and (folders) the PSNR
    of our frames against the reference loop's."""
    s, med = result["setup"], result["median"]
    src = "video" if s["video"] else "folder"
    lines = [f"whole processes, {s['frames']} frames {s['width']}x{s['height']} ({src}), model {s['model']}"
             f"{' ' + json.dumps(s['config']) if s['config'] else ''}, device {s['device']}, precision "
             f"{s['precision']}, compile {s['compile']}{', nothing cached (--cold)' if s.get('cold') else ''}; "
             f"median of {s['repeat']}"]
    for k, v in med.items():
        lines.append(f"  {k:<18} {v:8.2f} s   {s['frames'] / v:7.2f} frames/s")
    lines.append(f"  speed-up over the reference loop: {result['speedup']:.2f}x")
    db = result.get("psnr_vs_reference_db")
    if db:
        lines.append(f"  PSNR of frametrans' frames against the reference loop's: worst frame {db['worst']:.1f} dB, "
                     f"all frames {db['mean']:.1f} dB (its fp32 output, truncated to 8 bits where frametrans "
                     "rounds: the same fp32 output reads ~51 dB)")
    return "\n".join(lines)
