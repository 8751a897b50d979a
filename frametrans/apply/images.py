"""Still images (decoded and written on pools of worker threads, batched, order kept) and animated
images."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from frametrans.apply.jobs import Job, OutputOptions, variant_path
from frametrans.apply.report import Report, Stop, signals_deferred
from frametrans.apply.temporal import translate_stream
from frametrans.apply.translator import Translator, run_variants
from frametrans.atomic import FolderSync
from frametrans.engine.memory import queue_items
from frametrans.engine.pipeline import ThreadClock, StageClock, Turn, WorkerPool, default_workers, ordered_map
from frametrans.io import images
from frametrans.io.errors import InputError, OutputError, first_line, is_fatal_write_error
from frametrans.io.frame import Frame

log = logging.getLogger("frametrans")

#: What the writer pool hands back per output, in input order: ("written", job, path),
#: ("failed", job, message) or ("not done", job, None).
Outcome = Tuple[str, Job, object]


class _Discarded(Exception):
    """An output not committed because an earlier one stopped the job (full disk)."""


def apply_images(jobs: List[Job], translator: Translator, opts: OutputOptions, report: Report,
                 progress, stop: Stop, io_threads: Optional[int] = None) -> None:
    """Decode on a pool of ``io_threads`` threads (None: one per core), batch same-size images
    in input order, encode and write on another pool of as many threads.

    Per-file failures (read, model, write) are reported in input order and the others go on. A
    write error that will repeat for every file (full or read-only disk) stops the job: the
    outputs before it in input order are finished, the ones after it are not committed (listed in
    ``report.not_done`` with the inputs not read yet), whatever the number of threads.

    With --skip-existing the jobs whose outputs all exist are counted as done, and the others run
    in groups by the outputs they still need (MUNIT styles: only those styles run), one group after
    the other: the order and the full-disk rule above then hold within each group.
    """
    if opts.temporal != "off":
        log.warning("--temporal %s: still images have no frame order; they are translated one by "
                    "one (videos, animations and streams are stabilized)", opts.temporal)
    for group, todo in _to_do(jobs, translator, opts, report, progress):
        if stop:
            report.not_done.extend(j.src for j in todo)
        else:
            _run_images(todo, group, opts, report, progress, stop, io_threads)


def _run_images(todo: List[Job], translator: Translator, opts: OutputOptions, report: Report,
                progress, stop: Stop, io_threads: Optional[int]) -> None:
    """:func:`apply_images` for jobs that need every output of ``translator``."""
    translator.expect(len(todo))
    workers = io_threads or default_workers()
    queue = translator.queue_bytes()
    depth = min(2 * workers, queue_items())  # what the memory plan counts, also with --io-threads > cores
    jobs_by_frame: Dict[int, Job] = {}
    started: set = set()
    clocks = {"decode": StageClock(), "encode": StageClock()}

    def frames() -> Iterator[Frame]:
        decoded = ordered_map(clocks["decode"].timed(_reader(opts)), todo, workers, depth=depth, name="decode",
                              max_bytes=queue, size=_item_bytes)
        with contextlib.closing(decoded):
            for j, frame, err in decoded:
                if stop:
                    return
                started.add(id(j))
                if err is not None:
                    report.fail(j.src, err)
                    continue
                jobs_by_frame[id(frame)] = j
                yield frame

    def model_failed(frame: Frame, exc: BaseException) -> None:
        job = jobs_by_frame.pop(id(frame))
        report.fail(job.src, first_line(exc))

    folders = FolderSync()  # each output folder is fsynced once, when the writers are done
    writer = WorkerPool(clocks["encode"].timed(_writer(stop, folders)), workers, depth=depth, name="encode",
                        max_bytes=queue, size=lambda item: item[3].nbytes, done=_recorder(report))
    main = ThreadClock()
    try:
        for frame, outs in run_variants(frames(), translator, model_failed):
            job = jobs_by_frame.pop(id(frame))
            for suffix, out in outs:
                writer.submit((job, suffix, frame, out))
            report.frames += 1
            main.items += 1
            if progress is not None:
                progress.update(1)
    finally:
        main_time = main.stop()  # from the first frame to the last handed to the writers
        with signals_deferred():  # a second Ctrl-C must not kill the writers mid-file
            try:
                writer.close()  # finishes every image handed to it (also on Ctrl-C): no partial files
            finally:
                folders.sync()
                report.add_stages({"decode": clocks["decode"].snapshot(), "main": main_time,
                                   "encode": clocks["encode"].snapshot()})
    if stop:
        report.not_done.extend(j.src for j in todo if id(j) not in started)


def _to_do(jobs: List[Job], translator: Translator, opts: OutputOptions, report: Report, progress
           ) -> List[Tuple[Translator, List[Job]]]:
    """The jobs left after --skip-existing (the others counted as done), grouped by the outputs
    they still need, each group with the translator of those (:func:`to_write`), in input order
    of their first job: one group unless some MUNIT styles of some inputs exist."""
    groups: Dict[Tuple[str, ...], Tuple[Translator, List[Job]]] = {}
    done = 0
    for j in jobs:
        left = to_write(j, translator, opts, report)
        if left is None:
            done += 1
            continue
        groups.setdefault(tuple(v.suffix for v in left.variants), (left, []))[1].append(j)
    if progress is not None:
        progress.update(done)
    return list(groups.values())


def _reader(opts: OutputOptions) -> Callable[[Job], Tuple[Job, Optional[Frame], Optional[str]]]:
    """Decoding one file (on a decode thread): (job, frame, None), or (job, None, why) for a bad file."""
    def read(j: Job) -> Tuple[Job, Optional[Frame], Optional[str]]:
        try:
            return j, prepare_frame(images.read_image(j.src), opts), None
        except (InputError, OSError, ValueError, MemoryError) as exc:
            return j, None, first_line(exc)
    return read


def _writer(stop: Stop, folders: FolderSync) -> Callable[[Tuple[Job, str, Frame, np.ndarray], Turn], Outcome]:
    """Writing one output (on an encode thread). Whether it may still appear, and whether its
    failure stops the job, is decided at its ``turn``, in input order: with any number of threads
    a full disk leaves the outputs before the failing one and none after it. Each file is fsynced
    before its rename; its folder is recorded in ``folders`` and synced once at the end."""
    def write(item: Tuple[Job, str, Frame, np.ndarray], turn: Turn) -> Outcome:
        job, suffix, frame, out = item
        dst = variant_path(job.dst, suffix)
        if stop:
            return "not done", job, None

        def commit_in_order() -> None:
            with turn:
                if stop:
                    raise _Discarded()

        try:
            folders.add(dst)
            images.write_image(dst, finish_frame(frame, out, dst), before_commit=commit_in_order,
                               sync_folder=False)
            return "written", job, dst
        except _Discarded:
            return "not done", job, None
        except (OSError, ValueError) as exc:
            err = OutputError.wrap(dst, exc) if isinstance(exc, OSError) else exc
            with turn:
                if is_fatal_write_error(err):
                    stop.set(first_line(err))
            return "failed", job, first_line(err) if str(dst) in str(err) else f"{dst}: {first_line(err)}"
    return write


def _recorder(report: Report) -> Callable[[Outcome], None]:
    """Records the writer pool's outcomes (in input order, on the caller's thread)."""
    def record(outcome: Outcome) -> None:
        kind, job, value = outcome
        if kind == "written":
            report.written.append(value)
        elif kind == "failed":
            report.fail(job.src, str(value), prefix=False)
        else:
            report.not_done.append(job.src)
    return record


def to_write(job: Job, translator: Translator, opts: OutputOptions, report: Report) -> Optional[Translator]:
    """The translator for the outputs of ``job`` still to write: with --skip-existing, the outputs
    that exist (MUNIT styles: each on its own) are reported as skipped and never rewritten, and
    only the others run (:meth:`Translator.subset`); None when every one exists."""
    if not opts.skip_existing:
        return translator
    existing = [v.suffix for v in translator.variants if variant_path(job.dst, v.suffix).exists()]
    report.skipped.extend(variant_path(job.dst, s) for s in existing)
    if len(existing) == len(translator.variants):
        return None
    return translator.subset(v.suffix for v in translator.variants if v.suffix not in existing)


def prepare_frame(frame: Frame, opts: OutputOptions) -> Frame:
    """Apply --resize / --max-side to what the model sees (alpha follows)."""
    size = target_size(frame.width, frame.height, opts)
    if size is None:
        return frame
    import cv2

    def rs(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if a is None:
            return None
        interp = cv2.INTER_AREA if size[0] < a.shape[1] else cv2.INTER_CUBIC
        out = cv2.resize(a, size, interpolation=interp)
        return out[..., None] if a.ndim == 3 and out.ndim == 2 else out

    return frame.replace(image=rs(frame.image), alpha=rs(frame.alpha))


def target_size(w: int, h: int, opts: OutputOptions) -> Optional[Tuple[int, int]]:
    """The (w, h) the model sees under --resize / --max-side; None: the frame's own size."""
    if opts.resize:
        return opts.resize
    if opts.max_side and max(w, h) > opts.max_side:
        s = opts.max_side / max(w, h)
        return max(1, round(w * s)), max(1, round(h * s))
    return None


