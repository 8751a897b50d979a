"""Overlap decoding, compute and encoding with bounded queues and background threads.

PyAV, OpenCV, Pillow and torch release the GIL in their heavy loops, so threads are enough to hide
a CPU codec behind the model (or the model behind a slow disk). Queues are bounded in items and,
when ``max_bytes`` is given, in bytes (``size(item)`` each; one item always fits): memory stays at
a few frames whatever the length of the input, and within the memory budget whatever the frame
size.

- :func:`prefetch` / :class:`BackgroundWorker`: one thread ahead of / behind the caller (a video's
  decoder and encoder, which must see frames one by one);
- :func:`ordered_map` / :class:`WorkerPool`: a pool of threads ahead of / behind the caller, for
  work that is independent per item (decoding and encoding the images of a folder), with the
  order kept: results come out, are retired and pass their :class:`Turn` in the order the items
  went in.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()
_SKIPPED = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _ByteGate:
    """Admits items while the bytes held stay within ``limit`` (always at least one item)."""

    def __init__(self, limit: Optional[int], size: Optional[Callable[[Any], int]]) -> None:
        self.limit, self.size = limit, size
        self.held = 0
        self.cond = threading.Condition()

    def enter(self, item: Any, stop: Optional[threading.Event] = None) -> bool:
        if self.limit is None or self.size is None:
            return True
        n = self.size(item)
        with self.cond:
            while self.held and self.held + n > self.limit:
                if stop is not None and stop.is_set():
                    return False
                self.cond.wait(0.1)
            self.held += n
        return True

    def leave(self, item: Any) -> None:
        if self.limit is None or self.size is None:
            return
        with self.cond:
            self.held -= self.size(item)
            self.cond.notify_all()


@dataclass
class StageTime:
    """What one stage of a pipeline did (all its threads together): ``items`` handled, ``wall``
    seconds spent inside its work (summed over its threads) and ``cpu`` seconds those threads
    used meanwhile. ``wall`` well above ``cpu`` on a machine with idle cores is waiting: for the
    disk, or for the GIL after each call that gave it away."""

    items: int = 0
    wall: float = 0.0
    cpu: float = 0.0

    def __add__(self, other: "StageTime") -> "StageTime":
        return StageTime(self.items + other.items, self.wall + other.wall, self.cpu + other.cpu)


class StageClock:
    """Times a stage's work from any of its threads (two clock reads per item)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._time = StageTime()

    def add(self, items: int, wall: float, cpu: float) -> None:
        with self._lock:
            self._time = self._time + StageTime(items, wall, cpu)

    def timed(self, fn: Callable[..., R]) -> Callable[..., R]:
        """``fn``, each call counted as one item."""
        def call(*args: Any) -> R:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args)
            finally:
                self.add(1, time.perf_counter() - wall, time.thread_time() - cpu)
        return call

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, producing each one counted as an item (on the thread that iterates)."""
        source = iter(items)
        while True:
            wall, cpu = time.perf_counter(), time.thread_time()
            item = next(source, _DONE)
            if item is _DONE:
                return
            self.add(1, time.perf_counter() - wall, time.thread_time() - cpu)
            yield item

    def snapshot(self) -> StageTime:
        with self._lock:
            return StageTime(self._time.items, self._time.wall, self._time.cpu)


class ThreadClock:
    """The wall and CPU time of the calling thread from its creation to :meth:`stop`, waits
    included (the thread that runs the model; an encoder's flush at the end), and the ``items``
    it counts."""

    def __init__(self) -> None:
        self.items = 0
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def stop(self) -> StageTime:
        return StageTime(self.items, time.perf_counter() - self._wall, time.thread_time() - self._cpu)


def prefetch(items: Iterable[T], depth: int = 4, name: str = "prefetch",
             max_bytes: Optional[int] = None, size: Optional[Callable[[T], int]] = None) -> Iterator[T]:
    """Iterate ``items`` in a background thread, ``depth`` items (and ``max_bytes``) ahead.

    Exceptions raised by the producer are re-raised in the consumer, after the items produced before
    them (so a truncated video still yields every decoded frame first). Closing the returned
    generator early stops the producer.
    """
    q: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    gate = _ByteGate(max_bytes, size)

    def produce() -> None:
        try:
            for item in items:
                if not gate.enter(item, stop) or not _put(q, item, stop):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            _put(q, _Failure(exc), stop)
            return
        _put(q, _DONE, stop)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            gate.leave(item)
            yield item
    finally:
        stop.set()
        _drain(q)
        thread.join(timeout=5)


def _put(q: "queue.Queue[Any]", item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(q: "queue.Queue[Any]") -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


class BackgroundWorker:
    """Run ``fn(item)`` for each submitted item in one background thread, in order.

    Used for encoding/writing: ``submit`` blocks when ``depth`` items are waiting; ``close`` waits
    for everything submitted and re-raises the first error. An error stops further work and is
    raised at the next ``submit`` or at ``close``.
    """

    def __init__(self, fn: Callable[[Any], None], depth: int = 4, name: str = "writer",
                 max_bytes: Optional[int] = None, size: Optional[Callable[[Any], int]] = None) -> None:
        self._fn = fn
        self._q: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, depth))
        self._gate = _ByteGate(max_bytes, size)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            try:
                if self._error is None:
                    self._fn(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc
            finally:
                self._gate.leave(item)
                del item  # the next get() may wait long: hold no reference meanwhile

    def submit(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._gate.enter(item)
        self._q.put(item)

    def close(self) -> None:
        self._q.put(_DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "BackgroundWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------ worker pools


def default_workers() -> int:
    """Threads of a decode or encode pool: one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, depth: Optional[int] = None,
                name: str = "pool", max_bytes: Optional[int] = None,
                size: Optional[Callable[[R], int]] = None) -> Iterator[R]:
    """``fn(item)`` for each of ``items`` on ``workers`` threads; the results in the order of ``items``.

    Bounded: at most ``depth`` items (default twice ``workers``) are started and not yet consumed;
    with ``max_bytes`` and ``size``, no further item starts while the started ones would hold more
    than ``max_bytes``, each counted at ``size`` of the latest result (the images of one folder
    are alike; one item always runs, and only one until the first result is known). Items are
    taken from ``items`` on the caller's thread, when it asks for a result (give a list or a cheap
    iterator).

    An exception of ``fn`` is raised here at its item's turn, after every result before it. Closing
    the generator early drops the items not started and waits for the running ones.
    """
    workers = max(1, int(workers))
    depth = max(1, depth or 2 * workers)
    source = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    started: Deque["Future[R]"] = deque()
    latest: Optional[int] = None  # bytes of the latest result: the estimate for a started one
    try:
        while True:
            while len(started) < depth and (max_bytes is None or size is None or not started or (
                    latest is not None and (len(started) + 1) * latest <= max_bytes)):
                item = next(source, _DONE)
                if item is _DONE:
                    break
                started.append(pool.submit(fn, item))
            if not started:
                return
            result = started.popleft().result()
            if size is not None:
                latest = size(result)
            yield result
            del result  # the next wait may be long: hold no reference meanwhile
    finally:
        for future in started:
            future.cancel()
        pool.shutdown(wait=True)


