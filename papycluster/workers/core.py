"""Small built-in worker functions and stream helpers (PaPy's ``papy.util.func``).

A worker function takes the ``inbox`` (a sequence with one item per upstream piper)
and returns one value. The stream helpers read and write a file handle so that the
first and last pipers of a pipeline can take and persist items.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any


def plugger(inbox: Sequence) -> None:
    """Swallow the inbox: a terminal piper that keeps nothing."""
    return None


def ipasser(inbox: Sequence, i: int = 0) -> Any:
    """Pass on the ``i``-th upstream item."""
    return inbox[i]


def npasser(inbox: Sequence, n: int | None = None) -> Sequence:
    """Pass on the first ``n`` upstream items (all when ``n`` is None)."""
    return inbox[:n]


def spasser(inbox: Sequence, s: Iterable[int] | None = None) -> tuple:
    """Pass on the items whose index is in ``s``, in the order ``s`` gives.

    PaPy kept inbox order here, which made ``s=(1, 0)`` useless; ``s`` order is what
    the name promises.
    """
    if s is None:
        return tuple(inbox)
    return tuple(inbox[i] for i in s)


def nzipper(inbox: Sequence, n: int | None = None) -> tuple:
    """Zip the first ``n`` upstream sequences (PaPy's returned only the first tuple)."""
    return tuple(zip(*inbox[:n], strict=False))


def szipper(inbox: Sequence, s: Iterable[int] | None = None) -> tuple:
    """Zip the upstream sequences whose index is in ``s`` (all when None)."""
    return tuple(zip(*spasser(inbox, s), strict=False))


def njoiner(inbox: Sequence, n: int | None = None, join: str = "") -> str:
    """Join the first ``n`` upstream strings with ``join``."""
    return join.join(inbox[:n])


def sjoiner(inbox: Sequence, s: Iterable[int] | None = None, join: str = "") -> str:
    """Join the upstream strings whose index is in ``s`` (all when None)."""
    return join.join(spasser(inbox, s))


def print_(inbox: Sequence) -> None:
    """Print the first upstream item; returns None."""
    print(inbox[0])


def dump_stream(inbox: Sequence, handle: IO[str], delimiter: str | None = None) -> None:
    """Write ``inbox[0]`` to a text ``handle``, then a delimiter line.

    Items are separated by ``\\n<delimiter>\\n`` (a blank line by default), which is
    what :func:`load_stream` splits on.
    """
    handle.write(str(inbox[0]))
    handle.write("\n%s\n" % (delimiter or ""))
    handle.flush()


def load_stream(handle: IO[str], delimiter: str | None = None) -> Iterator[str]:
    """Yield the items of a text stream written by :func:`dump_stream`, as they were given.

    Items end at a line equal to ``delimiter`` (a blank line by default); line
    terminators are kept (``'first1\\nfirst2\\n'`` comes back as it went in), only the
    newline that ``dump_stream`` put before the delimiter is taken off. A last item
    without a delimiter (a cut stream) is yielded as it is.
    """
    if delimiter:
        yield from _split_on_mark(handle, delimiter + "\n")
    else:
        yield from _split_on_blank_lines(handle)


def _split_on_mark(handle: IO[str], mark: str) -> Iterator[str]:
    lines: list[str] = []
    for line in handle:
        if line == mark:
            yield _drop_newline("".join(lines))
            lines = []
        else:
            lines.append(line)
    if lines:
        yield "".join(lines)


def _split_on_blank_lines(handle: IO[str]) -> Iterator[str]:
    """An item is the text before a blank line; a second blank line right after it
    means that the item itself ended with a newline (``dump_stream`` adds one)."""
    lines: list[str] = []
    ended = False  # the item in ``lines`` met its blank line
    for line in handle:
        if ended:
            ended = False
            if line == "\n":
                yield "".join(lines)
                lines = []
                continue
            yield _drop_newline("".join(lines))
            lines = []
        if line == "\n":
            ended = bool(lines)
        else:
            lines.append(line)
    if lines:
        yield _drop_newline("".join(lines)) if ended else "".join(lines)


def _drop_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


def dump_pickle_stream(inbox: Sequence, handle: IO[bytes]) -> None:
    """Append ``inbox[0]`` to a binary ``handle`` as one pickle."""
    pickle.dump(inbox[0], handle, pickle.HIGHEST_PROTOCOL)
    handle.flush()


def load_pickle_stream(handle: IO[bytes]) -> Iterator[Any]:
    """Yield the pickles of a binary stream written by :func:`dump_pickle_stream`."""
    while True:
        try:
            yield pickle.load(handle)
        except EOFError:
            return


def make_lines(handle: IO[str], follow: bool = False, wait: float = 0.1) -> Iterator[str]:
    """Yield the lines of ``handle``; with ``follow``, keep polling like ``tail -f``."""
    while True:
        line = handle.readline()
        if line:
            yield line
        elif follow:
            time.sleep(wait)
        else:
            return