_SIXTEEN_BIT_EXTENSIONS = {".png", ".tif", ".tiff"}


def finish_frame(frame: Frame, out: np.ndarray, dst: Optional[Path] = None) -> Frame:
    """The output frame: the model's picture with the input's alpha and metadata.

    A 16-bit result going to a format without 16 bits (--ext jpg for a 16-bit PNG) is reduced to
    8 bits, with a warning: the user asked for that format.
    """
    if out.ndim == 3 and out.shape[2] == 1:
        out = out[..., 0]
    alpha = frame.alpha
    if dst is not None and out.dtype == np.uint16 and dst.suffix.lower() not in _SIXTEEN_BIT_EXTENSIONS:
        log.warning("%s: %s stores 8 bits; the 16-bit result is reduced to 8 bits", dst, dst.suffix)
        out = to_8bit(out)
        alpha = None if alpha is None else to_8bit(alpha)
    return frame.replace(image=out, alpha=alpha)


def to_8bit(a: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 (rounded); uint8 unchanged."""
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8) if a.dtype == np.uint16 else a


MAX_ANIMATION_BYTES = 2 * 2**30


def apply_animation(job: Job, translator: Translator, opts: OutputOptions, report: Report) -> None:
    """Every frame of an animated WebP/PNG, or every page of a multi-page TIFF, through the model,
    written back as one file.

    Animations keep each frame's display time (the last one included) and their loop count; they
    are written 8-bit. TIFF pages are written as a multi-page TIFF, each page keeping its size,
    alpha and depth (16-bit pages stay 16-bit). The output frames are held until the file is written (these
    formats are written at once); inputs over ``MAX_ANIMATION_BYTES`` of pixels are refused:
    convert them to a video. Raises :class:`InputError` before any frame is decoded when the
    output format cannot hold what the input is (pages to .png/.webp, an animation to .tif).
    """
    translator = to_write(job, translator, opts, report)
    if translator is None:
        return
    info = images.animation_info(job.src)
    _check_animation_output(job, translator, info)
    outs: List[List[Frame]] = [[] for _ in translator.variants]
    dsts = [variant_path(job.dst, v.suffix) for v in translator.variants]
    durations: List[Optional[int]] = []  # filled by the reader as it yields each frame
    held = 0
    count = 0
    frames = (prepare_frame(f, opts) for f in images.iter_image_frames(job.src, durations=durations))
    for frame, results in translate_stream(frames, translator, opts.temporal_settings()):
        for k, (_, out) in enumerate(results):
            if info.is_multipage:
                outs[k].append(finish_frame(frame, out, dsts[k]))
            else:
                outs[k].append(finish_frame(frame, to_8bit(out)))
            held += out.nbytes
        count += 1
        if held > MAX_ANIMATION_BYTES:
            raise InputError(job.src, f"animation too large to hold ({held / 2**30:.1f} GiB of frames); "
                                      "convert it to a video first (ffmpeg -i IN OUT.mp4)")
    timing = None
    if not info.is_multipage:
        timing = [100 if d is None else d for d in durations[:count]]
    for dst, variant_outs in zip(dsts, outs):
        try:
            images.write_animation(dst, variant_outs, timing, loop=info.loop or 0)
        except OSError as exc:
            raise OutputError.wrap(dst, exc) from None
        report.written.append(dst)
    report.frames += count


def _check_animation_output(job: Job, translator: Translator, info: "images.AnimationInfo") -> None:
    """Pages go to a multi-page TIFF, timed frames to an animated WebP/PNG: anything else would
    silently lose pages or timing."""
    for v in translator.variants:
        ext = variant_path(job.dst, v.suffix).suffix.lower()
        pages_out = ext in images.MULTIPAGE_IMAGE_EXTENSIONS
        if info.is_multipage and not pages_out:
            raise InputError(job.src, f"a {info.frames}-page TIFF can only be written whole as a multi-page "
                                      f".tif, not {ext or 'extensionless'}; write .tif (--ext tif), or split "
                                      "the pages first")
        if not info.is_multipage and pages_out:
            raise InputError(job.src, f"an animated {info.format} ({info.frames} frames) cannot be written as "
                                      f"{ext}: TIFF pages have no timing; write .webp or .png (--ext webp)")


def _item_bytes(item: Tuple[Job, Optional[Frame], Optional[str]]) -> int:
    frame = item[1]
    return 0 if frame is None else frame.image.nbytes
