"""``frametrans apply`` on a Ray cluster: the same outputs as a local run, computed by many workers.

    from frametrans.scale import ray_apply
    report = ray_apply(["videos/", "photos/"], "out/", "cyclegan", address="auto")

How the work is cut and put back together:

- The driver plans the jobs exactly as a local run does (:func:`frametrans.apply.plan_jobs`: same
  output names and layout, same refusal to overwrite) and cuts them into work units: groups of
  images with the same output folder, whole videos, and, for videos longer than two segments,
  keyframe-aligned segments (:mod:`frametrans.io.segments`).
- A pool of Ray actors, one per GPU (or per ``cpus_per_worker`` CPUs when there is no GPU), each
  loads the model once and runs units one at a time. Images and whole videos go through
  :func:`frametrans.apply.apply_paths` itself, so they come out exactly as locally. A segment is
  decoded from its keyframe, run through the model and encoded with the frames' own timestamps
  into a part file; when every part of a video is there, one more unit joins them by stream copy
  and copies the audio/subtitle packets from the source (nothing is re-encoded twice).
- Fault tolerance is Ray's: actors restart when their process dies (``max_restarts=-1``) and the
  unit that was running is retried on the new process (``max_task_retries``). Every file is
  written under a temporary name and renamed when complete, so a retried unit replaces nothing
  half-done and each output appears exactly once. A unit that kills its worker on every try fails
  alone, as a bad file does locally.
- Inputs, outputs and the model file must be on a file system every node sees under the same
  paths (NFS, a shared volume); frametrans must be installed on every node.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import av

from frametrans.apply import (
    Job,
    OutputOptions,
    Report,
    Translator,
    apply_paths,
    check_outputs,
    plan_jobs,
    variant_path,
)
from frametrans.apply.images import to_write
from frametrans.apply.manifest import (Manifest, Part, clean_folder, differences, input_identity,
                                      keep_or_remove, part_name, work_folder)
from frametrans.atomic import remove_temporaries
from frametrans.engine.pipeline import StageTime
from frametrans.engine.runner import RunnerOptions
from frametrans.io.errors import InputError, TruncatedInputError, first_line, is_fatal_write_error
from frametrans.io.folders import output_path_for
from frametrans.io.segments import (
    Segment,
    can_split_output,
    iter_segment_frames,
    join_segments,
    part_suffix,
    plan_segments,
)

__all__ = ["INSTALL_HINT", "FrameWorker", "WorkUnit", "ray_apply", "parts_folder"]

log = logging.getLogger("frametrans")

INSTALL_HINT = "--ray needs Ray, which is not installed: pip install 'frametrans[ray]'"
_IMAGES_PER_UNIT = 32


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return ray


# ------------------------------------------------------------------------------- units of work


@dataclass(frozen=True)
class WorkUnit:
    """One call of a worker.

    kind: ``"files"`` (images, or one whole video, through ``apply_paths``: ``dst`` is the output
    file, or the output folder ending in a separator for a group of images), ``"segment"`` (one
    keyframe-aligned range of the video ``srcs[0]`` into part files) or ``"join"`` (the parts of
    ``dst`` into ``dst``). ``frames`` is an estimate, for progress and ordering.
    """

    kind: str
    srcs: Tuple[str, ...]
    dst: str
    segment: Optional[Segment] = None
    parts: Tuple[Tuple[str, ...], ...] = ()  # join: part files per output variant, in order
    expected_frames: int = 0  # join: frames the parts hold
    frames: int = 1
    outputs: Tuple[str, ...] = ()  # files: the final paths it writes (all variants)
    suffixes: Tuple[str, ...] = ()  # files: only these variants (--skip-existing kept the others); () all
    resume: bool = False  # files: a video continued from its NAME.partial/ folder (--resume)
    done: Optional[Tuple[int, int, int]] = None  # segment: (frames, first pts, last pts) of an earlier run


@dataclass
class Outcome:
    """What a unit did (plain data, sent back to the driver)."""

    written: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    frames: int = 0
    parts: List[Optional[str]] = field(default_factory=list)  # segment: one per variant
    stopped: Optional[str] = None  # a write error that will repeat (full disk): stop the job
    not_done: List[str] = field(default_factory=list)
    pts: Optional[Tuple[int, int]] = None  # segment: first and last pts encoded
    settings: Optional[Dict[str, Any]] = None  # segment: what decided its pixels (the manifest's)
    stages: Dict[str, StageTime] = field(default_factory=dict)  # time by stage (Report.stages)


def parts_folder(dst: Path) -> Path:
    """The folder next to ``dst`` holding its encoded segments while a job runs: the same
    ``NAME.partial/`` as a local job's, with the same manifest (see :mod:`frametrans.apply.manifest`)."""
    return work_folder(dst)


