"""PaPy's own workers.io calls (ported from PaPy 1.0.8's test_util_func; issue 16
point 9): the ``socket`` transport name, PaPy's ``load_item`` arguments, and streams
that keep their line terminators."""

from __future__ import annotations

import io
import mmap

import pytest

from papycluster import NuMap, Piper, Worker, workers
from papycluster.cluster import negotiate

ITEMS = ["aaa\n", "b_b_b", "abc\n", "ddd"]


def test_dump_and_load_a_file_item():
    for item in ITEMS:
        assert workers.io.load_item([workers.io.dump_item([item])]) == item


def test_socket_is_papys_name_for_tcp():
    for item in ITEMS:
        ticket = workers.io.dump_item([item], type="socket")
        assert ticket[2] == "tcp"
        assert workers.io.load_item([ticket]) == item
    ticket = workers.io.dump_item([b"positional"], "socket")
    assert workers.io.load_item([ticket]) == b"positional"


def test_negotiation_knows_socket_as_tcp():
    requested, share = negotiate._dump_type(("socket",), {})
    assert (requested, share) == ("tcp", None)
    caps = {"name": "a", "os": "linux", "hostname": "h1"}
    other = {"name": "b", "os": "linux", "hostname": "h2"}
    assert negotiate.feasible(requested, caps, other) is None


@pytest.mark.parametrize("kind", ["file", "tcp", "shm"])
def test_load_item_as_mmap(kind):
    for item in ITEMS:
        loaded = workers.io.load_item([workers.io.dump_item([item], kind)], type="mmap")
        assert isinstance(loaded, mmap.mmap)
        assert loaded.read(10000) == item.encode()
    empty = workers.io.load_item([workers.io.dump_item([b""], kind)], type="mmap")
    assert empty.read(10000) == b""


def test_load_item_takes_papys_arguments():
    ticket = workers.io.dump_item([b"data"])
    assert workers.io.load_item([ticket], "string", False, 4096) == b"data"
    assert workers.io.load_item([ticket], type="string", buffer=1) == b"data"
    with pytest.raises(ValueError, match="'string' and 'mmap'"):
        workers.io.load_item([workers.io.dump_item([b"x"])], type="pickle")


@pytest.mark.timeout(120)
def test_a_pipeline_loads_mmap_items():
    dump = Worker(workers.io.dump_item, ("socket",))
    load = Worker((workers.io.load_item, _read), ((), ()), ({"type": "mmap"}, {}))
    up = Piper(dump, parallel=NuMap(worker_num=2))([[b"x" * n for n in range(1, 6)]])
    down = Piper(load, parallel=NuMap(worker_type="thread", worker_num=2))([up])
    for piper in (up, down):
        piper.start(stages=(0, 1))
    for piper in (up, down):
        piper.start(stages=(2,))
    assert list(down) == [b"x" * n for n in range(1, 6)]
    for piper in (up, down):
        piper.stop(forced=True)


def _read(inbox):
    return inbox[0].read()


@pytest.mark.parametrize("delimiter", [None, "XYZ"])
def test_streams_keep_their_line_terminators(delimiter):
    items = ["first1\nfirst2\n", "second1\nsecond2\n", "third\n"]
    handle = io.StringIO()
    for item in items:
        assert workers.dump_stream([item], handle, delimiter) is None
    handle.seek(0)
    assert list(workers.load_stream(handle, delimiter)) == items


def test_streams_give_back_items_without_a_final_newline():
    handle = io.StringIO()
    for item in ["one", "two\n\nlines", "three"]:
        workers.dump_stream([item], handle, "--")
    handle.seek(0)
    assert list(workers.load_stream(handle, "--")) == ["one", "two\n\nlines", "three"]
    cut = io.StringIO("whole\n\nhalf an item\n")  # a stream cut before its delimiter
    assert list(workers.load_stream(cut)) == ["whole", "half an item\n"]
