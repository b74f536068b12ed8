"""``udp``: items cut into numbered, checksummed datagrams, pulled window by window.

One server thread per dumping process answers on one UDP socket. A loader:

1. ``HELLO cnonce`` -> ``CHALLENGE cnonce snonce proof``: the server proves it knows
   the cluster secret (HMAC over both nonces);
2. ``GET snonce key remove proof``: the loader proves it too; only then does the
   server look at the key. The session is bound to the loader's address.
   The server answers ``INFO status size count`` and the first window;
3. ``WINDOW first count proof`` for each following window of datagrams, sized to fit
   the loader's receive buffer, so a fast sender does not overrun a slow reader;
4. ``DONE``.

Each data datagram carries the session tag, its sequence number and a CRC-32 of its
payload (zlib's CRC-32 runs at about 7 GB/s here, Adler-32 at 4; UDP adds its own
16-bit checksum underneath). A
datagram that is missing when its window times out, or that fails its checksum,
makes the whole item an error (``retries=N`` asks for the missing ones again up to N
times first); a loader never returns wrong data and never waits
without a timeout. Control messages (HELLO, GET, WINDOW) are resent with a growing
pause until the producer has been silent for :data:`SILENCE` seconds or the load's
timeout is reached, since they are idempotent.

Before a peer has proved the secret (its GET), the server answers it at most as many
bytes as it sent: a HELLO is padded to the size of the CHALLENGE that answers it, so
the server cannot be used to amplify a flood towards a forged source address. Greetings
are rate-limited per peer address (a token bucket: :data:`GREETING_BURST`, then
:data:`GREETING_RATE` per second); over the limit they are dropped without an HMAC or
an answer, so one flooding address costs the server a read and a dictionary lookup per
datagram and cannot evict the challenges of the other peers. This does not stop an
attacker who forges many source addresses from filling the server's receive buffer;
the loaders' retries with backoff are what gets their loads through such a flood.
"""

from __future__ import annotations

import hmac
import os
import secrets
import select
import selectors
import socket
import struct
import sys
import threading
import time
import zlib
from typing import Any

from papycluster.transport import auth, base, buffers, ticket
from papycluster.transport.base import (
    ProducerLostError,
    SecretError,
    StaleTicketError,
    TicketError,
    TransportError,
    log,
)
from papycluster.transport.tcp import ItemStore, advertise_host, bind_host

MAGIC = b"PU"
VERSION = 3  # 3: HELLO padded to the CHALLENGE's size; 2: data datagrams carry a CRC-32
T_HELLO, T_CHALLENGE, T_GET, T_INFO, T_WINDOW, T_DATA, T_DONE = range(1, 8)
NONCE = 16
MACLEN = 32
DEFAULT_CHUNK = 65000
MAX_CHUNK = 65400  # + a 20-byte header: under the 65507-byte IPv4 limit
DEFAULT_TIMEOUT = 60.0
#: How long one window may stay incomplete before its datagrams count as lost.
WINDOW_TIMEOUT = 1.0
#: A loader gives up on a producer that has answered nothing for this long (its
#: control messages resent meanwhile, with a pause that doubles from CONTROL_PAUSE up to
#: CONTROL_PAUSE_MAX): as the tcp loader's SILENCE, only silence tells a frozen host.
SILENCE = 10.0
CONTROL_PAUSE = 0.25
CONTROL_PAUSE_MAX = 2.0
#: Per peer address: this many greetings at once, then GREETING_RATE per second.
GREETING_BURST = 8
GREETING_RATE = 2.0
#: Peer addresses whose greeting budget is remembered (the oldest is forgotten first).
MAX_PEERS = 16384
#: A challenge not answered by a GET within this many seconds is forgotten.
CHALLENGE_LIFE = 15.0
#: The server's receive buffer, so that a burst of requests is queued, not dropped.
SERVER_RCVBUF = 2 << 20
SESSION_IDLE = 60.0
MAX_PENDING = 4096
#: The largest item udp carries (bytes), unless ``PAPYCLUSTER_UDP_MAX_ITEM`` says
#: otherwise. An item is held in the dumping process until it is fetched and the loader
#: allocates its whole size up front, from the ticket, so both ends refuse sizes past
#: the limit with an error that names it (rather than a MemoryError, or a wait for a
#: million datagrams). Bigger items belong on tcp, shm or file.
MAX_ITEM = 1 << 30
MAX_ITEM_ENV = "PAPYCLUSTER_UDP_MAX_ITEM"
RCVBUF = 8 << 20
#: The server's send buffer. On loopback a datagram counts against its sender until the
#: receiver has read it, so a small buffer stalls the sender after three datagrams.
SNDBUF = 8 << 20
#: Lets a privileged process go past net.core.rmem_max (Python does not name it).
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)