class _TurnGate:
    """A counter of turns passed; :meth:`wait` blocks until it reaches a given number. Only the
    thread whose turn comes next is woken (a writer pool has one thread per core; waking them all
    at every turn cost each frame a round of wake-ups, all queued on the GIL)."""

    def __init__(self) -> None:
        self.next = 0
        self._lock = threading.Lock()
        self._waiting: Dict[int, threading.Event] = {}

    def wait(self, seq: int) -> None:
        with self._lock:
            if self.next >= seq:
                return
            event = self._waiting.setdefault(seq, threading.Event())
        event.wait()

    def advance(self) -> None:
        with self._lock:
            self.next += 1
            event = self._waiting.pop(self.next, None)
        if event is not None:
            event.set()


class Turn:
    """One item's place in the order of a :class:`WorkerPool`: ``with turn:`` waits until every
    item submitted before it has passed its turn, and passes it on leaving (once; later uses do
    not wait). Work done inside it happens in submission order, e.g. deciding whether an output
    may still be committed after an earlier one hit a full disk. An item that does not use its
    turn passes it when it ends."""

    def __init__(self, seq: int, gate: _TurnGate) -> None:
        self.seq, self._gate = seq, gate
        self.passed = False

    def __enter__(self) -> "Turn":
        if not self.passed:
            self._gate.wait(self.seq)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.passed:
            self.passed = True
            self._gate.advance()


