"""NuMap: PaPy's semantics, and the faults PaPy had (lost items, hangs, pickling)."""

from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing
import os
import signal
import threading
import time

import pytest

from papycluster import NuMap, NuMapTimeoutError, RemoteError, WorkerLostError
from tests.plugins.helpers import collect


def square(x):
    return x * x


def invert(x):
    return 1 / x


def sleepy(x):
    time.sleep(x)
    return x


def pid_of(_):
    return os.getpid()


def die_on(x, bad):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def segfault_on(x, bad):
    if x == bad:
        faulthandler.disable()  # pytest's handler would print a dump for this crash
        ctypes.string_at(0)
    return x


class Unpicklable(Exception):
    def __init__(self, lock):
        super().__init__("has a lock")
        self.lock = lock

    def __reduce__(self):
        raise TypeError("cannot pickle Unpicklable")


def raise_unpicklable(x):
    raise Unpicklable(threading.Lock())


def return_lock(x):
    return threading.Lock()


def _catch(iterator):
    try:
        return next(iterator)
    except Exception as exc:
        return exc


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_maps_in_order(worker_type):
    numap = NuMap(worker_type=worker_type, worker_num=2)
    task = numap.add_task(square, range(50))
    numap.start()
    assert list(task) == [x * x for x in range(50)]
    numap.stop()


def test_defaults_follow_papy():
    numap = NuMap()
    assert (numap.worker_type, numap.worker_num, numap.stride, numap.buffer) == (
        "process", os.cpu_count(), os.cpu_count(), None)
    assert NuMap(stride=5).worker_num == 5
    remote = NuMap(worker_num=0, worker_remote=[("h1", 1), ("h2", 4)])
    assert remote.stride == 5
    assert remote.worker_remote == [("h1", 1), ("h2", 4)]


def test_constructor_errors():
    with pytest.raises(ValueError):
        NuMap(square, [])  # an empty iterable counts as missing, as in PaPy
    with pytest.raises(ValueError):
        NuMap(worker_type="fibre")
    numap = NuMap(worker_type="thread")
    with pytest.raises(RuntimeError):
        numap.next()
    numap.add_task(square, [1])
    numap.start()
    with pytest.raises(RuntimeError):
        numap.add_task(square, [2])
    numap.stop()


def test_func_and_iterable_start_at_once():
    numap = NuMap(square, [1, 2, 3], worker_type="thread")
    assert list(numap) == [1, 4, 9]
    numap.stop()


def test_exception_is_that_items_result_and_iteration_goes_on():
    numap = NuMap(invert, [1, 0, 2], worker_num=2)
    out = collect(numap)
    assert out[0] == 1.0 and out[2] == 0.5
    assert isinstance(out[1], ZeroDivisionError)
    assert "in invert" in out[1].remote_traceback
    assert any("raised in pid" in note for note in out[1].__notes__)
    numap.stop()


def test_lambdas_and_closures_run_in_process_pools():
    offset = 10
    numap = NuMap(worker_num=2)
    first = numap.add_task(lambda x: x + offset, range(5))
    second = numap.add_task(lambda x, k: x * k, range(5), args=(3,))
    numap.start()
    # tasks of one NuMap are read interleaved (PaPy's rule for a bounded buffer)
    assert list(zip(first, second, strict=True)) == [(10, 0), (11, 3), (12, 6), (13, 9),
                                                     (14, 12)]
    numap.stop()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_start_methods_without_fork(method):
    numap = NuMap(worker_num=2, start_method=method)
    task = numap.add_task(lambda x: (x, multiprocessing.current_process().name), range(6))
    numap.start()
    results = list(task)
    assert [x for x, _ in results] == list(range(6))
    numap.stop()


def record_and_return(x, log):
    log.append(x)
    return x


