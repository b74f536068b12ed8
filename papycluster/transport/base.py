"""The interface every transport implements, the registry, and per-process cleanup.

A transport moves one bytes-like item from the process that *dumps* it to the process
that *loads* it, outside the manager. ``dump`` stores the bytes somewhere (a server
thread's memory, a file, a fifo, a shared-memory segment, a database row) and returns
a small :mod:`ticket <papycluster.transport.ticket>`; only the ticket travels through
the manager. ``load`` takes the ticket, fetches the bytes and frees the resource.

Transports keep per-process state (a server thread, the items not yet fetched, the
files and segments this process created). That state belongs to the process that made
it: after a ``fork`` the child starts empty, and when the process ends every resource
it still owns is released, both from ``atexit`` (the main process) and from a
``multiprocessing.util.Finalize`` (worker processes, which skip ``atexit``).

A process killed with SIGKILL releases nothing. So every name a process gives to what
outlives it (a file in a share, a fifo directory, a shared-memory segment) carries the
process's *owner tag*, which the process that started it chose (:func:`set_owner_tag`);
when that pool stops, it removes what is left under the tag (:func:`sweep`).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from multiprocessing import util as mp_util
from typing import Any, ClassVar

from papycluster.errors import PapyError

log = logging.getLogger("papycluster.transport")


class TransportError(PapyError):
    """A transport could not move an item (a network, file or database failure)."""


class TicketProblem(TransportError):
    """A failure about one ticket: its message names the transport (when known) and the
    ticket, so that a ``WorkerError`` in a long pipeline points at the culprit; the
    ticket, the reason and the transport are attributes."""

    def __init__(self, ticket: Any, reason: str, transport: str | None = None) -> None:
        self.ticket = ticket
        self.reason = reason
        self.transport = transport
        what = f"{transport} ticket" if transport else "ticket"
        super().__init__(f"{what} {_short(ticket)}: {reason}")


class TicketError(TicketProblem, ValueError):
    """A ticket is malformed, foreign, truncated or stale."""


def _short(ticket: Any) -> str:
    text = repr(ticket)
    return text[:300] + "..." if len(text) > 300 else text


class StaleTicketError(TicketError):
    """The ticket was well formed but its item is gone (already loaded, or its owner ended)."""


class ProducerLostError(TicketProblem):
    """The process or host that holds a dumped item cannot give it any more.

    Raised by the loaders of the transports whose bytes wait in the producer (tcp, udp,
    fifo, shm) when it refuses, does not answer in time, is unreachable or breaks off
    mid-item. The item is not wrong, only gone with its producer: the engine recomputes
    it from the input that gave its ticket (see ``Piper``), as Dask recomputes lost keys.
    ``ticket`` is the ticket that could not be loaded.
    """



class GoneServers:
    """Item servers that a loader of this process found gone, for ``ttl`` seconds.

    A producer that refused (ended), did not answer (lost, frozen) or broke off is
    remembered by address; the next tickets of that server fail at once with the same
    error (a ``ProducerLostError`` or ``StaleTicketError``, which the engine
    recomputes) instead of each waiting out its own timeout in turn: a deep buffer
    holds hundreds of tickets of a host when it is lost. After ``ttl`` seconds a
    server is tried again (a frozen host may have thawed; a new process may listen on
    the port).
    """

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._gone: dict[str, tuple[float, type, str]] = {}
        self._lock = threading.Lock()

    def check(self, where: str, tk: Any, transport: str) -> None:
        """Raise the remembered error when ``where`` was found gone lately."""
        with self._lock:
            entry = self._gone.get(where)
        if entry is None:
            return
        since = time.monotonic() - entry[0]
        if since >= self.ttl:
            with self._lock:
                self._gone.pop(where, None)
            return
        raise entry[1](tk, f"{entry[2]} (found {since:.1f} s ago, by an earlier item)",
                       transport)

    def found(self, where: str, cls: type, tk: Any, reason: str, transport: str
              ) -> TicketProblem:
        """Remember ``where`` as gone; the error to raise for ``tk``."""
        with self._lock:
            self._gone[where] = (time.monotonic(), cls, reason)
        return cls(tk, reason, transport)


def recoverable(exc: BaseException | None) -> bool:
    """Can the item behind a failed load be had again by recomputing it?

    True for a producer that is lost and for a stale ticket (its item is gone: already
    taken by a consumer that died before answering, or its producer ended).
    """
    return isinstance(exc, ProducerLostError | StaleTicketError)


class SecretError(TransportError):
    """The cluster secret that tcp and udp need is missing or unusable."""


class ItemIntegrityError(TicketProblem):
    """An item does not match the keyed hash (MAC) that its ticket carries.

    Items that wait where other users can write (files on a share, rows of ``sqlite`` and
    ``mysql``) are signed with the cluster secret when they are written, and the MAC goes
    in the ticket; a loader checks it before anything is deserialized. A mismatch means
    the item was changed or swapped after it was written (or written under another
    secret). Not recoverable by recomputing: something is writing where it should not.
    """



class UnsafePathError(TransportError):
    """A file, directory, database or segment is not this user's own, or others may write it.

    Refused before anything is read from it, the way OpenSSH's ``StrictModes`` refuses a
    key file that others could change: ``path`` names it, ``reason`` says what is wrong
    (its owner, its mode, its kind) and, for a load, ``ticket`` is the ticket that named it.
    """

    def __init__(self, path: str, reason: str, transport: str | None = None,
                 ticket: Any = None) -> None:
        self.path = path
        self.reason = reason
        self.transport = transport
        self.ticket = ticket
        what = f"{transport}: " if transport else ""
        named = f" (named by ticket {_short(ticket)})" if ticket is not None else ""
        super().__init__(f"{what}refusing {path}: {reason}{named}")


def check_private(path: str, transport: str, ticket: Any = None, kind: str = "file",
                  refused: int = 0o077, st: os.stat_result | None = None) -> os.stat_result:
    """Refuse ``path`` unless it is a ``kind`` (``file``, ``dir``, ``fifo``) of this user
    with none of the mode bits ``refused`` set; return its ``lstat``.

    A symbolic link is never accepted (it is not followed). ``st`` is a stat result the
    caller already has (``fstat`` of what it opened). On a host without user ids
    (Windows) only the kind is checked.
    """
    if st is None:
        st = os.lstat(path)
    mode = st.st_mode
    if not _KINDS[kind](mode):
        found = "a symbolic link" if stat.S_ISLNK(mode) else f"not a {_KIND_NAMES[kind]}"
        raise UnsafePathError(path, f"it is {found}", transport, ticket)
    if hasattr(os, "geteuid"):
        if st.st_uid != os.geteuid():
            raise UnsafePathError(path, f"it belongs to uid {st.st_uid}, not to this user "
                                  f"(uid {os.geteuid()})", transport, ticket)
        if mode & refused:
            access = "write" if not refused & 0o044 else "access"
            fix = "go-w" if not refused & 0o044 else "go-rwx"
            raise UnsafePathError(path, f"its mode {stat.S_IMODE(mode):04o} lets other users "
                                  f"{access} it (chmod {fix} it, or remove it)", transport,
                                  ticket)
    return st


_KINDS = {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "fifo": stat.S_ISFIFO}
_KIND_NAMES = {"file": "regular file", "dir": "directory", "fifo": "fifo"}


class Transport:
    """One way of moving bytes between pipers.

    Subclasses set ``name`` and implement :meth:`dump`, :meth:`load` and
    :meth:`cleanup`. ``dump`` returns the ticket's transport-specific fields; the
    ticket module wraps them with the header, so a transport never builds headers.
    """

    name: ClassVar[str] = ""
    #: Field names after the header, in order; used for validation error messages.
    fields: ClassVar[tuple[str, ...]] = ()

    def dump(self, data: memoryview, **options: Any) -> tuple:
        raise NotImplementedError

    def load(self, fields: tuple, ticket: tuple, remove: bool = True,
             timeout: float | None = None) -> Any:
        raise NotImplementedError

    def validate(self, fields: tuple, ticket: tuple) -> None:
        """Check the fields' types and shapes; raise :class:`TicketError` if wrong."""

    def cleanup(self) -> None:
        """Release everything this process still owns (called once at process end)."""

    def sweep(self, tag: str) -> int:
        """Remove what an ended process with owner tag ``tag`` left on this host."""
        return 0


