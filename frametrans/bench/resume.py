"""``frametrans bench resume``: what resumable (segmented) video output costs, and a kill + resume.

1. The same clip through the same loaded model, written in one piece (``segment_seconds=0``) and in
   segments (``segment_seconds``), alternating, ``repeat`` times: the ratio of the best times is
   what writing segments, the manifest and the final join cost.
2. ``frametrans apply`` in a child process, killed with SIGKILL when its encoder takes frame
   ``kill_at * frames`` (inside a segment), then resumed with ``--resume``: frames the resumed run processed, and whether
   the final file equals the uninterrupted one (frame count, every pts, audio packets byte for byte,
   decoded frames; the runs use ``--crf 0``, lossless).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Optional

import av
import numpy as np

from frametrans.bench.common import Log, make_frames, to_stderr, workdir
from frametrans.bench.models import prepare_model
from frametrans.child import child_env, package_root


@dataclass
class ResumeBench:
    """Settings of :func:`bench_resume`."""

    model: str = "cyclegan"
    width: int = 256
    height: int = 256
    seconds: float = 60.0
    segment_seconds: float = 10.0
    repeat: int = 2
    kill_at: float = 0.6
    device: str = "auto"
    precision: str = "auto"
    backend: str = "torch"  # the same in this process and the children, so outputs can be compared
    workdir: Optional[str] = None


def bench_resume(opts: ResumeBench, log: Log = to_stderr) -> Dict[str, Any]:
    """Run both measurements (see the module docstring); returns the numbers as a dict."""
    with workdir(opts.workdir) as work:
        work = work.resolve()
        ckpt = Path(prepare_model(opts.model, work)).resolve()
        frames = int(round(opts.seconds * 25))
        clip = make_clip_with_audio(work / "in.mp4", opts.width, opts.height, frames)
        log(f"clip: {frames} frames {opts.width}x{opts.height} at 25 fps with AAC audio")
        cost = _writer_cost(opts, ckpt, clip, work, log)
        kill = _kill_and_resume(opts, ckpt, clip, work, frames, log)
        return {"settings": asdict(opts), "frames": frames, **cost, **kill}


def make_clip_with_audio(path: Path, width: int, height: int, count: int, fps: int = 25) -> Path:
    """H.264 (a keyframe every 2 s, B-frames) of :func:`make_frames`, with a mono AAC sine track."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "20", "g": str(2 * fps)})
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = c.add_stream("aac", rate=48000)
        a.layout = "mono"
        for i, img in enumerate(make_frames(width, height, count)):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        n = int(48000 * count / fps)
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)[None]
        af = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        af.sample_rate, af.pts = 48000, 0
        c.mux([*a.encode(af), *a.encode(None)])
    return path