def _part_path(dst: Path, suffix: str, index: int) -> Path:
    return parts_folder(dst) / part_name(variant_path(dst, suffix), index, part_suffix(dst))


# -------------------------------------------------------------------------------------- worker


class FrameWorker:
    """A model replica: loads the model once, then runs :class:`WorkUnit` s (a Ray actor).

    ``crash_marker`` is a test hook: the first call anywhere that finds no file at that path
    creates it and kills its own process mid-unit, as a lost node or the OOM killer would.
    """

    def __init__(self, model: str, runner_options: RunnerOptions, translator_kwargs: Dict[str, Any],
                 output_options: OutputOptions, threads: int = 1, progress: bool = False,
                 crash_marker: Optional[str] = None) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        logging.getLogger("frametrans").setLevel(logging.WARNING)
        self.translator = Translator.load(model, runner_options, **translator_kwargs)
        # the driver already refused or skipped existing outputs; a retried unit must overwrite
        self.opts = dataclasses.replace(output_options, overwrite=True, skip_existing=False,
                                        quiet=True)
        self.progress = progress
        self.crash_marker = crash_marker

    def ready(self) -> str:
        import socket

        return f"{socket.gethostname()} pid {os.getpid()} {self.translator.variants[0].runner.device}"

    def run(self, unit: WorkUnit) -> Outcome:
        if unit.kind == "files":
            return self._files(unit)
        if unit.kind == "segment":
            return self._segment(unit)
        if unit.kind == "join":
            return self._join(unit)
        raise ValueError(f"unknown work unit kind {unit.kind!r}")

    def _maybe_crash(self) -> None:
        if not self.crash_marker:
            return
        try:
            fd = os.open(self.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)

    def _files(self, unit: WorkUnit) -> Outcome:
        self._maybe_crash()
        _remove_temporaries(unit.outputs)
        # --resume: the video goes on from its closed segments (a retry of the unit too); the
        # worker's own model checks the job's settings
        opts = dataclasses.replace(self.opts, overwrite=False, skip_existing=True) if unit.resume else self.opts
        translator = self.translator.subset(unit.suffixes) if unit.suffixes else self.translator
        try:
            report = apply_paths(list(unit.srcs), unit.dst, translator, opts)
        except (InputError, OSError, ValueError, RuntimeError) as exc:
            return Outcome(failed=[(s, _message(exc, s)) for s in unit.srcs],
                           stopped=_message(exc, unit.dst) if is_fatal_write_error(exc) else None)
        return Outcome([str(p) for p in report.written], list(report.failed), report.frames,
                       stopped=getattr(report, "stopped", None),
                       not_done=[str(p) for p in getattr(report, "not_done", [])], stages=report.stages)

    def _segment(self, unit: WorkUnit) -> Outcome:
        """One keyframe-aligned segment of a video into part files: the local video path's
        :func:`frametrans.apply.video.translate_into`, with the frames' own timestamps."""
        from frametrans.apply.video import FrameCount, abort_all, decoding, translate_into
        from frametrans.io.video import VideoWriter, probe_video

        src, dst, seg = unit.srcs[0], Path(unit.dst), unit.segment
        assert seg is not None
        opts = self.opts
        try:
            info = probe_video(src)
        except (InputError, OSError) as exc:
            return _failure(exc, src)
        self.translator.expect(_segment_frames(info, seg))  # lets --compile auto decide
        try:
            writers = [VideoWriter(_part_path(dst, v.suffix, seg.index), fps=info.fps,
                                   time_base=info.time_base, codec=opts.codec_for(dst), crf=opts.crf,
                                   preset=opts.preset, pix_fmt=opts.pix_fmt)
                       for v in self.translator.variants]
        except OSError as exc:
            return _failure(exc, src)
        count = FrameCount(self._bar(unit), lambda done: self._maybe_crash() if done == 1 else None)
        failed: List[Tuple[str, str]] = []
        seen: List[int] = []
        warm = self.translator.temporal(opts.temporal_settings()).warm_frames()
        frames, write_after = _segment_source(src, seg, info, warm, decoding(self.translator, opts, [dst]))
        try:
            translate_into(writers, _noting_pts(frames, seen, write_after), self.translator, opts, count,
                           write_after=write_after)
        except TruncatedInputError as exc:  # keep what decoded, report the cut (as locally)
            failed.append((src, f"{src}: {exc.reason}; the frames before it were written"))
        except (InputError, OSError, ValueError, RuntimeError, av.FFmpegError) as exc:
            abort_all(writers)
            return _failure(exc, src)
        except BaseException:
            abort_all(writers)
            raise
        finally:
            count.close()
        out = self._close_parts(writers, src, failed, count.done)
        out.stages = count.stages
        if seen and out.parts:
            from frametrans.apply.resumable import settings_of

            out.pts, out.settings = (seen[0], seen[-1]), settings_of(self.translator, opts)
        return out

    def _close_parts(self, writers: list, src: str, failed: list, done: int) -> Outcome:
        from frametrans.apply.video import abort_all

        parts: List[Optional[str]] = []
        try:
            for w in writers:
                parts.append(str(w.close()) if w.frames_written else None)
                if not w.frames_written:
                    w.abort()
        except (OSError, ValueError, av.FFmpegError) as exc:
            abort_all(writers)
            return _failure(exc, src)
        return Outcome(failed=failed, frames=done, parts=parts)

    def _join(self, unit: WorkUnit) -> Outcome:
        src, dst = unit.srcs[0], Path(unit.dst)
        _remove_temporaries([str(variant_path(dst, v.suffix)) for v in self.translator.variants])
        written = []
        try:
            for v, parts in zip(self.translator.variants, unit.parts):
                out = variant_path(dst, v.suffix)
                join_segments(parts, out, copy_streams_from=src if self.opts.audio else None,
                              expected_frames=unit.expected_frames)
                written.append(str(out))
        except (InputError, OSError, ValueError, av.FFmpegError) as exc:
            shutil.rmtree(parts_folder(dst), ignore_errors=True)
            out = _failure(exc, src)
            out.written = written
            return out
        shutil.rmtree(parts_folder(dst), ignore_errors=True)  # not reached if killed: retry joins
        return Outcome(written)

    def _bar(self, unit: WorkUnit):
        if not self.progress:
            return None
        from ray.experimental.tqdm_ray import tqdm

        seg = unit.segment
        name = Path(unit.srcs[0]).name + (f" part {seg.index}" if seg is not None else "")
        return tqdm(total=unit.frames, desc=name, unit="frame")


