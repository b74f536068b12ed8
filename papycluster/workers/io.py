"""Serializers and direct transports as PaPy worker functions.

Every function here has the worker-function signature ``f(inbox, *args, **kwargs)``,
acts on ``inbox[0]`` and returns one value, so it composes in a ``Worker``::

    upstream = Worker((func, workers.io.pickle_dumps, workers.io.dump_item),
                      ((),    (),                      ('tcp')))
    downstream = Worker((workers.io.load_item, workers.io.pickle_loads, func),
                        ((),                    (),                      ()))

``dump_item`` returns a small ticket; only the ticket goes through the manager and
``load_item`` discovers the transport from it. See :mod:`papycluster.transport`.
"""

from __future__ import annotations

import io
import mmap
from collections.abc import Sequence
from typing import Any

from papycluster import transport as _transport
from papycluster.transport.serializers import (
    json_dumps,
    json_loads,
    marshal_dumps,
    marshal_loads,
    pickle_dumps,
    pickle_loads,
)
from papycluster.transport.shares import get_share, set_share

__all__ = [
    "dump_db_item",
    "dump_item",
    "find_db_item",
    "get_share",
    "json_dumps",
    "json_loads",
    "load_db_item",
    "load_item",
    "marshal_dumps",
    "marshal_loads",
    "pickle_dumps",
    "pickle_loads",
    "set_share",
]


def dump_item(inbox: Sequence, type: str = "file", prefix: str | None = None,
              suffix: str | None = None, dir: str | None = None,
              timeout: float | None = None, buffer: int | None = None,
              **options: Any) -> tuple:
    """Write ``inbox[0]`` (bytes-like or str) with transport ``type``; return a ticket.

    ``type`` is one of ``tcp``, ``udp``, ``fifo``, ``shm``, ``file`` (or PaPy's
    ``socket``, which is ``tcp``). Options:
    ``share=`` (file: a named share, see :func:`set_share`), ``chunk=`` (udp datagram
    payload size). The data stays where the transport keeps it until a ``load_item``
    takes it or this worker process ends.

    PaPy's ``prefix``, ``suffix``, ``timeout`` and ``buffer`` are accepted and have
    no effect (names are random; no process waits for a reader). PaPy's ``dir`` is
    refused: a path means nothing on another host, a named share does.
    """
    if dir is not None:
        raise ValueError(f"dump_item(dir={dir!r}): name a share instead (share='name', "
                         "with workers.io.set_share or PAPYCLUSTER_SHARES), so that "
                         "every host can find the file under its own path")
    return _transport.dump(inbox[0], type, **options)


def load_item(inbox: Sequence, type: str = "string", remove: bool = True,
              buffer: int | None = None, timeout: float | None = None,
              **options: Any) -> Any:
    """Fetch the item whose ticket is ``inbox[0]``; the transport comes from the ticket.

    Returns a bytes-like object (a ``str`` if a ``str`` was dumped). ``remove=False``
    leaves the item for another load. ``timeout`` bounds every wait (default 60 s; a
    tcp producer silent for 10 s counts as lost, and the item is recomputed);
    ``retries=N`` (udp) asks up to N times for lost datagrams before failing.

    PaPy's arguments are accepted: ``type='mmap'`` returns the item's bytes in an
    ``mmap`` (a file-like object: ``read``, ``seek``, slicing), for any transport;
    ``buffer`` (PaPy's read size) has no effect.
    """
    if type not in ("string", "mmap"):
        raise ValueError(f"load_item(type={type!r}): PaPy's types are 'string' and "
                         "'mmap' (the transport comes from the ticket)")
    data = _transport.load(inbox[0], remove=remove, timeout=timeout,
                           family=_transport.streams(), **options)
    return _as_mmap(data) if type == "mmap" else data


def _as_mmap(data: Any) -> mmap.mmap | io.BytesIO:
    """The bytes of ``data`` in an anonymous memory map, positioned at the start.

    An empty item gives an empty ``io.BytesIO``: no memory map can be empty.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else memoryview(data).cast("B")
    if not len(raw):
        return io.BytesIO()
    mapped = mmap.mmap(-1, len(raw))
    mapped.write(raw)
    mapped.seek(0)
    return mapped


def _prefetch_item(inbox: Sequence, type: str = "string", remove: bool = True,
                   buffer: int | None = None, timeout: float | None = None,
                   **options: Any) -> None:
    """``load_item``'s read-ahead, with the same arguments (see ``Worker.prefetch``)."""
    _transport.prefetch(inbox[0], remove=remove, timeout=timeout,
                        family=_transport.streams(), **options)


load_item.prefetch = _prefetch_item  # type: ignore[attr-defined]


def dump_db_item(inbox: Sequence, type: str = "sqlite", table: str = "temp",
                 key: Any = None, keep: bool = False, db: str | None = None,
                 **options: Any) -> tuple:
    """Store ``inbox[0]`` as a row in a database (``sqlite`` or ``mysql``); return a ticket.

    ``keep=True`` makes the row a checkpoint (loading does not delete it, and it
    survives the pipeline); ``key`` (a string, or a function of the data, or given
    as ``inbox[0] = (key, data)``) lets :func:`find_db_item` find it in a later run.
    ``db`` is the sqlite file (default: ``papycluster.sqlite`` in the default share)
    or the mysql database name; mysql also takes ``host``, ``port``, ``user``,
    ``password``/``passwd`` and ``unix_socket``.
    """
    return _transport.dump_db(inbox[0], type, table=table, key=key, keep=keep, db=db,
                              **options)


def load_db_item(inbox: Sequence, remove: bool | None = None, timeout: float | None = None,
                 **options: Any) -> Any:
    """Fetch the row whose ticket is ``inbox[0]``.

    By default a consumed row is deleted and a checkpoint row is kept; ``remove``
    overrides that. mysql takes ``password=`` (else ``PAPYCLUSTER_MYSQL_PASSWORD``).
    """
    return _transport.load(inbox[0], remove=remove, timeout=timeout,
                           family=_transport.DATABASE, **options)


def find_db_item(type: str, key: str, table: str = "temp", db: str | None = None,
                 **options: Any) -> tuple | None:
    """The ticket of the newest checkpoint with ``key``, or None: lets a run resume.

    Not a worker function: call it when building the input of a resumed run.
    """
    return _transport.find(type, key, table=table, db=db, **options)
