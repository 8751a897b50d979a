"""Apply a generator to images, folders, videos and raw streams: the library behind ``frametrans apply``.

    from frametrans.apply import Translator, apply_paths
    t = Translator.load("cyclegan")                      # bundled name or checkpoint path
    report = apply_paths(["clip.mp4"], "out.mp4", t)     # same for images, folders, lists

Data flow per input: a reader (in a background thread) yields frames, the runner batches and runs
them, a writer (in another background thread) encodes; outputs are written under a temporary name
and renamed when complete.

Failure rules (docs/failures.md has the user's view):

- a bad input (unreadable, truncated, not an image...) or a model failure on one image is reported
  per file (``Report.failed``) and the rest of the job goes on; a run with failures ends with exit 1;
- out of memory: the runner halves the batch; a single frame that still does not fit is retried in
  smaller and smaller tiles; a frame is never dropped silently;
- a write error names the output; nothing half-written is left under the final name; a full disk or
  read-only file system stops the job (every later write would fail too), the rest is reported;
- Ctrl-C / SIGTERM (the CLI turns SIGTERM into KeyboardInterrupt): images already handed to the
  writer are finished, a video is closed as ``NAME.partial.EXT`` with the frames done so far.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import stat
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import (BinaryIO, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence,
                    Tuple)

import av
import numpy as np
import torch

from frametrans.engine.pipeline import BackgroundWorker, prefetch
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.io import folders, images, raw, video
from frametrans.io.errors import InputError, OutputError, TruncatedInputError, is_fatal_write_error
from frametrans.io.frame import Frame

log = logging.getLogger("frametrans")


# ---------------------------------------------------------------------------------------------
# the model side: one Runner per output variant (MUNIT styles), all sharing one module


@dataclass
class Variant:
    """One output per input: ``suffix`` is added to output names when there are several."""

    suffix: str
    runner: Runner


class Translator:
    """A loaded model ready to translate batches of images, with its output variants."""

    def __init__(self, model: torch.nn.Module, options: Optional[RunnerOptions] = None,
                 direction: str = "a2b", style_image: Optional[str] = None, num_styles: int = 1,
                 seed: int = 0) -> None:
        self.model = model
        self.options = options or RunnerOptions()
        self.contract = model.config.contract()
        if self.contract.frames_in != 1:
            raise ValueError(
                f"{type(model).arch_name} predicts frames from {self.contract.frames_in} past frames;"
                " use `frametrans predict-next`"
            )
        if not self.contract.takes_style:
            if style_image or num_styles != 1:
                raise ValueError("--style/--num-styles need a MUNIT model")
            self.variants = [Variant("", Runner(model, self.options))]
            return
        if direction not in ("a2b", "b2a"):
            raise ValueError(f"--direction must be a2b or b2a, got {direction!r}")
        if num_styles < 1:
            raise ValueError(f"--num-styles must be >= 1, got {num_styles}")
        styles = self._styles(direction, style_image, num_styles, seed)
        self.variants = [
            Variant(f"_style{i}" if len(styles) > 1 else "",
                    Runner(model, self.options, forward=_munit_forward(s, direction)))
            for i, s in enumerate(styles)
        ]

    def expect(self, frames: Optional[int]) -> None:
        """The next job has ``frames`` frames (None: an open-ended stream); lets ``--compile auto``
        decide whether compiling pays for itself."""
        for v in self.variants:
            v.runner.expect(frames)

    @classmethod
    def load(cls, model: str, options: Optional[RunnerOptions] = None,
             yaml_config: Optional[str] = None, **kwargs) -> "Translator":
        from frametrans.checkpoint import load_model

        return cls(load_model(model, yaml_config=yaml_config), options, **kwargs)

    def _styles(self, direction: str, style_image: Optional[str], k: int, seed: int
                ) -> List[torch.Tensor]:
        """Style codes [1, style_dim, 1, 1], fixed for a whole clip."""
        if style_image:
            frame = images.read_image(style_image)
            x = torch.from_numpy(np.array(_rgb(frame.image, self.contract.in_channels))).permute(2, 0, 1)
            x = x[None].float() / 255.0 * 2 - 1
            from frametrans.engine.padding import pad_to_multiple

            x, _ = pad_to_multiple(x, self.contract.size_multiple)
            with torch.inference_mode():
                target = "b" if direction == "a2b" else "a"
                return [self.model.eval().encode_style(x, target)]
        gen = torch.Generator().manual_seed(seed)
        codes = torch.randn(k, self.contract.style_dim, 1, 1, generator=gen)
        return [codes[i:i + 1] for i in range(k)]


def _munit_forward(style: torch.Tensor, direction: str) -> Callable:
    def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.translate(x, style=style.to(x.device), direction=direction)
    return forward


def _rgb(image: np.ndarray, channels: int) -> np.ndarray:
    image = image if image.ndim == 3 else image[..., None]
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.shape[2] == channels:
        return np.ascontiguousarray(image)
    if image.shape[2] == 1:
        return np.repeat(image, channels, axis=2)
    return np.ascontiguousarray(image[..., :channels])


# ---------------------------------------------------------------------------------------------
# jobs


@dataclass
class OutputOptions:
    """What to do with outputs: names, overwriting, resizing, video encoding."""

    overwrite: bool = False
    skip_existing: bool = False
    recursive: bool = False
    ext: Optional[str] = None  # image output format for folders, e.g. "png"
    resize: Optional[Tuple[int, int]] = None  # (w, h) fed to the model
    max_side: Optional[int] = None
    codec: Optional[str] = None
    crf: Optional[int] = None
    preset: Optional[str] = None
    pix_fmt: Optional[str] = None
    audio: bool = True
    quiet: bool = False

    def validate(self) -> None:
        """Reject impossible values before any work starts (one-line ValueError naming the option)."""
        if self.overwrite and self.skip_existing:
            raise ValueError("--overwrite and --skip-existing exclude each other")
        if self.ext is not None:
            ext = "." + self.ext.lower().lstrip(".")
            if ext not in images.WRITABLE_IMAGE_EXTENSIONS:
                raise ValueError(f"--ext {self.ext!r}: cannot write that image format; use one of "
                                 f"{', '.join(e[1:] for e in sorted(images.WRITABLE_IMAGE_EXTENSIONS))}")
        if self.resize is not None and (self.resize[0] < 1 or self.resize[1] < 1):
            raise ValueError(f"--resize must be at least 1x1, got {self.resize[0]}x{self.resize[1]}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"--max-side must be >= 1, got {self.max_side}")
        if self.codec is not None:
            try:
                codec = av.codec.Codec(self.codec, "w")
            except Exception:  # noqa: BLE001 - PyAV raises its own "unknown codec" types
                raise ValueError(f"--codec {self.codec!r}: no such video encoder in this FFmpeg "
                                 "(try libx264, libvpx-vp9, mpeg4, gif)") from None
            if codec.type != "video":
                raise ValueError(f"--codec {self.codec!r} is a {codec.type} encoder, not a video encoder")
        if self.pix_fmt is not None:
            try:
                av.VideoFormat(self.pix_fmt)
            except Exception:  # noqa: BLE001
                raise ValueError(f"--pix-fmt {self.pix_fmt!r}: unknown pixel format "
                                 "(try yuv420p, yuv444p, rgb24)") from None


@dataclass
class Job:
    src: Path
    dst: Path
    kind: str  # "image", "animation" (animated WebP/PNG) or "video" (incl. animated GIF)


@dataclass
class Report:
    """What a run did: outputs written, skipped, and failures (path, one-line reason).

    stopped: why the job stopped before its end (a full disk...), None when it ran to the end;
    ``not_done`` are the inputs it did not get to then.
    """

    written: List[Path] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    frames: int = 0
    stopped: Optional[str] = None
    not_done: List[Path] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped is None

    def fail(self, src: object, msg: str, prefix: bool = True) -> None:
        """Record and log one failure; ``msg`` gets ``src:`` in front unless it names it already
        (or ``prefix`` is False: a write error names its output instead)."""
        msg = _one_line(msg)
        if prefix and str(src) not in msg:
            msg = f"{src}: {msg}"
        log.error("%s", msg)
        with self._lock:  # the writer thread reports too
            self.failed.append((str(src), msg))


def plan_jobs(inputs: Sequence[str], output: str, opts: OutputOptions,
              problems: Optional[List[Tuple[str, str]]] = None) -> List[Job]:
    """Turn input paths (files, folders) and an output path into (src, dst) jobs.

    Rules: one image -> OUTPUT is a file, or an existing folder / path ending in '/' to put it in;
    one video -> OUTPUT is a video file (or folder); a folder or several inputs -> OUTPUT is a
    folder, relative paths kept. Raises ValueError (one line) on impossible combinations.

    problems: when given, inputs that cannot be processed (missing, broken links, unreadable
    subfolders, output formats that cannot be written) are appended to it as ``(path, message)``
    and the other inputs are still planned; without it the first such problem raises ValueError.
    """
    if not inputs:
        raise ValueError("no inputs given")
    out = Path(output)
    collect = problems is not None
    bad: List[Tuple[str, str]] = problems if problems is not None else []

    def problem(path: Path, reason: str) -> None:
        msg = f"{path}: {reason}"
        if not collect:
            raise ValueError(msg)
        bad.append((str(path), msg))

    srcs = []
    for p in inputs:
        s = Path(p)
        if s.exists():
            srcs.append(s)
        elif s.is_symlink():
            problem(s, f"broken symbolic link (points to {os.readlink(s)})")
        else:
            problem(s, "no such file or folder")
    if not srcs:
        raise ValueError(bad[0][1] if bad else "no inputs given")
    single_file = len(srcs) == 1 and not srcs[0].is_dir() and not bad
    if single_file and not (output.endswith(("/", "\\")) or out.is_dir()):
        jobs = [Job(srcs[0], out, _kind(srcs[0]))]
        _check_collisions(jobs)
        _check_writable([jobs[0]], lambda j, r: _raise(f"{j.dst}: {r}"), named_by_user=True)
        return jobs
    jobs: List[Job] = []
    for s in srcs:
        if s.is_dir():
            for f in _media_in(s, opts.recursive, out, problem):
                kind = _kind(f)
                jobs.append(Job(f, _out_name(f, s, out, opts, kind), kind))
        else:
            kind = _kind(s)
            jobs.append(Job(s, _out_name(s, s.parent, out, opts, kind), kind))
    if not jobs and not bad:
        raise ValueError(f"no images or videos found in {', '.join(map(str, srcs))}"
                         + ("" if opts.recursive else " (use --recursive for subfolders)"))
    _check_collisions(jobs)
    unwritable: set = set()
    _check_writable(jobs, lambda j, r: (unwritable.add(id(j)), problem(j.src, r)), named_by_user=False)
    return [j for j in jobs if id(j) not in unwritable]


def _raise(msg: str) -> None:
    raise ValueError(msg)


def _check_writable(jobs: List[Job], report: Callable[[Job, str], object], named_by_user: bool) -> None:
    """Each output must have an extension we can write, checked before any work."""
    for j in jobs:
        ext = j.dst.suffix.lower()
        if j.kind == "video" and ext not in video.WRITABLE_VIDEO_EXTENSIONS:
            hint = ("use one of " + ", ".join(sorted(video.WRITABLE_VIDEO_EXTENSIONS)) if named_by_user
                    else "give it as a single input with -o NAME.mp4")
            report(j, f"cannot write {ext or 'extensionless'} videos; {hint}")
        elif j.kind == "animation" and ext not in images.ANIMATED_IMAGE_EXTENSIONS:
            report(j, f"an animated image cannot be written as {ext or 'extensionless'}; "
                      "write .webp or .png (--ext webp)")
        elif j.kind == "image" and ext not in images.WRITABLE_IMAGE_EXTENSIONS:
            hint = ("use one of " + ", ".join(sorted(images.WRITABLE_IMAGE_EXTENSIONS)) if named_by_user
                    else "pass --ext png (or jpg, webp, tif, bmp)")
            report(j, f"cannot write {ext or 'extensionless'} images; {hint}")


def _media_in(folder: Path, recursive: bool, out: Path,
              problem: Callable[[Path, str], None]) -> List[Path]:
    """Images and videos in ``folder`` (one walk; links followed, loops visited once), leaving out
    the output folder when it lies inside the input folder (a rerun must not eat its outputs)."""
    wanted = images.IMAGE_EXTENSIONS | video.VIDEO_EXTENSIONS
    return folders.list_images(folder, recursive=recursive, extensions=wanted, on_error=problem,
                               exclude=[out] if out.is_dir() else [])


def _out_name(src: Path, root: Path, out: Path, opts: OutputOptions, kind: str) -> Path:
    ext = opts.ext if kind in ("image", "animation") else None
    return folders.output_path_for(src, root, out, ext)


def _kind(path: Path) -> str:
    if video.is_video(path) and path.suffix.lower() != ".gif":
        return "video"
    if path.suffix.lower() == ".gif":  # animated gifs are clips; stills are images
        return "video" if _gif_frames(path) > 1 else "image"
    if images.is_animated_image(path):
        return "animation"
    return "image"


def _gif_frames(path: Path) -> int:
    try:
        return video.probe_video(path).frames or 2
    except Exception:  # noqa: BLE001 - unreadable: let the image reader report it
        return 1


def _check_collisions(jobs: List[Job]) -> None:
    seen = {}
    srcs = {j.src.resolve() for j in jobs}
    for j in jobs:
        d = j.dst.resolve()
        if d in srcs:
            raise ValueError(f"output {j.dst} is one of the inputs; choose another output")
        if d in seen:
            raise ValueError(f"{seen[d]} and {j.src} would both be written to {j.dst}")
        seen[d] = j.src


def variant_path(dst: Path, suffix: str) -> Path:
    return dst.with_name(dst.stem + suffix + dst.suffix) if suffix else dst


def check_outputs(jobs: List[Job], translator: Translator, opts: OutputOptions) -> None:
    """Refuse to overwrite existing outputs (unless --overwrite/--skip-existing), before any work."""
    if opts.overwrite or opts.skip_existing:
        return
    for j in jobs:
        for v in translator.variants:
            p = variant_path(j.dst, v.suffix)
            if p.exists():
                raise ValueError(f"{p} exists; pass --overwrite to replace or --skip-existing to keep it")


class _Stop:
    """Set by the writer thread when further writes are pointless (full disk, read-only disk)."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self.event = threading.Event()

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.event.set()

    def __bool__(self) -> bool:
        return self.event.is_set()