def _segment_source(src: str, seg: Segment, info, warm: int,
                    how: Tuple[bool, Optional[int]] = (False, None)):
    """(frames to decode, pts up to which they are not written) for a segment. With --temporal a
    segment after the first starts early (the previous segment's last 16 or more frames, run through
    the model and the temporal state, not written: ``Temporal.warm_frames``): its state is warm at
    its first frame, as in an unsplit run, and the join shows no seam. The resume path does the same.
    ``warm``: the frames to run first (:meth:`Temporal.warm_frames` of the mode as it applies to the
    model). ``how``: ``(planes, hwdec)``, from :func:`frametrans.apply.video.decoding`."""
    if seg.start is None or not warm:
        return iter_segment_frames(src, seg, *how), None
    from frametrans.apply.resumable import warm_up_from

    early = Segment(seg.index, warm_up_from(info, seg.start, warm), seg.end)
    return iter_segment_frames(src, early, *how), seg.start - 1


def _noting_pts(frames, seen: List[int], write_after: Optional[int] = None):
    """``frames`` unchanged, the pts of those that are written (after ``write_after``) appended to
    ``seen``."""
    for f in frames:
        if f.pts is not None and (write_after is None or f.pts > write_after):
            seen.append(int(f.pts))
        yield f


def _segment_frames(info, seg: Segment) -> Optional[int]:
    """About how many frames ``seg`` of the video ``info`` (a VideoInfo) holds; None if unknown."""
    if not info.fps or not info.duration:
        return None
    tb = float(info.time_base) if info.time_base else 0.0
    start = seg.start * tb if seg.start is not None and tb else 0.0
    end = seg.end * tb if seg.end is not None and tb else float(info.duration)
    return max(1, round((end - start) * float(info.fps)))