def _writer_cost(opts: ResumeBench, ckpt: Path, clip: Path, work: Path, log: Log) -> Dict[str, Any]:
    from frametrans.apply import OutputOptions, Translator, apply_paths
    from frametrans.engine.runner import RunnerOptions

    translator = Translator.load(str(ckpt), RunnerOptions(device=opts.device, precision=opts.precision,
                                                                  backend=opts.backend))
    times: Dict[str, List[float]] = {"one piece": [], "segmented": []}
    apply_paths([str(clip)], str(work / "warm.mp4"), translator,
                OutputOptions(overwrite=True, quiet=True, crf=0, segment_seconds=0))  # warm-up
    for r in range(opts.repeat):
        for name, seconds in (("one piece", 0.0), ("segmented", opts.segment_seconds)):
            out = work / f"{name.replace(' ', '_')}.mp4"
            t = time.perf_counter()
            apply_paths([str(clip)], str(out), translator,
                        OutputOptions(overwrite=True, quiet=True, crf=0, segment_seconds=seconds))
            times[name].append(time.perf_counter() - t)
        log(f"round {r + 1}/{opts.repeat}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    best = {k: min(v) for k, v in times.items()}
    ratio = best["segmented"] / best["one piece"]
    log(f"segmented / one piece: {ratio:.3f} (best of {opts.repeat})")
    return {"seconds_one_piece": best["one piece"], "seconds_segmented": best["segmented"],
            "segmented_over_one_piece": ratio}


#: The child job: ``frametrans ARGS``, killed with SIGKILL by itself when its encoder takes frame
#: FRAMETRANS_BENCH_KILL_AT (inside a segment, at an exact point whatever the machine's speed).
_KILLED_CHILD = """
import os, signal, sys
from frametrans.apply.segmented import SegmentedWriter
real, count, at = SegmentedWriter.write, [0], int(os.environ["FRAMETRANS_BENCH_KILL_AT"])
def write(self, *a, **k):
    count[0] += 1
    if count[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *a, **k)
SegmentedWriter.write = write
from frametrans.cli.main import main
sys.argv = ["frametrans"] + sys.argv[1:]
main()
"""


def _kill_and_resume(opts: ResumeBench, ckpt: Path, clip: Path, work: Path, frames: int,
                     log: Log) -> Dict[str, Any]:
    from frametrans.apply.manifest import Manifest

    out = work / "killed" / "out.mp4"
    args = ["apply", str(clip), "-o", str(out), "-m", str(ckpt), "--crf", "0", "--device", opts.device,
            "--precision", opts.precision, "--backend", opts.backend,
            "--segment-seconds", str(opts.segment_seconds), "--quiet"]
    target = max(1, int(opts.kill_at * frames))
    env = dict(child_env(), FRAMETRANS_BENCH_KILL_AT=str(target + 1))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _KILLED_CHILD, *args], env=env, cwd=str(package_root()),
                          capture_output=True, text=True)
    if proc.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the job was not killed (exit status {proc.returncode}): "
                           f"{proc.stderr.strip().splitlines()[-1:]}")
    killed_seconds = time.perf_counter() - t
    done = Manifest.load(out.with_name("out.partial")).frames_done
    log(f"killed (SIGKILL) after {killed_seconds:.1f} s, at frame {target} of {frames}: {done} frames "
        f"in closed segments, {target - done} written to the segment that was open")
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "frametrans.cli", *args[:-1], "--resume"], env=child_env(),
                         cwd=str(package_root()), capture_output=True, text=True)
    resumed_seconds = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"the resumed run failed: {res.stderr.strip().splitlines()[-1:]}")
    processed = int(res.stderr.split(" written, ")[1].split(" frames")[0])
    same = _same(out, work / "segmented.mp4")
    log(f"resumed in {resumed_seconds:.1f} s: {processed} frames processed ({frames - done} were not in "
        f"closed segments); final file equal to the uninterrupted run: {same}")
    return {"killed_at_frame": target, "killed_with_frames_done": done, "killed_seconds": killed_seconds,
            "resumed_frames": processed, "resumed_seconds": resumed_seconds,
            "equal_to_uninterrupted": same}


def _same(a: Path, b: Path) -> bool:
    """Same frame count, pts, audio packets and decoded frames."""
    def read(p: Path):
        with av.open(str(p)) as c:
            frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        with av.open(str(p)) as c:
            audio = [bytes(k) for k in c.demux(audio=0) if k.size]
        return frames, audio
    (fa, aa), (fb, ab) = read(a), read(b)
    return (len(fa) == len(fb) and aa == ab and all(x[0] == y[0] and np.array_equal(x[1], y[1])
                                                   for x, y in zip(fa, fb)))


def format_resume(result: Dict[str, Any]) -> str:
    """The result as a few lines of text."""
    r = result
    return (f"segmented writer: {r['seconds_segmented']:.2f} s vs one piece {r['seconds_one_piece']:.2f} s "
            f"({r['frames']} frames): {r['segmented_over_one_piece']:.3f}x\n"
            f"killed at frame {r['killed_at_frame']}: {r['killed_with_frames_done']} frames in closed "
            f"segments; resumed run processed {r['resumed_frames']} frames in {r['resumed_seconds']:.1f} s; "
            f"final file equal to the uninterrupted run: {r['equal_to_uninterrupted']}")
