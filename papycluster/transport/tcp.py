"""``tcp``: the dumping process serves its items from one long-lived server thread.

Two wires, named in each ticket (``wire``): by default the items are served by
ZeroMQ with CURVE, authenticated and encrypted (:mod:`.tcp_curve`); with encryption off
(``PAPYCLUSTER_ENCRYPT=0``, the hosts file's ``encrypt = false``) by the plain socket
this module implements, after the HMAC handshake, at the speed of a raw socket. A
loader follows its ticket, whatever its own setting.

PaPy forked a process per item that accepted one connection. Here the first
``dump_item(..., 'tcp')`` in a process starts a listening socket and an accept
thread; items wait in memory (the very object the previous worker function returned,
not a copy) until a loader fetches them. Loaders keep their authenticated
connections in a per-process pool, so a stream of items costs one request and one
reply each, no handshake and no fork. Nothing forks, so it works under ``spawn``
and ``forkserver`` too.

The plain wire, after :mod:`~papycluster.transport.auth`'s handshake::

    client: op:u8 key:32 ascii remove:u8 size:u64  (op 1 = get; size from the ticket)
    server: status:u8 size:u64 then size bytes       (status 0 ok, 1 no such item,
                                                      2 other size: nothing sent or removed)

The request carries the ticket's size so that a forged or corrupted ticket with a real
key cannot consume the item: the server compares before it removes anything.

Large items go out with ``sendmsg`` from a memoryview and come in with ``recv_into`` a
preallocated bytearray (:mod:`papycluster.wire.frames`); ``TCP_NODELAY`` is on.
"""

from __future__ import annotations

import os
import secrets
import selectors
import socket
import struct
import threading
import time
from typing import Any

from papycluster.transport import auth, base, buffers, curve, tcp_curve, ticket
from papycluster.transport.base import (
    ProducerLostError,
    SecretError,
    StaleTicketError,
    TicketError,
    TransportError,
    log,
)
from papycluster.wire import ports
from papycluster.wire.frames import recv_into_exact, send_parts

ADVERTISE_ENV = "PAPYCLUSTER_ADVERTISE_HOST"
BIND_ENV = "PAPYCLUSTER_BIND_HOST"
DEFAULT_TIMEOUT = 60.0
#: An idle pooled connection is dropped by the server after this long.
IDLE_TIMEOUT = 600.0
HANDSHAKE_TIMEOUT = auth.HANDSHAKE_DEADLINE
#: At most this many connections of one server may be in their handshake at once; more
#: are closed as soon as accepted. Together with the handshake's overall deadline this
#: bounds what peers without the secret can hold (threads, sockets) at any time, while
#: authenticated connections, which are ours, are not counted.
MAX_UNAUTHENTICATED = 64
#: A loader whose connection the server closed before greeting (it was over
#: MAX_UNAUTHENTICATED) tries again after this many seconds, doubling up to BACKOFF_MAX,
#: within its timeout.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
#: A loader takes a producer that says nothing for this long (no handshake, no byte of
#: its answer) for lost: the server answers from memory at once, and a frozen host's
#: kernel keeps the connection open while nothing comes, so only silence tells.
SILENCE = 10.0
#: Servers this process found gone: their next tickets fail at once (see GoneServers).
GONE = base.GoneServers()
#: Seconds a CURVE loader waits for the handshake of its retry after a dropped connection.
RETRY_HANDSHAKE = 3.0

_REQ = struct.Struct("!B32sBQ")
_REP = struct.Struct("!BQ")
OP_GET = 1
ST_OK = 0
ST_MISSING = 1
ST_SIZE = 2
SMALL = 64 * 1024
#: Socket buffers of both ends (the kernel caps them at net.core.[rw]mem_max). A megabyte
#: item then fits in flight at once instead of trickling through the default window.
SOCKET_BUFFER = 4 << 20


def advertise_host() -> str:
    """The address other hosts use to reach this one (set per host by the cluster)."""
    return os.environ.get(ADVERTISE_ENV) or "127.0.0.1"


