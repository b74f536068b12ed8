"""``shm``: POSIX shared-memory segments on one host, reused from a per-process pool.

Creating, sizing, mapping and faulting in a fresh segment for every item costs more
than copying the item, so each dumping process keeps a pool of segments (sizes
rounded up by at most 1/8) and reuses the ones loaders have released. Pages are
reserved with ``posix_fallocate`` when a segment is made, so a full ``/dev/shm``
gives a clear error instead of a SIGBUS. A segment starts with a
64-byte header::

    state:u64 (0 free, 1 full)  generation:u64  size:u64

The dumper writes the item, then the generation and size, then ``state = full``; the
ticket names the segment and the generation. A loader maps the segment (and keeps
the mapping for the next item through it), checks state and generation, copies the
item out, checks the generation again (a seqlock: a reused segment is never read as
this item), and sets ``state = free`` so the dumper can reuse it.

Segments are created ``O_EXCL`` with mode 0600 and unguessable names, and a loader maps
only a segment of this user with that mode (a forged ticket could name one that another
user planted, 0666, full of their bytes); there is no MAC on this hot path, none is
needed for objects only we can write. They are opened
with ``_posixshmem`` (what :mod:`multiprocessing.shared_memory` uses) and mapped
with :mod:`mmap`, which keeps Python's ``resource_tracker`` out of it: it would
unlink a segment when *any* process that attached it ends, and warn about segments
that another process already removed. Instead the dumping process owns its segments
and unlinks them all when it ends; a loaded-or-not item does not outlive its pool.
(If the owner is killed, its pool removes the segments by their owner tag.)
"""

from __future__ import annotations

import itertools
import mmap
import os
import re
import secrets
import struct
import threading
from collections import OrderedDict
from typing import Any

from papycluster.transport import base, ticket
from papycluster.transport.base import (
    StaleTicketError,
    TicketError,
    TransportError,
    UnsafePathError,
)

try:
    import _posixshmem
except ImportError:  # Windows: no POSIX shared memory
    _posixshmem = None

PREFIX = "papyc_"
#: ``papyc_<owner tag>_<128 random bits>`` (see :func:`base.owner_tag`)
NAME_RE = re.compile(r"papyc_[0-9a-f]{12}_[0-9a-f]{32}\Z")
HEADER = 64
FREE, FULL = 0, 1
MIN_CAPACITY = 1 << 16
#: How many mappings a loading process keeps open for reuse.
READER_CACHE = 64
_HDR = struct.Struct("<QQQ")
_STATE = struct.Struct("<Q")