class WorkerPool:
    """Run ``fn(item, turn)`` for each submitted item on ``workers`` threads, in submission order
    where it matters: the caller's side of :func:`ordered_map`, for encoders and writers.

    ``submit`` blocks while ``depth`` items (default twice ``workers``) are waiting or running, or
    while their ``size(item)`` would pass ``max_bytes`` (one item always fits). ``done(result)``
    is called for each result in submission order, on the submitting thread (in ``submit`` and
    ``close``), so what it records keeps the input order; ``turn`` (a :class:`Turn`) orders a step
    inside ``fn``. The first exception of ``fn`` in submission order is raised at the next
    ``submit`` or at ``close``; the items after it that have not started are skipped. ``close``
    waits for everything submitted (also when called while unwinding an interrupt).
    """

    def __init__(self, fn: Callable[[Any, Turn], Any], workers: int, depth: Optional[int] = None,
                 name: str = "pool", max_bytes: Optional[int] = None,
                 size: Optional[Callable[[Any], int]] = None,
                 done: Optional[Callable[[Any], None]] = None) -> None:
        workers = max(1, int(workers))
        self._fn, self._done = fn, done
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._slots = threading.Semaphore(max(1, depth or 2 * workers))
        self._bytes = _ByteGate(max_bytes, size)
        self._turns = _TurnGate()
        self._futures: Deque[Future] = deque()
        self._seq = 0
        self._failed_at: Optional[int] = None  # seq of the earliest item whose fn raised
        self._lock = threading.Lock()
        self._error: Optional[BaseException] = None
        self._closed = False

    def _run(self, item: Any, turn: Turn) -> Any:
        try:
            if self._failed_at is not None and turn.seq > self._failed_at:
                return _SKIPPED
            return self._fn(item, turn)
        except BaseException:
            with self._lock:
                if self._failed_at is None or turn.seq < self._failed_at:
                    self._failed_at = turn.seq
            raise
        finally:
            with turn:  # passes it if fn did not
                pass
            self._bytes.leave(item)
            self._slots.release()

    def submit(self, item: Any) -> None:
        """Queue ``item``; raises the first error of an earlier item instead, if there is one."""
        self._retire(wait=False)
        if self._error is not None:
            raise self._error
        self._slots.acquire()
        self._bytes.enter(item)
        turn = Turn(self._seq, self._turns)
        self._seq += 1
        self._futures.append(self._pool.submit(self._run, item, turn))

    def _retire(self, wait: bool) -> None:
        """Hand finished results to ``done`` in submission order (all of them with ``wait``)."""
        while self._futures and (wait or self._futures[0].done()):
            future = self._futures.popleft()
            try:
                result = future.result()
            except BaseException as exc:  # noqa: BLE001 - the first one is raised to the caller
                self._error = self._error or exc
                continue
            if result is not _SKIPPED and self._done is not None:
                self._done(result)

    def close(self) -> None:
        """Wait for every submitted item, hand out their results; raise the first error."""
        if not self._closed:
            self._closed = True
            try:
                self._retire(wait=True)
            finally:
                self._pool.shutdown(wait=True)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
