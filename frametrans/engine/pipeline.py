"""Overlap decoding, compute and encoding with bounded queues and background threads.

PyAV, OpenCV and torch release the GIL in their heavy loops, so threads are enough to hide a CPU
codec behind the model (or the model behind a slow disk). Queues are bounded in items and, when
``max_bytes`` is given, in bytes (``size(item)`` each; one item always fits): memory stays at a few
frames whatever the length of the input, and within the memory budget whatever the frame size.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
_DONE = object()


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
