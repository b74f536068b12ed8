"""Direct transports between pipers: only a small ticket goes through the manager.

:func:`dump` stores one bytes-like item with a named transport and returns a ticket;
:func:`load` reads the ticket, finds the transport it names, fetches the bytes and
frees the resource. ``workers.io`` wraps both as PaPy worker functions
(``dump_item``/``load_item``, ``dump_db_item``/``load_db_item``).

=========  =========================================  ================================
transport  where the bytes wait                        reach
=========  =========================================  ================================
tcp        memory of the dumping process (a server     any host that can connect; auth
           thread serves them)                         by the cluster secret
udp        same, served as checksummed datagrams       same; a lost datagram = an error
fifo       memory, streamed through a named pipe       same host
shm        a POSIX shared-memory segment               same host
file       a file in a named share                     every host that mounts the share
sqlite     a row in a database file                    same host (not over NFS)
mysql      a row in a MariaDB/MySQL table              every host that reaches the server
=========  =========================================  ================================
"""

from __future__ import annotations

from typing import Any

from papycluster.transport import base, read_ahead, registry, shares, ticket
from papycluster.transport.base import (
    ItemIntegrityError,
    ProducerLostError,
    SecretError,
    StaleTicketError,
    TicketError,
    TransportError,
    UnsafePathError,
    close_all,
)
from papycluster.transport.registry import sweep
from papycluster.transport.shares import get_share, set_share

STREAM = ("tcp", "udp", "fifo", "shm", "file")
DATABASE = ("sqlite", "mysql")
#: PaPy's names for transports: its ``dump_item(..., 'socket')`` is our tcp.
ALIASES = {"socket": "tcp"}

__all__ = [
    "ALIASES",
    "DATABASE",
    "STREAM",
    "ItemIntegrityError",
    "ProducerLostError",
    "SecretError",
    "StaleTicketError",
    "TicketError",
    "TransportError",
    "UnsafePathError",
    "close_all",
    "dump",
    "find",
    "get_share",
    "load",
    "prefetch",
    "set_share",
    "shares",
    "streams",
    "sweep",
]


def _as_view(item: Any, where: str) -> tuple[memoryview, int]:
    """A flat byte view of ``item`` and the flags that say how to give it back."""
    if isinstance(item, str):
        return memoryview(item.encode("utf-8")), ticket.FLAG_STR
    try:
        view = memoryview(item)
    except TypeError:
        raise TypeError(f"{where} needs bytes-like data (or str), got "
                        f"{type(item).__name__}; put a serializer such as "
                        "workers.io.pickle_dumps before it") from None
    if not view.c_contiguous:
        raise TypeError(f"{where} needs contiguous data; got a non-contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view, 0


def streams() -> tuple[str, ...]:
    """What ``dump_item`` and ``load_item`` take: the built-in stream transports and
    any registered with ``registry.register`` (as ``engine`` is on engine workers)."""
    return STREAM + tuple(sorted(set(registry.names()) - set(STREAM) - set(DATABASE)))


def dump(item: Any, type: str = "file", **options: Any) -> tuple:
    """Store ``item`` (bytes-like or str) with transport ``type``; return its ticket.

    The item is not copied where it need not be: tcp, udp and fifo keep a reference
    to it until a loader fetches it, so do not change a bytearray after dumping it.
    """
    type = ALIASES.get(type, type)
    if type in DATABASE:
        raise ValueError(f"{type!r} is a database transport: use dump_db_item")
    known = streams()
    if type not in known:
        raise ValueError(f"unknown transport {type!r}; dump_item knows {', '.join(known)}")
    view, flags = _as_view(item, f"dump_item(..., {type!r})")
    fields = registry.get(type).dump(view, **options)
    base.note_parked()
    return ticket.make(type, flags, *fields)


def dump_db(item: Any, type: str = "sqlite", table: str = "temp", key: Any = None,
            keep: bool = False, db: str | None = None, **options: Any) -> tuple:
    """Store ``item`` as a database row; ``keep=True`` makes it a checkpoint.

    ``item`` may be ``(key, data)``; else ``key`` is a fixed string, a function of the
    data, or None.
    """
    from papycluster.transport import db as dbmod

    if type not in DATABASE:
        raise ValueError(f"unknown database transport {type!r}; dump_db_item knows "
                         f"{', '.join(DATABASE)}")
    data, item_key = dbmod.split_item(item, key)
    view, flags = _as_view(data, f"dump_db_item(..., {type!r})")
    if keep:
        flags |= ticket.FLAG_KEEP
    fields = registry.get(type).dump(view, table=table, db_path=db, key=item_key, keep=keep,
                                 **options)
    base.note_parked()
    return ticket.make(type, flags, *fields)


def load(tk: Any, remove: bool | None = None, timeout: float | None = None,
         family: tuple[str, ...] | None = None, **options: Any) -> Any:
    """Fetch the item of ticket ``tk``; with ``remove`` (default: unless a checkpoint)
    free it. Returns a bytes-like object (``str`` if a ``str`` was dumped)."""
    transport, flags, fields = ticket.parse(tk, family)
    if remove is None:
        remove = not flags & ticket.FLAG_KEEP
    ahead = read_ahead.take((tk, remove))
    if ahead is not None:  # started by prefetch: its load has the same timeout
        data = ahead.result()
    else:
        data = transport.load(fields, tk, remove=remove, timeout=timeout, **options)
    if flags & ticket.FLAG_STR:
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TicketError(tk, f"the ticket says text, but the item is not UTF-8 ({exc})",
                              transport.name) from None
    return data


def prefetch(tk: Any, remove: bool | None = None, timeout: float | None = None,
             family: tuple[str, ...] | None = None, **options: Any) -> bool:
    """Start loading ``tk`` in the background; the next :func:`load` of it (with the
    same ``remove``) returns what this fetched. See :mod:`.read_ahead`.

    Returns whether a fetch was started. Never raises: a bad ticket is reported by the
    load that follows, exactly as without a prefetch.
    """
    try:
        transport, flags, fields = ticket.parse(tk, family)
    except Exception:
        return False
    if transport.name not in read_ahead.TRANSPORTS:
        return False
    if remove is None:
        remove = not flags & ticket.FLAG_KEEP
    try:
        return read_ahead.start((tk, remove), lambda: transport.load(
            fields, tk, remove=remove, timeout=timeout, **options))
    except TypeError:  # unhashable ticket parts: no read-ahead, the load reports it
        return False


def find(type: str, key: str, table: str = "temp", db: str | None = None,
         **options: Any) -> tuple | None:
    """The ticket of the newest checkpoint row with ``key``, or None (for resuming)."""
    if type not in DATABASE:
        raise ValueError(f"find_db_item works with {', '.join(DATABASE)}, not {type!r}")
    fields = registry.get(type).find(key, table=table, db_path=db, **options)
    if fields is None:
        return None
    return ticket.make(type, ticket.FLAG_KEEP, *fields)
