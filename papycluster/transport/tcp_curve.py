"""Encrypted ``tcp``: the item server and its loaders over ZeroMQ with CURVE.

The same service as the plain server of :mod:`papycluster.transport.tcp` (a loader
asks for an item by key and size, the dumping process answers from memory), carried by
ZeroMQ: a ROUTER socket in the dumping process, a DEALER socket per loader thread and
server, reused across items. Both ends are CURVE peers with the cluster's keys
(:mod:`.curve`), so every frame is encrypted and a peer without the secret never gets
past libzmq's handshake.

Messages::

    loader: one frame  op:u8 key:32 ascii remove:u8 size:u64 request:u64
    server: two frames status:u8 size:u64 request:u64, then the item (empty if none)

The request number lets a loader drop a late answer to a request it gave up on. The
item frame is sent without a copy (``copy=False`` from the stored memoryview) and
received without one (``copy=False``, its buffer handed to the caller).

ZeroMQ reconnects by itself and says nothing of a peer that is gone, which a loader
must know at once (a lost producer means recomputing the item): each loader socket
keeps a monitor, and its events decide. Before the handshake, a refused connection is
a producer that has ended (stale ticket), a failed handshake a peer without our secret
(SecretError), silence past the timeout a lost or frozen producer; after it, a
disconnect is a lost producer, unless a new connection is refused (it ended).
"""

from __future__ import annotations

import errno
import secrets
import struct
import threading
import time
from typing import Any

from papycluster.transport import curve
from papycluster.transport.base import SecretError, TransportError, log
from papycluster.wire import ports

_REQ = struct.Struct("!B32sBQQ")
_REP = struct.Struct("!BQQ")
OP_GET = 1
ST_OK = 0
ST_MISSING = 1
ST_SIZE = 2
#: Messages a server queues for one loader before it blocks that loader's replies
#: (each loader has at most one request out, so this is never reached in practice).
SNDHWM = 64
#: Seconds a connection may take to complete its CURVE handshake (as the plain server's).
HANDSHAKE_TIMEOUT = 10.0
#: The longest pause (ms) between libzmq's attempts to reconnect a loader socket.
RECONNECT_MAX_MS = 5000
#: Seconds between the pings of a loader socket to its server.
HEARTBEAT = 2.0
#: Seconds a loader waits, once connected, for the verdict on its handshake.
HANDSHAKE_GRACE = 1.0
#: Failed CURVE handshakes in a row that make a server one without our secret.
FAILED_HANDSHAKES = 3
#: The largest frame a server accepts: a request is 50 bytes.
MAX_REQUEST = 1024


class Refused(TransportError):
    """The loader's connection was refused before its handshake: nobody listens."""


class Silent(TransportError):
    """No handshake, or no answer, within the time allowed."""


class Lost(TransportError):
    """The server dropped an established connection."""


def _url(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def bind_in_range(sock: Any, bind: str, what: str) -> int:
    """Bind the zmq ``sock`` to ``bind`` on a port of the configured range (any free
    port when none is, see papycluster.wire.ports); the port. ``what`` names the
    listener when every port of the range is taken."""
    z = curve.zmq()
    order = ports.candidates()
    if order is None:  # any free port, as the system picks them
        sock.bind(_url(bind, 0).rpartition(":")[0] + ":*")
        return int(sock.getsockopt_string(z.LAST_ENDPOINT).rpartition(":")[2])
    for port in order:
        try:
            sock.bind(_url(bind, port))
            return port
        except z.ZMQError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
    raise ports.exhausted(what, bind)


class CurveServer:
    """One ROUTER socket and its thread, serving ``store``'s items to CURVE clients."""

    def __init__(self, secret: bytes, store: Any, host: str, bind: str) -> None:
        z = curve.zmq()
        self.store = store
        self.host = host
        self.context = z.Context()
        self.gate = curve.Gate(self.context)
        keys = curve.Keys(secret)
        self.gate.allow(keys)
        self.sock = self.context.socket(z.ROUTER)
        keys.as_server(self.sock)
        self.sock.setsockopt(z.LINGER, 0)
        self.sock.setsockopt(z.SNDHWM, SNDHWM)
        self.sock.setsockopt(z.ROUTER_MANDATORY, 1)
        # a peer that drips its handshake is cut at the deadline; one that sends a frame
        # bigger than any request is dropped before it is buffered
        self.sock.setsockopt(z.HANDSHAKE_IVL, int(HANDSHAKE_TIMEOUT * 1000))
        self.sock.setsockopt(z.MAXMSGSIZE, MAX_REQUEST)
        try:
            self.port = bind_in_range(self.sock, bind, "the tcp item server")
        except (OSError, z.ZMQError) as exc:
            self._close_all()
            raise TransportError(f"tcp: cannot listen on {bind!r}: {exc}") from None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"papycluster-tcp-curve-{self.port}")
        self._thread.start()

    def _loop(self) -> None:
        z = curve.zmq()
        poller = z.Poller()
        poller.register(self.sock, z.POLLIN)
        try:
            while not self._closed.is_set():
                if not poller.poll(250):
                    continue
                frames = self.sock.recv_multipart(copy=True)
                if len(frames) != 2 or len(frames[1]) != _REQ.size:
                    log.warning("tcp: a CURVE peer sent a malformed request; ignored")
                    continue
                peer, request = frames
                op, key, remove, size, rid = _REQ.unpack(request)
                if op != OP_GET:
                    continue
                item = self.store.take(key.decode("ascii", "replace"), bool(remove), size)
                if item is None:
                    reply = [peer, _REP.pack(ST_MISSING, 0, rid), b""]
                elif item.nbytes != size:  # a wrong ticket: say so, keep the item
                    reply = [peer, _REP.pack(ST_SIZE, item.nbytes, rid), b""]
                else:
                    reply = [peer, _REP.pack(ST_OK, item.nbytes, rid), item]
                try:
                    self.sock.send_multipart(reply, copy=False, flags=z.NOBLOCK)
                except z.ZMQError as exc:  # the loader is gone (ROUTER_MANDATORY), or
                    log.info("tcp: could not answer a loader (%s)", exc)  # not reading
                    if item is not None and remove and item.nbytes == size:
                        self.store.put_back(key.decode("ascii"), item)  # not lost
        except z.ZMQError:
            if not self._closed.is_set():
                raise
        finally:
            self.sock.close(linger=0)

    def refused(self) -> int:
        """How many CURVE handshakes the gate refused (for tests and status)."""
        return self.gate.refused

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2.0)
        self._close_all()

    def _close_all(self) -> None:
        try:
            self.sock.close(linger=0)
        finally:
            self.gate.stop()
            self.context.term()

    def forget_after_fork(self) -> None:
        """In a forked child: close its copy of our listening socket (else the port
        stays open after we end, and loaders wait instead of being refused), and let go
        of the rest without touching the parent's zmq state."""
        close_inherited_listener(self.port)
        self.sock = self.context = self.gate = None  # type: ignore[assignment]


