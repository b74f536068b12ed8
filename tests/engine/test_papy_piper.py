"""PaPy's own Piper behaviour, call by call (ported from PaPy 1.0.8's test_core).

Staged start without hangs, stride-interleaved produce and consume, PaPy's attributes
and exceptions that index like PaPy's (issue 16, points 1, 2, 3, 5 and 6).
"""

from __future__ import annotations

import logging
import threading

import pytest

from papycluster import NuMap, Piper, PiperError, Worker, WorkerError, workers

#: Lets ``blocked`` return; set by the timeout test once the timeout has been seen.
RELEASE = threading.Event()


def power2(inbox):
    return inbox[0] * inbox[0]


def mul2(inbox):
    return 2 * inbox[0]


def power2_make2(inbox):
    return (inbox[0] * inbox[0],) * 2


def join_sum2(inbox):
    return inbox[0][0] + inbox[1][0]


def sum2(inbox):
    a, b = inbox
    return a[0] + b[0]


def blocked(inbox):
    if inbox[0] == "wait":
        RELEASE.wait(60)
    return inbox[0]


def start_in_stages(*pipers):
    """PaPy's way to start pipers that may share a NuMap: (0, 1) each, then (2,) each."""
    for stages in ((0, 1), (2,)):
        for piper in pipers:
            piper.start(stages=stages)


def pull(piper, n):
    """``n`` calls of ``next()``: each result, 'e' for a raised error, 's' at the end."""
    out = []
    for _ in range(n):
        try:
            out.append(piper.next())
        except StopIteration:
            out.append("s")
        except PiperError:
            out.append("e")
    return out


# -- 1. a staged start never hangs ----------------------------------------------------


@pytest.mark.timeout(60)
def test_next_on_a_piper_that_is_not_fully_started_raises_at_once():
    piper = Piper(power2, parallel=NuMap())
    with pytest.raises(PiperError):
        piper.start()  # not connected
    with pytest.raises(PiperError):
        piper.stop()
    piper([[1, 2, 3]])
    with pytest.raises(PiperError):
        piper.connect([[1, 2, 3, 4]])
    with pytest.raises(PiperError):
        piper.next()  # connected, not started
    piper.start(stages=(0,))
    assert piper.started is False
    with pytest.raises(PiperError):
        piper.next()  # PaPy raises here; papycluster hung
    with pytest.raises(PiperError):
        piper.stop()
    piper.start(stages=(1,))
    assert piper.started is False
    with pytest.raises(PiperError):
        piper.next()
    with pytest.raises(PiperError):
        piper.stop()
    piper.start(stages=(2,))
    assert piper.started is True and piper.finished is False
    assert list(piper) == [1, 4, 9]
    piper.stop(ends=[0])


@pytest.mark.timeout(60)
def test_the_issue_case_raises_instead_of_hanging():
    piper = Piper(power2, parallel=NuMap())([[1, 2, 3, 4]])
    piper.start(stages=(0,))
    with pytest.raises(PiperError):
        piper.next()
    piper.start(stages=(1, 2))
    assert list(piper) == [1, 4, 9, 16]
    piper.stop(ends=[0])


@pytest.mark.timeout(120)
def test_one_numap_serves_piper_after_piper():
    pool = NuMap(worker_type="thread", worker_num=2)
    for _ in range(5):
        piper = Piper(power2, parallel=pool)
        assert piper([[1, 2, 3, 4]]) is piper
        with pytest.raises(PiperError):
            piper.next()
        piper.start(stages=(0,))
        with pytest.raises(PiperError):
            piper.next()
        piper.start(stages=(1, 2))
        assert piper.started is True
        assert [piper.next() for _ in range(4)] == [1, 4, 9, 16]
        for _ in range(2):  # the iterator protocol: StopIteration, and again
            with pytest.raises(StopIteration):
                piper.next()
        piper.stop(ends=[0])
        assert (piper.started, piper.finished, piper.connected) == (False, True, True)
        piper.disconnect()  # not forced: the stopped NuMap has no task left
        assert piper.connected is False
        with pytest.raises(PiperError):
            piper.next()