def _remove_temporaries(outputs: Sequence[str]) -> None:
    """Delete what an earlier try of this unit left when its process was killed mid-write: the
    writers' hidden temporary files beside each output. Nobody else writes these outputs."""
    for out in outputs:
        remove_temporaries(out)


def _failure(exc: BaseException, src: str) -> Outcome:
    """A failed unit; a full disk or read-only file system also stops the job."""
    msg = _message(exc, src)
    return Outcome(failed=[(src, msg)], stopped=msg if is_fatal_write_error(exc) else None)


def _message(exc: BaseException, src: str) -> str:
    text = first_line(exc)
    return text if src in text else f"{src}: {text}"


# -------------------------------------------------------------------------------------- driver


def ray_apply(inputs: Sequence[str], output: str, model: str,
              runner_options: Optional[RunnerOptions] = None,
              output_options: Optional[OutputOptions] = None, address: Optional[str] = None, *,
              yaml_config: Optional[str] = None, direction: str = "a2b",
              style_image: Optional[str] = None, num_styles: int = 1, seed: int = 0,
              num_workers: Optional[int] = None, cpus_per_worker: int = 1,
              segment_seconds: Optional[float] = 60.0, max_retries: int = 3,
              _crash_marker: Optional[str] = None) -> Report:
    """Run ``inputs`` through ``model`` on Ray workers; the outputs are a local run's
    (:func:`frametrans.apply.apply_paths`): same names, layout, frame counts and timestamps.

    model:           bundled name or checkpoint path (every node must see the path).
    address:         Ray cluster to join (``"auto"``, ``"ray://head:10001"``, ``"local"`` for a new
                     local one); None joins the one ``RAY_ADDRESS`` names or this machine runs,
                     else starts one. A Ray already initialised in this process is used as is.
    num_workers:     model replicas; default one per GPU of the cluster when the device is auto
                     or cuda and the cluster has GPUs, else one per ``cpus_per_worker`` CPUs.
    segment_seconds: videos longer than twice this are split at keyframes into segments of about
                     this length (None: never split).
    max_retries:     how many times a unit is retried after its worker process died.

    Returns a :class:`frametrans.apply.Report`; inputs that fail are listed in it, as locally.
    Raises ``ImportError`` (one line: how to install) without Ray, ``ValueError`` for bad inputs,
    outputs or options, before any work starts.
    """
    ray = _import_ray()
    runner_options = runner_options or RunnerOptions()
    runner_options.validate()
    opts = output_options or OutputOptions()
    opts.validate()
    if cpus_per_worker < 1:
        raise ValueError(f"cpus_per_worker must be >= 1, got {cpus_per_worker}")
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    translator_kwargs = dict(yaml_config=yaml_config, direction=direction, style_image=style_image,
                             num_styles=num_styles, seed=seed)

    # plan and check as a local run does, before Ray starts: same names, same refusals
    problems: List[Tuple[str, str]] = []
    jobs = plan_jobs(inputs, output, opts, problems)
    local = Translator.load(model, RunnerOptions(device="cpu", precision="fp32"), **translator_kwargs)
    check_outputs(jobs, local, opts, check_settings=False)  # the workers compare the settings
    suffixes = [v.suffix for v in local.variants]
    report = Report()
    for src, msg in problems:
        report.fail(src, msg)
    todo, partial = _to_do(jobs, local, opts, report)
    del local
    units = plan_units(todo, opts, segment_seconds, suffixes, partial)
    if not units:
        return report

    started = _connect(ray, address, opts.quiet)
    actors: List[Any] = []
    try:
        use_gpu, count = _pool_size(ray, runner_options, num_workers, cpus_per_worker)
        count = min(count, len(units))
        worker_options = runner_options
        if use_gpu and runner_options.device.startswith("cuda"):
            worker_options = dataclasses.replace(runner_options, device="cuda")  # Ray picks the GPU
        progress = not opts.quiet and sys.stderr.isatty()
        remote = ray.remote(FrameWorker).options(
            num_cpus=cpus_per_worker, num_gpus=1 if use_gpu else 0,
            max_restarts=-1, max_task_retries=max_retries)
        actors = [remote.remote(model, worker_options, translator_kwargs, opts, cpus_per_worker,
                                progress, _crash_marker) for _ in range(count)]
        try:
            where = ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as exc:
            raise RuntimeError(f"the Ray workers could not load the model: {_ray_message(exc)}") from None
        log.info("Ray: %d model replicas: %s", len(where), "; ".join(where))
        _Scheduler(ray, actors, report, progress, max_retries, suffixes).run(units)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    order = {str(variant_path(j.dst, s)): i for i, j in enumerate(jobs) for s in suffixes}
    report.written.sort(key=lambda p: order.get(str(p), len(order)))
    return report