def close_inherited_listener(port: int) -> None:
    """Close this process's descriptors of sockets that listen on ``port`` (libzmq
    does not give its listener's descriptor; the process's open descriptors do)."""
    import os
    import socket
    import stat

    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return
    for name in names:
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except (OSError, ValueError):
            continue
        try:
            address = sock.getsockname()
            mine = (isinstance(address, tuple) and address[1] == port and
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        except OSError:
            mine = False
        if mine:
            sock.close()
        else:
            sock.detach()


class CurveClient:
    """A DEALER socket connected to one server, and the monitor that tells its fate."""

    def __init__(self, context: Any, keys: curve.Keys, host: str, port: int,
                 timeout: float, silence: float = 10.0, own_context: bool = False) -> None:
        self.context = context if own_context else None
        z = curve.zmq()
        self.where = f"{host}:{port}"
        self.sock = context.socket(z.DEALER)
        keys.as_client(self.sock)
        self.sock.setsockopt(z.LINGER, 0)
        # a handshake that does not end within SILENCE drops the connection (a frozen
        # server's kernel accepts it, then nothing comes)
        self.sock.setsockopt(z.HANDSHAKE_IVL, int(silence * 1000))
        # ZMTP pings: a server whose process is frozen (its kernel keeps the connection
        # open) stops answering them, and the connection drops after SILENCE, while a
        # long item keeps it alive by its own traffic
        self.sock.setsockopt(z.HEARTBEAT_IVL, int(HEARTBEAT * 1000))
        self.sock.setsockopt(z.HEARTBEAT_TIMEOUT, int(silence * 1000))
        # an idle pooled socket whose server ended retries ever more seldom (libzmq
        # reconnects by itself), until the pool drops it
        self.sock.setsockopt(z.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
        # a name of its own: pyzmq's get_monitor_socket() names it after the socket's
        # descriptor, which a new socket may get again before the old monitor is gone
        address = f"inproc://papycluster.monitor.{secrets.token_hex(8)}"
        self.sock.monitor(address,
                          z.EVENT_CONNECTED | z.EVENT_HANDSHAKE_SUCCEEDED |
                          z.EVENT_HANDSHAKE_FAILED_AUTH | z.EVENT_HANDSHAKE_FAILED_PROTOCOL |
                          z.EVENT_HANDSHAKE_FAILED_NO_DETAIL | z.EVENT_CONNECT_RETRIED |
                          z.EVENT_DISCONNECTED)
        self.monitor = context.socket(z.PAIR)
        self.monitor.setsockopt(z.LINGER, 0)
        self.monitor.connect(address)
        self.poller = z.Poller()  # the answer, or news of the connection
        self.poller.register(self.sock, z.POLLIN)
        self.poller.register(self.monitor, z.POLLIN)
        self.rid = 0
        self.broken = False
        try:
            self.sock.connect(_url(host, port))
            self._handshake(timeout)
        except BaseException:
            self.close()
            raise

    def _event(self, timeout: float) -> int | None:
        z = curve.zmq()
        from zmq.utils.monitor import recv_monitor_message

        if not self.monitor.poll(max(0, int(timeout * 1000))):
            return None
        return recv_monitor_message(self.monitor, z.NOBLOCK)["event"]

    def _handshake(self, timeout: float) -> None:
        """Wait for the first handshake. libzmq tries again by itself after each
        failure (CONNECT_RETRIED follows every attempt); what the attempts say decides:
        a refusal with no connection is a producer that has ended; a key the server's
        ZAP gate denied, or handshakes that keep failing (a server with other keys:
        each attempt fails the same way, where a dying server refuses the next), is a
        peer without our secret."""
        z = curve.zmq()
        deadline = time.monotonic() + timeout
        connected = False
        failures = 0
        while True:
            # once connected, a verdict comes in milliseconds; when none comes (libzmq
            # may not report a success), go on: the request waits for the handshake, and
            # a failure of it still shows on the monitor (see get)
            event = self._event(deadline - time.monotonic())
            if event is None:
                raise Silent(f"no CURVE handshake with {self.where} within {timeout:g}s")
            if event == z.EVENT_HANDSHAKE_SUCCEEDED:
                return
            if event == z.EVENT_CONNECTED:
                connected = True
            elif event == z.EVENT_CONNECT_RETRIED:
                if not connected:
                    raise Refused(f"nothing listens on {self.where}")
                connected = False  # the next attempt
            elif event == z.EVENT_HANDSHAKE_FAILED_AUTH or (
                    event in (z.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                              z.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
                    and (failures := failures + 1) >= FAILED_HANDSHAKES):
                raise SecretError(f"tcp server {self.where} does not know the cluster "
                                  "secret, or refused ours (the CURVE handshake failed)")

    def healthy(self) -> bool:
        """False once the server dropped the connection (a pending monitor event)."""
        z = curve.zmq()
        while not self.broken and self.monitor.poll(0):
            event = self._event(0)
            if event in (z.EVENT_DISCONNECTED, z.EVENT_CONNECT_RETRIED):
                self.broken = True
        return not self.broken

    def get(self, key: str, remove: bool, size: int, timeout: float
            ) -> tuple[int, int, Any]:
        """``(status, length, frame)`` of one request: Lost when the server dropped the
        connection (or stopped answering pings), Silent when the whole answer took
        longer than ``timeout``."""
        self.rid += 1
        self.sock.send(_REQ.pack(OP_GET, key.encode("ascii"), 1 if remove else 0, size,
                                 self.rid))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready = dict(self.poller.poll(max(0, int(left * 1000)))) if left > 0 else {}
            if not ready:
                self.broken = True
                raise Silent(f"{self.where} gave no answer within {timeout:g}s")
            if self.sock in ready:
                header, frame = self.sock.recv_multipart(copy=False)
                status, length, rid = _REP.unpack(header.bytes)
                if rid != self.rid:
                    continue  # the late answer to a request given up on
                return status, length, frame
            if not self.healthy():
                raise Lost(f"{self.where} dropped the connection")

    def close(self) -> None:
        # the socket first: closing it ends its monitor. (disable_monitor() can block
        # for good when the monitor's queue is full of unread events.)
        self.sock.close(linger=0)
        self.monitor.close(linger=0)
        if self.context is not None:
            self.context.term()


class CurvePool:
    """The CURVE loader sockets of this process, one per concurrent loader and server,
    reused across items (each with its zmq context, see get)."""

    def __init__(self) -> None:
        self._keys: dict[bytes, curve.Keys] = {}
        self._idle: dict[tuple[str, int, bytes], list[CurveClient]] = {}
        self._lock = threading.Lock()

    def get(self, host: str, port: int, secret: bytes, timeout: float,
            silence: float = 10.0) -> tuple[CurveClient, bool]:
        """A connected client (reused: True) or Refused, Silent, SecretError."""
        with self._lock:
            idle = self._idle.get((host, port, secret), [])
            while idle:
                client = idle.pop()
                if client.healthy():
                    return client, True
                client.close()
            keys = self._keys.get(secret)
            if keys is None:
                keys = self._keys[secret] = curve.Keys(secret)
        # a context per socket: in a shared one, the monitor of a new socket was seen to
        # report nothing after a refused socket was closed
        return CurveClient(curve.zmq().Context(), keys, host, port, timeout, silence,
                           own_context=True), False

    def put(self, host: str, port: int, secret: bytes, client: CurveClient) -> None:
        """Keep ``client`` for the next item of its server; drop the idle clients whose
        server went away meanwhile (their sockets would reconnect for ever)."""
        gone: list[CurveClient] = []
        with self._lock:
            if not client.broken:
                self._idle.setdefault((host, port, secret), []).append(client)
            else:
                gone.append(client)
            for key, clients in list(self._idle.items()):
                keep = [c for c in clients if c.healthy()]
                gone += [c for c in clients if c not in keep]
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
        for c in gone:
            c.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for clients in idle.values():
            for client in clients:
                client.close()

    def forget_after_fork(self) -> None:
        self._idle = {}
