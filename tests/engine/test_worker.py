"""Worker: composition, arguments, and errors as values."""

from __future__ import annotations

import pytest

from papycluster import PiperError, Worker, WorkerError


def diver(inbox, by=1):
    return 1 / inbox[0] / by


def mul(inbox, k):
    return inbox[0] * k


def join(inbox, sep, end=""):
    return sep.join(inbox) + end


def test_composition_boxes_each_result_for_the_next_function():
    worker = Worker((diver, mul), ((), (10,)))
    assert worker([4]) == (1 / 4) * 10
    assert worker.__name__ == "diver>mul"
    assert worker.task == (diver, mul) and worker.args == ((), (10,))


def test_bare_string_is_one_argument_as_in_the_seed():
    worker = Worker((join,), (("-"),))
    assert worker(["a", "b"]) == "a-b"
    assert Worker(join, "+")(["x", "y"]) == "x+y"


def test_per_function_kwargs():
    worker = Worker((diver, join), ((), (",",)), ({"by": 2}, {"end": "!"}))
    with pytest.raises(TypeError):
        Worker((diver, join), ((), (",",)), ({"by": 2},))
    assert Worker(join, (",",), {"end": "."})(["a", "b"]) == "a,b."
    assert isinstance(worker([1]), WorkerError)  # join of a float fails: an error value


def test_worker_of_workers_concatenates():
    worker = Worker([Worker(diver), Worker(mul, (3,))])
    assert worker.task == (diver, mul) and worker([2]) == 1.5
    copy = Worker(worker)
    assert copy == worker and copy is not worker
    with pytest.raises(TypeError):
        hash(worker)
    with pytest.raises(TypeError):
        Worker(42)


def test_an_exception_becomes_a_worker_error_naming_function_and_inbox():
    error = Worker((diver, mul), ((), (10,)))([0])
    assert isinstance(error, WorkerError)
    assert isinstance(error.exception, ZeroDivisionError)
    assert error.function == "diver" and error.inbox == [0]
    assert "ZeroDivisionError" in error.traceback and "in diver" in error.traceback


def test_upstream_errors_skip_the_functions():
    calls = []
    worker = Worker(lambda inbox: calls.append(inbox))
    upstream = PiperError(WorkerError(ValueError("x"), "f", [1]))
    result = worker([upstream, 3])
    assert isinstance(result, PiperError) and result.args == (upstream,)
    nested = worker([[1, upstream], [2, 3]])  # consume > 1: one level down too
    assert isinstance(nested, PiperError)
    assert calls == []
