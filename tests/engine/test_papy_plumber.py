"""PaPy's Plumber: pause then stop keeps the pipeline consistent (ported from PaPy
1.0.8's test_core, test_start_run_finish_stop2; issue 16 point 8).

Whenever the pause comes, every item taken from the input iterator is run through
every piper before the pools stop: the tracked pipers have each tracked exactly as
many items as were pulled, which is the next number the input would give.
"""

from __future__ import annotations

import itertools
import logging
import threading

import pytest

from papycluster import NuMap, Piper, Plumber, Worker


def power(inbox, n=2):
    return inbox[0] ** n


def keep(inbox, sink, lock):
    with lock:
        sink.append(inbox[0])
    return inbox[0]


def tracked(plumber, piper):
    [results] = plumber.stats["pipers_tracked"][piper]
    return results


def pause_and_stop(plumber, data):
    plumber.start([data])
    plumber.run()
    plumber.pause()
    plumber.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_two_tracked_parallel_pipers_track_every_pulled_item(worker_type):
    first = Piper(power, parallel=NuMap(worker_type=worker_type), track=True)
    second = Piper(power, parallel=NuMap(worker_type=worker_type), track=True)
    plumber = Plumber()
    plumber.add_pipe((first, second))
    for _ in range(3):
        data = iter(range(10 ** 8))
        pause_and_stop(plumber, data)
        pulled = next(data)
        assert len(tracked(plumber, first)) == len(tracked(plumber, second)) == pulled
        assert tracked(plumber, second) == {i: i ** 4 for i in range(pulled)}


@pytest.mark.timeout(120)
def test_linear_then_parallel_tracks_every_pulled_item():
    linear = Piper(power)
    parallel = Piper(power, parallel=NuMap(worker_type="thread"), track=True)
    plumber = Plumber(pipes=[(linear, parallel)])
    data = iter(range(10000))
    pause_and_stop(plumber, data)
    assert len(tracked(plumber, parallel)) == next(data)


@pytest.mark.timeout(120)
def test_parallel_then_linear_tracks_every_pulled_item():
    parallel = Piper(power, parallel=NuMap(), track=True)
    out: list = []
    linear = Piper(Worker(keep, (out, threading.Lock())))
    plumber = Plumber(pipes=[(parallel, linear)])
    data = iter(range(10000))
    pause_and_stop(plumber, data)
    pulled = next(data)
    assert len(tracked(plumber, parallel)) == pulled
    assert out == [i * i for i in range(pulled)]  # and each reached the output
    assert plumber.stats["items_out"] == pulled


@pytest.mark.timeout(120)
def test_stop_after_run_and_pause_again_loses_nothing():
    out: list = []
    first = Piper(power, parallel=NuMap(worker_type="thread", worker_num=2, buffer=4))
    last = Piper(Worker(keep, (out, threading.Lock())))
    plumber = Plumber(pipes=[(first, last)])
    counter = itertools.count()
    plumber.start([counter])
    plumber.run()
    plumber.pause()
    plumber.run()
    plumber.pause()
    plumber.stop()
    assert out == [i * i for i in range(next(counter))]


@pytest.mark.timeout(120)
def test_stop_with_a_timeout_gives_up_on_an_input_that_blocks(caplog):
    gate, blocked = threading.Event(), threading.Event()

    def source():
        yield 1
        blocked.set()
        gate.wait(60)  # the input blocks: the drain cannot end until it yields
        yield 2

    first = Piper(power, parallel=NuMap(worker_type="thread", worker_num=1))
    last = Piper(power)
    plumber = Plumber(pipes=[(first, last)])
    plumber.start([source()])
    assert blocked.wait(60)
    try:
        with caplog.at_level(logging.WARNING, logger="papycluster.dagger"):
            plumber.stop(timeout=0.5)
        assert "did not reach the outputs" in caplog.text and last.name in caplog.text
        assert not first.started and not first.parallel._started
    finally:
        gate.set()