def bind_host() -> str:
    return os.environ.get(BIND_ENV) or advertise_host()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def tune(sock: socket.socket, option: int) -> None:
    """No Nagle delay, and a send or receive buffer big enough for a whole item."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    except OSError:  # a platform that refuses the size keeps its default
        pass


class ItemStore:
    """The items this process dumped and nobody fetched yet, by key."""

    def __init__(self) -> None:
        self._items: dict[str, memoryview] = {}
        self._lock = threading.Lock()

    def put(self, view: memoryview) -> str:
        key = secrets.token_hex(16)
        with self._lock:
            self._items[key] = view
        return key

    def take(self, key: str, remove: bool, size: int | None = None) -> memoryview | None:
        """The item of ``key`` (removed if ``remove``); with ``size``, an item of another
        size is returned but never removed (the caller refuses it)."""
        with self._lock:
            item = self._items.get(key)
            if item is not None and remove and (size is None or item.nbytes == size):
                del self._items[key]
            return item

    def put_back(self, key: str, view: memoryview) -> None:
        """Keep an item that was taken but could not be sent, for its loader's retry."""
        with self._lock:
            self._items.setdefault(key, view)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class TcpServer:
    """One listening socket and its threads, serving this process's items."""

    def __init__(self) -> None:
        self.secret = auth.get_secret()
        self.store = ItemStore()
        self.host = advertise_host()
        bind = bind_host()
        self.sock = socket.socket(_family(bind), socket.SOCK_STREAM)
        try:
            self.port = ports.bind_port(self.sock, bind, "the tcp item server")
            self.sock.listen(128)
        except OSError as exc:
            self.sock.close()
            raise TransportError(f"tcp: cannot listen on {bind!r} ({BIND_ENV}): "
                                 f"{exc.strerror or exc}") from None
        self.sock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._unauthenticated = 0
        self.turned_away = 0  # connections closed at once: too many unauthenticated
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"papycluster-tcp-{self.port}")
        self._thread.start()

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closed.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r or self._closed.is_set():
                        return
                    try:
                        conn, peer = self.sock.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        if self._closed.is_set():
                            return
                        raise
                    with self._lock:
                        busy = self._unauthenticated >= MAX_UNAUTHENTICATED
                        if not busy:
                            self._unauthenticated += 1
                            self._conns.add(conn)
                    if busy:
                        self.turned_away += 1
                        if self.turned_away in (1, 10, 100) or self.turned_away % 1000 == 0:
                            log.warning("tcp: %d connections already in their handshake "
                                        "(MAX_UNAUTHENTICATED): closed the one from %s "
                                        "(%d turned away so far)", MAX_UNAUTHENTICATED,
                                        peer, self.turned_away)
                        conn.close()
                        continue
                    conn.setblocking(True)
                    threading.Thread(target=self._serve, args=(conn, peer), daemon=True,
                                     name=f"papycluster-tcp-conn-{peer}").start()
        finally:
            sel.close()

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        authenticating = True
        try:
            tune(conn, socket.SO_SNDBUF)
            ok = auth.server_handshake(conn, self.secret, peer, HANDSHAKE_TIMEOUT)
            with self._lock:
                self._unauthenticated -= 1
                authenticating = False
            if not ok:
                return
            conn.settimeout(IDLE_TIMEOUT)
            request = bytearray(_REQ.size)
            view = memoryview(request)
            while not self._closed.is_set():
                try:
                    recv_into_exact(conn, view, what="a request")
                except ConnectionError:
                    return
                op, key, remove, size = _REQ.unpack(request)
                if op != OP_GET:
                    log.warning("tcp: %s sent unknown op %d; closing", peer, op)
                    return
                item = self.store.take(key.decode("ascii", "replace"), bool(remove), size)
                if item is None:
                    conn.sendall(_REP.pack(ST_MISSING, 0))
                    continue
                if item.nbytes != size:  # a wrong ticket: say so, keep the item
                    conn.sendall(_REP.pack(ST_SIZE, item.nbytes))
                    continue
                header = _REP.pack(ST_OK, item.nbytes)
                if item.nbytes < SMALL:
                    conn.sendall(header + item)
                else:
                    send_parts(conn, header, item)
        except OSError:
            return  # peer gone or idle too long; its loader reconnects
        finally:
            with self._lock:
                if authenticating:
                    self._unauthenticated -= 1
                self._conns.discard(conn)
            conn.close()

    def unauthenticated(self) -> int:
        """How many connections are in their handshake now (for tests and status)."""
        with self._lock:
            return self._unauthenticated

    def close(self) -> None:
        self._closed.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(2.0)
        self.sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.store.clear()
        self._wake_r.close()
        self._wake_w.close()


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    """Like ``socket.create_connection``, with the receive buffer set before connecting
    (the buffer size fixes the TCP window scale at the handshake)."""
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0,
                                                              socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            tune(sock, socket.SO_RCVBUF)
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"{host!r} resolves to no address")


