"""``shm``: one POSIX shared-memory segment per item, on the same host.

The dumper creates a segment with an unguessable name (mode 0600), copies the item in
and unmaps it; the loader maps it, copies the item out and unlinks it. Python's
``resource_tracker`` would otherwise unlink a segment when the process that created
*or attached* it ends, and warn about "leaked" segments another process already
removed; both sides therefore unregister right away and this module keeps its own
account: the segments this process created and nobody loaded yet are unlinked when
the process ends.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from multiprocessing import resource_tracker, shared_memory
from typing import Any

from papycluster.transport import base, ticket
from papycluster.transport.base import StaleTicketError, TicketError, TransportError

PREFIX = "papyc_"
#: Above this many names, forget the segments that loaders already unlinked.
PRUNE_AT = 4096
NAME_RE = re.compile(r"papyc_[0-9a-f]{32}\Z")


def _shm_unlink(segment: shared_memory.SharedMemory) -> None:
    """Unlink without telling the resource tracker (we untracked the segment already;
    ``SharedMemory.unlink`` would unregister it a second time)."""
    import _posixshmem

    _posixshmem.shm_unlink(segment._name)  # type: ignore[attr-defined]


def _untrack(segment: shared_memory.SharedMemory) -> None:
    try:
        resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:
        pass


class _State:
    def __init__(self) -> None:
        self.created: set[str] = set()
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            names, self.created = self.created, set()
        for name in names:
            unlink(name)


def unlink(name: str) -> bool:
    """Unlink segment ``name`` if it still exists; True if it did."""
    try:
        segment = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return False
    _untrack(segment)
    segment.close()
    try:
        _shm_unlink(segment)
    except FileNotFoundError:
        return False
    return True


class ShmTransport(base.Transport):
    name = "shm"
    fields = ("segment", "size")

    def __init__(self) -> None:
        self.state = base.ProcessState(_State)

    def dump(self, data: memoryview, **options: Any) -> tuple:
        if options:
            raise TypeError(f"shm dump_item takes no options {sorted(options)}")
        name = PREFIX + secrets.token_hex(16)
        size = data.nbytes
        try:
            # A zero-size segment is not allowed; one byte stands for an empty item.
            segment = shared_memory.SharedMemory(name=name, create=True, size=max(size, 1))
        except OSError as exc:
            raise TransportError(f"shm: cannot create a segment of {size} bytes: {exc}") \
                from None
        _untrack(segment)
        state = self.state.get()
        with state.lock:
            if len(state.created) >= PRUNE_AT and os.path.isdir("/dev/shm"):
                state.created = {n for n in state.created
                                 if os.path.exists("/dev/shm/" + n)}
            state.created.add(name)
        try:
            segment.buf[:size] = data
        except BaseException:
            segment.close()
            _shm_unlink(segment)
            with state.lock:
                state.created.discard(name)
            raise
        segment.close()
        return (name, size)

    def validate(self, fields: tuple, tk: tuple) -> None:
        name, size = fields
        ticket.check(tk, self.name, name, str, "segment")
        if not NAME_RE.match(name):
            raise TicketError(tk, f"segment name {name!r} is not one papycluster makes",
                              self.name)
        ticket.check_int(tk, self.name, size, "size", 0, 2**48)

    def load(self, fields: tuple, tk: tuple, remove: bool = True,
             timeout: float | None = None) -> Any:
        name, size = fields
        try:
            segment = shared_memory.SharedMemory(name=name)
        except FileNotFoundError:
            raise StaleTicketError(tk, f"no shared-memory segment {name} (already loaded, "
                                   "or its process ended, or it is on another host)",
                                   self.name) from None
        _untrack(segment)
        try:
            if segment.size < size:
                raise TicketError(tk, f"segment {name} has {segment.size} bytes, the ticket "
                                  f"says {size}", self.name)
            out = bytearray(size)
            out[:] = segment.buf[:size]
        finally:
            segment.close()
        if remove:
            try:
                _shm_unlink(segment)
            except FileNotFoundError:
                pass
            state = self.state.peek()
            if state is not None:
                with state.lock:
                    state.created.discard(name)
        return out

    def cleanup(self) -> None:
        self.state.close()


TRANSPORT = base.register(ShmTransport())
