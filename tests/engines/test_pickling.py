"""Error items travel without Dask's exception reducers (tblib's, set by importing it)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import distributed  # noqa: F401 - installs tblib's reducers in copyreg, as a user's would

from papycluster.engine import process


def test_an_error_item_pickles_plainly_once_distributed_is_imported():
    try:
        raise ValueError("seven is refused")
    except ValueError as exc:
        error = process.describe_exception(exc)
    marker = b"tblib.pickling_support"
    assert marker in pickle.dumps(error)  # what a worker without tblib cannot load
    data = process.dumps(("run", [(0, 7, error)]))
    assert marker not in data
    # a process without tblib (nor distributed) loads it
    code = ("import pickle, sys; sys.modules['tblib'] = None; "
            "m = pickle.loads(sys.stdin.buffer.read()); print(m[1][0][2])")
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                         timeout=60, check=True)
    assert out.stdout.decode().strip() == "seven is refused"
