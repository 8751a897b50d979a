"""Still images (batched, decoded and written on background threads) and animated images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from frametrans.apply.jobs import Job, OutputOptions, variant_path
from frametrans.apply.report import Report, Stop, signals_deferred
from frametrans.apply.temporal import stabilized
from frametrans.apply.translator import Translator, run_variants
from frametrans.engine.pipeline import BackgroundWorker, prefetch
from frametrans.io import images
from frametrans.io.errors import InputError, OutputError, first_line, is_fatal_write_error
from frametrans.io.frame import Frame

log = logging.getLogger("frametrans")


def apply_images(jobs: List[Job], translator: Translator, opts: OutputOptions, report: Report,
                 progress, stop: Stop) -> None:
    """Decode ahead in a thread, batch same-size images, write in another thread.

    Per-file failures (read, model, write) are reported and the others go on. A write error that
    will repeat for every file (full or read-only disk) stops the job: the images still queued for
    writing are finished or reported, the rest are listed in ``report.not_done``.
    """
    todo = [j for j in jobs if not skip_done(j, translator, opts, report)]
    if opts.temporal != "off":
        log.warning("--temporal %s: still images have no frame order; they are translated one by "
                    "one (videos, animations and streams are stabilized)", opts.temporal)
    translator.expect(len(todo))
    if progress is not None:
        progress.update(len(jobs) - len(todo))

    read = _reader(todo, opts, stop)
    write = _writer(report, stop)

    jobs_by_frame: Dict[int, Job] = {}
    started: set = set()

    def frames() -> Iterator[Frame]:
        for j, frame, err in prefetch(read(), depth=8, name="decode", max_bytes=translator.queue_bytes(),
                                      size=_item_bytes):
            started.add(id(j))
            if err is not None:
                report.fail(j.src, err)
                continue
            jobs_by_frame[id(frame)] = j
            yield frame
            if stop:
                return

    def model_failed(frame: Frame, exc: BaseException) -> None:
        job = jobs_by_frame.pop(id(frame))
        report.fail(job.src, first_line(exc))

    writer = BackgroundWorker(write, depth=8, name="encode", max_bytes=translator.queue_bytes(),
                              size=lambda item: item[3].nbytes)
    try:
        for frame, outs in run_variants(frames(), translator, model_failed):
            job = jobs_by_frame.pop(id(frame))
            for (suffix, out) in outs:
                writer.submit((job, suffix, frame, out))
            report.frames += 1
            if progress is not None:
                progress.update(1)
    finally:
        with signals_deferred():  # a second Ctrl-C must not kill the writer mid-file
            writer.close()  # finishes every image handed to it (also on Ctrl-C): no partial files
    if stop:
        report.not_done.extend(j.src for j in todo if id(j) not in started)


def _reader(todo: List[Job], opts: OutputOptions, stop: Stop
            ) -> Callable[[], Iterator[Tuple[Job, Optional[Frame], Optional[str]]]]:
    """Decoding (on the prefetch thread): (job, frame, None), or (job, None, why) for a bad file."""
    def read() -> Iterator[Tuple[Job, Optional[Frame], Optional[str]]]:
        for j in todo:
            if stop:
                return
            try:
                yield j, prepare_frame(images.read_image(j.src), opts), None
            except (InputError, OSError, ValueError, MemoryError) as exc:
                yield j, None, first_line(exc)
    return read


def _writer(report: Report, stop: Stop) -> Callable[[Tuple[Job, str, Frame, np.ndarray]], None]:
    """Writing (on the encoder thread): one output image, or its failure reported; a full or
    read-only disk stops the job."""
    def write(item: Tuple[Job, str, Frame, np.ndarray]) -> None:
        job, suffix, frame, out = item
        dst = variant_path(job.dst, suffix)
        if stop:
            report.not_done.append(job.src)
            return
        try:
            images.write_image(dst, finish_frame(frame, out, dst))
            with report._lock:
                report.written.append(dst)
        except (OSError, ValueError) as exc:
            err = OutputError.wrap(dst, exc) if isinstance(exc, OSError) else exc
            msg = first_line(err) if str(dst) in str(err) else f"{dst}: {first_line(err)}"
            report.fail(job.src, msg, prefix=False)
            if is_fatal_write_error(err):
                stop.set(first_line(err))
    return write


def skip_done(job: Job, translator: Translator, opts: OutputOptions, report: Report) -> bool:
    """With --skip-existing: True (and reported as skipped) when every output of ``job`` exists."""
    if not opts.skip_existing:
        return False
    if all(variant_path(job.dst, v.suffix).exists() for v in translator.variants):
        report.skipped.append(job.dst)
        return True
    return False


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
    if skip_done(job, translator, opts, report):
        return
    info = images.animation_info(job.src)
    _check_animation_output(job, translator, info)
    outs: List[List[Frame]] = [[] for _ in translator.variants]
    dsts = [variant_path(job.dst, v.suffix) for v in translator.variants]
    durations: List[Optional[int]] = []  # filled by the reader as it yields each frame
    held = 0
    count = 0
    frames = (prepare_frame(f, opts) for f in images.iter_image_frames(job.src, durations=durations))
    for frame, results in stabilized(run_variants(frames, translator), opts.stabilizer_strength()):
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
