"""Worker pools (frametrans.engine.pipeline.ordered_map / WorkerPool) and the folder path built on
them: order kept whatever the timing, bounded memory, the first error reported with its item, a
full disk that stops the job at the same file whatever the number of threads."""

from __future__ import annotations

import errno
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frametrans.engine.pipeline import WorkerPool, default_workers, ordered_map


def _jitter(seed: int) -> None:
    time.sleep(random.Random(seed).uniform(0, 0.004))


class _Live:
    """Counts items started and not yet consumed; remembers the most at once."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.lock = threading.Lock()

    def up(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def down(self) -> None:
        with self.lock:
            self.now -= 1


# ------------------------------------------------------------------------------------ ordered_map


def test_ordered_map_keeps_the_order_of_the_items_with_random_delays():
    def square(i: int) -> int:
        _jitter(i)
        return i * i

    assert list(ordered_map(square, range(60), workers=4)) == [i * i for i in range(60)]


def test_ordered_map_raises_the_first_error_at_its_turn_after_the_results_before_it():
    started = []

    def fn(i: int) -> int:
        started.append(i)
        _jitter(i)
        if i in (7, 9):
            raise ValueError(f"item {i} is bad")
        return i

    got = []
    with pytest.raises(ValueError, match="item 7 is bad"):
        for x in ordered_map(fn, range(100), workers=3, depth=4):
            got.append(x)
    assert got == list(range(7))
    assert max(started) < 7 + 4 + 1  # nothing far past the failure was started


def test_ordered_map_holds_at_most_depth_items_and_stays_within_max_bytes():
    live = _Live()

    def fn(i: int) -> bytes:
        live.up()
        _jitter(i)
        return bytes(1000)

    for depth, max_bytes, bound in ((5, None, 5), (8, 3000, 3)):
        live.now = live.most = 0
        for _ in ordered_map(fn, range(40), workers=4, depth=depth, max_bytes=max_bytes, size=len):
            time.sleep(0.001)  # a slow consumer: the pool runs ahead as far as it may
            live.down()
        assert 1 < live.most <= bound, (depth, max_bytes, live.most)


def test_ordered_map_closed_early_starts_nothing_more():
    started = []

    def fn(i: int) -> int:
        started.append(i)
        return i

    gen = ordered_map(fn, range(1000), workers=2, depth=4)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    n = len(started)
    time.sleep(0.02)
    assert len(started) == n <= 3 + 4


# ------------------------------------------------------------------------------------- WorkerPool


def test_worker_pool_hands_results_and_turns_out_in_submission_order():
    done, turns = [], []

    def fn(i: int, turn) -> int:
        _jitter(i)
        with turn:
            turns.append(i)
        return -i

    with WorkerPool(fn, workers=4, done=done.append) as pool:
        for i in range(50):
            pool.submit(i)
    assert done == [-i for i in range(50)]
    assert turns == list(range(50))


def test_worker_pool_raises_the_first_error_in_submission_order_and_skips_later_items():
    ran = []

    def fn(i: int, turn) -> int:
        time.sleep(0.02 if i == 3 else 0.0)  # item 3 fails last, after item 5
        ran.append(i)
        if i in (3, 5):
            raise OSError(f"item {i} failed")
        return i

    done = []
    pool = WorkerPool(fn, workers=3, depth=3, done=done.append)
    with pytest.raises(OSError, match="item 3 failed"):
        for i in range(40):
            pool.submit(i)
        pool.close()
    with pytest.raises(OSError, match="item 3 failed"):
        pool.close()  # closing again says the same
    assert done[:3] == [0, 1, 2]
    assert max(ran) < 3 + 3 + 3  # items queued after the failure were skipped or never submitted


def test_worker_pool_bounds_items_waiting_or_running():
    live = _Live()

    def fn(i: int, turn) -> None:
        _jitter(i)
        live.down()

    with WorkerPool(fn, workers=3, depth=4, max_bytes=None) as pool:
        for i in range(40):
            live.up()  # counted from submission until fn ends
            pool.submit(i)
    assert live.now == 0 and live.most <= 4 + 1  # +1: counted before submit blocks


def test_turns_pass_in_order_one_waiter_after_another():
    """Waiters of turns 1..N (started in random order, each woken by the turn before it) go in
    order; no waiter is left registered; a turn already passed does not wait."""
    from frametrans.engine.pipeline import _TurnGate

    gate, order = _TurnGate(), []

    def waiter(seq: int) -> None:
        gate.wait(seq)
        order.append(seq)
        gate.advance()

    seqs = list(range(1, 13))
    random.Random(3).shuffle(seqs)
    threads = [threading.Thread(target=waiter, args=(s,)) for s in seqs]
    for t in threads:
        t.start()
    time.sleep(0.05)
    assert order == []
    gate.advance()  # turn 0 passes: 1 goes, then 2...
    for t in threads:
        t.join(timeout=10)
    assert order == list(range(1, 13))
    assert not gate._waiting and gate.next == 13
    gate.wait(5)


def test_stage_clock_counts_calls_and_items_from_many_threads():
    """StageClock.timed counts every call on any thread, with its wall time (sleep: waiting, no
    CPU) and the thread's CPU time; iterate counts the items produced; ThreadClock the caller's."""
    from frametrans.engine.pipeline import ThreadClock, StageClock

    clock = StageClock()
    sleepy = clock.timed(lambda x: (time.sleep(0.01), x)[1])
    main = ThreadClock()
    assert list(ordered_map(sleepy, range(12), workers=4)) == list(range(12))
    t = clock.snapshot()
    assert t.items == 12 and t.wall >= 12 * 0.01 and t.cpu < t.wall / 2

    def busy():
        for i in range(3):
            end = time.thread_time() + 0.01
            while time.thread_time() < end:
                pass
            yield i
    produced = StageClock()
    assert list(produced.iterate(busy())) == [0, 1, 2]
    p = produced.snapshot()
    assert p.items == 3 and p.cpu >= 0.03 and p.wall >= p.cpu * 0.9
    main.items = 5
    m = main.stop()
    assert m.items == 5 and m.wall >= 0.05 and m.cpu >= 0.03  # 3 rounds of 4 sleeps, then 0.03 s busy


def test_default_workers_is_the_cores_of_this_process():
    assert 1 <= default_workers() <= (len(__import__("os").sched_getaffinity(0))
                                      if hasattr(__import__("os"), "sched_getaffinity") else 10**6)


# ----------------------------------------------------------------------- the folder path on pools


@pytest.fixture(scope="module")
def null():
    from frametrans.bench.models import null_translator

    return null_translator("cpu", batch_size=3)


def _pictures(folder: Path, n: int, bad=()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        if i in bad:
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # a PNG cut short
        else:
            Image.fromarray(rng.integers(0, 256, (12 + i % 3, 16, 3), dtype=np.uint8)).save(path)


def _apply(src: Path, dst: Path, translator, threads: int):
    from frametrans.bench.pipeline import apply_folder

    return apply_folder(src, dst, translator, threads)


@pytest.fixture
def slow_io(monkeypatch):
    """Random delays in every image read and write: the pools finish out of order."""
    from frametrans.io import images

    real_read, real_write = images.read_image, images.write_image

    def read(path, *a, **k):
        _jitter(hash(str(path)) % 1000)
        return real_read(path, *a, **k)

    def write(path, *a, **k):
        _jitter(hash(str(path)) % 997)
        return real_write(path, *a, **k)

    monkeypatch.setattr(images, "read_image", read)
    monkeypatch.setattr(images, "write_image", write)


@pytest.mark.parametrize("threads", [1, 4])
def test_folder_on_pools_keeps_every_picture_and_reports_bad_files_in_order(tmp_path, null, slow_io,
                                                                            threads):
    src, dst = tmp_path / "in", tmp_path / "out"
    _pictures(src, 14, bad=(4, 9))
    report = _apply(src, dst, null, threads)
    assert [Path(src) for src, _ in report.failed] == [src / "img04.png", src / "img09.png"]
    assert all(msg.startswith(f"{name}: ") for name, msg in report.failed)
    assert report.frames == 12
    assert report.written == [dst / f"img{i:02d}.png" for i in range(14) if i not in (4, 9)]
    stages = report.stages  # every file read (bad ones too), every output written, every frame run
    assert (stages["decode"].items, stages["main"].items, stages["encode"].items) == (14, 12, 12)
    assert all(t.wall > 0 and t.cpu > 0 for t in stages.values())
    for i in range(14):
        if i not in (4, 9):  # the null model: each output is its own input, not a neighbour's
            np.testing.assert_array_equal(np.asarray(Image.open(dst / f"img{i:02d}.png")),
                                          np.asarray(Image.open(src / f"img{i:02d}.png")))


@pytest.mark.parametrize("threads", [1, 4])
def test_full_disk_stops_at_the_same_file_whatever_the_threads(tmp_path, null, monkeypatch, threads):
    """The third output hits a full disk: the two before it are written, none after it appears
    (those already encoded by other threads are discarded in order), nothing half-written."""
    from frametrans.io import images

    src, dst = tmp_path / "in", tmp_path / "out"
    _pictures(src, 10)
    real_write = images.write_image

    def write(path, *a, **k):
        _jitter(hash(str(path)) % 991)
        if Path(path).name == "img02.png":
            time.sleep(0.2)  # the later outputs are encoded meanwhile (with several threads)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, *a, **k)

    monkeypatch.setattr(images, "write_image", write)
    report = _apply(src, dst, null, threads)
    assert sorted(p.name for p in dst.iterdir()) == ["img00.png", "img01.png"]  # no temporary files
    assert report.stopped and "No space left on device" in report.stopped
    assert [Path(s).name for s, _ in report.failed] == ["img02.png"]
    assert sorted(p.name for p in report.not_done) == [f"img{i:02d}.png" for i in range(3, 10)]


def test_folder_queues_hold_no_more_frames_than_the_memory_plan_counts(tmp_path, null, monkeypatch):
    """A folder's decode and encode pools keep twice their threads of frames, capped at what the
    memory plan counts per queue (queue_items: 8, or twice the cores): more I/O threads than
    cores do not add frames the budget does not see."""
    from frametrans.apply import images as folder_path
    from frametrans.engine import memory, pipeline

    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert pipeline.default_workers() == 6 and memory.queue_items() == 12
    runner = null.variants[0].runner
    assert runner.memory.queue_depth(100) == 12  # small frames: the item count, not the bytes, binds
    seen = {}
    real_map, real_pool = folder_path.ordered_map, folder_path.WorkerPool

    def ordered_map(*a, **k):
        seen["decode"] = k["depth"]
        return real_map(*a, **k)

    def worker_pool(*a, **k):
        seen["encode"] = k["depth"]
        return real_pool(*a, **k)

    monkeypatch.setattr(folder_path, "ordered_map", ordered_map)
    monkeypatch.setattr(folder_path, "WorkerPool", worker_pool)
    _pictures(tmp_path / "in", 5)
    for threads, depth in ((2, 4), (6, 12), (40, 12)):
        report = _apply(tmp_path / "in", tmp_path / f"out{threads}", null, threads)
        assert len(report.written) == 5 and seen == {"decode": depth, "encode": depth}, threads
