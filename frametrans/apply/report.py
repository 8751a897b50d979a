"""What an ``apply`` run did, and how failures and interrupts are contained.

Failure rules (the README's "What happens when things go wrong" has the user's view):

- a bad input (unreadable, truncated, not an image...) or a model failure on one image is reported
  per file (``Report.failed``) and the rest of the job goes on; a run with failures ends with exit 1;
- out of memory: the runner halves the batch; a single frame that still does not fit is retried in
  smaller and smaller tiles; a frame is never dropped silently;
- a write error names the output; nothing half-written is left under the final name; a full disk or
  read-only file system stops the job (every later write would fail too), the rest is reported;
- Ctrl-C / SIGTERM (the CLI turns SIGTERM into KeyboardInterrupt): images already handed to the
  writer are finished; a segmented video (MP4, MOV, MKV, WebM) keeps its closed segments in
  ``NAME.partial/`` for ``--resume``; a video in one piece is closed as ``NAME.partial.EXT``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple

import av
import cv2

from frametrans.engine.memory import MemoryBudgetError
from frametrans.engine.pipeline import StageTime
from frametrans.io.errors import InputError, OutputError, first_line, is_fatal_write_error

if TYPE_CHECKING:
    from frametrans.apply.jobs import Job

log = logging.getLogger("frametrans")


@dataclass
class Report:
    """What a run did: outputs written, skipped, and failures (path, one-line reason).

    stopped: why the job stopped before its end (a full disk...), None when it ran to the end;
    ``not_done`` are the inputs it did not get to then.
    stages: the time each stage of the pipeline took, summed over the run's jobs: ``decode`` and
    ``encode`` (their threads; a video's encoder flush when it closes counts, with no item), and
    ``main`` (the thread that batches and runs the model, from its first frame to its last), for
    ``frametrans bench pipeline`` and ``-v``.
    """

    written: List[Path] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    frames: int = 0
    stopped: Optional[str] = None
    not_done: List[Path] = field(default_factory=list)
    stages: Dict[str, StageTime] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped is None

    def add_stages(self, stages: Dict[str, StageTime]) -> None:
        """Add one job's stage times to the run's."""
        for name, t in stages.items():
            self.stages[name] = self.stages.get(name, StageTime()) + t

    def describe_stages(self) -> Optional[str]:
        """One line: each stage's CPU and busy milliseconds per item (``frametrans -v apply``);
        None when no stage handled an item."""
        parts = [f"{name} {1000 * t.cpu / t.items:.2f} ms CPU / {1000 * t.wall / t.items:.2f} ms busy"
                 for name, t in self.stages.items() if t.items]
        return "per frame by stage: " + ", ".join(parts) if parts else None

    def fail(self, src: object, msg: str, prefix: bool = True) -> None:
        """Record and log one failure; ``msg`` gets ``src:`` in front unless it names it already
        (or ``prefix`` is False: a write error names its output instead)."""
        msg = first_line(msg)
        if prefix and str(src) not in msg:
            msg = f"{src}: {msg}"
        log.error("%s", msg)
        with self._lock:  # the writer thread reports too
            self.failed.append((str(src), msg))


class Stop:
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


def run_job(fn: Callable[[], None], job: "Job", report: Report, stop: Optional[Stop] = None) -> None:
    """Run one job; its failure is reported and the run goes on (a full or read-only disk stops it)."""
    try:
        fn()
    except MemoryBudgetError:
        raise  # a setting wrong for every input: the run stops
    except (InputError, OSError, ValueError, RuntimeError, MemoryError, av.FFmpegError, cv2.error) as exc:
        report.fail(job.src, first_line(exc), prefix=not isinstance(exc, OutputError))
        if stop is not None and is_fatal_write_error(exc):
            stop.set(first_line(exc))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
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


def progress_bar(total: Optional[int], desc: str, quiet: bool, initial: int = 0):
    """A tqdm bar on stderr; silent with ``quiet`` or when stderr is not a terminal. ``initial``:
    units already done (a resumed job: the rate and ETA count only what this run does)."""
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="frame" if desc != "files" else "file", initial=initial,
                file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False)
