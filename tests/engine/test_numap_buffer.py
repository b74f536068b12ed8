"""The default NuMap buffer adapts, an explicit one is PaPy's exact bound, and idle
workers end (issue 13, points 5 and 8).

No timing here (bench/numap.py measures speed): each test counts what the NuMap
pulled from its input against what was read, or the processes and threads alive.
"""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from papycluster import NuMap
from papycluster.engine import numap as numap_module
from tests.plugins.helpers import collect


def inc(x):
    return x + 1


def size(x):
    return len(x)


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


class Counted:
    """A generator's worth of items that counts how many were pulled."""

    def __init__(self, items):
        self.items = items
        self.pulled = 0

    def __iter__(self):
        for item in self.items:
            self.pulled += 1
            yield item


def read_all(task, source, already=0):
    """Read every result; return them and the most items the NuMap held beyond what
    was read (``already``: results read before)."""
    lead, out = 0, []
    for result in task:
        out.append(result)
        lead = max(lead, source.pulled - already - len(out))
    return out, lead


def test_the_default_buffer_grows_beyond_papys_with_small_items():
    numap = NuMap(worker_num=2)
    floor = numap.stride * 1
    source = Counted(range(20_000))
    task = numap.add_task(inc, iter(source))
    numap.start()
    out, lead = read_all(task, source)
    assert out == [x + 1 for x in range(20_000)]
    assert numap._semaphore.capacity > floor
    assert lead > floor + 1  # more in flight than PaPy's stride * tasks (+1 waiting)
    numap.stop()


def test_the_default_buffer_stays_at_papys_with_16_mb_items():
    numap = NuMap(worker_num=2)
    floor = numap.stride * 1
    blob = bytes(16 << 20)
    source = Counted([blob] * 24)
    task = numap.add_task(size, iter(source))
    numap.start()
    out, lead = read_all(task, source)
    assert out == [16 << 20] * 24
    assert numap._semaphore.capacity == floor
    assert lead <= floor + 1
    numap.stop()


def test_the_bytes_bound_is_what_keeps_big_items_from_piling_up(monkeypatch):
    """The same 16 MB items with an unbounded byte budget do pile up: the test above
    would notice a NuMap that ignores the bytes in flight."""
    monkeypatch.setattr(numap_module, "BYTES_IN_FLIGHT", 1 << 40)
    numap = NuMap(worker_num=2)
    blob = bytes(16 << 20)
    source = Counted([blob] * 48)
    task = numap.add_task(size, iter(source))
    numap.start()
    out, _ = read_all(task, source)
    assert len(out) == 48
    assert numap._semaphore.capacity > numap.stride
    numap.stop()


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_an_explicit_buffer_is_exact(worker_type):
    numap = NuMap(worker_type=worker_type, worker_num=2, buffer=5)
    source = Counted(range(1000))
    task = numap.add_task(inc, iter(source))
    numap.start()
    wait_for(lambda: source.pulled >= 6)
    time.sleep(0.3)  # give a wrong implementation the chance to pull more
    assert source.pulled == 6  # 5 admitted, one pulled and waiting for room
    for expected in range(1, 4):
        assert next(task) == expected
    wait_for(lambda: source.pulled >= 9)
    time.sleep(0.3)
    assert source.pulled == 9
    out, lead = read_all(task, source, already=3)
    assert out == [x + 1 for x in range(3, 1000)]
    assert lead <= 6 and numap._semaphore.capacity == 5
    numap.stop()


def test_items_of_a_generator_that_blocks_are_never_held_back():
    """The sender batches what waits; an item is sent while the putter blocks on the
    next one (here the next one comes only after the first result was read)."""
    first_read = threading.Event()

    def source():
        yield 1
        assert first_read.wait(10), "the first item was held back"
        yield 2

    numap = NuMap(worker_num=2)
    task = numap.add_task(inc, source())
    numap.start()
    assert next(task) == 2
    first_read.set()
    assert next(task) == 3
    numap.stop()


def live_children():
    return len(multiprocessing.active_children())


def test_idle_process_workers_of_consumed_numaps_end():
    before = live_children()
    numaps = []
    for n in range(30):
        numap = NuMap(worker_num=2)
        task = numap.add_task(inc, range(n, n + 50))
        numap.start()
        assert list(task) == [x + 1 for x in range(n, n + 50)]
        numaps.append(numap)  # kept alive, never stopped
    wait_for(lambda: live_children() <= before)
    # Reused: a rerun starts workers again, as does a new start after stop().
    numap = numaps[-1]
    assert numap.rerun(0, 41, timeout=30) == (True, 42, None)
    numap.stop()
    task = numap.add_task(inc, [7, 8, 9])
    numap.start()
    assert list(task) == [8, 9, 10]
    wait_for(lambda: live_children() <= before)
    for numap in numaps:
        numap.stop()


def test_idle_thread_workers_end_and_unread_results_stay_readable():
    before = threading.active_count()
    numap = NuMap(worker_type="thread", worker_num=3, buffer=20)  # room for all
    task = numap.add_task(inc, range(10))
    numap.start()
    assert next(task) == 1
    wait_for(lambda: threading.active_count() <= before)
    assert list(task) == [x + 1 for x in range(1, 10)]  # read after the workers ended
    with pytest.raises(StopIteration):
        next(task)
    numap.stop()


def test_workers_that_still_have_work_do_not_end():
    numap = NuMap(worker_num=2, buffer=4)
    task = numap.add_task(inc, range(100))
    numap.start()
    assert next(task) == 1
    # The buffer stops the putter while results wait unread: the input is not all
    # consumed, so the workers stay.
    time.sleep(0.5)
    assert len(numap._slots) == 2 and all(s.worker.is_alive() for s in numap._slots)
    assert list(task) == [x + 1 for x in range(1, 100)]
    numap.stop()


def die_on(x, bad):
    import os
    import signal

    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_with_many_in_flight_only_the_item_that_kills_its_worker_fails():
    """A deep buffer puts several tasklets on each worker: those that died with the
    killer run again one at a time and cost no retry, even with retries=0."""
    from papycluster import WorkerLostError

    numap = NuMap(worker_num=2, buffer=40, retries=0)
    task = numap.add_task(die_on, range(60), args=(20,))
    numap.start()
    out = collect(task, WorkerLostError)
    numap.stop()
    assert len(out) == 60
    assert isinstance(out[20], WorkerLostError) and "item 20" in str(out[20])
    assert [x for i, x in enumerate(out) if i != 20] == [x for x in range(60) if x != 20]


def dump_it(x, kind):
    """A user's own function that dumps an item: nothing in its name says it parks."""
    from papycluster.workers import io

    return io.dump_item([bytes([x]) * 1000], kind)


@pytest.mark.parametrize("kind", ["file", "tcp"])
def test_workers_that_parked_items_stay_until_stop(kind):
    """Idle workers end, but not those holding items a loader has yet to take: a
    function of the user's that dumps (not known by its name) says so at run time."""
    before = live_children()
    numap = NuMap(worker_num=2)
    task = numap.add_task(dump_it, range(20), args=(kind,))
    numap.start()
    tickets = list(task)
    time.sleep(1.0)  # idle workers without parked items have ended by now
    assert live_children() == before + 2
    from papycluster.workers import io

    assert [bytes(io.load_item([tk]))[:1] for tk in tickets] == [bytes([x]) for x in range(20)]
    numap.stop()
    wait_for(lambda: live_children() <= before)
