"""``fifo``: named pipes on one host, served by one thread per dumping process.

PaPy forked a child per item that blocked in ``open`` until a reader came. Here the
first ``dump_item(..., 'fifo')`` makes a private directory (0700, unguessable name, in
``/dev/shm`` where the host has it) with a *control* fifo, and starts one thread that
multiplexes every transfer with non-blocking writes. Each item gets its own fifo (0600,
unguessable name). A loader:

1. opens the item fifo (read-write, so it never sees a premature end of file and
   never blocks in ``open``),
2. writes ``G<remove><key>\\n`` to the control fifo (one atomic write),
3. reads a 9-byte header (``status:u8 size:u64``) and then the item, every wait
   bounded by a timeout, and unlinks the fifo.

The server reads nothing from the control fifo but item keys, which it looks up in
its own table; nothing is ever deserialized. Everything lives under the private
directory, which is removed when the process ends. A loader uses only a directory, a
control fifo and an item fifo of this user that no other user may open (a forged ticket
could name ones that another user planted); no MAC is needed for objects only we write.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import select
import selectors
import shutil
import struct
import tempfile
import threading
import time
from typing import Any

from papycluster.transport import base, buffers, ticket
from papycluster.transport.base import (
    ProducerLostError,
    StaleTicketError,
    TicketError,
    TransportError,
    log,
)

try:
    import fcntl
except ImportError:  # Windows: no named pipes of this kind anyway
    fcntl = None  # type: ignore[assignment]

#: ``papyc-fifo-<owner tag>-<128 random bits>`` (see :func:`base.owner_tag`)
DIR_RE = re.compile(r"papyc-fifo-[0-9a-f]{12}-[0-9a-f]{32}\Z")
CTL = "ctl"
DEFAULT_TIMEOUT = 60.0
_HDR = struct.Struct("!BQ")
ST_OK = 0
ST_MISSING = 1
_REQ_LEN = 35  # b"G" + b"1"/b"0" + 32 hex + b"\n"
_WRITE_CHUNK = 1 << 20
_PIPE_SIZE = 1 << 20


def _fifo_root() -> str:
    """Where the private directories go: a memory file system when the host has one.

    Making and removing a fifo per item is metadata work; on tmpfs it never reaches a
    disk journal (on this machine's ext4 ``/tmp``, 1 MB items took about 8% longer).
    """
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


class FifoServer:
    """The private directory, its control fifo and the thread that feeds loaders."""

    def __init__(self) -> None:
        self.dir = os.path.join(_fifo_root(),
                                f"papyc-fifo-{base.owner_tag()}-{secrets.token_hex(16)}")
        os.mkdir(self.dir, 0o700)
        self.ctl = os.path.join(self.dir, CTL)
        os.mkfifo(self.ctl, 0o600)
        # Read-write: the server itself keeps a writer, so the fifo never reports EOF.
        self.ctl_fd = os.open(self.ctl, os.O_RDWR | os.O_NONBLOCK)
        self.items: dict[str, memoryview] = {}
        self.lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="papycluster-fifo")
        self._thread.start()

    def put(self, data: memoryview) -> str:
        key = secrets.token_hex(16)
        path = os.path.join(self.dir, key)
        os.mkfifo(path, 0o600)
        with self.lock:
            self.items[key] = data
        return key

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.ctl_fd, selectors.EVENT_READ, "ctl")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        pending = b""
        # fd -> [memoryview to write, position]
        active: dict[int, list] = {}
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "wake":
                        return
                    if key.data == "ctl":
                        try:
                            pending += os.read(self.ctl_fd, 65536)
                        except BlockingIOError:
                            continue
                        while b"\n" in pending:
                            line, pending = pending.split(b"\n", 1)
                            self._start(line, sel, active)
                        if len(pending) > _REQ_LEN:
                            log.warning("fifo: garbage on control fifo %s; dropped", self.ctl)
                            pending = b""
                    else:
                        self._feed(key.fd, sel, active)
        finally:
            for fd in active:
                os.close(fd)
            sel.close()

    def _start(self, line: bytes, sel: selectors.BaseSelector, active: dict) -> None:
        if len(line) != _REQ_LEN - 1 or line[:1] != b"G" or line[1:2] not in (b"0", b"1"):
            log.warning("fifo: malformed request %r on %s; dropped", line[:64], self.ctl)
            return
        key = line[2:].decode("ascii", "replace")
        if not ticket.TOKEN_RE.match(key):
            log.warning("fifo: malformed key %r on %s; dropped", key, self.ctl)
            return
        with self.lock:
            item = self.items.pop(key, None) if line[1:2] == b"1" else self.items.get(key)
        path = os.path.join(self.dir, key)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # the loader gave up, or the fifo was never ours
            log.warning("fifo: cannot open %s for the loader: %s", path, exc)
            return
        if item is None:
            header = _HDR.pack(ST_MISSING, 0)
            item = memoryview(b"")
        else:
            header = _HDR.pack(ST_OK, item.nbytes)
        active[fd] = [[memoryview(header), item], 0]
        sel.register(fd, selectors.EVENT_WRITE, "item")
        self._feed(fd, sel, active)

    def _feed(self, fd: int, sel: selectors.BaseSelector, active: dict) -> None:
        parts, _ = active[fd]
        try:
            while parts:
                view = parts[0]
                if view.nbytes == 0:
                    parts.pop(0)
                    continue
                n = os.write(fd, view[:_WRITE_CHUNK])
                parts[0] = view[n:]
        except BlockingIOError:
            return
        except OSError as exc:  # the loader went away (EPIPE)
            if exc.errno != errno.EPIPE:
                log.warning("fifo: writing to a loader failed: %s", exc)
        sel.unregister(fd)
        os.close(fd)
        del active[fd]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(2.0)
        for fd in (self.ctl_fd, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        with self.lock:
            self.items.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


class _State:
    def __init__(self) -> None:
        self.server: FifoServer | None = None
        self.lock = threading.Lock()

    def get_server(self) -> FifoServer:
        with self.lock:
            if self.server is None:
                self.server = FifoServer()
            return self.server

    def forget_after_fork(self) -> None:
        if self.server is not None:
            for fd in (self.server.ctl_fd, self.server._wake_r, self.server._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


#: While a loader waits for bytes, how often it checks that the server is still there.
ALIVE_EVERY = 0.5


def _server_gone(ctl: str) -> bool:
    """Has the dumping process ended? Its control fifo then has no reader."""
    try:
        os.close(os.open(ctl, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        return exc.errno in (errno.ENXIO, errno.ENOENT)
    return False


def _wait(fd: int, events: int, deadline: float, what: str, tk: tuple,
          ctl: str | None = None) -> None:
    """Wait for ``fd``; fail at ``deadline``, or at once when the server behind ``ctl``
    has ended (the loader holds the item fifo open itself, so it sees no end of file)."""
    poller = select.poll()
    poller.register(fd, events)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProducerLostError(tk, f"timed out {what} (is the process that dumped "
                                    "the item frozen?)", "fifo")
        if poller.poll(min(left, ALIVE_EVERY) * 1000):
            return
        if ctl is not None and _server_gone(ctl):
            raise ProducerLostError(tk, f"the process that dumped the item ended {what}",
                                    "fifo")


def _read_exact(fd: int, view: memoryview, deadline: float, tk: tuple, ctl: str) -> None:
    got = 0
    while got < view.nbytes:
        try:
            k = os.readv(fd, [view[got:]])
        except BlockingIOError:
            _wait(fd, select.POLLIN, deadline, f"after {got} of {view.nbytes} bytes", tk,
                  ctl)
            continue
        if k == 0:  # cannot happen while we hold a writer ourselves
            raise ProducerLostError(tk, f"end of file after {got} bytes", "fifo")
        got += k


class FifoTransport(base.Transport):
    name = "fifo"
    fields = ("dir", "key", "size")

    def __init__(self) -> None:
        self.state = base.ProcessState(_State)

    def dump(self, data: memoryview, **options: Any) -> tuple:
        if options:
            raise TypeError(f"fifo dump_item takes no options {sorted(options)}")
        if not hasattr(os, "mkfifo"):
            raise TransportError("fifo: this host has no named pipes (use file or tcp)")
        server = self.state.get().get_server()
        return (server.dir, server.put(data), data.nbytes)

    def validate(self, fields: tuple, tk: tuple) -> None:
        directory, key, size = fields
        ticket.check(tk, self.name, directory, str, "dir")
        if not os.path.isabs(directory) or not DIR_RE.match(os.path.basename(directory)):
            raise TicketError(tk, f"directory {directory!r} is not one papycluster makes",
                              self.name)
        ticket.check_token(tk, self.name, key)
        ticket.check_int(tk, self.name, size, "size", 0, 2**48)

    def load(self, fields: tuple, tk: tuple, remove: bool = True,
             timeout: float | None = None) -> Any:
        directory, key, size = fields
        if not hasattr(os, "mkfifo"):
            raise TicketError(tk, "this host has no named pipes: a fifo ticket can only be "
                              "loaded on the host that dumped it", self.name)
        deadline = time.monotonic() + (DEFAULT_TIMEOUT if timeout is None else timeout)
        path = os.path.join(directory, key)
        ctl = os.path.join(directory, CTL)
        try:
            # The directory first: in it, nobody else can swap the fifos after the check.
            base.check_private(directory, self.name, tk, kind="dir")
            base.check_private(path, self.name, tk, kind="fifo")
            base.check_private(ctl, self.name, tk, kind="fifo")
        except FileNotFoundError:
            raise StaleTicketError(tk, f"no fifo {path} (already loaded, its process ended, "
                                   "or it is on another host)", self.name) from None
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        try:
            if size > 65536 and hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux
                try:
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
                except OSError:
                    pass
            try:
                cfd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno in (errno.ENXIO, errno.ENOENT):
                    raise StaleTicketError(tk, f"no fifo server behind {ctl} (the process "
                                           "that dumped the item has ended)", self.name) \
                        from None
                raise TransportError(f"fifo ticket {tk!r}: cannot open {ctl}: {exc}") \
                    from None
            try:
                request = b"G" + (b"1" if remove else b"0") + key.encode("ascii") + b"\n"
                while True:
                    try:
                        os.write(cfd, request)
                        break
                    except BlockingIOError:
                        _wait(cfd, select.POLLOUT, deadline, "sending the request", tk)
            finally:
                os.close(cfd)
            header = bytearray(_HDR.size)
            _read_exact(fd, memoryview(header), deadline, tk, ctl)
            status, length = _HDR.unpack(header)
            if status != ST_OK:
                raise StaleTicketError(tk, f"the fifo server in {directory} has no item {key}",
                                       self.name)
            if length != size:
                raise TicketError(tk, f"the fifo server offers {length} bytes, the ticket "
                                  f"says {size}", self.name)
            out = buffers.receive(size, lambda view: _read_exact(fd, view, deadline, tk, ctl))
        finally:
            os.close(fd)
        if remove:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return out

    def cleanup(self) -> None:
        self.state.close()

    def sweep(self, tag: str) -> int:
        """A killed process's fifo directory (its control fifo and item fifos)."""
        return base.remove_tagged(_fifo_root(), f"papyc-fifo-{tag}-")


TRANSPORT = FifoTransport()