def apply_paths(inputs: Sequence[str], output: str, translator: Translator,
                opts: Optional[OutputOptions] = None) -> Report:
    """Run every input through ``translator``; one bad file does not stop the others."""
    opts = opts or OutputOptions()
    opts.validate()
    report = Report()
    problems: List[Tuple[str, str]] = []
    jobs = plan_jobs(inputs, output, opts, problems)
    check_outputs(jobs, translator, opts)
    for src, msg in problems:
        report.fail(src, msg)
    stop = _Stop()
    progress = _progress(len(jobs), "files", opts) if len(jobs) > 1 else None
    image_jobs = [j for j in jobs if j.kind == "image"]
    other_jobs = [j for j in jobs if j.kind != "image"]
    try:
        if image_jobs:
            _apply_images(image_jobs, translator, opts, report, progress, stop)
        for j in other_jobs:
            if stop:
                report.not_done.append(j.src)
                continue
            fn = _apply_video if j.kind == "video" else _apply_animation
            _run_one(lambda: fn(j, translator, opts, report), j, report, stop)
            if progress is not None:
                progress.update(1)
    finally:
        if progress is not None:
            progress.close()
    if stop:
        report.stopped = stop.reason
        log.error("stopped: %s; %d input(s) not processed (rerun with --skip-existing to finish)",
                  stop.reason, len(report.not_done))
    return report


