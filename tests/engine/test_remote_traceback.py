"""A worker process's exception shows the worker's traceback as its printed cause.

The function comes from a module beside the 'script' (a temp dir on sys.path) whose
file is gone before the worker runs (as on a host that never had it): its file name
and the text of the failing line must still be in what the controller formats, so the
lines travelled with the function and the module by value.
"""

from __future__ import annotations

import importlib
import linecache
import sys
import traceback
import uuid

import pytest

from papycluster import NuMap
from papycluster.errors import RemoteTraceback

SOURCE = '''
def check(value):
    if value == 3:
        raise ValueError("three is not welcome here")  # the user's own line
    return value * 2


def check_inbox(inbox):  # a Worker function: the inbox holds one item
    return check(inbox[0])
'''


@pytest.fixture
def gone_module(tmp_path, monkeypatch):
    """A user module, imported, then its file removed (linecache keeps its lines)."""
    name = "usermod_" + uuid.uuid4().hex[:8]
    path = tmp_path / f"{name}.py"
    path.write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    linecache.getlines(str(path))
    path.unlink()
    yield module, str(path)
    sys.modules.pop(name, None)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_process_worker_traceback_is_the_cause(gone_module, method):
    module, path = gone_module
    numap = NuMap(module.check, range(5), worker_num=1, start_method=method)  # starts
    try:
        assert [numap.next(timeout=30) for _ in range(3)] == [0, 2, 4]
        with pytest.raises(ValueError) as caught:
            numap.next(timeout=30)
        assert numap.next(timeout=30) == 8  # the error is one item, the rest follow
    finally:
        numap.stop()
    exc = caught.value
    assert isinstance(exc.__cause__, RemoteTraceback)
    text = "".join(traceback.format_exception(exc))
    assert f'File "{path}", line 4, in check' in text
    assert 'raise ValueError("three is not welcome here")  # the user\'s own line' in text
    assert "The above exception was the direct cause" in text
    assert "pid" in text  # the note names the process


def test_a_pipeline_error_item_carries_the_worker_traceback(gone_module):
    from papycluster import Piper, PiperError, Worker, WorkerError

    module, path = gone_module
    piper = Piper(Worker(module.check_inbox),
                  parallel=NuMap(worker_num=1, start_method="forkserver"))
    piper([range(5)])
    piper.start()
    try:
        out = list(piper)
    finally:
        piper.stop()
    assert out[:3] == [0, 2, 4] and out[4] == 8
    assert isinstance(out[3], PiperError) and isinstance(out[3][0], WorkerError)
    for exc in (out[3][0], out[3][0].exception):  # the error item, and what it holds
        text = "".join(traceback.format_exception(exc))
        assert f'File "{path}", line 4, in check' in text
        assert 'raise ValueError("three is not welcome here")' in text


def test_remote_traceback_round_trips_and_prints_its_text():
    import pickle

    import cloudpickle

    tb = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\nValueError: v\n'
    for dumps in (pickle.dumps, cloudpickle.dumps):
        again = pickle.loads(dumps(RemoteTraceback(tb)))
        assert again.tb == tb and 'File "x.py", line 1' in str(again)