def test_weave_takes_stride_items_per_task():
    log: list = []
    numap = NuMap(worker_type="thread", worker_num=1, stride=2)
    left = numap.add_task(record_and_return, ["L0", "L1", "L2", "L3"], args=(log,))
    right = numap.add_task(record_and_return, ["R0", "R1", "R2", "R3"], args=(log,))
    numap.start()
    for _ in range(2):
        next(left), next(left), next(right), next(right)
    assert log == ["L0", "L1", "R0", "R1", "L2", "L3", "R2", "R3"]
    numap.stop()


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_buffer_bounds_the_tasklets_in_flight():
    log: list = []
    numap = NuMap(worker_type="thread", worker_num=2, stride=2, buffer=6)
    left = numap.add_task(record_and_return, [f"L{i}" for i in range(8)], args=(log,))
    numap.add_task(record_and_return, [f"R{i}" for i in range(8)], args=(log,))
    numap.start()
    wait_for(lambda: len(log) == 6)
    time.sleep(0.3)  # give a wrong implementation the chance to admit more
    assert sorted(log) == sorted(["L0", "L1", "R0", "R1", "L2", "L3"])
    assert next(left) == "L0" and next(left) == "L1"
    wait_for(lambda: len(log) == 8)
    time.sleep(0.3)
    assert sorted(log[6:]) == ["R2", "R3"]
    numap.stop()


def test_buffer_backpressure_holds_for_process_pools_too():
    pulled: list = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    numap = NuMap(worker_num=2, buffer=4)
    task = numap.add_task(square, source())
    numap.start()
    time.sleep(0.5)
    assert len(pulled) <= 5  # 4 admitted, at most one pulled and waiting for room
    assert next(task) == 0
    numap.stop()


def test_unordered_returns_in_completion_order():
    numap = NuMap(worker_type="thread", worker_num=3, ordered=False)
    task = numap.add_task(sleepy, [0.6, 0.3, 0.0])
    numap.start()
    assert list(task) == [0.0, 0.3, 0.6]
    numap.stop()


def test_chained_tasks_in_one_and_across_numaps():
    first = NuMap(worker_num=2)
    squares = first.add_task(square, range(10))
    plus_one = first.add_task(lambda x: x + 1, squares)
    second = NuMap(worker_type="thread", worker_num=2)
    halves = second.add_task(lambda x: x / 2, plus_one)
    first.start()
    second.start()
    assert list(halves) == [(x * x + 1) / 2 for x in range(10)]
    first.stop()
    second.stop()


def test_upstream_error_travels_through_a_chain():
    first = NuMap(worker_type="thread", worker_num=1)
    inverted = first.add_task(invert, [1, 0, 4])
    second = NuMap(worker_type="thread", worker_num=1)
    doubled = second.add_task(lambda x: 2 * x, inverted)
    first.start()
    second.start()
    out = collect(doubled)
    assert out[0] == 2.0 and out[2] == 0.5
    assert isinstance(out[1], ZeroDivisionError)
    first.stop()
    second.stop()


def read_with_timeouts(numap, task, timeouts):
    """next() with each timeout in turn, then without: results and 'timeout' marks."""
    out = []
    for timeout in [*timeouts, *[None] * 10]:
        try:
            out.append(numap.next(timeout=timeout, task=task.task))
        except TimeoutError:  # NuMapTimeoutError is a builtin TimeoutError too
            out.append("timeout")
        except StopIteration:
            return out
    return out


def test_timeout_without_skip_delivers_the_late_result_later():
    numap = NuMap(worker_type="thread", worker_num=2, buffer=8)
    task = numap.add_task(sleepy, [0.0, 1.0, 0.0, 0.0])
    numap.start()
    assert read_with_timeouts(numap, task, [5, 0.2]) == [0.0, "timeout", 1.0, 0.0, 0.0]
    numap.stop()


def test_timeout_with_skip_drops_the_late_result():
    numap = NuMap(worker_type="thread", worker_num=2, buffer=8, skip=True)
    task = numap.add_task(sleepy, [0.0, 1.0, 0.0, 0.0])
    numap.start()
    assert read_with_timeouts(numap, task, [5, 0.2]) == [0.0, "timeout", 0.0, 0.0]
    with pytest.raises(NuMapTimeoutError):
        raise NuMapTimeoutError("also a multiprocessing.TimeoutError")
    assert issubclass(NuMapTimeoutError, multiprocessing.TimeoutError)
    numap.stop()


def test_get_task_and_track():
    numap = NuMap(worker_type="thread", worker_num=2)
    numap.add_task(square, range(4), track=True)
    numap.start()
    assert list(numap.get_task(0)) == [0, 1, 4, 9]
    assert numap._tasks_tracked[0] == {0: 0, 1: 1, 2: 4, 3: 9}
    numap.stop()


