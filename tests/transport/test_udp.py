"""udp: lost or corrupt datagrams make the item an error, never wrong data, never a hang.

A real UDP proxy sits between the loader and the server and drops or flips bits in
chosen data datagrams; the ticket is pointed at the proxy.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from papycluster import transport
from papycluster.transport import auth, ticket, udp
from papycluster.transport import udp_wire as wire
from papycluster.workers import io

from .peer import digest, make_data


class LossyProxy:
    """Forwards datagrams between one client and a server; ``fault`` may change them."""

    def __init__(self, server: tuple[str, int],
                 fault: Callable[[int, bytes], bytes | None]) -> None:
        self.server = server
        self.fault = fault
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(server)
        for sock in (self.front, self.back):  # as big as the loader's, or we drop
            for option in (udp.SO_RCVBUFFORCE, socket.SO_RCVBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, udp.RCVBUF)
                    break
                except (OSError, TypeError):
                    continue
        self.port = self.front.getsockname()[1]
        self.client: tuple[str, int] | None = None
        self.data_seen = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._up, daemon=True),
                         threading.Thread(target=self._down, daemon=True)]
        for t in self._threads:
            t.start()

    def _up(self) -> None:
        self.front.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, self.client = self.front.recvfrom(70000)
            except (TimeoutError, OSError):
                continue
            self.back.send(data)

    def _down(self) -> None:
        self.back.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = self.back.recv(70000)
            except (TimeoutError, OSError):
                continue
            if data[3:4] == bytes([udp.T_DATA]):
                self.data_seen += 1
                changed = self.fault(self.data_seen, data)
                if changed is None:
                    self.dropped += 1
                    continue
                data = changed
            if self.client is not None:
                self.front.sendto(data, self.client)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.front.close()
        self.back.close()


@pytest.fixture
def proxy_for() -> Iterator[Callable]:
    proxies: list[LossyProxy] = []

    def make(tk: tuple, fault: Callable[[int, bytes], bytes | None]) -> tuple:
        proxy = LossyProxy((tk[4], tk[5]), fault)
        proxies.append(proxy)
        return (*tk[:5], proxy.port, *tk[6:])

    yield make
    for p in proxies:
        p.close()


def test_proxy_passes_everything_through(proxy_for: Callable) -> None:
    data = make_data(1_000_000, 1)
    tk = proxy_for(io.dump_item([data], "udp"), lambda n, d: d)
    assert digest(io.load_item([tk])) == digest(data)


def test_a_lost_datagram_fails_the_item(proxy_for: Callable) -> None:
    data = make_data(1_000_000, 2)
    tk = proxy_for(io.dump_item([data], "udp"), lambda n, d: None if n == 3 else d)
    start = time.monotonic()
    with pytest.raises(transport.TransportError, match="lost or corrupt"):
        io.load_item([tk], timeout=20)
    assert time.monotonic() - start < 20


def test_a_corrupt_datagram_fails_the_item(proxy_for: Callable) -> None:
    def flip(n: int, d: bytes) -> bytes:
        if n != 5:
            return d
        b = bytearray(d)
        b[-10] ^= 0x40
        return bytes(b)

    data = make_data(600_000, 3)
    tk = proxy_for(io.dump_item([data], "udp"), flip)
    with pytest.raises(transport.TransportError, match="lost or corrupt"):
        io.load_item([tk], timeout=20)


def test_retries_recover_a_lost_datagram(proxy_for: Callable) -> None:
    data = make_data(1_000_000, 4)
    tk = proxy_for(io.dump_item([data], "udp"), lambda n, d: None if n == 2 else d)
    assert digest(io.load_item([tk], retries=2, timeout=20)) == digest(data)


def test_small_chunks_and_every_datagram_lost(proxy_for: Callable) -> None:
    data = make_data(20_000, 5)
    tk = io.dump_item([data], "udp", chunk=1400)
    assert tk[-1] == 1400
    lossy = proxy_for(tk, lambda n, d: None)
    with pytest.raises(transport.TransportError):
        io.load_item([lossy], timeout=10, remove=False)
    assert digest(io.load_item([tk])) == digest(data)


def test_unauthenticated_datagrams_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    tk = io.dump_item([b"payload"], "udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            caplog.at_level("WARNING", logger="papycluster.transport"):
        sock.connect((tk[4], tk[5]))
        sock.settimeout(2)
        # A GET whose proof is wrong, with a nonce the server never issued.
        forged = wire.GET.pack(udp.MAGIC, udp.VERSION, udp.T_GET, os.urandom(16),
                               tk[6].encode(), 1, 0, 1, os.urandom(32))
        sock.send(forged)
        sock.send(b"garbage that is not ours")
        # A real challenge, then a GET signed with the wrong secret.
        cnonce = os.urandom(16)
        sock.send(wire.HELLO.pack(udp.MAGIC, udp.VERSION, udp.T_HELLO, cnonce))
        challenge = sock.recv(2048)
        snonce = wire.CHALLENGE.unpack(challenge)[4]
        proof = auth.mac(b"w" * 32, b"papyc-udp-client", snonce, cnonce, tk[6].encode(),
                         b"\x01", (0).to_bytes(4, "big"), (1).to_bytes(4, "big"))
        sock.send(wire.GET.pack(udp.MAGIC, udp.VERSION, udp.T_GET, snonce, tk[6].encode(),
                                1, 0, 1, proof))
        with pytest.raises(TimeoutError):
            sock.recv(2048)  # no data for anyone without the secret
    assert "does not know the cluster secret" in caplog.text
    assert io.load_item([tk]) == b"payload"


def test_udp_ticket_to_nobody_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        tk = ticket.make("udp", 0, "127.0.0.1", silent.getsockname()[1], "a" * 32, 10, 60000)
        start = time.monotonic()
        with pytest.raises(transport.TransportError, match="did not answer"):
            io.load_item([tk], timeout=30)
        assert time.monotonic() - start < 30