def test_a_linear_piper_ends_with_stop_iteration_and_then_disconnects():
    piper = Piper(power2)([[1, 2, 3, 4]])
    assert (piper.started, piper.connected, piper.finished) == (False, True, False)
    with pytest.raises(PiperError):
        piper.next()
    piper.start()
    assert piper.started is True
    assert list(piper) == [1, 4, 9, 16]
    piper.stop()
    assert (piper.started, piper.connected) == (False, True)
    for _ in range(2):
        with pytest.raises(StopIteration):
            piper.next()
    piper.disconnect()
    assert (piper.connected, piper.finished) == (False, True)
    for _ in range(2):
        with pytest.raises(PiperError):
            piper.next()


@pytest.mark.parametrize("parallel", [False, True])
def test_an_empty_input_ends_at_once(parallel):
    passer = Piper(workers.ipasser, parallel=NuMap() if parallel else False)
    passer([[]])
    passer.start(stages=(0, 1, 2))
    assert passer.started is True
    for _ in range(3):
        with pytest.raises(StopIteration):
            passer.next()
    passer.stop(ends=[0])
    assert (passer.started, passer.finished) == (False, True)
    passer.disconnect()


# -- 2. produce with stride is stride-interleaved -------------------------------------

STOPS = ["s"] * 4


@pytest.mark.timeout(120)
def test_produce_is_stride_interleaved():
    inp = [(11, 12), (21, 22), (31, 32), (41, 42), (51, 52), (61, 62), (71, 72)]
    piper = Piper(Worker(workers.ipasser), parallel=NuMap(stride=3), produce=2)
    piper([inp])
    piper.start()
    assert pull(piper, 18) == [11, 21, 31, 12, 22, 32, 41, 51, 61, 42, 52, 62,
                               71, 72, *STOPS]
    piper.stop(ends=[0])


@pytest.mark.timeout(120)
def test_produce_from_a_repeated_result_and_with_repeat():
    expected = [0, 1, 4, 0, 1, 4, 9, 16, 25, 9, 16, 25, 36, 36, *STOPS]
    unpacked = Piper(power2_make2, parallel=NuMap(stride=3), produce=2)
    unpacked([range(7)])
    unpacked.start()
    assert pull(unpacked, 18) == expected
    unpacked.stop(ends=[0])
    repeated = Piper(power2, parallel=NuMap(stride=3), produce=2, repeat=True)
    repeated([range(7)])
    repeated.start()
    assert pull(repeated, 18) == expected
    repeated.stop(ends=[0])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("function, repeat", [(power2_make2, False), (power2, True)])
def test_an_error_is_produced_in_the_slots_of_its_result(function, repeat):
    inp = [0, 1, "z", 3, 4, 5, 6]
    piper = Piper(function, parallel=NuMap(stride=3), produce=2, repeat=repeat,
                  debug=True)
    piper([inp])
    piper.start()
    assert pull(piper, 18) == [0, 1, "e", 0, 1, "e", 9, 16, 25, 9, 16, 25, 36, 36,
                               *STOPS]
    piper.stop(ends=[0])


# -- 3. consume with stride is the inverse ----------------------------------------------


@pytest.mark.timeout(120)
def test_consume_groups_item_i_with_item_i_plus_stride():
    inp = [0, 1, 4, 0, 1, 4, 9, 16, 25, 9, 16, 25, 36, 36]
    piper = Piper(join_sum2, parallel=NuMap(stride=3), consume=2)
    piper([inp])
    piper.start()
    assert list(piper) == [0, 2, 8, 18, 32, 50, 72]
    piper.stop(ends=[0])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stride", [None, 1])
def test_produce_then_consume_gives_back_each_result(stride):
    par = NuMap(stride=stride) if stride else False
    producer = Piper(power2, parallel=par, produce=2, repeat=True, debug=True)
    producer([range(7)])
    consumer = Piper(sum2, parallel=par, consume=2, debug=True)
    consumer([producer])
    start_in_stages(producer, consumer)
    assert list(consumer) == [0, 2, 8, 18, 32, 50, 72]
    if par:
        par.stop(ends=[1])