#: An owner tag: 12 hex digits, a part of the names and never a secret (the other part
#: of each name is 128 random bits).
OWNER_RE = re.compile(r"[0-9a-f]{12}\Z")
_owner: tuple[int, str] = (-1, "")


_parked_in = -1


def note_parked() -> None:
    """This process has dumped an item that waits in it or under its owner tag (called
    by every dump): such a process must not be ended before its pool stops, or its
    items go with it (see :func:`parked_here`)."""
    global _parked_in
    _parked_in = os.getpid()


def parked_here() -> bool:
    """Has this process (not a parent it was forked from) dumped any item?"""
    return _parked_in == os.getpid()


def new_owner_tag() -> str:
    return secrets.token_hex(6)


def set_owner_tag(tag: str) -> None:
    """Name this process's leftovers with ``tag`` (a worker process, first thing)."""
    global _owner
    if not OWNER_RE.match(tag):
        raise ValueError(f"invalid owner tag {tag!r}")
    _owner = (os.getpid(), tag)


def owner_tag() -> str:
    """This process's owner tag: the one its starter set, else one of its own."""
    global _owner
    pid, tag = _owner
    if pid != os.getpid():  # never set here, or inherited through fork
        _owner = (os.getpid(), new_owner_tag())
    return _owner[1]