_HEAD = struct.Struct("!2sBB")  # magic, version, type
# padded to _CHALLENGE's size: no answer before authentication is bigger than its request
_HELLO = struct.Struct("!2sBB16s48x")
_CHALLENGE = struct.Struct("!2sBB16s16s32s")
_GET = struct.Struct("!2sBB16s32sBII32s")  # snonce key remove first count mac
_INFO = struct.Struct("!2sBB16sBQII")  # snonce status size count chunk
_WINDOW = struct.Struct("!2sBB16sII32s")
_DONE = struct.Struct("!2sBB16s32s")
_DATA = struct.Struct("!2sBB8sII")  # tag seq crc32
assert _HELLO.size == _CHALLENGE.size
ST_OK, ST_MISSING = 0, 1


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


class _Session:
    __slots__ = ("addr", "cnonce", "view", "chunk", "count", "seen", "info")

    def __init__(self, addr: Any, cnonce: bytes, view: memoryview | None, chunk: int) -> None:
        self.addr = addr
        self.cnonce = cnonce
        self.view = view
        self.chunk = chunk
        self.count = 0 if view is None else max(1, -(-view.nbytes // chunk))
        self.seen = time.monotonic()
        self.info = b""


class UdpServer:
    def __init__(self) -> None:
        self.secret = auth.get_secret()
        self.store = ItemStore()
        self.chunks: dict[str, int] = {}
        self.host = advertise_host()
        bind = bind_host()
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.bind((bind, 0))
        except OSError as exc:
            self.sock.close()
            raise TransportError(f"udp: cannot bind {bind!r}: {exc}") from None
        for option, size in ((socket.SO_SNDBUF, SNDBUF), (socket.SO_RCVBUF, SERVER_RCVBUF)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, size)
            except OSError:  # the kernel caps it at net.core.[wr]mem_max; a refusal keeps
                pass         # the default
        # Non-blocking: reads go through the selector, sends wait in _sendmsg (bounded).
        self.sock.setblocking(False)
        self._out = select.poll()
        self._out.register(self.sock, select.POLLOUT)
        self.port = self.sock.getsockname()[1]
        self._challenges: dict[bytes, tuple[Any, bytes, float]] = {}
        self._sessions: dict[bytes, _Session] = {}
        self._greetings: dict[Any, list[float]] = {}  # addr -> [tokens, last refill]
        self.dropped_greetings = 0
        self._refused = 0
        self._refused_logged: dict[str, float] = {}
        self._expired = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"papycluster-udp-{self.port}")
        self._thread.start()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        buf = bytearray(2048)
        try:
            while not self._closed.is_set():
                events = sel.select(5.0)
                if self._closed.is_set():
                    return
                if time.monotonic() >= self._expired + 1.0:
                    self._expire()
                for key, _ in events:
                    if key.fileobj is self._wake_r:
                        return
                    # drain what is queued (bounded), not one datagram per select
                    for _ in range(256):
                        try:
                            n, addr = self.sock.recvfrom_into(buf)
                        except (BlockingIOError, TimeoutError):
                            break
                        except OSError:
                            if self._closed.is_set():
                                return
                            break
                        try:
                            self._handle(memoryview(buf)[:n], addr)
                        except OSError as exc:
                            log.warning("udp: answering %s failed: %s", addr, exc)
        finally:
            sel.close()

    def _expire(self) -> None:
        now = self._expired = time.monotonic()
        for snonce in [k for k, v in self._challenges.items() if v[2] < now]:
            del self._challenges[snonce]
        for snonce in [k for k, s in self._sessions.items() if s.seen + SESSION_IDLE < now]:
            del self._sessions[snonce]
        full = GREETING_BURST / GREETING_RATE  # an idle peer's bucket is full again
        for addr in [a for a, b in self._greetings.items() if b[1] + full < now]:
            del self._greetings[addr]

    def _may_greet(self, addr: Any) -> bool:
        """Take one token from ``addr``'s greeting budget; False if it has none left."""
        now = time.monotonic()
        bucket = self._greetings.get(addr)
        if bucket is None:
            if len(self._greetings) >= MAX_PEERS:
                self._greetings.pop(next(iter(self._greetings)))
            bucket = self._greetings[addr] = [float(GREETING_BURST), now]
        else:
            bucket[0] = min(float(GREETING_BURST), bucket[0] + (now - bucket[1]) * GREETING_RATE)
            bucket[1] = now
        if bucket[0] < 1.0:
            self.dropped_greetings += 1
            return False
        bucket[0] -= 1.0
        return True

    def _refuse(self, addr: Any, why: str, detail: str = "") -> None:
        """Log a refusal, at most once per 5 s for each reason ``why`` (a flood must not
        flood the log too); every one is counted."""
        self._refused += 1
        now = time.monotonic()
        if now >= self._refused_logged.get(why, 0.0) + 5.0:
            self._refused_logged[why] = now
            log.warning("udp: refused %s: %s%s (%d refused so far, %d greetings over the "
                        "rate dropped)", addr, why, detail, self._refused,
                        self.dropped_greetings)

    def _handle(self, msg: memoryview, addr: Any) -> None:
        if msg.nbytes < _HEAD.size:
            return
        magic, version, kind = _HEAD.unpack_from(msg)
        if magic != MAGIC or version != VERSION:
            self._refuse(addr, "not a papycluster datagram of this version")
            return
        if kind == T_HELLO and msg.nbytes == _HELLO.size:
            if not self._may_greet(addr):
                return
            cnonce = _HELLO.unpack(msg)[3]
            snonce = secrets.token_bytes(NONCE)
            if len(self._challenges) >= MAX_PENDING:
                self._challenges.pop(next(iter(self._challenges)))
            self._challenges[snonce] = (addr, cnonce, time.monotonic() + CHALLENGE_LIFE)
            proof = auth.mac(self.secret, b"papyc-udp-server", cnonce, snonce)
            self._sendmsg([_CHALLENGE.pack(MAGIC, VERSION, T_CHALLENGE, cnonce, snonce,
                                           proof)], addr)
        elif kind == T_GET and msg.nbytes == _GET.size:
            self._get(msg, addr)
        elif kind == T_WINDOW and msg.nbytes == _WINDOW.size:
            _, _, _, snonce, first, count, proof = _WINDOW.unpack(msg)
            session = self._sessions.get(snonce)
            if session is None or session.addr != addr or not hmac.compare_digest(
                    proof, auth.mac(self.secret, b"papyc-udp-window", snonce, session.cnonce,
                                    _u32(first), _u32(count))):
                self._refuse(addr, "window request without a session or with a bad proof")
                return
            session.seen = time.monotonic()
            self._send(snonce, session, first, count)
        elif kind == T_DONE and msg.nbytes == _DONE.size:
            _, _, _, snonce, proof = _DONE.unpack(msg)
            session = self._sessions.get(snonce)
            if session is not None and session.addr == addr and hmac.compare_digest(
                    proof, auth.mac(self.secret, b"papyc-udp-done", snonce, session.cnonce)):
                del self._sessions[snonce]
        else:
            self._refuse(addr, "unexpected message", f" (type {kind}, {msg.nbytes} bytes)")

    def _get(self, msg: memoryview, addr: Any) -> None:
        _, _, _, snonce, key, remove, first, count, proof = _GET.unpack(msg)
        session = self._sessions.get(snonce)
        if session is not None:  # our INFO was lost and the loader asks again
            if session.addr == addr:
                self._sendmsg([session.info], addr)
                self._send(snonce, session, first, count)
            return
        challenge = self._challenges.get(snonce)
        if challenge is None or challenge[0] != addr:
            self._refuse(addr, "GET without a valid challenge")
            return
        cnonce = challenge[1]
        if not hmac.compare_digest(proof, auth.mac(self.secret, b"papyc-udp-client", snonce,
                                                   cnonce, key, bytes([remove]),
                                                   _u32(first), _u32(count))):
            self._refuse(addr, "it does not know the cluster secret")
            return
        del self._challenges[snonce]
        name = key.decode("ascii", "replace")
        view = self.store.take(name, bool(remove))
        chunk = self.chunks.pop(name, DEFAULT_CHUNK) if remove else \
            self.chunks.get(name, DEFAULT_CHUNK)
        session = _Session(addr, cnonce, view, chunk)
        if view is None:
            session.info = _INFO.pack(MAGIC, VERSION, T_INFO, snonce, ST_MISSING, 0, 0, 0)
        else:
            session.info = _INFO.pack(MAGIC, VERSION, T_INFO, snonce, ST_OK, view.nbytes,
                                      session.count, chunk)
            self._sessions[snonce] = session
        self._sendmsg([session.info], addr)
        if view is not None:
            self._send(snonce, session, first, count)

    def _send(self, snonce: bytes, session: _Session, first: int, count: int) -> None:
        view = session.view
        if view is None:
            return
        tag = snonce[:8]
        chunk = session.chunk
        last = min(session.count, first + count)
        for seq in range(first, last):
            payload = view[seq * chunk:(seq + 1) * chunk]
            head = _DATA.pack(MAGIC, VERSION, T_DATA, tag, seq, zlib.crc32(payload))
            self._sendmsg([head, payload], session.addr)

    def _sendmsg(self, parts: list, addr: Any) -> None:
        """Send one datagram; wait (at most 5 s) for room in the send buffer if full."""
        while True:
            try:
                self.sock.sendmsg(parts, [], 0, addr)
                return
            except BlockingIOError:
                if not self._out.poll(5000):
                    raise TimeoutError("udp: the send buffer stayed full for 5 s") from None

    def close(self) -> None:
        self._closed.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(2.0)
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()
        self.store.clear()
        self._sessions.clear()


class _State:
    def __init__(self) -> None:
        self.server: UdpServer | None = None
        self.lock = threading.Lock()

    def get_server(self) -> UdpServer:
        with self.lock:
            if self.server is None:
                self.server = UdpServer()
            return self.server

    def forget_after_fork(self) -> None:
        if self.server is not None:
            for sock in (self.server.sock, self.server._wake_r, self.server._wake_w):
                sock.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def _send(sock: socket.socket, data: bytes) -> None:
    """Send one datagram on a non-blocking socket, waiting at most a second for room."""
    try:
        sock.send(data)
    except BlockingIOError:
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        if poller.poll(1000):
            sock.send(data)
        # else: as good as lost on the way; the caller's timeouts handle it


def max_item() -> int:
    """This process's udp item limit in bytes (``PAPYCLUSTER_UDP_MAX_ITEM`` or 1 GiB)."""
    raw = os.environ.get(MAX_ITEM_ENV)
    if not raw:
        return MAX_ITEM
    try:
        value = int(raw)
    except ValueError:
        raise TransportError(f"udp: {MAX_ITEM_ENV}={raw!r} is not a number of bytes") \
            from None
    if value < 0:
        raise TransportError(f"udp: {MAX_ITEM_ENV}={raw!r} must not be negative")
    return value


def _client_socket(host: str, port: int) -> tuple[socket.socket, int]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RCVBUF)
            break
        except OSError:
            continue
    sock.connect((host, port))
    sock.setblocking(False)
    # Linux reports twice the usable size; half of it leaves room for overhead.
    return sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