def _to_do(jobs: Sequence[Job], translator: Translator, opts: OutputOptions, report: Report
           ) -> Tuple[List[Job], Dict[int, Tuple[str, ...]]]:
    """The jobs to run, and (by ``id(job)``) the variants to write of those whose other outputs
    exist, as a local run decides (:func:`frametrans.apply.images.to_write`: with --skip-existing
    an existing output is reported as skipped and never rewritten)."""
    todo, partial = [], {}
    for j in jobs:
        left = to_write(j, translator, opts, report)
        if left is None:
            continue
        todo.append(j)
        if left is not translator:
            partial[id(j)] = tuple(v.suffix for v in left.variants)
    return todo, partial


def plan_units(jobs: Sequence[Job], opts: OutputOptions, segment_seconds: Optional[float],
               suffixes: Sequence[str] = ("",), partial: Optional[Dict[int, Tuple[str, ...]]] = None
               ) -> List[WorkUnit]:
    """Cut planned jobs into work units, biggest first: segments of long videos, whole videos,
    then groups of images sharing an output folder. ``suffixes``: the output variants' (MUNIT
    styles). ``partial``: by ``id(job)``, the only variants to write of a job (--skip-existing kept the
    others): such a video is not split, such images share units with those that need the same."""
    def outputs(group: Sequence[Job], only: Tuple[str, ...]) -> Tuple[str, ...]:
        return tuple(str(variant_path(j.dst, s)) for j in group for s in only or suffixes)

    units: List[WorkUnit] = []
    images: Dict[Tuple[Path, Tuple[str, ...]], List[Job]] = {}
    for j in jobs:
        only = (partial or {}).get(id(j), ())
        if j.kind == "image":
            if output_path_for(j.src, j.src.parent, j.dst.parent, opts.ext) == j.dst:
                images.setdefault((j.dst.parent, only), []).append(j)
            else:  # a single image given its own output name
                units.append(WorkUnit("files", (str(j.src),), str(j.dst), outputs=outputs([j], only), suffixes=only))
            continue
        units.extend(_video_units(j, opts, segment_seconds, suffixes, outputs([j], only), only))
    for (folder, only), group in images.items():
        size = max(1, min(_IMAGES_PER_UNIT, math.ceil(len(group) / 4)))
        for i in range(0, len(group), size):
            chunk = group[i:i + size]
            units.append(WorkUnit("files", tuple(str(j.src) for j in chunk), str(folder) + os.sep,
                                  frames=len(chunk), outputs=outputs(chunk, only), suffixes=only))
    units.sort(key=lambda u: -u.frames)  # stable: a video's segments stay in order
    return units


