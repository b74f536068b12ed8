"""``file``: one file per item in a named share that both sides can see.

The ticket carries the share's *name* and the file's name, never a path, so a
Windows host and a Linux host reading the same NFS/Samba export each find the file
under their own mount point (see :mod:`~papycluster.transport.shares`). Files are
created ``O_EXCL`` with mode 0600 and an unguessable name; the ticket exists only once
the file is complete, so a loader never sees half an item. The loader reads it in
one read and deletes it; files this process wrote and nobody
loaded are deleted when the process ends, or, if it was killed, when its pool stops
(the names carry the process's owner tag).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from typing import Any

from papycluster.transport import base, shares, ticket
from papycluster.transport.base import StaleTicketError, TicketError, TransportError

PREFIX = "papyc-"
SUFFIX = ".item"
#: ``papyc-<owner tag>-<128 random bits>.item`` (see :func:`base.owner_tag`)
NAME_RE = re.compile(r"papyc-[0-9a-f]{12}-[0-9a-f]{32}\.item\Z")
PRUNE_AT = 4096
_BINARY = getattr(os, "O_BINARY", 0)
_CHUNK = 1 << 24


class _State:
    def __init__(self) -> None:
        self.created: set[str] = set()
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            paths, self.created = self.created, set()
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass


def _write_all(fd: int, data: memoryview) -> None:
    pos = 0
    while pos < data.nbytes:
        pos += os.write(fd, data[pos:pos + _CHUNK])


class FileTransport(base.Transport):
    name = "file"
    fields = ("share", "name", "size")

    def __init__(self) -> None:
        self.state = base.ProcessState(_State)

    def dump(self, data: memoryview, share: str = shares.DEFAULT, **options: Any) -> tuple:
        if options:
            raise TypeError(f"file dump_item takes only share=, not {sorted(options)}")
        root = shares.resolve(share)
        name = f"{PREFIX}{base.owner_tag()}-{secrets.token_hex(16)}{SUFFIX}"
        path = os.path.join(root, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY, 0o600)
        except OSError as exc:
            raise TransportError(f"file: cannot create an item in share {share!r} "
                                 f"({root}): {exc}") from None
        state = self.state.get()
        with state.lock:
            if len(state.created) >= PRUNE_AT:
                state.created = {p for p in state.created if os.path.exists(p)}
            state.created.add(path)
        try:
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            # a full share must not keep half an item: remove it now, not at exit
            try:
                os.unlink(path)
            except OSError:
                pass
            with state.lock:
                state.created.discard(path)
            raise TransportError(f"file: writing an item of {data.nbytes} bytes to share "
                                 f"{share!r} ({path}) failed: {exc}") from None
        return (share, name, data.nbytes)

    def validate(self, fields: tuple, tk: tuple) -> None:
        share, name, size = fields
        ticket.check(tk, self.name, share, str, "share")
        if not shares.NAME_RE.match(share):
            raise TicketError(tk, f"share name {share!r} is invalid", self.name)
        ticket.check(tk, self.name, name, str, "name")
        if not NAME_RE.match(name):
            raise TicketError(tk, f"file name {name!r} is not one papycluster makes",
                              self.name)
        ticket.check_int(tk, self.name, size, "size", 0, 2**48)

    def load(self, fields: tuple, tk: tuple, remove: bool = True,
             timeout: float | None = None) -> Any:
        share, name, size = fields
        try:
            root = shares.resolve(share)
        except shares.ShareError as exc:
            raise TicketError(tk, str(exc), self.name) from None
        path = os.path.join(root, name)
        try:
            fd = os.open(path, os.O_RDONLY | _BINARY)
        except FileNotFoundError:
            raise StaleTicketError(tk, f"no file {path} (already loaded, its process ended, "
                                   f"or share {share!r} is not the same directory here)",
                                   self.name) from None
        except OSError as exc:
            raise TransportError(f"file ticket {tk!r}: cannot open {path}: {exc}") from None
        try:
            actual = os.fstat(fd).st_size
            if actual != size:
                raise TicketError(tk, f"{path} has {actual} bytes, the ticket says {size}",
                                  self.name)
            # One read into a new object: no zero-filled buffer to copy into first.
            parts = []
            got = 0
            while got < size:
                part = os.read(fd, size - got)
                if not part:
                    raise TransportError(f"file ticket {tk!r}: {path} ended after "
                                         f"{got} of {size} bytes")
                parts.append(part)
                got += len(part)
            out = parts[0] if len(parts) == 1 else b"".join(parts)  # b"" for size 0
        finally:
            os.close(fd)
        if remove:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            state = self.state.peek()
            if state is not None:
                with state.lock:
                    state.created.discard(path)
        return out

    def cleanup(self) -> None:
        self.state.close()

    def sweep(self, tag: str) -> int:
        """A killed process's files, in every share this host knows."""
        roots = {os.path.realpath(root) for root in shares.shares().values()}
        return sum(base.remove_tagged(root, f"{PREFIX}{tag}-", SUFFIX)
                   for root in sorted(roots))


TRANSPORT = FileTransport()
