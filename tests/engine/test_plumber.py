"""Plumber: whole pipelines, run/pause/run/wait/stop, stats and invalid transitions."""

from __future__ import annotations

import threading
import time

import pytest

from papycluster import NuMap, Piper, PiperError, Plumber, PlumberError, Worker

RESULTS: list = []
LOCK = threading.Lock()


def square(inbox):
    return inbox[0] ** 2


def negate(inbox):
    return -inbox[0]


def add(inbox):
    return inbox[0] + inbox[1]


def slow(inbox):
    time.sleep(0.01)
    return inbox[0]


def fail_on_five(inbox):
    if inbox[0] == 5:
        raise RuntimeError("five")
    return inbox[0]


def keep(inbox, sink):
    with LOCK:
        sink.append(inbox[0])
    return inbox[0]


def run_to_end(plumber, datas, timeout=60):
    plumber.start(datas)
    plumber.run()
    assert plumber.wait(timeout)
    plumber.stop()


def test_a_linear_pipeline_over_two_process_numaps():
    out: list = []
    first = Piper(square, parallel=NuMap(worker_num=2))
    second = Piper(negate, parallel=NuMap(worker_num=2))
    last = Piper(Worker(keep, (out,)))
    plumber = Plumber()
    plumber.add_pipe((first, second, last))
    run_to_end(plumber, [range(100)])
    assert out == [-(x * x) for x in range(100)]
    assert plumber.stats["items_out"] == 100 and plumber.stats["run_time"] > 0


def test_fan_out_and_fan_in():
    out: list = []
    src = Piper(square, parallel=NuMap(worker_type="thread", worker_num=2))
    left = Piper(negate, parallel=NuMap(worker_num=2))
    right = Piper(square, parallel=NuMap(worker_type="thread", worker_num=2))
    sink = Piper(add)
    last = Piper(Worker(keep, (out,)))
    plumber = Plumber(pipes=[(src, left, sink), (src, right, sink), (sink, last)])
    run_to_end(plumber, [range(50)])
    assert out == [-(x ** 2) + x ** 4 for x in range(50)]


def test_errors_travel_downstream_as_items():
    out: list = []
    first = Piper(fail_on_five, parallel=NuMap(worker_num=2))
    second = Piper(negate, parallel=NuMap(worker_type="thread", worker_num=1))
    last = Piper(Worker(keep, (out,)))  # an error item skips its functions
    plumber = Plumber(pipes=[(first, second, last)])
    run_to_end(plumber, [range(10)])
    assert out == [-x for x in range(10) if x != 5]
    assert plumber.stats["items_out"] == 10 and plumber.stats["errors_out"] == 1


def test_errors_nest_one_level_per_hop():
    first = Piper(fail_on_five, parallel=NuMap(worker_num=2))
    second = Piper(negate, parallel=NuMap(worker_type="thread", worker_num=1))
    first.connect([range(7)])
    second.connect([first])
    for piper in (first, second):
        piper.start((0, 1))
    for piper in (first, second):
        piper.start((2,))
    out = [second.next() for _ in range(7)]
    error = out[5]
    assert isinstance(error, PiperError) and isinstance(error.args[0], PiperError)
    assert isinstance(error.root(), RuntimeError)
    assert out[:5] == [0, -1, -2, -3, -4] and out[6] == -6
    for piper in (first, second):
        piper.stop(forced=True)


def test_pause_and_run_again():
    out: list = []
    first = Piper(slow, parallel=NuMap(worker_type="thread", worker_num=2))
    last = Piper(Worker(keep, (out,)))
    plumber = Plumber(pipes=[(first, last)])
    plumber.start([range(300)])
    plumber.run()
    time.sleep(0.3)
    plumber.pause()
    paused_at = len(out)
    time.sleep(0.3)
    assert 0 < paused_at < 300 and len(out) == paused_at
    plumber.run()
    assert plumber.wait(60)
    plumber.pause()
    plumber.stop()
    assert out == list(range(300))


def test_invalid_transitions_raise():
    plumber = Plumber(pipes=[(Piper(square), Piper(negate))])
    for call in (plumber.run, plumber.pause, plumber.stop, plumber.wait):
        with pytest.raises(PlumberError):
            call()
    plumber.start([range(3)])
    with pytest.raises(PlumberError):
        plumber.start([range(3)])
    plumber.run()
    with pytest.raises(PlumberError):
        plumber.run()
    assert plumber.wait(10)
    plumber.stop()


def test_stop_while_running_needs_pause():
    first = Piper(slow, parallel=NuMap(worker_type="thread", worker_num=1))
    plumber = Plumber(pipes=[(first, Piper(negate))])
    plumber.start([range(1000)])
    plumber.run()
    with pytest.raises(PlumberError):
        plumber.stop()
    plumber.pause()
    plumber.stop()


def test_the_plumber_can_start_again_and_tracks():
    numap = NuMap(worker_type="thread", worker_num=2)
    first = Piper(square, parallel=numap, track=True)
    plumber = Plumber(pipes=[(first, Piper(negate))])
    run_to_end(plumber, [range(5)])
    [tracked] = plumber.stats["pipers_tracked"][first]
    assert tracked == {i: i * i for i in range(5)}
    run_to_end(plumber, [range(3)])
    assert plumber.stats["items_out"] == 3


def test_wait_times_out_and_reports_a_failed_plunger():
    first = Piper(slow, parallel=NuMap(worker_type="thread", worker_num=1))
    plumber = Plumber(pipes=[(first, Piper(negate))])
    plumber.start([range(500)])
    plumber.run()
    assert plumber.wait(0.05) is False
    plumber.pause()
    plumber.stop()
    failing = Plumber(pipes=[(Piper(fail_on_five), Piper(negate, debug=True))])
    failing.start([range(10)])
    failing.run()
    with pytest.raises(PlumberError):
        failing.wait(10)
    failing.stop()


def test_auto_transport_is_chosen_for_a_local_pipeline():
    from papycluster import workers

    out: list = []
    up = Piper(Worker((square, workers.io.pickle_dumps, workers.io.dump_item),
                      ((), (), ("auto",))), parallel=NuMap(worker_num=2))
    down = Piper(Worker((workers.io.load_item, workers.io.pickle_loads, keep),
                        ((), (), (out,))), parallel=NuMap(worker_type="thread", worker_num=1))
    run_to_end(Plumber(pipes=[(up, down)]), [range(10)])
    assert out == [x * x for x in range(10)]
    assert up.worker.args[2] == ("shm",)  # same host: shared memory