class ConnectionPool:
    """Authenticated client connections of this process, reused across items."""

    def __init__(self) -> None:
        # Keyed by the secret too: a connection made with an old secret is not reused.
        self._idle: dict[tuple[str, int, bytes], list[socket.socket]] = {}
        self._lock = threading.Lock()

    def get(self, host: str, port: int, timeout: float) -> tuple[socket.socket, bool]:
        secret = auth.get_secret()
        with self._lock:
            idle = self._idle.get((host, port, secret))
            if idle:
                sock = idle.pop()
                sock.settimeout(min(timeout, SILENCE))
                return sock, True
        deadline = time.monotonic() + timeout
        pause = BACKOFF_FIRST
        while True:
            sock = _connect(host, port, max(0.001, deadline - time.monotonic()))
            try:
                # Every later read is bounded by SILENCE (a frozen producer's kernel still
                # accepts the connection; only its silence tells).
                sock.settimeout(min(timeout, SILENCE))
                auth.client_handshake(sock, secret, f"tcp server {host}:{port}")
                return sock, False
            except auth.PeerClosed as exc:
                sock.close()
                # Closed before its greeting: the server is turning connections away
                # (others hold its handshake slots). Back off and try again in time.
                if exc.got or time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, BACKOFF_MAX)
            except BaseException:
                sock.close()
                raise

    def put(self, host: str, port: int, sock: socket.socket) -> None:
        secret = auth.get_secret()
        with self._lock:
            self._idle.setdefault((host, port, secret), []).append(sock)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for socks in idle.values():
            for sock in socks:
                sock.close()


class _State:
    def __init__(self) -> None:
        self.server: TcpServer | None = None
        self.curve_server: tcp_curve.CurveServer | None = None
        self.pool = ConnectionPool()
        self.curve_pool = tcp_curve.CurvePool()
        self.lock = threading.Lock()

    def get_server(self) -> TcpServer:
        with self.lock:
            if self.server is None:
                self.server = TcpServer()
            return self.server

    def get_curve_server(self) -> tcp_curve.CurveServer:
        with self.lock:
            if self.curve_server is None:
                self.curve_server = tcp_curve.CurveServer(
                    auth.get_secret(), ItemStore(), advertise_host(), bind_host())
            return self.curve_server

    def forget_after_fork(self) -> None:
        if self.server is not None:
            for sock in (self.server.sock, self.server._wake_r, self.server._wake_w,
                         *self.server._conns):
                sock.close()
        for socks in self.pool._idle.values():
            for sock in socks:
                sock.close()
        if self.curve_server is not None:
            self.curve_server.forget_after_fork()
        self.curve_pool.forget_after_fork()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.curve_server is not None:
            self.curve_server.close()
        self.pool.close()
        self.curve_pool.close()


#: The ``wire`` field of a tcp ticket: how its server is reached.
WIRE_CURVE = "curve"  # ZeroMQ with CURVE: authenticated and encrypted (the default)
WIRE_HMAC = "hmac"    # a plain socket after the HMAC handshake (PAPYCLUSTER_ENCRYPT=0)