def _video_units(j: Job, opts: OutputOptions, segment_seconds: Optional[float], suffixes: Sequence[str],
                 outputs: Tuple[str, ...], only: Tuple[str, ...] = ()) -> List[WorkUnit]:
    """One whole-video unit, or one unit per keyframe-aligned segment, with the segments an
    interrupted Ray run finished (``--resume``: same plan, files there) marked done. A split video's
    manifest is written here, before any worker starts. ``only``: the variants to write when
    --skip-existing kept the others (then the video is not split)."""
    from frametrans.io.video import probe_video

    # without --overwrite a video's NAME.partial/ is continued: one the driver found (the user
    # asked for --resume, else check_outputs refused), or one a killed try of the unit left
    resume = not opts.overwrite and opts.segmented(j.dst)

    def whole(frames: int) -> List[WorkUnit]:
        return [WorkUnit("files", (str(j.src),), str(j.dst), frames=frames, outputs=outputs, resume=resume,
                         suffixes=only)]
    try:
        info = probe_video(j.src)
        frames = info.frames or int((info.duration or 0) * float(info.fps or 25)) or 1
        if only or not (segment_seconds and can_split_output(j.dst, opts.codec_for(j.dst))):
            return whole(frames)
        saved = Manifest.load(work_folder(j.dst)) if opts.skip_existing else None
        if saved is not None and saved.parts and saved.ray_plan is None:
            return whole(frames)  # a local job's segments: one worker goes on from them
        segments = plan_segments(j.src, segment_seconds)
    except (InputError, OSError) as exc:  # the worker reports it, as a local run would
        log.debug("%s: not split (%s)", j.src, exc)
        return whole(1)
    plan = [[s.start, s.end] for s in segments]
    if len(segments) == 1 or (saved is not None and saved.parts and saved.ray_plan != plan):
        return whole(frames)  # another cut: a local resume goes on after its first parts
    done = _done_parts(saved, j.dst, suffixes) if saved is not None else {}
    if not done:
        _new_split(j, info, segment_seconds, plan, suffixes)
    each = max(1, frames // len(segments))
    return [WorkUnit("segment", (str(j.src),), str(j.dst), segment=s, frames=each,
                     done=(d.frames, d.first_pts, d.last_pts) if (d := done.get(s.index)) else None)
            for s in segments]


def _done_parts(saved: Manifest, dst: Path, suffixes: Sequence[str]) -> Dict[int, Part]:
    """The parts of an interrupted Ray run whose files are all there; anything else in the folder
    (a part a killed worker was writing) is deleted."""
    done = {p.index: p for p in saved.parts
            if all(_part_path(dst, s, p.index).exists() for s in suffixes)}
    saved.parts = [done[i] for i in sorted(done)]
    clean_folder(work_folder(dst), [_part_path(dst, s, i) for i in done for s in suffixes])
    saved.save(work_folder(dst))
    return done


def _new_split(j: Job, info, segment_seconds: float, plan: List[List[Optional[int]]],
               suffixes: Sequence[str]) -> None:
    """A fresh NAME.partial/ with the manifest of a video split by Ray (settings filled in by the
    first segment that comes back)."""
    folder = work_folder(j.dst)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    Manifest(output=j.dst.name, segment_seconds=segment_seconds, settings={},
             input=input_identity(j.src, info), outputs=[variant_path(j.dst, s).name for s in suffixes],
             source=str(j.src.resolve()), ray_plan=plan).save(folder)


def _connect(ray, address: Optional[str], quiet: bool) -> bool:
    """Join or start Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    ray.init(address=address or None, logging_level=logging.WARNING if quiet else logging.INFO)
    return True


def _pool_size(ray, options: RunnerOptions, num_workers: Optional[int], cpus_per_worker: int
               ) -> Tuple[bool, int]:
    """(use GPUs, number of model replicas) from the cluster's resources."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    device = options.device
    if device.startswith("cuda") and gpus == 0:
        raise ValueError(f"--device {device}, but the Ray cluster has no GPUs; use --device auto or cpu")
    use_gpu = gpus > 0 and (device == "auto" or device.startswith("cuda"))
    if num_workers is not None:
        return use_gpu, num_workers
    if use_gpu:
        return True, gpus
    if cpus < cpus_per_worker:
        raise ValueError(f"the Ray cluster has {cpus} CPUs, fewer than cpus_per_worker={cpus_per_worker}")
    return False, cpus // cpus_per_worker


def _ray_message(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(exc)):
        exc = cause
    text = str(exc).strip().splitlines()
    lines = [t.strip() for t in text if t.strip() and not t.startswith(("Traceback", "  File"))]
    return lines[-1] if lines else type(exc).__name__


@dataclass
class _Video:
    """A split video while its segments run."""

    unit: WorkUnit
    total: int
    done: int = 0
    frames: int = 0
    reused: int = 0  # frames of segments an interrupted run finished (not counted as this run's)
    parts: Dict[int, List[Optional[str]]] = field(default_factory=dict)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    broken: bool = False
    finished: bool = False  # joined, or given up


class _Scheduler:
    """Hand units to idle actors, collect outcomes, join videos once all their segments are in."""

    def __init__(self, ray, actors: List[Any], report: Report, progress: bool, max_retries: int,
                 suffixes: Sequence[str] = ("",)):
        self.ray, self.report, self.max_retries = ray, report, max_retries
        self.suffixes = list(suffixes)
        self.manifests: Dict[str, Manifest] = {}  # split videos: the manifest, written by the driver only
        self.idle: List[Any] = list(actors)
        self.running: Dict[Any, Tuple[Any, WorkUnit]] = {}
        self.videos: Dict[str, _Video] = {}
        self.pending: Deque[WorkUnit] = deque()
        self.bar = None
        self.show = progress

    def run(self, units: List[WorkUnit]) -> None:
        for u in units:
            if u.kind == "segment":
                self.videos.setdefault(u.dst, _Video(u, 0)).total += 1
        self.pending.extend(u for u in units if u.done is None)
        for u in units:  # segments an interrupted run finished: in, as if just done
            if u.done is not None:
                assert u.segment is not None
                parts = [str(_part_path(Path(u.dst), s, u.segment.index)) for s in self.suffixes]
                self._collect(u, Outcome(frames=u.done[0], parts=parts))
        if self.show:
            from ray.experimental.tqdm_ray import tqdm

            self.bar = tqdm(total=sum(u.frames for u in units), desc="frametrans", unit="frame")
        try:
            while self.pending or self.running:
                while self.idle and self.pending and self.report.stopped is None:
                    actor, unit = self.idle.pop(), self.pending.popleft()
                    self.running[actor.run.remote(unit)] = (actor, unit)
                if not self.running:
                    break
                ready, _ = self.ray.wait(list(self.running), num_returns=1)
                actor, unit = self.running.pop(ready[0])
                self.idle.append(actor)
                self._collect(unit, self._outcome(ready[0], unit))
        finally:
            if self.bar is not None:
                self.bar.close()
            self._abandon()

    def _abandon(self) -> None:
        """After a stop (or an interrupt): list what was not done, remove unjoined parts."""
        not_done = self.report.not_done
        for u in self.pending:
            for s in u.srcs:
                if Path(s) not in not_done:
                    not_done.append(Path(s))
        self.pending.clear()
        for dst, v in self.videos.items():
            if not v.finished:
                self._keep_or_remove(dst)
        if self.report.stopped:
            log.error("stopped: %s; %d input(s) not processed (rerun with --skip-existing to finish)",
                      self.report.stopped, len(not_done))

    def _outcome(self, ref, unit: WorkUnit) -> Outcome:
        src = unit.srcs[0] if len(unit.srcs) == 1 else f"{unit.srcs[0]} (+{len(unit.srcs) - 1} more)"
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            msg = (f"{src}: the worker process died {self.max_retries + 1} times on this input "
                   f"(out of memory?): {_ray_message(exc)}")
        except self.ray.exceptions.RayError as exc:
            msg = f"{src}: {_ray_message(exc)}"
        log.error("%s", msg)
        return Outcome(failed=[(s, msg) for s in unit.srcs])

    def _collect(self, unit: WorkUnit, out: Outcome) -> None:
        report = self.report
        if out.stopped and report.stopped is None:
            report.stopped = out.stopped
        report.not_done.extend(Path(p) for p in out.not_done)
        report.add_stages(out.stages)
        if unit.kind == "segment":
            self._segment_done(unit, out)
            return
        report.written.extend(Path(p) for p in out.written)
        report.failed.extend(out.failed)
        if unit.kind == "join":
            v = self.videos[unit.dst]
            v.finished = True
            report.failed.extend(v.failed[:1])  # a cut-off source: joined, and still reported
            if not out.failed:
                report.frames += v.frames - v.reused
        else:
            report.frames += out.frames
            self._advance(out.frames if not out.failed else unit.frames)

    def _keep_or_remove(self, dst: str) -> None:
        """An unfinished split video: its folder stays for --resume when a segment was recorded."""
        folder = parts_folder(Path(dst))
        keep_or_remove(folder, self.manifests.get(dst) or Manifest.load(folder))

    def _record(self, unit: WorkUnit, out: Outcome) -> Optional[str]:
        """A segment a worker just finished -> the manifest (saved atomically). Returns why the
        video cannot go on (settings other than those of its earlier segments), else None."""
        assert unit.segment is not None
        if unit.done is not None or out.pts is None:
            return None
        folder = parts_folder(Path(unit.dst))
        m = self.manifests.get(unit.dst) or Manifest.load(folder)
        if m is None:
            return None
        self.manifests[unit.dst] = m
        if not m.settings:
            m.settings = out.settings or {}
        elif out.settings is not None and (changed := differences(m.settings, out.settings)):
            return (f"{unit.srcs[0]}: {folder} was started with other settings: {', '.join(changed)}; "
                    "rerun with those, or pass --overwrite to start over")
        m.parts = sorted([*m.parts, Part(unit.segment.index, out.pts[0], out.pts[1], out.frames)],
                         key=lambda q: q.index)
        m.save(folder)
        return None

    def _segment_done(self, unit: WorkUnit, out: Outcome) -> None:
        v = self.videos[unit.dst]
        assert unit.segment is not None
        why = self._record(unit, out) if out.parts and not v.broken else None
        if why is not None:
            out = Outcome(failed=[(unit.srcs[0], why)], frames=out.frames)
        v.done += 1
        v.frames += out.frames
        v.reused += out.frames if unit.done is not None else 0
        v.failed.extend(out.failed)
        self._advance(out.frames or unit.frames)
        if out.parts:
            v.parts[unit.segment.index] = out.parts
        else:  # nothing encoded: the video fails, as a local run of it would
            v.broken = True
        if v.done < v.total:
            return
        if v.broken:
            v.finished = True
            self._keep_or_remove(unit.dst)
            self.report.failed.extend(v.failed[:1])
            return
        per_variant = list(zip(*(v.parts[i] for i in sorted(v.parts))))
        parts = tuple(tuple(p for p in ps if p is not None) for ps in per_variant)
        self.pending.appendleft(WorkUnit("join", unit.srcs, unit.dst, parts=parts,
                                         expected_frames=v.frames))

    def _advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)
