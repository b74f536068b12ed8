"""The udp transport's server: one thread per dumping process, one UDP socket.

It answers HELLO with a CHALLENGE, serves an item's datagrams window by window to a
loader that proved the cluster secret, and rate-limits greetings per peer address
before any HMAC (see :mod:`papycluster.transport.udp` for the protocol and why).
"""

from __future__ import annotations

import hmac
import secrets
import selectors
import socket
import threading
import time
import zlib
from typing import Any

from papycluster.transport import auth
from papycluster.transport.base import TransportError, log
from papycluster.transport.tcp import ItemStore, advertise_host, bind_host
from papycluster.transport.udp_wire import (
    CHALLENGE,
    CHALLENGE_LIFE,
    DATA,
    DEFAULT_CHUNK,
    DONE,
    GET,
    GREETING_BURST,
    GREETING_RATE,
    HAS_SENDMSG,
    HEAD,
    HELLO,
    INFO,
    MAGIC,
    MAX_PEERS,
    MAX_PENDING,
    NONCE,
    SERVER_RCVBUF,
    SESSION_IDLE,
    SNDBUF,
    ST_MISSING,
    ST_OK,
    T_CHALLENGE,
    T_DATA,
    T_DONE,
    T_GET,
    T_HELLO,
    T_INFO,
    T_WINDOW,
    VERSION,
    WINDOW,
    poller,
    u32,
)
from papycluster.wire import ports


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
            self.port = ports.bind_port(self.sock, bind, "the udp item server")
        except OSError as exc:
            self.sock.close()
            raise TransportError(f"udp: cannot bind {bind!r}: {exc.strerror or exc}") \
                from None
        for option, size in ((socket.SO_SNDBUF, SNDBUF), (socket.SO_RCVBUF, SERVER_RCVBUF)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, size)
            except OSError:  # the kernel caps it at net.core.[wr]mem_max; a refusal keeps
                pass         # the default
        # Non-blocking: reads go through the selector, sends wait in _sendmsg (bounded).
        self.sock.setblocking(False)
        self._out = poller(self.sock, write=True)
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
        if msg.nbytes < HEAD.size:
            return
        magic, version, kind = HEAD.unpack_from(msg)
        if magic != MAGIC or version != VERSION:
            self._refuse(addr, "not a papycluster datagram of this version")
            return
        if kind == T_HELLO and msg.nbytes == HELLO.size:
            if not self._may_greet(addr):
                return
            cnonce = HELLO.unpack(msg)[3]
            snonce = secrets.token_bytes(NONCE)
            if len(self._challenges) >= MAX_PENDING:
                self._challenges.pop(next(iter(self._challenges)))
            self._challenges[snonce] = (addr, cnonce, time.monotonic() + CHALLENGE_LIFE)
            proof = auth.mac(self.secret, b"papyc-udp-server", cnonce, snonce)
            self._sendmsg([CHALLENGE.pack(MAGIC, VERSION, T_CHALLENGE, cnonce, snonce,
                                           proof)], addr)
        elif kind == T_GET and msg.nbytes == GET.size:
            self._get(msg, addr)
        elif kind == T_WINDOW and msg.nbytes == WINDOW.size:
            _, _, _, snonce, first, count, proof = WINDOW.unpack(msg)
            session = self._sessions.get(snonce)
            if session is None or session.addr != addr or not hmac.compare_digest(
                    proof, auth.mac(self.secret, b"papyc-udp-window", snonce, session.cnonce,
                                    u32(first), u32(count))):
                self._refuse(addr, "window request without a session or with a bad proof")
                return
            session.seen = time.monotonic()
            self._send(snonce, session, first, count)
        elif kind == T_DONE and msg.nbytes == DONE.size:
            _, _, _, snonce, proof = DONE.unpack(msg)
            session = self._sessions.get(snonce)
            if session is not None and session.addr == addr and hmac.compare_digest(
                    proof, auth.mac(self.secret, b"papyc-udp-done", snonce, session.cnonce)):
                del self._sessions[snonce]
        else:
            self._refuse(addr, "unexpected message", f" (type {kind}, {msg.nbytes} bytes)")

    def _get(self, msg: memoryview, addr: Any) -> None:
        _, _, _, snonce, key, remove, first, count, proof = GET.unpack(msg)
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
                                                   u32(first), u32(count))):
            self._refuse(addr, "it does not know the cluster secret")
            return
        del self._challenges[snonce]
        name = key.decode("ascii", "replace")
        view = self.store.take(name, bool(remove))
        chunk = self.chunks.pop(name, DEFAULT_CHUNK) if remove else \
            self.chunks.get(name, DEFAULT_CHUNK)
        session = _Session(addr, cnonce, view, chunk)
        if view is None:
            session.info = INFO.pack(MAGIC, VERSION, T_INFO, snonce, ST_MISSING, 0, 0, 0)
        else:
            session.info = INFO.pack(MAGIC, VERSION, T_INFO, snonce, ST_OK, view.nbytes,
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
            head = DATA.pack(MAGIC, VERSION, T_DATA, tag, seq, zlib.crc32(payload))
            self._sendmsg([head, payload], session.addr)

    def _sendmsg(self, parts: list, addr: Any) -> None:
        """Send one datagram; wait (at most 5 s) for room in the send buffer if full."""
        while True:
            try:
                if HAS_SENDMSG:
                    self.sock.sendmsg(parts, [], 0, addr)
                else:  # Windows sockets have no sendmsg
                    self.sock.sendto(b"".join(parts), addr)
                return
            except BlockingIOError:
                if not self._out(5000):
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
