"""``frametrans bench temporal``: what each ``--temporal`` mode costs and what it buys, per model.

The clip is decoded once; then, for each model, every mode runs the whole stream path of
``frametrans apply`` except the codecs (:func:`frametrans.apply.temporal.translate_stream`: the
model through the runner with the CLI's backend and precision choices, then the flow blend), in
interleaved rounds after one untimed warm-up round (graph conversion, caches); each pass is one job
of the clip's length, as ``apply`` sees it (``--compile auto`` and ``--backend auto`` decide from
that). Reported per mode:
ms/frame (median of the rounds), the ratio to ``off`` measured in the same rounds, the warping
error of the output (:mod:`frametrans.consistency`), its change against ``off``, and the PSNR
between the output and ``off``'s (uint8 frames, no codec in between). The input's own warping
error is the floor. ``blink`` paints a light blinking in a corner on the clip: whole-frame pulsing
that per-frame normalization statistics cause, which ``stats`` targets.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from frametrans.bench.common import Log, cpu_name, median, to_stderr

MODES = ("off", "stats", "flow", "auto")


@dataclass
class TemporalBench:
    """Settings of :func:`bench_temporal`. clip: a video; frames: its first N frames (None: all);
    models: bundled names or checkpoint paths; modes: ``--temporal`` values; repeat: timed rounds;
    backend / precision / device: as ``frametrans apply``'s options; seed: MUNIT's style; size:
    (width, height) the frames are resized to after decoding (None: the clip's own), e.g. 1080p to
    see whether the host's flow keeps up with a GPU model; flow: where the flow of flow/auto runs
    (``--temporal-flow``: auto, dis, torch)."""

    clip: str = "examples/data/clip.mp4"
    frames: Optional[int] = None
    models: Tuple[str, ...] = ("cyclegan", "munit")
    modes: Tuple[str, ...] = MODES
    repeat: int = 3
    backend: str = "auto"
    precision: str = "auto"
    device: str = "cpu"
    batch: Optional[int] = None
    seed: int = 0
    blink: bool = False
    size: Optional[Tuple[int, int]] = None
    flow: str = "auto"


#: ``blink``: a BLINK x BLINK light in the top-left corner, on for BLINK_FRAMES frames, off for as many.
BLINK = 64
BLINK_FRAMES = 4


def _decode(opts: TemporalBench) -> List[np.ndarray]:
    from frametrans.io.video import iter_video_frames

    frames = []
    for frame in iter_video_frames(opts.clip):
        frames.append(frame.image)
        if opts.frames is not None and len(frames) >= opts.frames:
            break
    if len(frames) < 2:
        raise ValueError(f"{opts.clip}: needs at least 2 frames, has {len(frames)}")
    if opts.size is not None:
        import cv2

        frames = [cv2.resize(f, opts.size, interpolation=cv2.INTER_CUBIC) for f in frames]
    return [_blinked(f, t) for t, f in enumerate(frames)] if opts.blink else frames


def _blinked(frame: np.ndarray, t: int) -> np.ndarray:
    """``frame`` with the corner light on when ``t`` is in an on-phase: something in the picture that
    moves every frame's statistics (per-frame normalization pulses with it)."""
    if (t // BLINK_FRAMES) % 2 == 0:
        return frame
    out = frame.copy()
    out[:BLINK, :BLINK] = 255
    return out


def _translator(name: str, opts: TemporalBench) -> Any:
    from frametrans.apply import Translator
    from frametrans.engine.runner import RunnerOptions

    runner = RunnerOptions(device=opts.device, precision=opts.precision, backend=opts.backend,
                           batch_size=opts.batch)
    return Translator.load(name, runner, seed=opts.seed)  # MUNIT: one style drawn from the seed


def _run_mode(translator: Any, frames: List[np.ndarray], mode: str, flow: str = "auto"
              ) -> Tuple[float, List[np.ndarray]]:
    """(seconds, outputs) of one pass of the stream path with ``--temporal mode`` (``flow``: its
    ``--temporal-flow`` when it blends along the flow)."""
    from frametrans.apply.temporal import translate_stream
    from frametrans.io.frame import Frame
    from frametrans.stabilize import resolve_temporal

    temporal = resolve_temporal(mode, None, flow if mode in ("flow", "auto") else "auto")
    translator.expect(len(frames))  # one clip, as `frametrans apply` tells the runners
    t0 = time.perf_counter()
    outs = [o[0][1] for _, o in translate_stream((Frame(f, index=i) for i, f in enumerate(frames)),
                                                  translator, temporal)]
    return time.perf_counter() - t0, outs


def bench_model(name: str, frames: List[np.ndarray], motions: List[Any], opts: TemporalBench,
                log: Log = to_stderr) -> List[Dict[str, Any]]:
    """The rows of one model: one per mode, plus the input's floor. ``motions``: the metric's
    :func:`~frametrans.consistency.pair_motion` of each pair of ``frames``."""
    from frametrans.consistency import temporal_consistency
    from frametrans.stabilize import resolve_temporal

    translator = _translator(name, opts)
    for mode in opts.modes:  # warm-up: conversions, caches, allocator
        _run_mode(translator, frames, mode, opts.flow)
    seconds: Dict[str, List[float]] = {m: [] for m in opts.modes}
    outputs: Dict[str, List[np.ndarray]] = {}
    for r in range(opts.repeat):
        for mode in opts.modes:
            s, outputs[mode] = _run_mode(translator, frames, mode, opts.flow)
            seconds[mode].append(s)
        log(f"bench temporal: {name} round {r + 1}/{opts.repeat}: " +
            ", ".join(f"{m} {seconds[m][-1] / len(frames) * 1e3:.0f} ms/frame" for m in opts.modes))
    estimator = translator.temporal(resolve_temporal("flow", None, opts.flow)).estimator  # auto made concrete
    rows = []
    base = outputs["off"]
    reports = {m: temporal_consistency(frames, outputs[m], base if m != "off" else None, motions)
               for m in opts.modes}
    off_error = reports["off"].output
    for mode in opts.modes:
        report = reports[mode]
        per_frame = median(seconds[mode]) / len(frames)
        ratios = [s / o for s, o in zip(seconds[mode], seconds["off"])]
        rows.append({"model": name, "mode": mode, "flow": estimator if mode in ("flow", "auto") else None,
                     "ms_per_frame": per_frame * 1e3,
                     "vs_off_time": median(ratios),
                     "warping_error": report.output, "input_warping_error": report.input,
                     "vs_off_error": (report.output / off_error - 1) if off_error else None,
                     "psnr_to_off": report.psnr_between})
    return rows


def bench_temporal(opts: TemporalBench, log: Log = to_stderr) -> Dict[str, Any]:
    """Every model x mode (see the module docstring): ``{"rows": [...], "machine", "settings"}``."""
    import torch

    for mode in opts.modes:
        if mode not in MODES:
            raise ValueError(f"unknown --temporal mode {mode!r}; use {', '.join(MODES)}")
    if "off" not in opts.modes:
        raise ValueError("the modes must include off (the reference of the ratios and the PSNR)")
    from frametrans.engine.device import resolve_device

    resolve_device(opts.device)  # an unavailable device fails now, not after the clip's flows
    frames = _decode(opts)
    h, w = frames[0].shape[:2]
    log(f"bench temporal: {opts.clip}, {len(frames)} frames of {w}x{h}; {torch.get_num_threads()} threads")
    from frametrans.consistency import pair_motion

    motions = [pair_motion(a, b) for a, b in zip(frames, frames[1:])]  # the input's, once for every model
    rows = [row for name in opts.models for row in bench_model(name, frames, motions, opts, log)]
    return {"rows": rows, "machine": cpu_name(), "frames": len(frames), "size": f"{w}x{h}",
            "settings": asdict(opts)}


def format_table(result: Dict[str, Any]) -> str:
    """The rows as a Markdown table, the input's floor first."""
    blink = ", a light blinking in a corner" if result["settings"].get("blink") else ""
    lines = [f"{result['frames']} frames of {result['size']}{blink} ({result['machine']}); "
             "time: median of the rounds, ratio to off measured in the same rounds", "",
             "| model | --temporal | ms/frame | vs off | warping error | vs off | PSNR to off |",
             "|---|---|---|---|---|---|---|"]
    floor = result["rows"][0]["input_warping_error"] if result["rows"] else float("nan")
    lines.append(f"| input (the floor) | | | | {floor:.5f} | | |")
    for r in result["rows"]:
        vs_time = f"{r['vs_off_time']:.2f}x" if r["mode"] != "off" else ""
        vs_err = f"{r['vs_off_error'] * 100:+.0f}%" if r["vs_off_error"] is not None and r["mode"] != "off" else ""
        psnr = f"{r['psnr_to_off']:.1f} dB" if r["psnr_to_off"] is not None else ""
        mode = f"{r['mode']} ({r['flow']})" if r.get("flow") else r["mode"]
        lines.append(f"| {r['model']} | {mode} | {r['ms_per_frame']:.0f} | {vs_time} | "
                     f"{r['warping_error']:.5f} | {vs_err} | {psnr} |")
    return "\n".join(lines)