class UdpTransport(base.Transport):
    name = "udp"
    fields = ("host", "port", "key", "size", "chunk")

    def __init__(self) -> None:
        self.state = base.ProcessState(_State)

    def dump(self, data: memoryview, chunk: int = DEFAULT_CHUNK, **options: Any) -> tuple:
        if options:
            raise TypeError(f"udp dump_item takes only chunk=, not {sorted(options)}")
        if not 512 <= chunk <= MAX_CHUNK:
            raise ValueError(f"udp chunk {chunk} must be between 512 and {MAX_CHUNK} bytes")
        limit = max_item()
        if data.nbytes > limit:
            raise TransportError(f"udp: the item of {data.nbytes} bytes is over the udp "
                                 f"limit of {limit} bytes ({MAX_ITEM_ENV}); send it with "
                                 "tcp, shm or file, or raise the limit")
        server = self.state.get().get_server()
        key = server.store.put(data)
        if chunk != DEFAULT_CHUNK:
            server.chunks[key] = chunk
        return (server.host, server.port, key, data.nbytes, chunk)

    def validate(self, fields: tuple, tk: tuple) -> None:
        host, port, key, size, chunk = fields
        ticket.check(tk, self.name, host, str, "host")
        if not host or len(host) > 255:
            raise TicketError(tk, f"field host {host!r} is not a host name", self.name)
        ticket.check_int(tk, self.name, port, "port", 1, 65535)
        ticket.check_token(tk, self.name, key)
        ticket.check_int(tk, self.name, size, "size", 0, 2**40)
        ticket.check_int(tk, self.name, chunk, "chunk", 512, MAX_CHUNK)
        limit = max_item()
        if size > limit:  # checked before the loader allocates ``size`` bytes
            raise TicketError(tk, f"the item of {size} bytes is over the udp limit of "
                              f"{limit} bytes ({MAX_ITEM_ENV}) on this host", self.name)

    def load(self, fields: tuple, tk: tuple, remove: bool = True,
             timeout: float | None = None, retries: int = 0) -> Any:
        host, port, key, size, chunk = fields
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        secret = auth.get_secret()
        where = f"udp server {host}:{port}"
        try:
            sock, rcvbuf = _client_socket(host, port)
        except OSError as exc:
            raise ProducerLostError(tk, f"cannot reach {host}:{port}: {exc}", self.name) \
                from None
        try:
            return buffers.receive(size, lambda view: self._load(
                sock, rcvbuf, secret, tk, where, key.encode("ascii"), size, chunk, remove,
                deadline, retries, view))
        finally:
            sock.close()

    def _load(self, sock: socket.socket, rcvbuf: int, secret: bytes, tk: tuple, where: str,
              key: bytes, size: int, chunk: int, remove: bool, deadline: float,
              retries: int, oview: memoryview) -> None:
        count = max(1, -(-size // chunk))
        window = max(1, min(256, rcvbuf // (chunk + 1024)))
        scratch = bytearray(chunk + 64)
        sview = memoryview(scratch)

        poller = select.poll()
        poller.register(sock, select.POLLIN)

        def recv(wait: float) -> int:
            """One datagram into ``scratch``; -1 after ``wait`` seconds without one.

            The socket is non-blocking: in a burst the datagram is already there and
            costs one system call, not a poll and a read.
            """
            end = min(time.monotonic() + wait, deadline)
            while True:
                try:
                    return sock.recv_into(scratch)
                except BlockingIOError:
                    pass
                except ConnectionRefusedError:
                    raise StaleTicketError(tk, f"no {where} any more (the process that "
                                           "dumped the item has ended)", self.name) from None
                now = time.monotonic()
                if now >= deadline:
                    raise ProducerLostError(tk, f"{where} timed out", self.name)
                if now >= end or not poller.poll((end - now) * 1000):
                    if time.monotonic() >= deadline:
                        raise ProducerLostError(tk, f"{where} timed out", self.name)
                    return -1

        # 1. challenge: greet again after a pause that doubles, until the producer has
        # been silent for SILENCE (a flood may fill its queue, and drop our greetings)
        cnonce = secrets.token_bytes(NONCE)
        hello = _HELLO.pack(MAGIC, VERSION, T_HELLO, cnonce)
        snonce = b""
        pause = CONTROL_PAUSE
        give_up = time.monotonic() + SILENCE
        tries = 0
        while not snonce:
            if time.monotonic() >= give_up:
                raise ProducerLostError(tk, f"{where} did not answer {tries} greetings in "
                                        f"{SILENCE:g}s", self.name)
            _send(sock, hello)
            tries += 1
            until = time.monotonic() + pause
            while not snonce and (wait := until - time.monotonic()) > 0:
                n = recv(wait)
                if n < 0:
                    break
                if n != _CHALLENGE.size:
                    continue
                _, _, kind, echo, nonce, proof = _CHALLENGE.unpack(sview[:n])
                if kind == T_CHALLENGE and echo == cnonce:
                    if not hmac.compare_digest(proof, auth.mac(
                            secret, b"papyc-udp-server", cnonce, nonce)):
                        raise SecretError(f"udp ticket {tk!r}: {where} does not know the "
                                          "cluster secret; refusing its data. "
                                          f"{auth.secret_hint()}")
                    snonce = nonce
            pause = min(pause * 2, CONTROL_PAUSE_MAX)
        # 2. get, with the first window (resent the same way)
        first_count = min(window, count)
        get = _GET.pack(MAGIC, VERSION, T_GET, snonce, key, int(remove), 0, first_count,
                        auth.mac(secret, b"papyc-udp-client", snonce, cnonce, key,
                                 bytes([int(remove)]), _u32(0), _u32(first_count)))
        got = bytearray(count)
        tag = snonce[:8]
        info = None
        pause = CONTROL_PAUSE
        heard = time.monotonic()
        while info is None:
            if time.monotonic() >= heard + SILENCE:
                raise ProducerLostError(tk, f"{where} did not answer the request in "
                                        f"{SILENCE:g}s", self.name)
            _send(sock, get)
            until = time.monotonic() + pause
            while info is None and (wait := until - time.monotonic()) > 0:
                n = recv(wait)
                if n < 0:
                    break
                if n == _INFO.size:
                    _, _, kind, echo, status, isize, icount, ichunk = _INFO.unpack(sview[:n])
                    if kind == T_INFO and echo == snonce:
                        info = (status, isize, icount, ichunk)
                elif n >= _DATA.size:  # data overtook a lost INFO; keep it
                    self._take(sview, n, tag, chunk, count, size, oview, got)
                    heard = time.monotonic()
            pause = min(pause * 2, CONTROL_PAUSE_MAX)
        status, isize, icount, ichunk = info
        if status != ST_OK:
            raise StaleTicketError(tk, f"{where} has no item {key.decode()} (already loaded, "
                                   "or never dumped there)", self.name)
        if isize != size or ichunk != chunk or icount != count:
            raise TicketError(tk, f"{where} offers {isize} bytes in {icount} datagrams of "
                              f"{ichunk}, the ticket says {size} in {count} of {chunk}",
                              self.name)
        # 3. windows
        first = 0
        end = first_count
        tries = retries
        heard = time.monotonic()
        # The INFO showed that the first window was asked for. A later window request
        # that brings back nothing at all was probably lost itself on the way (a queue
        # full at the producer, as in a flood): it is sent again, until SILENCE, and
        # does not use up ``retries``, which are for datagrams missing from a window
        # that did come.
        arrived = True
        while True:
            while got.find(0, first, end) != -1:
                n = recv(WINDOW_TIMEOUT)
                if n < 0:
                    break
                arrived = True
                self._take(sview, n, tag, chunk, count, size, oview, got)
            missing = got.find(0, first, end)
            if missing != -1:
                if arrived:
                    heard = time.monotonic()
                elif time.monotonic() < heard + SILENCE:
                    self._window(sock, secret, snonce, cnonce, missing, end - missing)
                    first = missing
                    continue
                if tries <= 0:
                    lost = got.count(0, first, end)
                    raise ProducerLostError(
                        tk, f"{lost} datagram(s) of item {key.decode()} from {where} were "
                        f"lost or corrupt (window {first}..{end - 1})", self.name)
                tries -= 1
                self._window(sock, secret, snonce, cnonce, missing, end - missing)
                first, arrived = missing, False
                continue
            if end >= count:
                break
            heard = time.monotonic()
            first, end = end, min(count, end + window)
            self._window(sock, secret, snonce, cnonce, first, end - first)
            arrived = False
        done = auth.mac(secret, b"papyc-udp-done", snonce, cnonce)
        try:
            _send(sock, _DONE.pack(MAGIC, VERSION, T_DONE, snonce, done))
        except OSError:
            pass

    @staticmethod
    def _window(sock: socket.socket, secret: bytes, snonce: bytes, cnonce: bytes, first: int,
                count: int) -> None:
        proof = auth.mac(secret, b"papyc-udp-window", snonce, cnonce, _u32(first),
                         _u32(count))
        _send(sock, _WINDOW.pack(MAGIC, VERSION, T_WINDOW, snonce, first, count, proof))

    @staticmethod
    def _take(sview: memoryview, n: int, tag: bytes, chunk: int, count: int, size: int,
              oview: memoryview, got: bytearray) -> None:
        """Check one datagram and put its payload in place; drop anything else."""
        if n < _DATA.size:
            return
        magic, version, kind, dtag, seq, check = _DATA.unpack_from(sview)
        if magic != MAGIC or kind != T_DATA or dtag != tag or seq >= count or got[seq]:
            return
        payload = sview[_DATA.size:n]
        start = seq * chunk
        expected = min(chunk, size - start)
        if payload.nbytes != expected or zlib.crc32(payload) != check:
            return  # corrupt: stays missing, so the item fails (or is asked again)
        oview[start:start + expected] = payload
        got[seq] = 1

    def cleanup(self) -> None:
        self.state.close()


TRANSPORT = UdpTransport()