def _run_one(fn: Callable[[], None], job: Job, report: Report, stop: Optional[_Stop] = None) -> None:
    try:
        fn()
    except (InputError, OSError, ValueError, RuntimeError, MemoryError, av.FFmpegError) as exc:
        report.fail(job.src, _one_line(exc), prefix=not isinstance(exc, OutputError))
        if stop is not None and is_fatal_write_error(exc):
            stop.set(_one_line(exc))


def _one_line(exc: object) -> str:
    """The first non-empty line of a message, whitespace collapsed (torch errors run to pages)."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    text = next((line for line in lines if line), "")
    if not text and isinstance(exc, BaseException):
        return type(exc).__name__
    return text


# -- the model, with failures contained ------------------------------------------------------


class FrameError(RuntimeError):
    """The model failed on one frame (after the out-of-memory fallbacks); names the frame."""


def _run_guarded(runner: Runner, frames: Iterable[Frame],
                 on_error: Optional[Callable[[Frame, BaseException], None]] = None
                 ) -> Iterator[Tuple[Frame, np.ndarray]]:
    """``runner.run(frames)`` that survives a failing batch.

    When a batch fails (an image the model cannot take, out of memory even after the runner halved
    the batch), its frames are run one at a time; a frame that is out of memory alone is retried in
    smaller and smaller tiles. A frame that still fails goes to ``on_error`` (folder jobs: report
    the file, go on) or, without it, raises :class:`FrameError` (videos: a frame must never be
    dropped). Errors of the source itself (e.g. a truncated video) are re-raised after every frame
    read before them has come out.
    """
    source = iter(frames)
    pending: Deque[Frame] = deque()  # handed to the runner, not out yet
    source_error: List[BaseException] = []

    def feed() -> Iterator[Frame]:
        while True:
            try:
                frame = next(source)
            except StopIteration:
                return
            except BaseException as exc:
                source_error.append(exc)
                raise
            pending.append(frame)
            yield frame

    while True:
        try:
            for frame, out in runner.run(feed()):
                _remove(pending, frame)
                yield frame, out
            return
        except Exception as exc:  # noqa: BLE001 - sorted out below; KeyboardInterrupt passes
            if source_error and exc is source_error[0]:
                # the source failed (a cut video): the frames read before it still come out, in
                # batches, whether or not the runner flushed them itself
                rest = list(pending)
                pending.clear()
                yield from _run_guarded(runner, rest, on_error)
                raise
            failed = list(pending)
            pending.clear()
            if len(failed) > 1:
                log.warning("%s on a batch of %d frames; running them one at a time",
                            "out of memory" if _is_oom(exc) else f"model error ({_one_line(exc)})",
                            len(failed))
            for frame in failed:
                try:
                    out = _run_single(runner, frame, exc if len(failed) == 1 else None)
                except Exception as err:  # noqa: BLE001
                    error = err if isinstance(err, FrameError) else FrameError(
                        f"{_describe(frame)}: model failed: {_one_line(err)}")
                    if on_error is None:
                        raise error from err
                    on_error(frame, error)
                    continue
                yield frame, out
            if source_error:
                raise source_error[0]


def _remove(pending: Deque[Frame], frame: Frame) -> None:
    if pending and pending[0] is frame:
        pending.popleft()
        return
    for i, f in enumerate(pending):
        if f is frame:
            del pending[i]
            return


def _run_single(runner: Runner, frame: Frame, first_error: Optional[BaseException]) -> np.ndarray:
    """One frame alone; out of memory -> tiles. ``first_error``: its error as part of a batch of
    one (a non-OOM error is not worth repeating)."""
    if first_error is not None and not _is_oom(first_error):
        raise first_error
    if first_error is None:
        try:
            return runner([frame.image])[0]
        except torch.OutOfMemoryError:
            pass
    return _run_in_smaller_tiles(runner, frame)


def _run_in_smaller_tiles(runner: Runner, frame: Frame, attempts: int = 12) -> np.ndarray:
    """Out of memory on one frame: lower the runner's memory budget below this frame's need, so it
    tiles (with tile-sized normalisation statistics), halving until it fits or tiles get too small.

    The lower budget stays for the rest of the run, as the runner's halved batch size does.
    """
    h, w = frame.height, frame.width
    m = runner.contract.size_multiple
    budget, tile = runner.budget, runner.options.tile
    for attempt in range(attempts):
        _empty_cache(runner)
        need = runner.bytes_per_pixel() * _padded(h, w, m)
        runner.budget = max(1, int(min(runner.budget, need) // 2))
        if runner.options.tile:  # the user's tile size was too big for this device: halve it too
            runner.options.tile = max(m, runner.options.tile // 2 // m * m)
            if runner.options.tile_overlap is not None and runner.options.tile_overlap >= runner.options.tile:
                break
        log.log(logging.WARNING if attempt == 0 else logging.INFO,
                "%s: out of memory on a %dx%d frame; retrying in tiles (memory budget %s)",
                _describe(frame), w, h, _bytes(runner.budget))
        try:
            return runner([frame.image])[0]
        except torch.OutOfMemoryError:
            continue
        except ValueError as exc:  # the runner's "tile too small for the overlap": out of room
            if "too small" not in str(exc):
                raise
            break
    _empty_cache(runner)
    runner.budget, runner.options.tile = budget, tile  # it did not help: the next frame starts over
    raise FrameError(f"{_describe(frame)}: out of memory even in the smallest tiles "
                     f"({w}x{h} frame); free device memory or use --device cpu")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} GiB"


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


def _empty_cache(runner: Runner) -> None:
    if runner.device.type == "cuda":
        torch.cuda.empty_cache()


def _padded(h: int, w: int, m: int) -> int:
    return (-(-h // m) * m) * (-(-w // m) * m)


def _describe(frame: Frame) -> str:
    """``photo.jpg`` for a still image, ``clip.mp4: frame 12 (00:00:00.4)`` for a video frame."""
    if frame.pts is None and frame.index == 0:
        return frame.source
    text = f"{frame.source}: frame {frame.index}"
    if frame.time is not None:
        from frametrans.io.frame import format_time

        text += f" ({format_time(frame.time)})"
    return text


def run_variants(frames: Iterable[Frame], translator: Translator,
                  on_error: Optional[Callable[[Frame, BaseException], None]] = None
                  ) -> Iterator[Tuple[Frame, List[Tuple[str, np.ndarray]]]]:
    """Each frame through every variant (MUNIT styles); one variant is the plain case."""
    if len(translator.variants) == 1:
        v = translator.variants[0]
        for frame, out in _run_guarded(v.runner, frames, on_error):
            yield frame, [(v.suffix, out)]
        return
    for frame in frames:
        outs = []
        for v in translator.variants:
            got = list(_run_guarded(v.runner, [frame], on_error))
            if not got:  # failed and reported
                break
            outs.append((v.suffix, got[0][1]))
        else:
            yield frame, outs


# -- images ------------------------------------------------------------------------------------


def _apply_images(jobs: List[Job], translator: Translator, opts: OutputOptions, report: Report,
                  progress, stop: _Stop) -> None:
    """Decode ahead in a thread, batch same-size images, write in another thread.

    Per-file failures (read, model, write) are reported and the others go on. A write error that
    will repeat for every file (full or read-only disk) stops the job: the images still queued for
    writing are finished or reported, the rest are listed in ``report.not_done``.
    """
    todo = [j for j in jobs if not _skip(j, translator, opts, report)]
    translator.expect(len(todo))
    if progress is not None:
        progress.update(len(jobs) - len(todo))

    def read() -> Iterator[Tuple[Job, Optional[Frame], Optional[str]]]:
        for j in todo:
            if stop:
                return
            try:
                yield j, prepare_frame(images.read_image(j.src), opts), None
            except (InputError, OSError, ValueError, MemoryError) as exc:
                yield j, None, _one_line(exc)

    def write(item: Tuple[Job, str, Frame, np.ndarray]) -> None:
        job, suffix, frame, out = item
        dst = variant_path(job.dst, suffix)
        if stop:
            report.not_done.append(job.src)
            return
        try:
            images.write_image(dst, _finish(frame, out, dst))
            with report._lock:
                report.written.append(dst)
        except (OSError, ValueError) as exc:
            err = OutputError.wrap(dst, exc) if isinstance(exc, OSError) else exc
            msg = _one_line(err) if str(dst) in str(err) else f"{dst}: {_one_line(err)}"
            report.fail(job.src, msg, prefix=False)
            if is_fatal_write_error(err):
                stop.set(_one_line(err))

    jobs_by_frame: Dict[int, Job] = {}
    started: set = set()

    def frames() -> Iterator[Frame]:
        for j, frame, err in prefetch(read(), depth=8, name="decode"):
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
        report.fail(job.src, _one_line(exc))

    writer = BackgroundWorker(write, depth=8, name="encode")
    try:
        for frame, outs in run_variants(frames(), translator, model_failed):
            job = jobs_by_frame.pop(id(frame))
            for (suffix, out) in outs:
                writer.submit((job, suffix, frame, out))
            report.frames += 1
            if progress is not None:
                progress.update(1)
    finally:
        with _signals_deferred():  # a second Ctrl-C must not kill the writer mid-file
            writer.close()  # finishes every image handed to it (also on Ctrl-C): no partial files
    if stop:
        report.not_done.extend(j.src for j in todo if id(j) not in started)


def _skip(job: Job, translator: Translator, opts: OutputOptions, report: Report) -> bool:
    if not opts.skip_existing:
        return False
    if all(variant_path(job.dst, v.suffix).exists() for v in translator.variants):
        report.skipped.append(job.dst)
        return True
    return False


def prepare_frame(frame: Frame, opts: OutputOptions) -> Frame:
    """Apply --resize / --max-side to what the model sees (alpha follows)."""
    size = _target_size(frame.width, frame.height, opts)
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


def _target_size(w: int, h: int, opts: OutputOptions) -> Optional[Tuple[int, int]]:
    if opts.resize:
        return opts.resize
    if opts.max_side and max(w, h) > opts.max_side:
        s = opts.max_side / max(w, h)
        return max(1, round(w * s)), max(1, round(h * s))
    return None


_SIXTEEN_BIT_EXTENSIONS = {".png", ".tif", ".tiff"}


def _finish(frame: Frame, out: np.ndarray, dst: Optional[Path] = None) -> Frame:
    """The output frame: the model's picture with the input's alpha and metadata.

    A 16-bit result going to a format without 16 bits (--ext jpg for a 16-bit PNG) is reduced to
    8 bits, with a warning: the user asked for that format.
    """
    if out.ndim == 3 and out.shape[2] == 1:
        out = out[..., 0]
    alpha = frame.alpha
    if dst is not None and out.dtype == np.uint16 and dst.suffix.lower() not in _SIXTEEN_BIT_EXTENSIONS:
        log.warning("%s: %s stores 8 bits; the 16-bit result is reduced to 8 bits", dst, dst.suffix)
        out = _to_8bit(out)
        alpha = None if alpha is None else _to_8bit(alpha)
    return frame.replace(image=out, alpha=alpha)


def _to_8bit(a: np.ndarray) -> np.ndarray:
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8) if a.dtype == np.uint16 else a


# -- animated images (WebP, APNG) -------------------------------------------------------------


MAX_ANIMATION_BYTES = 2 * 2**30


def _apply_animation(job: Job, translator: Translator, opts: OutputOptions, report: Report) -> None:
    """Every frame of an animated WebP/PNG through the model, written back as an animation.

    The output frames are held until the file is written (animated formats are written at once);
    animations over ``MAX_ANIMATION_BYTES`` of pixels are refused: convert them to a video.
    """
    if _skip(job, translator, opts, report):
        return
    outs: List[List[Frame]] = [[] for _ in translator.variants]
    durations: List[int] = []
    held = 0
    last_pts = None
    frames = (prepare_frame(f, opts) for f in images.iter_image_frames(job.src))
    for frame, results in run_variants(frames, translator):
        for k, (_, out) in enumerate(results):
            outs[k].append(_finish(frame, _to_8bit(out)))
            held += out.nbytes
        if frame.pts is not None and last_pts is not None:
            durations[-1] = max(1, frame.pts - last_pts)
        durations.append(100 if not durations else durations[-1])
        last_pts = frame.pts
        if held > MAX_ANIMATION_BYTES:
            raise InputError(job.src, f"animation too large to hold ({held / 2**30:.1f} GiB of frames); "
                                      "convert it to a video first (ffmpeg -i IN OUT.mp4)")
    for v, variant_outs in zip(translator.variants, outs):
        dst = variant_path(job.dst, v.suffix)
        try:
            images.write_animation(dst, variant_outs, durations)
        except OSError as exc:
            raise OutputError.wrap(dst, exc) from None
        report.written.append(dst)
    report.frames += len(durations)


# -- video -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while outputs are being finalized (encoder flush, trailer, fsync,
    rename): a second Ctrl-C must not leave a broken file or a stray temporary one. A signal that
    arrives meanwhile is delivered right after. Main thread only (elsewhere: no-op).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: List[int] = []
    nums = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    old = {}
    for num in nums:
        old[num] = signal.signal(num, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        for num, handler in old.items():
            signal.signal(num, handler)
        if received and old.get(received[0]) not in (signal.SIG_IGN, None):
            signal.raise_signal(received[0])


def _apply_video(job: Job, translator: Translator, opts: OutputOptions, report: Report) -> None:
    """One video through the model; timing and audio kept.

    Ctrl-C/SIGTERM: the frames done are closed as ``NAME.partial.EXT`` (playable) and the interrupt
    goes on. A truncated input: every decodable frame is written under the final name and the cut
    is reported (InputError). Any other error: nothing is left under the output name.
    """
    if _skip(job, translator, opts, report):
        return
    info = video.probe_video(job.src)
    translator.expect(info.frames or (round(info.duration * float(info.fps))
                                      if info.duration and info.fps else None))
    dsts = [variant_path(job.dst, v.suffix) for v in translator.variants]
    writers = []
    try:
        for d in dsts:
            writers.append(_open_writer(d, job.src, info, opts))
    except BaseException:
        for w in writers:
            w.abort()
        raise
    progress = _progress(info.frames or None, job.src.name, opts)
    done = 0
    try:
        encoders = [BackgroundWorker(video_writer_fn(w), depth=8, name="encode") for w in writers]
        try:
            frames = (prepare_frame(f, opts) for f in prefetch(video.iter_video_frames(job.src),
                                                          depth=8, name="decode"))
            for frame, outs in run_variants(frames, translator):
                for enc, (_, out) in zip(encoders, outs):
                    enc.submit((out, frame))
                done += 1
                progress.update(1)
        except BaseException:
            with _signals_deferred():
                _close_quietly(encoders)  # let the queued frames be encoded, then unwind
            raise
        with _signals_deferred():  # the encoders must be idle before the writers are closed
            _close_all(encoders)
    except KeyboardInterrupt:
        with _signals_deferred():
            _finish_partial(writers, dsts, info)
        raise
    except TruncatedInputError as exc:
        if done == 0:
            for w in writers:
                w.abort()
            raise InputError(job.src, exc.reason) from None
        with _signals_deferred():
            _close_writers(writers, report)
        report.frames += done
        raise InputError(job.src, f"{exc.reason}; the {done} decodable frames were written "
                                  f"to {dsts[0]}") from None
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        progress.close()
    with _signals_deferred():
        _close_writers(writers, report)
    report.frames += done


def _close_writers(writers: list, report: Report) -> None:
    """Finish every writer (rename into place); on an error abort the rest and raise it."""
    for i, w in enumerate(writers):
        try:
            report.written.append(Path(w.close()))
        except BaseException as exc:
            for rest in writers[i + 1:]:
                rest.abort()
            if isinstance(exc, OSError):
                raise OutputError.wrap(w.path, exc) from None
            raise
        with contextlib.suppress(OSError):  # a .partial file left by an interrupted earlier run
            _partial_name(Path(w.path)).unlink()


def _finish_partial(writers: list, dsts: List[Path], info) -> None:
    for w, d in zip(writers, dsts):
        if not w.frames_written:
            w.abort()
            continue
        partial = _partial_name(d)
        try:
            w.close_as(partial, partial=True)
        except Exception as exc:  # noqa: BLE001 - report, keep unwinding the interrupt
            log.error("%s: could not finalize the partial video: %s", partial, _one_line(exc))
            w.abort()
            continue
        total = f" of {info.frames}" if info.frames else ""
        log.warning("interrupted: %d%s frames done; they are in %s (playable)",
                    w.frames_written, total, partial)


def _close_all(workers: List[BackgroundWorker]) -> None:
    first: Optional[BaseException] = None
    for w in workers:
        try:
            w.close()
        except BaseException as exc:  # noqa: BLE001 - the first one is raised below
            first = first or exc
    if first is not None:
        raise first


def _close_quietly(workers: List[BackgroundWorker]) -> None:
    for w in workers:
        try:
            w.close()
        except BaseException as exc:  # noqa: BLE001 - already unwinding another error
            log.debug("encoder stopped: %s", exc)


def _partial_name(path: Path) -> Path:
    return path.with_name(path.stem + ".partial" + path.suffix)


def _open_writer(dst: Path, src: Path, info, opts: OutputOptions):
    try:
        width, height = _target_size(info.width, info.height, opts) or (info.width, info.height)
        return video.VideoWriter(
            dst, width=width, height=height, fps=info.fps, time_base=info.time_base,
            codec=opts.codec, crf=opts.crf, preset=opts.preset, pix_fmt=opts.pix_fmt,
            copy_streams_from=src if opts.audio else None,
        )
    except OSError as exc:
        raise OutputError.wrap(dst, exc) from None


def video_writer_fn(writer) -> Callable[[Tuple[np.ndarray, Frame]], None]:
    def write(item: Tuple[np.ndarray, Frame]) -> None:
        out, frame = item
        out = _to_8bit(out)
        try:
            writer.write(out if out.shape[2] == 3 else np.repeat(out, 3, axis=2), frame.pts,
                         frame.time_base)
        except OSError as exc:  # includes PyAV's errno errors (full disk...)
            raise OutputError.wrap(writer.path, exc) from None
    return write


# -- raw streams -------------------------------------------------------------------------------


def check_stream_size(stdin: BinaryIO, size: Optional[Tuple[int, int]], channels: int = 3) -> None:
    """Before any work: a raw stream that is a regular file (``< frames.rgb``) must hold whole
    frames of ``size``; a stream that starts like y4m must not be read as raw (and vice versa).
    ValueError (one line) otherwise. Pipes are checked as they go (a cut last frame is reported).
    """
    head = b""
    peek = getattr(stdin, "peek", None)  # buffered readers: look without consuming
    if peek is not None:
        with contextlib.suppress(OSError, ValueError):
            head = peek(9)[:9]
    try:
        st = os.fstat(stdin.fileno())
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        st = None
    magic = b"YUV4MPEG2"
    if size is not None and head == magic:
        raise ValueError("stdin is a y4m stream, not raw rgb24: leave out --size")
    if size is None and head and not (head == magic or (len(head) < 9 and magic.startswith(head))):
        raise ValueError("stdin is not a y4m stream; for raw rgb24 frames give --size WIDTHxHEIGHT")
    if size is None or st is None or not stat.S_ISREG(st.st_mode):
        return
    frame_bytes = size[0] * size[1] * channels
    remaining = st.st_size - _tell(stdin)
    if remaining % frame_bytes:
        raise ValueError(
            f"--size {size[0]}x{size[1]}: stdin holds {remaining} bytes, not a whole number of "
            f"{frame_bytes}-byte rgb24 frames ({remaining / frame_bytes:.2f} frames); check the size")


def _tell(stream: BinaryIO) -> int:
    try:
        return stream.tell()
    except (OSError, ValueError, AttributeError):
        return 0


def apply_stream(stdin: BinaryIO, stdout: BinaryIO, translator: Translator,
                 size: Optional[Tuple[int, int]], fps: float = 25.0, y4m_out: bool = False,
                 quiet: bool = False) -> int:
    """Raw rgb24 (``size`` given) or y4m (``size`` None) frames in, raw rgb24 or y4m out.

    Returns the number of frames written. A partial frame at the end raises InputError after the
    whole frames before it were written; so does an empty stream (an upstream failure would
    otherwise look like success).
    """
    check_stream_size(stdin, size)
    if size is None:
        frames = raw.iter_y4m_frames(stdin)
    else:
        frames = raw.iter_raw_frames(stdin, size[0], size[1])
    opts = OutputOptions(quiet=quiet)
    progress = _progress(None, "frames", opts)
    v = translator.variants[0]
    v.runner.expect(None)  # open-ended: --compile auto compiles when the model is slow enough
    y4m: Optional[raw.Y4MWriter] = None
    n = 0
    try:
        for frame, out in _run_guarded(v.runner, prefetch(frames, depth=8, name="decode")):
            out = _to_8bit(out)
            out = out if out.shape[2] == 3 else np.repeat(out, 3, axis=2)
            if y4m_out:
                if y4m is None:
                    y4m = raw.Y4MWriter(stdout, out.shape[1], out.shape[0], fps)
                y4m.write(out)
            else:
                raw.write_raw_frame(stdout, out)
            n += 1
            progress.update(1)
    finally:
        progress.close()
        with contextlib.suppress(BrokenPipeError, ValueError):
            stdout.flush()
    if n == 0:
        raise InputError(raw.STDIN, "no frames: the stream is empty")
    return n


def _progress(total: Optional[int], desc: str, opts: OutputOptions):
    from tqdm import tqdm

    disable = opts.quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="frame" if desc != "files" else "file",
                file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False)
