"""``file``: one file per item in a named share that both sides can see.

The ticket carries the share's *name* and the file's name, never a path, so a
Windows host and a Linux host reading the same NFS/Samba export each find the file
under their own mount point (see :mod:`~papycluster.transport.shares`). Files are
created ``O_EXCL`` with mode 0600 and an unguessable name; the ticket exists only once
the file is complete, so a loader never sees half an item. The loader reads it in
one pass and deletes it; files this process wrote and nobody
loaded are deleted when the process ends, or, if it was killed, when its pool stops
(the names carry the process's owner tag).

A share may be writable by other users (no sticky bit), who could swap a file for one
of their own. So the ticket also carries a MAC of the item under the cluster secret
(see :mod:`~papycluster.transport.integrity`), computed while the file is written and
checked while it is read, before anything is returned. The loader opens only a regular
file (never a link, never a fifo that would block it), and in the host's temporary
directory, where every item is this user's own, also refuses one owned by another user.
On NFS or Samba the owner says nothing (another host's uid, or the mount's), so there
the MAC is the check. In the temp directory the owner and mode checks are the whole
proof, as for shm and fifo (nobody else can write or replace a 0600 file of ours, and
a file planted under our name is theirs, not ours): items there are not hashed, their
ticket carries an empty MAC, and a ticket without a MAC is refused anywhere else.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import tempfile
import threading
from typing import Any

from papycluster.transport import base, integrity, shares, ticket
from papycluster.transport.base import (
    StaleTicketError,
    TicketError,
    TransportError,
    UnsafePathError,
)

PREFIX = "papyc-"
SUFFIX = ".item"
#: ``papyc-<owner tag>-<128 random bits>.item`` (see :func:`base.owner_tag`)
NAME_RE = re.compile(r"papyc-[0-9a-f]{12}-[0-9a-f]{32}\.item\Z")
PRUNE_AT = 4096
_BINARY = getattr(os, "O_BINARY", 0)
#: Opening for a load: never follow a link, never wait in open() for a planted fifo.
_READ_FLAGS = (os.O_RDONLY | _BINARY | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_NONBLOCK", 0))
_CHUNK = integrity.CHUNK


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


#: The MAC field of an item in the temp directory (see the module's docstring).
NO_MAC = ""


def _write_all(fd: int, data: memoryview, mac: object) -> None:
    """Write ``data``, feeding each piece to ``mac`` (if any) just before it is written."""
    for start in range(0, data.nbytes, _CHUNK):
        piece = data[start:start + _CHUNK]
        if mac is not None:
            mac.update(piece)  # type: ignore[attr-defined]
        pos = 0
        while pos < piece.nbytes:
            pos += os.write(fd, piece[pos:])


def _read_all(fd: int, size: int, mac: object, path: str, tk: tuple) -> bytearray:
    """Read ``size`` bytes into a new buffer, feeding each piece to ``mac`` (if any) as
    it lands."""
    out = bytearray(size)
    view = memoryview(out)
    got = 0
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while got < size:
            k = f.readinto(view[got:got + _CHUNK])
            if not k:
                raise TransportError(f"file ticket {tk!r}: {path} ended after {got} of "
                                     f"{size} bytes")
            if mac is not None:
                mac.update(view[got:got + k])  # type: ignore[attr-defined]
            got += k
    view.release()
    return out


def _strict_owner(root: str) -> bool:
    """Does a file's owner mean anything in ``root``? Only in this host's temp directory,
    where every item is written by this user on this host; in a share several hosts
    write, owners are other hosts' uids (or the mount's), and the MAC is the check."""
    try:
        st = os.stat(root)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == _temp_dir_id()


_temp_id: tuple[str, tuple[int, int]] | None = None


def _temp_dir_id() -> tuple[int, int] | None:
    """The temp directory's (device, inode), looked up once per temp dir name, not at
    every dump and load (one stat of the share's root is left on that path)."""
    global _temp_id
    name = tempfile.gettempdir()
    if _temp_id is None or _temp_id[0] != name:
        try:
            st = os.stat(name)
        except OSError:
            return None
        _temp_id = (name, (st.st_dev, st.st_ino))
    return _temp_id[1]


class FileTransport(base.Transport):
    name = "file"
    fields = ("share", "name", "size", "mac")

    def __init__(self) -> None:
        self.state = base.ProcessState(_State)

    def dump(self, data: memoryview, share: str = shares.DEFAULT, **options: Any) -> tuple:
        if options:
            raise TypeError(f"file dump_item takes only share=, not {sorted(options)}")
        root = shares.resolve(share)
        name = f"{PREFIX}{base.owner_tag()}-{secrets.token_hex(16)}{SUFFIX}"
        path = os.path.join(root, name)
        private = _strict_owner(root)
        mac = None if private else integrity.signer(self.name, name, data.nbytes)
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
                _write_all(fd, data, mac)
            finally:
                os.close(fd)
        except BaseException as exc:
            # a full share must not keep half an item: remove it now, not at exit
            try:
                os.unlink(path)
            except OSError:
                pass
            with state.lock:
                state.created.discard(path)
            if isinstance(exc, OSError):
                raise TransportError(f"file: writing an item of {data.nbytes} bytes to "
                                     f"share {share!r} ({path}) failed: {exc}") from None
            raise
        return (share, name, data.nbytes, NO_MAC if mac is None else integrity.tag(mac))

    def validate(self, fields: tuple, tk: tuple) -> None:
        share, name, size, mac = fields
        ticket.check(tk, self.name, share, str, "share")
        if not shares.NAME_RE.match(share):
            raise TicketError(tk, f"share name {share!r} is invalid", self.name)
        ticket.check(tk, self.name, name, str, "name")
        if not NAME_RE.match(name):
            raise TicketError(tk, f"file name {name!r} is not one papycluster makes",
                              self.name)
        ticket.check_int(tk, self.name, size, "size", 0, 2**48)
        if mac != NO_MAC:
            ticket.check_token(tk, self.name, mac, "mac")

    def load(self, fields: tuple, tk: tuple, remove: bool = True,
             timeout: float | None = None) -> Any:
        share, name, size, expected = fields
        try:
            root = shares.resolve(share)
        except shares.ShareError as exc:
            raise TicketError(tk, str(exc), self.name) from None
        path = os.path.join(root, name)
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            raise StaleTicketError(tk, f"no file {path} (already loaded, its process ended, "
                                   f"or share {share!r} is not the same directory here)",
                                   self.name) from None
        except OSError as exc:
            if os.path.islink(path):
                raise UnsafePathError(path, "it is a symbolic link", self.name, tk) from None
            raise TransportError(f"file ticket {tk!r}: cannot open {path}: {exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePathError(path, "it is not a regular file", self.name, tk)
            private = _strict_owner(root)
            if private:
                base.check_private(path, self.name, tk, st=st)
            elif expected == NO_MAC:
                raise base.ItemIntegrityError(
                    tk, f"it carries no MAC, which only an item in this host's temp "
                    f"directory may (there its owner is checked); {path} is in share "
                    f"{share!r}: refused before anything was read", self.name)
            if st.st_size != size:
                raise TicketError(tk, f"{path} has {st.st_size} bytes, the ticket says {size}",
                                  self.name)
            mac = None if expected == NO_MAC else integrity.signer(self.name, name, size)
            out = _read_all(fd, size, mac, path, tk)
        finally:
            os.close(fd)
        if mac is not None:
            integrity.verify(mac, expected, tk, self.name, f"the file {path}")
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
