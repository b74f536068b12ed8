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

Where the parts live: the message layouts and constants in :mod:`.udp_wire`, the server
in :mod:`.udp_server`, the loader and the transport here.
"""

from __future__ import annotations

import hmac
import os
import secrets
import socket
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
)
from papycluster.transport.udp_server import UdpServer
from papycluster.transport.udp_wire import (
    CHALLENGE,
    CONTROL_PAUSE,
    CONTROL_PAUSE_MAX,
    DATA,
    DEFAULT_CHUNK,
    DEFAULT_TIMEOUT,
    DONE,
    GET,
    HELLO,
    INFO,
    MAGIC,
    MAX_CHUNK,
    NONCE,
    RCVBUF,
    SILENCE,
    SO_RCVBUFFORCE,
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
    WINDOW_TIMEOUT,
    poller,
    send_datagram,
    u32,
)

#: Servers this process found gone: their next tickets fail at once (see GoneServers).
GONE = base.GoneServers()

#: The largest item udp carries (bytes), unless ``PAPYCLUSTER_UDP_MAX_ITEM`` says
#: otherwise. An item is held in the dumping process until it is fetched and the loader
#: allocates its whole size up front, from the ticket, so both ends refuse sizes past
#: the limit with an error that names it (rather than a MemoryError, or a wait for a
#: million datagrams). Bigger items belong on tcp, shm or file.
MAX_ITEM = 1 << 30
MAX_ITEM_ENV = "PAPYCLUSTER_UDP_MAX_ITEM"


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
        GONE.check(where, tk, self.name)  # its host was lost a moment ago: no wait
        try:
            sock, rcvbuf = _client_socket(host, port)
        except OSError as exc:
            raise GONE.found(where, ProducerLostError, tk, f"cannot reach {host}:{port}: "
                             f"{exc}", self.name) from None
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

        ready = poller(sock, write=False)

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
                except (ConnectionRefusedError, ConnectionResetError):
                    # Linux says refused, Windows reset, for the ICMP "port unreachable"
                    raise GONE.found(where, StaleTicketError, tk, f"no {where} any more "
                                     "(the process that dumped the item has ended)",
                                     self.name) from None
                now = time.monotonic()
                if now >= deadline:
                    raise ProducerLostError(tk, f"{where} timed out", self.name)
                if now >= end or not ready((end - now) * 1000):
                    if time.monotonic() >= deadline:
                        raise ProducerLostError(tk, f"{where} timed out", self.name)
                    return -1

        # 1. challenge: greet again after a pause that doubles, until the producer has
        # been silent for SILENCE (a flood may fill its queue, and drop our greetings)
        cnonce = secrets.token_bytes(NONCE)
        hello = HELLO.pack(MAGIC, VERSION, T_HELLO, cnonce)
        snonce = b""
        pause = CONTROL_PAUSE
        give_up = time.monotonic() + SILENCE
        tries = 0
        while not snonce:
            if time.monotonic() >= give_up:
                raise GONE.found(where, ProducerLostError, tk, f"{where} did not answer "
                                 f"{tries} greetings in {SILENCE:g}s", self.name)
            send_datagram(sock, hello)
            tries += 1
            until = time.monotonic() + pause
            while not snonce and (wait := until - time.monotonic()) > 0:
                n = recv(wait)
                if n < 0:
                    break
                if n != CHALLENGE.size:
                    continue
                _, _, kind, echo, nonce, proof = CHALLENGE.unpack(sview[:n])
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
        get = GET.pack(MAGIC, VERSION, T_GET, snonce, key, int(remove), 0, first_count,
                        auth.mac(secret, b"papyc-udp-client", snonce, cnonce, key,
                                 bytes([int(remove)]), u32(0), u32(first_count)))
        got = bytearray(count)
        tag = snonce[:8]
        info = None
        pause = CONTROL_PAUSE
        heard = time.monotonic()
        while info is None:
            if time.monotonic() >= heard + SILENCE:
                raise ProducerLostError(tk, f"{where} did not answer the request in "
                                        f"{SILENCE:g}s", self.name)
            send_datagram(sock, get)
            until = time.monotonic() + pause
            while info is None and (wait := until - time.monotonic()) > 0:
                n = recv(wait)
                if n < 0:
                    break
                if n == INFO.size:
                    _, _, kind, echo, status, isize, icount, ichunk = INFO.unpack(sview[:n])
                    if kind == T_INFO and echo == snonce:
                        info = (status, isize, icount, ichunk)
                elif n >= DATA.size:  # data overtook a lost INFO; keep it
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
            send_datagram(sock, DONE.pack(MAGIC, VERSION, T_DONE, snonce, done))
        except OSError:
            pass

    @staticmethod
    def _window(sock: socket.socket, secret: bytes, snonce: bytes, cnonce: bytes, first: int,
                count: int) -> None:
        proof = auth.mac(secret, b"papyc-udp-window", snonce, cnonce, u32(first),
                         u32(count))
        send_datagram(sock, WINDOW.pack(MAGIC, VERSION, T_WINDOW, snonce, first, count, proof))

    @staticmethod
    def _take(sview: memoryview, n: int, tag: bytes, chunk: int, count: int, size: int,
              oview: memoryview, got: bytearray) -> None:
        """Check one datagram and put its payload in place; drop anything else."""
        if n < DATA.size:
            return
        magic, version, kind, dtag, seq, check = DATA.unpack_from(sview)
        if magic != MAGIC or kind != T_DATA or dtag != tag or seq >= count or got[seq]:
            return
        payload = sview[DATA.size:n]
        start = seq * chunk
        expected = min(chunk, size - start)
        if payload.nbytes != expected or zlib.crc32(payload) != check:
            return  # corrupt: stays missing, so the item fails (or is asked again)
        oview[start:start + expected] = payload
        got[seq] = 1

    def cleanup(self) -> None:
        self.state.close()


TRANSPORT = UdpTransport()