def _capacity(size: int) -> int:
    """Segment size for an item: rounded up in steps of 1/8 of its power of two, so
    segments of similar items are interchangeable and at most 1/8 is wasted."""
    need = max(MIN_CAPACITY, size + HEADER)
    step = max(MIN_CAPACITY, 1 << max(0, (need - 1).bit_length() - 3))
    return -(-need // step) * step


def _open(name: str, create: int = 0, tk: tuple | None = None) -> mmap.mmap:
    if _posixshmem is None:
        raise TransportError("shm: this host has no POSIX shared memory (use file or tcp)")
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    try:
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
    except PermissionError:
        if create:
            raise
        raise UnsafePathError(f"/dev/shm/{name}", "permission denied: it is not a segment "
                              "of this user", "shm", tk) from None
    try:
        if not create:  # before reading a byte: ours, and nobody else's to write
            base.check_private(f"/dev/shm/{name}", "shm", tk, st=os.fstat(fd))
        if create:
            # Reserve the pages now: on a full tmpfs (a container's 64 MB /dev/shm)
            # this fails with ENOSPC, where a sparse segment would SIGBUS on write.
            if hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(fd, 0, create)
                except OSError:
                    _posixshmem.shm_unlink("/" + name)
                    raise
            else:
                os.ftruncate(fd, create)
            size = create
        else:
            size = os.fstat(fd).st_size
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _unlink(name: str) -> None:
    try:
        _posixshmem.shm_unlink("/" + name)
    except (FileNotFoundError, AttributeError):
        pass


def _exists(name: str) -> bool:
    """Whether the segment is still there (Linux shows it in /dev/shm; else assume so)."""
    return not os.path.isdir("/dev/shm") or os.path.exists("/dev/shm/" + name)


class _Segment:
    __slots__ = ("name", "map", "capacity")

    def __init__(self, name: str, mapping: mmap.mmap, capacity: int) -> None:
        self.name = name
        self.map = mapping
        self.capacity = capacity


class _State:
    def __init__(self) -> None:
        self.pool: dict[int, list[_Segment]] = {}
        self.lock = threading.Lock()
        self.generation = itertools.count(secrets.randbits(32) + 1)
        self.mapped: OrderedDict[str, mmap.mmap] = OrderedDict()  # loader side
        self.map_lock = threading.Lock()

    def acquire(self, size: int) -> _Segment:
        """A free segment of this process big enough for ``size`` bytes (held: FULL)."""
        capacity = _capacity(size)
        with self.lock:
            segments = self.pool.setdefault(capacity, [])
            for segment in segments:
                if _STATE.unpack_from(segment.map, 0)[0] == FREE:
                    # Generation 0 first: a late loader of the segment's previous item
                    # then sees a mismatch before any of the new bytes land.
                    _STATE.pack_into(segment.map, 8, 0)
                    _STATE.pack_into(segment.map, 0, FULL)  # ours until the loader frees it
                    return segment
            name = f"{PREFIX}{base.owner_tag()}_{secrets.token_hex(16)}"
            try:
                mapping = _open(name, create=capacity)
            except OSError as exc:
                raise TransportError(f"shm: cannot create a segment of {capacity} bytes: "
                                     f"{exc}") from None
            segment = _Segment(name, mapping, capacity)
            _STATE.pack_into(mapping, 0, FULL)
            segments.append(segment)
            return segment

    def mapping(self, name: str, tk: tuple | None = None) -> mmap.mmap | None:
        with self.map_lock:
            mapping = self.mapped.get(name)
            if mapping is not None:
                if _exists(name):
                    self.mapped.move_to_end(name)
                    return mapping
                del self.mapped[name]
                try:
                    mapping.close()
                except BufferError:
                    pass
        try:
            mapping = _open(name, tk=tk)
        except FileNotFoundError:
            return None
        with self.map_lock:
            self.mapped[name] = mapping
            while len(self.mapped) > READER_CACHE:
                _, old = self.mapped.popitem(last=False)
                try:
                    old.close()
                except BufferError:  # another thread is copying from it; GC unmaps it
                    pass
        return mapping

    def close(self) -> None:
        with self.lock:
            pool, self.pool = self.pool, {}
        for segments in pool.values():
            for segment in segments:
                _unlink(segment.name)
                segment.map.close()
        with self.map_lock:
            mapped, self.mapped = self.mapped, OrderedDict()
        for mapping in mapped.values():
            try:
                mapping.close()
            except BufferError:
                pass


class ShmTransport(base.Transport):
    name = "shm"
    fields = ("segment", "generation", "size")

    def __init__(self) -> None:
        self.state = base.ProcessState(_State)

    def dump(self, data: memoryview, **options: Any) -> tuple:
        if options:
            raise TypeError(f"shm dump_item takes no options {sorted(options)}")
        state = self.state.get()
        size = data.nbytes
        segment = state.acquire(size)
        try:
            segment.map[HEADER:HEADER + size] = data
        except BaseException:
            _STATE.pack_into(segment.map, 0, FREE)
            raise
        generation = next(state.generation)
        struct.pack_into("<QQ", segment.map, 8, generation, size)
        return (segment.name, generation, size)

    def validate(self, fields: tuple, tk: tuple) -> None:
        name, generation, size = fields
        ticket.check(tk, self.name, name, str, "segment")
        if not NAME_RE.match(name):
            raise TicketError(tk, f"segment name {name!r} is not one papycluster makes",
                              self.name)
        ticket.check_int(tk, self.name, generation, "generation", 1, 2**64 - 1)
        ticket.check_int(tk, self.name, size, "size", 0, 2**48)

    def load(self, fields: tuple, tk: tuple, remove: bool = True,
             timeout: float | None = None) -> Any:
        name, generation, size = fields
        state = self.state.get()
        mapping = state.mapping(name, tk)
        if mapping is None:
            raise StaleTicketError(tk, f"no shared-memory segment {name} (its process ended, "
                                   "or it is on another host)", self.name)
        if len(mapping) < HEADER + size:
            raise TicketError(tk, f"segment {name} has {len(mapping)} bytes, the ticket says "
                              f"{size}", self.name)
        full, gen, stored = _HDR.unpack_from(mapping, 0)
        if full != FULL or gen != generation:
            raise StaleTicketError(tk, f"segment {name} no longer holds this item (already "
                                   "loaded)", self.name)
        if stored != size:
            raise TicketError(tk, f"segment {name} holds {stored} bytes, the ticket says "
                              f"{size}", self.name)
        # bytearray(view) is malloc + one memcpy; bytearray(n) would zero-fill (calloc)
        # first, which costs as much as the copy again for big items.
        with memoryview(mapping) as view:
            out = bytearray(view[HEADER:HEADER + size])
        full, gen, _ = _HDR.unpack_from(mapping, 0)
        if full != FULL or gen != generation:  # reused while we copied: not this item
            raise StaleTicketError(tk, f"segment {name} was reused while loading (was the "
                                   "ticket loaded twice at once?)", self.name)
        if remove:
            _STATE.pack_into(mapping, 0, FREE)
        return out

    def cleanup(self) -> None:
        self.state.close()

    def sweep(self, tag: str) -> int:
        """A killed process's segments (Linux lists them in /dev/shm; elsewhere none)."""
        if not os.path.isdir("/dev/shm"):
            return 0
        return base.remove_tagged("/dev/shm", f"{PREFIX}{tag}_")


TRANSPORT = ShmTransport()
