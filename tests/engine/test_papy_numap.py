"""PaPy's NuMap stop, call by call (ported from PaPy 1.0.8's test_numap; issue 16
point 7): after ``stop(forced=True)`` iterating ends with StopIteration, and ``next()``
after the final stop raises RuntimeError."""

from __future__ import annotations

import pytest

from papycluster import NuMap

LONG = list(range(1, 500))


def passer(inbox):
    return inbox


def adder(inbox):
    return inbox + 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker_type", ["process", "thread"])
@pytest.mark.parametrize("stride", [1, 3, 22])
@pytest.mark.parametrize("take_one", [False, True])
def test_iterating_after_a_forced_stop_ends(worker_type, stride, take_one):
    imap = NuMap(worker_type=worker_type, stride=stride)
    imap.add_task(passer, LONG)
    imap.start()
    taken = [imap.next()] if take_one else []
    imap.stop(forced=True)
    rest = list(imap)  # what had arrived, in order, then StopIteration
    assert taken + rest == LONG[:len(taken) + len(rest)]
    with pytest.raises(StopIteration):
        imap.next()
    imap._stop()  # PaPy's final stop after a forced one
    with pytest.raises(RuntimeError):
        imap.next()


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_next_after_the_final_stop_raises_runtime_error(worker_type):
    imap = NuMap(passer, iter(range(1, 100)), worker_type=worker_type)
    assert list(imap) == list(range(1, 100))
    with pytest.raises(StopIteration):
        imap.next()
    imap.stop(ends=[0])
    with pytest.raises(RuntimeError):
        imap.next()
    with pytest.raises(RuntimeError):
        imap.next(task=2)


def test_a_forced_stop_then_stop_with_ends_is_final():
    imap = NuMap(worker_type="thread", worker_num=2)
    imap.add_task(adder, [1, 2, 3])
    imap.start()
    assert imap.next() == 2
    imap.stop(forced=True)
    imap.stop(ends=[0])
    with pytest.raises(RuntimeError):
        imap.next()


def test_next_before_start_raises_instead_of_waiting():
    imap = NuMap(worker_type="thread", worker_num=1)
    imap.add_task(adder, [1, 2, 3])
    with pytest.raises(RuntimeError):
        imap.next()


def test_a_forced_stop_leaves_the_numap_reusable():
    imap = NuMap(worker_type="thread", worker_num=2)
    imap.add_task(adder, LONG)
    imap.start()
    imap.next()
    imap.stop(forced=True)
    imap.add_task(adder, [17, 19])  # the kept tasks are forgotten first
    imap.start()
    assert list(imap) == [18, 20]
    imap.stop(ends=[0])
    with pytest.raises(RuntimeError):
        imap.next()
