"""pickle (protocol 5, out of band), json and marshal as worker functions."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from papycluster.transport import serializers
from papycluster.workers import io

VALUES = [None, 1, -2.5, "text", b"bytes", [1, [2, 3]], {"a": (1, 2)}, {1, 2}, bytearray(b"x")]


@pytest.mark.parametrize("value", VALUES)
def test_pickle_roundtrip(value: object) -> None:
    assert io.pickle_loads([io.pickle_dumps([value])]) == value


def test_small_values_are_a_plain_pickle() -> None:
    data = io.pickle_dumps([{"a": [1, 2, 3]}])
    assert isinstance(data, bytes) and pickle.loads(data) == {"a": [1, 2, 3]}


def test_numpy_arrays_go_out_of_band_without_a_second_copy() -> None:
    array = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)
    frame = io.pickle_dumps([{"x": array, "small": np.arange(3)}])
    assert frame[:4] == b"PPYF"
    assert len(frame) < array.nbytes + 4096  # the data is in there once
    back = io.pickle_loads([frame])
    assert np.array_equal(back["x"], array) and back["x"].dtype == array.dtype
    assert back["small"].tolist() == [0, 1, 2]
    # The loaded array is a view on the frame, aligned, and writable.
    view = np.frombuffer(frame, dtype=np.uint8)
    assert np.shares_memory(back["x"], view)
    assert (back["x"].ctypes.data - view.ctypes.data) % 64 == 0
    assert back["x"].flags.aligned
    back["x"][0, 0] = 42.0


def test_large_bytes_go_out_of_band() -> None:
    blob = bytes(range(256)) * 4096
    value = {"blob": blob, "ba": bytearray(blob), "n": 1, "nested": [blob]}
    frame = io.pickle_dumps([value])
    assert frame[:4] == b"PPYF"
    back = io.pickle_loads([frame])
    assert back == value and type(back["ba"]) is bytearray and type(back["blob"]) is bytes
    raw = io.pickle_dumps([blob])
    assert len(raw) < len(blob) + 512
    assert io.pickle_loads([raw]) == blob


def test_fortran_and_noncontiguous_arrays() -> None:
    array = np.asfortranarray(np.arange(200_000.0).reshape(400, 500))
    back = io.pickle_loads([io.pickle_dumps([array])])
    assert np.array_equal(back, array)
    sliced = np.arange(300_000)[::3]
    assert np.array_equal(io.pickle_loads([io.pickle_dumps([sliced])]), sliced)


def test_lambdas_and_closures_fall_back_to_cloudpickle() -> None:
    k = 5
    fn = io.pickle_loads([io.pickle_dumps([lambda x: x + k])])
    assert fn(1) == 6


def test_truncated_frame_is_an_error() -> None:
    frame = io.pickle_dumps([np.zeros(100_000)])
    with pytest.raises(ValueError, match="truncated"):
        io.pickle_loads([bytes(frame[:-100])])


def test_json_and_marshal() -> None:
    value = {"a": [1, 2.5, "x", None, True]}
    text = io.json_dumps([value])
    assert isinstance(text, str)
    assert io.json_loads([text]) == value
    assert io.json_loads([bytearray(text.encode())]) == value
    assert io.marshal_loads([io.marshal_dumps([value])]) == value
    with pytest.raises(TypeError):
        io.json_dumps([object()])


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text() | st.binary(max_size=200),
                    lambda c: st.lists(c, max_size=5)
                    | st.dictionaries(st.text(max_size=5), c, max_size=5),
                    max_leaves=20))
def test_hypothesis_pickle_roundtrip(value: object) -> None:
    assert io.pickle_loads([io.pickle_dumps([value])]) == value


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_hypothesis_random_frames_fail_cleanly(junk: bytes) -> None:
    """Garbage after the frame magic raises an exception, it never crashes or hangs."""
    try:
        serializers.loads(b"PPYF" + junk)
    except Exception:
        pass
