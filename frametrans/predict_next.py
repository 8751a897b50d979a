"""Predict the next frames of a clip: the library behind ``frametrans predict-next``.

    from frametrans.predict_next import PredictOptions, predict_next
    report = predict_next("clip.mp4", "next.mp4", PredictOptions(model="predictor.safetensors"))

The clip (a video, or a folder of frames in natural order) is read once, keeping only the frames
the prediction needs in memory: the last ``context`` frames by default, or the window at
``start`` and the frames after it. Predictions are written as a video or a folder of PNGs;
``side_by_side`` writes ``context | prediction | ground truth`` panels; ``evaluate`` scores the
prediction against the real following frames.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np

from frametrans.io.clips import iter_clip
from frametrans.io.frame import Frame

log = logging.getLogger("frametrans")

__all__ = ["PredictOptions", "PredictReport", "predict_next", "side_by_side", "output_kind"]


@dataclass
class PredictOptions:
    """What :func:`predict_next` does. None means: from the model's contract / the clip.

    context: frames read (must equal the model's). horizon: frames kept per model pass (<= the
    model's). steps: frames predicted (default ``horizon``; more rolls out autoregressively).
    start: first context frame (default: the last ``context`` frames; with ``evaluate``, the last
    ``context + steps`` frames so that the real continuation is known).
    """

    model: str = "predictor"
    context: Optional[int] = None
    horizon: Optional[int] = None
    steps: Optional[int] = None
    start: Optional[int] = None
    side_by_side: bool = False
    evaluate: bool = False
    device: str = "auto"
    precision: str = "auto"
    max_memory: Optional[int] = None  # bytes, as apply's --max-memory
    tile: Optional[int] = None
    tile_overlap: Optional[int] = None
    tile_stats: str = "exact"
    overwrite: bool = False
    quiet: bool = False
    fps: Optional[float] = None  # output video rate when the input has none (folders): 25


    def runner_options(self):
        """The runner's options: device, precision and the memory budget (compiled forwards only
        when one is cached: a prediction is a single forward)."""
        from frametrans.engine.runner import RunnerOptions

        return RunnerOptions(device=self.device, precision=self.precision, max_memory=self.max_memory,
                             tile=self.tile, tile_overlap=self.tile_overlap, tile_stats=self.tile_stats)


@dataclass
class PredictReport:
    """What was done: the context window, the frames written and, with ``evaluate``, the scores."""

    output: Path
    start: int
    context: int
    steps: int
    frames_written: int
    size: tuple  # (height, width) of each written image
    truth_frames: int
    metrics: Optional[Dict[str, Any]] = None
    clip_frames: Optional[int] = None  # frames read from the input (all of it unless --start)


def output_kind(path: Path) -> str:
    """"video" for a writable video extension, "folder" for a path without extension or an
    existing folder; ValueError otherwise."""
    from frametrans.io.video import WRITABLE_VIDEO_EXTENSIONS

    if path.is_dir():
        return "folder"
    ext = path.suffix.lower()
    if ext in WRITABLE_VIDEO_EXTENSIONS:
        return "video"
    if ext == "":
        return "folder"
    raise ValueError(
        f"{path}: output must be a video ({', '.join(sorted(WRITABLE_VIDEO_EXTENSIONS))}) or a "
        "folder for PNG frames (a path without extension)"
    )


def check_output(path: Path, overwrite: bool) -> str:
    """The output kind; ValueError if it exists and ``overwrite`` is off."""
    kind = output_kind(path)
    if not overwrite:
        if path.is_file():
            raise ValueError(f"{path} exists; pass --overwrite to replace it")
        if path.is_dir() and any(path.iterdir()):
            raise ValueError(f"{path} is a folder that is not empty; pass --overwrite to write into it")
    if kind == "video" and path.is_dir():
        raise ValueError(f"{path} is a folder, not a video file")
    return kind


# ---------------------------------------------------------------------------------------------
# reading


@dataclass
class _Clip:
    frames: List[Frame]  # the context window, then the known frames after it
    start: int  # clip index of frames[0]
    total: Optional[int]  # frames in the clip (None when reading stopped early)


def _input_fps(path: Path) -> Optional[Fraction]:
    from frametrans.io import video

    if path.is_file() and video.is_video(path):
        try:
            return video.probe_video(path).fps
        except Exception:  # timing is a nicety; reading reports real problems
            return None
    return None


def _read_clip(path: Path, start: Optional[int], keep_last: int, want_after: int,
               progress: Callable[[Iterator[Frame]], Iterator[Frame]]) -> _Clip:
    """With ``start``: frames [start, start + want_after) (fewer if the clip ends first). Without:
    the last ``keep_last`` frames. Only those are kept in memory; reading stops when it can."""
    source = iter_clip(path)
    count = 0
    try:
        if start is not None:
            kept: List[Frame] = []
            for frame in progress(source):
                if count >= start:
                    kept.append(frame)
                count += 1
                if count >= start + want_after:
                    return _Clip(kept, start, None)  # stopped early: the total is unknown
            return _Clip(kept, start, count)
        tail: collections.deque = collections.deque(maxlen=keep_last)
        for frame in progress(source):
            tail.append(frame)
            count += 1
        return _Clip(list(tail), count - len(tail), count)
    finally:
        source.close()


# ---------------------------------------------------------------------------------------------
# the command's work


def predict_next(input_path: str | Path, output: str | Path, opts: PredictOptions,
                 progress: Optional[Callable[[Iterator[Frame]], Iterator[Frame]]] = None
                 ) -> PredictReport:
    """Predict frames after a window of ``input_path`` and write them to ``output``.

    progress: wraps the frame iterator of the input (e.g. a tqdm bar); default none.
    Raises ValueError / InputError / CheckpointError with one-line messages for user mistakes
    (missing input, too few frames, --eval without the real frames, existing output, ...).
    """
    import torch

    from frametrans.checkpoint import load_model
    from frametrans.engine.temporal import check_window, predict_clip, to_model_channels

    src, dst = Path(input_path), Path(output)
    kind = check_output(dst, opts.overwrite)
    model = load_model(opts.model)
    cfg = model.config
    if model.config.contract().frames_in == 1 or not hasattr(cfg, "horizon"):
        raise ValueError(
            f"--model {opts.model}: {type(model).arch_name} is an image-to-image model, not a "
            "next-frame predictor; use `frametrans apply`"
        )
    context, horizon, steps = check_window(cfg, opts.context, opts.horizon, opts.steps)
    if opts.start is not None and opts.start < 0:
        raise ValueError(f"--start {opts.start}: must be >= 0")

    keep = context + steps if opts.evaluate and opts.start is None else context
    clip = _read_clip(src, opts.start, keep, context + steps, progress or (lambda it: it))
    n_known = len(clip.frames)
    if opts.start is None:
        total = clip.total or 0
        if total < keep:
            need = f"{context} context frames" + (f" + {steps} frames to compare with (--eval)"
                                                  if opts.evaluate else "")
            raise ValueError(f"{src}: has {total} frames; the model needs {need}")
        start = clip.start
    else:
        start = opts.start
        if n_known < context:
            have = clip.total if clip.total is not None else start + n_known
            raise ValueError(
                f"{src}: --start {start} needs frames {start}..{start + context - 1} for the "
                f"context, but the clip has {have} frames"
            )
    ctx_frames = clip.frames[:context]
    future = clip.frames[context : context + steps]
    if opts.evaluate and len(future) < steps:
        first = start + context
        raise ValueError(
            f"--eval needs the real frames {first}..{first + steps - 1} after the context, but "
            f"{src} ends at frame {start + n_known - 1}; use an earlier --start or fewer --steps"
        )
    images = [f.image for f in ctx_frames]
    if not opts.quiet:
        log.info("predicting %d frame(s) after frames %d..%d of %s", steps, start,
                 start + context - 1, src)
    preds = predict_clip(model, images, 0, context, horizon, steps, options=opts.runner_options())
    truth = to_model_channels([f.image for f in future], cfg.channels) if future else []

    metrics = None
    if opts.evaluate:
        from frametrans.metrics import openstl_metrics

        to_t = lambda ims: torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2)[None].double() / 255  # noqa: E731
        metrics = openstl_metrics(to_t(preds), to_t(truth))
        h, w = preds[0].shape[:2]
        metrics["mse_per_pixel"] = metrics["mse"] / (h * w * cfg.channels)
        metrics["mae_per_pixel"] = metrics["mae"] / (h * w * cfg.channels)

    if opts.side_by_side:
        last = to_model_channels([images[-1]], cfg.channels)[0]
        out_images = [side_by_side(last, p, truth[k] if k < len(truth) else None,
                                   with_truth=bool(truth)) for k, p in enumerate(preds)]
    else:
        out_images = preds
    fps = _input_fps(src)
    _write(dst, kind, out_images, first_index=start + context, fps=fps or Fraction(opts.fps or 25))
    return PredictReport(output=dst, start=start, context=context, steps=steps,
                         frames_written=len(out_images), size=tuple(out_images[0].shape[:2]),
                         truth_frames=len(truth), metrics=metrics, clip_frames=clip.total)


def side_by_side(context: np.ndarray, prediction: np.ndarray, truth: Optional[np.ndarray],
                 with_truth: bool = True) -> np.ndarray:
    """``context | prediction | truth`` side by side, [H, 3W, C] uint8 ([H, 2W, C] without
    ``with_truth``); a missing ``truth`` with ``with_truth`` is a black panel."""
    panels = [context, prediction]
    if with_truth:
        panels.append(truth if truth is not None else np.zeros_like(prediction))
    return np.concatenate(panels, axis=1)


def _write(dst: Path, kind: str, images: List[np.ndarray], first_index: int, fps: Fraction) -> None:
    from frametrans.atomic import fsync_dir
    from frametrans.io.images import write_image
    from frametrans.io.video import VideoWriter

    if kind == "video":
        with VideoWriter(dst, fps=fps) as writer:
            for im in images:
                writer.write(im)
        return
    dst.mkdir(parents=True, exist_ok=True)
    try:
        for k, im in enumerate(images):
            write_image(dst / f"{first_index + k:06d}.png", im, sync_folder=False)
    finally:
        fsync_dir(dst)  # once for the folder, not once per frame