@pytest.mark.timeout(120)
def test_produce_then_consume_on_one_strided_numap():
    inp = [(11, 12), (21, 22), (31, 32), (41, 42), (51, 52), (61, 62)]
    par = NuMap(stride=3)
    producer = Piper(workers.ipasser, parallel=par, produce=2)
    producer([inp])
    consumer = Piper(sum2, parallel=par, consume=2, debug=True)
    consumer([producer])
    start_in_stages(producer, consumer)
    assert list(consumer) == [23, 43, 63, 83, 103, 123]
    par.stop(ends=[1])


@pytest.mark.timeout(120)
def test_produce_spawn_consume_on_one_strided_numap():
    inp = [(11, 12), (21, 22), (31, 32), (41, 42), (51, 52), (61, 62)]
    par = NuMap(stride=3, worker_type="thread")
    producer = Piper(workers.ipasser, parallel=par, produce=2)([inp])
    doubler = Piper(mul2, parallel=par, spawn=2)([producer])
    consumer = Piper(sum2, parallel=par, consume=2)([doubler])
    start_in_stages(producer, doubler, consumer)
    assert list(consumer) == [46, 86, 126, 166, 206, 246]
    par.stop(ends=[3])


# -- 5. PaPy's attributes --------------------------------------------------------------


def test_a_new_piper_has_papys_attributes():
    piper = Piper(power2)
    assert piper.tees == []
    assert len(piper.tee_locks) == 1 and piper.tee_locks[0].locked() is False
    assert (piper.started, piper.connected, piper.finished) == (False, False, False)
    assert piper.imap is map
    assert isinstance(piper.log, logging.Logger)


def test_imap_is_the_numap_or_the_one_lazy_map():
    linear, other = Piper(power2), Piper(mul2)
    assert linear.imap is map and linear.imap is other.imap
    pool1, pool2 = NuMap(), NuMap()
    p2, m2 = Piper(power2, parallel=pool1), Piper(mul2, parallel=pool2)
    assert p2.imap is pool1 and m2.imap is pool2 and p2.imap is not map


def test_tees_and_tee_locks_follow_the_connections():
    source = Piper(workers.ipasser)([[1, 2, 3]])
    left, right = Piper(power2)([source]), Piper(mul2)([source])
    assert len(source.tee_locks) == 3 and source.tees == []
    source.start()
    left.start()
    right.start()
    assert len(source.tees) == 2
    assert list(zip(left, right, strict=True)) == [(1, 2), (4, 4), (9, 6)]


# -- 6. exceptions index like PaPy's --------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("parallel", [False, True])
def test_errors_index_through_every_hop(parallel):
    pool = NuMap(worker_type="thread", worker_num=2) if parallel else False
    pwr = Piper(power2, parallel=pool)([[1, "a", 3]])
    dbl = Piper(mul2, parallel=pool)([pwr])
    start_in_stages(pwr, dbl)
    assert dbl.next() == 2
    error = dbl.next()
    assert isinstance(error, PiperError)
    assert isinstance(error[0], PiperError)        # wrapped by pwr
    assert isinstance(error[0][0], WorkerError)    # wrapped by the worker
    assert isinstance(error[0][0][0], TypeError)   # raised by power2
    assert error[0][0][1] == "power2" and error[0][0][2] == ["a"]
    assert dbl.next() == 18
    with pytest.raises(StopIteration):
        dbl.next()
    if parallel:
        dbl.stop(ends=[1])


@pytest.mark.timeout(120)
def test_a_timed_out_item_is_a_piper_error_of_a_timeout():
    RELEASE.clear()
    piper = Piper(blocked, parallel=NuMap(worker_type="thread", worker_num=2),
                  timeout=2.0)
    piper([["first", "wait", "last"]])
    piper.start()
    try:
        assert piper.next() == "first"
        error = piper.next()
        assert isinstance(error, PiperError) and isinstance(error[0], TimeoutError)
    finally:
        RELEASE.set()
    assert piper.next() == "last"
    piper.stop(forced=True)
