"""The built-in worker functions and stream helpers."""

from __future__ import annotations

import io

from papycluster import workers


def test_passers_and_joiners():
    inbox = ["a", "b", "c"]
    assert workers.plugger(inbox) is None
    assert workers.ipasser(inbox, 1) == "b"
    assert workers.npasser(inbox, 2) == ["a", "b"]
    assert workers.spasser(inbox, (2, 0)) == ("c", "a")  # s order, not inbox order
    assert workers.spasser(inbox) == ("a", "b", "c")
    assert workers.njoiner(inbox, 2, "-") == "a-b"
    assert workers.sjoiner(inbox, (0, 2), "+") == "a+c"
    assert workers.nzipper([[1, 2], [3, 4]]) == ((1, 3), (2, 4))
    assert workers.szipper([[1, 2], [3, 4], [5, 6]], (0, 2)) == ((1, 5), (2, 6))


def test_print(capsys):
    assert workers.print_(["hello"]) is None
    assert capsys.readouterr().out == "hello\n"


def test_text_stream_round_trip():
    handle = io.StringIO()
    for item in ["one", "two\nlines", "three"]:
        workers.dump_stream([item], handle, delimiter="--")
    handle.seek(0)
    assert list(workers.load_stream(handle, delimiter="--")) == ["one", "two\nlines", "three"]
    plain = io.StringIO()
    for item in ["x", "y"]:
        workers.dump_stream([item], plain)
    plain.seek(0)
    assert list(workers.load_stream(plain)) == ["x", "y"]


def test_pickle_stream_round_trip():
    handle = io.BytesIO()
    items = [{"a": 1}, [1, 2], b"bytes"]
    for item in items:
        workers.dump_pickle_stream([item], handle)
    handle.seek(0)
    assert list(workers.load_pickle_stream(handle)) == items


def test_make_lines():
    assert list(workers.make_lines(io.StringIO("a\nb\n"))) == ["a\n", "b\n"]