def test_stop_in_the_middle_and_reuse():
    numap = NuMap(worker_num=2)
    task = numap.add_task(square, range(10_000))
    numap.start()
    assert next(task) == 0
    numap.stop()
    assert not numap._started
    task = numap.add_task(square, range(5))
    numap.start()
    assert list(task) == [0, 1, 4, 9, 16]
    numap.stop()


def test_stop_with_ends_drains_the_task():
    numap = NuMap(worker_num=2)
    numap.add_task(square, range(20))
    numap.start()
    numap.stop(ends=[0])
    assert not numap._started


def test_unpicklable_exception_result_and_item_become_errors():
    numap = NuMap(worker_num=1)
    bad_exc = numap.add_task(raise_unpicklable, [1])
    bad_result = numap.add_task(return_lock, [1])
    bad_item = numap.add_task(square, [threading.Lock(), 3])
    numap.start()
    exc, res, item_error = collect(bad_exc)[0], collect(bad_result)[0], _catch(bad_item)
    assert isinstance(exc, RemoteError) and "Unpicklable" in str(exc)
    assert isinstance(res, RemoteError) and "could not be pickled" in str(res)
    item_error, nine = item_error, next(bad_item)
    assert isinstance(item_error, Exception) and nine == 9
    numap.stop()


def picky_on(x, bad=3):
    """Raises, for ``bad``, an exception that pickles on the worker but cannot be
    rebuilt by the manager (its ``__init__`` wants other arguments than its args)."""
    class Picky(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}-{b}")

    if x == bad:
        raise Picky(1, 2)
    return x


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_a_value_the_manager_cannot_rebuild_is_an_error_item(worker_type):
    numap = NuMap(worker_num=2, worker_type=worker_type)
    task = numap.add_task(picky_on, range(8))
    numap.start()
    out = collect(task)
    numap.stop()
    if worker_type == "thread":  # nothing is pickled: the exception itself
        assert type(out[3]).__name__ == "Picky"
    else:
        assert isinstance(out[3], RemoteError), out
        assert "Picky" in str(out[3]) and "pid" in str(out[3]), str(out[3])
    assert out[:3] + out[4:] == [0, 1, 2, 4, 5, 6, 7]


def test_a_killed_worker_loses_no_item_and_the_pool_goes_on():
    numap = NuMap(worker_num=2)
    task = numap.add_task(die_on, range(20), args=(7,))
    numap.start()
    out = collect(task)
    assert len(out) == 20
    assert isinstance(out[7], WorkerLostError)
    assert "died" in str(out[7])
    assert [x for i, x in enumerate(out) if i != 7] == [x for x in range(20) if x != 7]
    numap.stop()


def die_once_on(x, bad, marker):
    """Killed (as by the OOM killer) the first time it runs ``bad``, fine after."""
    if x == bad and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_an_item_whose_worker_was_killed_runs_again_on_another(tmp_path):
    numap = NuMap(worker_num=2)
    task = numap.add_task(die_once_on, range(20), args=(7, str(tmp_path / "killed")))
    numap.start()
    out = collect(task)
    numap.stop()
    assert (tmp_path / "killed").exists()
    assert out == list(range(20))


def test_an_item_that_keeps_killing_its_worker_is_an_error_after_the_retries():
    numap = NuMap(worker_num=2, retries=1)
    task = numap.add_task(die_on, range(10), args=(4,))
    numap.start()
    out = collect(task)
    numap.stop()
    assert isinstance(out[4], WorkerLostError) and "after 2 attempts" in str(out[4])
    assert [x for i, x in enumerate(out) if i != 4] == [x for x in range(10) if x != 4]


def test_a_segfault_is_an_error_item():
    numap = NuMap(worker_num=1)
    task = numap.add_task(segfault_on, range(4), args=(2,))
    numap.start()
    out = collect(task)
    assert out[:2] == [0, 1] and out[3] == 3
    assert isinstance(out[2], WorkerLostError)
    numap.stop()


def test_worker_processes_are_gone_after_stop():
    numap = NuMap(worker_num=2)
    task = numap.add_task(pid_of, range(20))
    numap.start()
    pids = set(task)
    assert pids and os.getpid() not in pids
    numap.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