def remove_tagged(directory: str, prefix: str, suffix: str = "") -> int:
    """Unlink the entries of ``directory`` named ``prefix...suffix`` that this user owns.

    Never follows a symbolic link: a link is removed, not what it points to. A directory
    (a fifo directory) is emptied first, one level deep, which is all papycluster makes.
    """
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    uid = os.getuid() if hasattr(os, "getuid") else None
    removed = 0
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(suffix)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if uid is not None and st.st_uid != uid:
                continue
            if entry.is_dir(follow_symlinks=False):
                for inner in os.scandir(entry.path):
                    if not inner.is_dir(follow_symlinks=False):
                        os.unlink(inner.path)
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
        except OSError as exc:
            log.warning("cannot remove %s left by a killed process: %s", entry.path, exc)
    return removed


class ProcessState:
    """Holds a transport's per-process state and releases it when the process ends.

    ``get()`` returns the state object for the *current* process, creating it with
    ``factory`` on first use; a forked child never sees its parent's state (the
    server threads did not survive the fork, and the parent's items are not the
    child's to free). ``factory()`` objects must have a ``close()`` method; it runs
    once, from ``atexit`` or from multiprocessing's finalizers, whichever comes first.
    An optional ``forget_after_fork()`` closes, in a forked child, the descriptors it
    inherited (a listening socket must not outlive the process that serves it).
    """

    _all: ClassVar[list[ProcessState]] = []

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._pid = -1
        self._value: Any = None
        ProcessState._all.append(self)

    def get(self) -> Any:
        pid = os.getpid()
        value = self._value
        if value is not None and self._pid == pid:
            return value
        with self._lock:
            if self._value is None or self._pid != pid:
                self._value = self._factory()
                self._pid = pid
                _ensure_exit_hooks()
            return self._value

    def peek(self) -> Any:
        """The current process's state, or None if it was never created here."""
        return self._value if self._pid == os.getpid() else None

    def close(self) -> None:
        with self._lock:
            value, self._value = self._value, None
            mine = self._pid == os.getpid()
        if value is not None and mine:
            try:
                value.close()
            except Exception:  # cleanup must go on for the other transports
                log.exception("transport cleanup failed")

    def _after_fork(self) -> None:
        # Do not release the parent's resources in the child (its files, segments and
        # items are the parent's), but close the child's copies of the parent's
        # listening sockets and pipes, so that they die with the parent's.
        forget = getattr(self._value, "forget_after_fork", None)
        if forget is not None:
            try:
                forget()
            except Exception:
                pass
        self._value = None
        self._pid = -1
        self._lock = threading.Lock()


_hooks_pid = -1


def close_all() -> None:
    """Release every transport resource of this process (idempotent).

    Called automatically at process end; a test or a long-lived agent may call it to
    drop everything at once.
    """
    for state in list(ProcessState._all):
        state.close()


def _ensure_exit_hooks() -> None:
    global _hooks_pid
    pid = os.getpid()
    if _hooks_pid == pid:
        return
    _hooks_pid = pid
    # Worker processes end by returning from their target: multiprocessing then runs
    # its finalizers but not atexit. The main process runs atexit. Both are wired;
    # close_all is idempotent.
    mp_util.Finalize(None, close_all, exitpriority=10)
    atexit.register(close_all)


def _after_fork_in_child() -> None:
    global _hooks_pid
    _hooks_pid = -1
    for state in ProcessState._all:
        state._after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