class TcpTransport(base.Transport):
    name = "tcp"
    fields = ("host", "port", "key", "size", "wire")

    def __init__(self) -> None:
        self.state = base.ProcessState(_State)

    def dump(self, data: memoryview, **options: Any) -> tuple:
        if options:
            raise TypeError(f"tcp dump_item takes no options {sorted(options)}")
        if curve.enabled():
            server: Any = self.state.get().get_curve_server()
            wire = WIRE_CURVE
        else:
            server, wire = self.state.get().get_server(), WIRE_HMAC
        key = server.store.put(data)
        return (server.host, server.port, key, data.nbytes, wire)

    def validate(self, fields: tuple, tk: tuple) -> None:
        host, port, key, size, wire = fields
        ticket.check(tk, self.name, host, str, "host")
        if not host or len(host) > 255:
            raise TicketError(tk, f"field host {host!r} is not a host name", self.name)
        ticket.check_int(tk, self.name, port, "port", 1, 65535)
        ticket.check_token(tk, self.name, key)
        ticket.check_int(tk, self.name, size, "size", 0, 2**48)
        if wire not in (WIRE_CURVE, WIRE_HMAC):
            raise TicketError(tk, f"field wire {wire!r} is neither {WIRE_CURVE!r} nor "
                              f"{WIRE_HMAC!r}", self.name)

    def load(self, fields: tuple, tk: tuple, remove: bool = True,
             timeout: float | None = None) -> Any:
        host, port, key, size, wire = fields
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        where = f"{host}:{port}"
        GONE.check(where, tk, self.name)  # its host was lost a moment ago: no wait
        if wire == WIRE_CURVE:
            return self._load_curve(host, port, key, size, tk, remove, timeout)
        pool = self.state.get().pool
        for attempt in (0, 1):
            try:
                sock, reused = pool.get(host, port, timeout)
            except ConnectionRefusedError:
                raise self._gone(where, StaleTicketError, tk, f"no tcp server at {where} "
                                 "any more (the process that dumped the item has ended)"
                                 ) from None
            except TimeoutError:
                raise self._gone(where, ProducerLostError, tk, f"connecting to {where} "
                                 f"timed out after {timeout}s") from None
            except OSError as exc:
                raise self._gone(where, ProducerLostError, tk,
                                 f"cannot connect to {where}: {exc}") from None
            try:
                sock.sendall(_REQ.pack(OP_GET, key.encode("ascii"), 1 if remove else 0,
                                       size))
                header = bytearray(_REP.size)
                recv_into_exact(sock, memoryview(header), what="the reply header")
            except (ConnectionError, OSError) as exc:
                sock.close()
                if reused and attempt == 0 and not isinstance(exc, TimeoutError):
                    continue  # a pooled connection the server had dropped: once more
                raise self._gone(where, ProducerLostError, tk, f"{where} failed: {exc}"
                                 ) from None
            status, length = _REP.unpack(header)
            if status == ST_SIZE:  # the server kept the item: the ticket is wrong
                pool.put(host, port, sock)
                raise TicketError(tk, f"tcp server {where} holds {length} bytes under key "
                                  f"{key}, the ticket says {size}", self.name)
            if status != ST_OK:
                pool.put(host, port, sock)
                raise StaleTicketError(tk, f"tcp server {where} has no item {key} (already "
                                       "loaded, or never dumped there)", self.name)
            if length != size:
                sock.close()
                raise TicketError(tk, f"tcp server {where} offers {length} bytes, the ticket "
                                  f"says {size}", self.name)
            try:
                out = buffers.receive(length, lambda view, s=sock: recv_into_exact(
                    s, view, None, "the item"))
            except (ConnectionError, OSError) as exc:
                sock.close()
                raise self._gone(where, ProducerLostError, tk,
                                 f"{where} failed mid-item: {exc}") from None
            pool.put(host, port, sock)
            return out
        raise AssertionError("unreachable")

    def _gone(self, where: str, cls: type, tk: tuple, reason: str) -> Exception:
        """The error for a server found gone, remembered for its next tickets."""
        return GONE.found(where, cls, tk, reason, self.name)

    def _load_curve(self, host: str, port: int, key: str, size: int, tk: tuple,
                    remove: bool, timeout: float) -> bytearray:
        """The item from a CURVE server (see :mod:`.tcp_curve` for what each failure
        means); the same errors as the plain path."""
        pool = self.state.get().curve_pool
        secret = auth.get_secret()
        where = f"{host}:{port}"
        for attempt in (0, 1):
            try:
                # a retry after a dropped connection only tells an ended producer
                # (refused at once) from a lost one: a live server answers in ms
                wait = min(timeout, SILENCE if attempt == 0 else RETRY_HANDSHAKE)
                client, reused = pool.get(host, port, secret, wait, SILENCE)
            except tcp_curve.Refused:
                raise self._gone(where, StaleTicketError, tk, f"no tcp server at {where} "
                                 "any more (the process that dumped the item has ended)"
                                 ) from None
            except tcp_curve.Silent as exc:
                raise self._gone(where, ProducerLostError, tk, str(exc)) from None
            except SecretError as exc:
                raise SecretError(f"{exc} {auth.secret_hint()} (ticket {tk!r:.120})") \
                    from None
            try:
                status, length, frame = client.get(key, remove, size, timeout)
            except tcp_curve.Lost as exc:
                client.close()
                if attempt == 0:
                    continue  # a new connection tells an ended producer from a lost one
                raise self._gone(where, ProducerLostError, tk, str(exc)) from None
            except tcp_curve.Silent as exc:
                client.close()
                raise self._gone(where, ProducerLostError, tk, str(exc)) from None
            pool.put(host, port, secret, client)
            if status == tcp_curve.ST_SIZE:
                raise TicketError(tk, f"tcp server {where} holds {length} bytes under key "
                                  f"{key}, the ticket says {size}", self.name)
            if status != tcp_curve.ST_OK:
                raise StaleTicketError(tk, f"tcp server {where} has no item {key} (already "
                                       "loaded, or never dumped there)", self.name)
            if length != size or len(frame) != size:
                raise TicketError(tk, f"tcp server {where} offers {len(frame)} bytes, the "
                                  f"ticket says {size}", self.name)
            return bytearray(frame.buffer)
        raise AssertionError("unreachable")

    def cleanup(self) -> None:
        self.state.close()

    def pending(self) -> int:
        """How many items this process still holds for loaders (for tests and status)."""
        state = self.state.peek()
        if state is None:
            return 0
        return sum(len(server.store) for server in (state.server, state.curve_server)
                   if server is not None)


TRANSPORT = TcpTransport()
