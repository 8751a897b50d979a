"""Overlap decoding, compute and encoding with bounded queues and background threads.

PyAV, OpenCV and torch release the GIL in their heavy loops, so threads are enough to hide a CPU
codec behind the model (or the model behind a slow disk). Queues are bounded: memory stays at a few
batches whatever the length of the input.
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


def prefetch(items: Iterable[T], depth: int = 4, name: str = "prefetch") -> Iterator[T]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead.

    Exceptions raised by the producer are re-raised in the consumer, after the items produced before
    them (so a truncated video still yields every decoded frame first). Closing the returned
    generator early stops the producer.
    """
    q: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(q, item, stop):
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

    def __init__(self, fn: Callable[[Any], None], depth: int = 4, name: str = "writer") -> None:
        self._fn = fn
        self._q: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, depth))
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue
            try:
                self._fn(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc

    def submit(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
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
