"""Piper: consume, produce, spawn, repeat, timeout, debug, track; errors as items."""

from __future__ import annotations

import time

import pytest

from papycluster import NuMap, Piper, PiperError, Worker, WorkerError


def double(inbox):
    return inbox[0] * 2


def total(inbox):
    return sum(box[0] for box in inbox)


def pair(inbox):
    return (inbox[0], -inbox[0])


def slow_on_three(inbox):
    if inbox[0] == 3:
        time.sleep(1.5)
    return inbox[0]


def fail_on_two(inbox):
    if inbox[0] == 2:
        raise ValueError("two")
    return inbox[0]


def run(piper, data):
    piper.connect([data])
    piper.start()
    out = []
    while True:
        try:
            out.append(piper.next())
        except StopIteration:
            break
    if piper.parallel:
        piper.stop()
    return out


@pytest.mark.parametrize("parallel", [False, "thread", "process"])
def test_linear_and_parallel_pipers_map_in_order(parallel):
    numap = NuMap(worker_type=parallel, worker_num=2) if parallel else False
    assert run(Piper(double, parallel=numap), range(10)) == [x * 2 for x in range(10)]


def test_consume_groups_inputs_and_keeps_the_short_tail():
    assert run(Piper(total, consume=3), range(7)) == [0 + 1 + 2, 3 + 4 + 5, 6]


def test_produce_unpacks_and_repeat_repeats():
    assert run(Piper(pair, produce=2), [1, 2]) == [1, -1, 2, -2]
    assert run(Piper(double, produce=2, repeat=True), [1, 2]) == [2, 2, 4, 4]


def test_produce_with_an_error_keeps_the_item_count():
    out = run(Piper(Worker((fail_on_two, pair)), produce=2), [1, 2, 3])
    assert out[:2] == [1, -1] and out[4:] == [3, -3]
    assert all(isinstance(x, PiperError) for x in out[2:4])


def test_spawn_splits_the_inbox_over_tasks_and_keeps_order():
    numap = NuMap(worker_type="thread", worker_num=2, stride=2)
    assert run(Piper(double, parallel=numap, spawn=3), range(11)) == [
        x * 2 for x in range(11)]


def test_worker_error_becomes_a_piper_error_item():
    out = run(Piper(fail_on_two, parallel=NuMap(worker_num=2)), [1, 2, 3])
    assert out[0] == 1 and out[2] == 3
    assert isinstance(out[1], PiperError)
    worker_error = out[1].args[0]
    assert isinstance(worker_error, WorkerError)
    assert isinstance(worker_error.exception, ValueError)
    assert worker_error.inbox == [2] and "fail_on_two" in worker_error.traceback


def test_debug_raises_instead():
    piper = Piper(fail_on_two, debug=True)
    piper.connect([[1, 2]])
    piper.start()
    assert piper.next() == 1
    with pytest.raises(PiperError):
        piper.next()


def test_timeout_gives_exactly_one_item_per_input():
    numap = NuMap(worker_type="thread", worker_num=2, buffer=10)
    out = run(Piper(slow_on_three, parallel=numap, timeout=0.5), [1, 2, 3, 4, 5])
    assert len(out) == 5
    assert out[:2] == [1, 2] and out[3:] == [4, 5]
    assert isinstance(out[2], PiperError) and isinstance(out[2].args[0], TimeoutError)


def test_track_keeps_results_by_index():
    numap = NuMap(worker_type="thread", worker_num=2)
    piper = Piper(double, parallel=numap, track=True)
    assert run(piper, [5, 6]) == [10, 12]
    with pytest.raises(PiperError):
        Piper(double, track=True)  # tracking needs a NuMap


def test_invalid_pipers_and_transitions():
    with pytest.raises(PiperError):
        Piper(42)
    with pytest.raises(PiperError):
        Piper(double, consume=0)
    piper = Piper(double)
    with pytest.raises(PiperError):
        piper.start()  # not connected
    piper.connect([[1]])
    with pytest.raises(PiperError):
        piper.connect([[1]])
    assert Piper(piper).worker is piper.worker
