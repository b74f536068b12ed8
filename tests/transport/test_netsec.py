"""Attacks on the tcp and udp listeners by peers that do not know the cluster secret.

Each test is an attack that worked before issue 20: a client dripping one byte of its
handshake every 2.5 s kept a tcp connection (and its server thread) for minutes; a
flood of HELLO datagrams made udp loads fail, and each 20-byte HELLO earned a 68-byte
answer. The servers are real ones in another process (a spawned peer), the attackers
real sockets in threads of this one. The bounds asserted are the protocol's deadlines
with a wide margin, not performance figures.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from papycluster.transport import auth, tcp
from papycluster.workers import io

from .peer import Peer, digest, make_data


def _drip(host: str, port: int, period: float, out: dict) -> None:
    """Read the greeting, then send one byte every ``period`` s until the server cuts us."""
    sock = socket.create_connection((host, port), timeout=5)
    start = time.monotonic()
    try:
        sock.settimeout(5)
        auth.recv_exact(sock, len(auth.HELLO) + auth.NONCE)
        sent = 0
        while time.monotonic() - start < 60:
            try:
                sock.sendall(b"x")
                sent += 1
                sock.settimeout(period)
                if sock.recv(1) == b"":  # closed by the server
                    break
            except TimeoutError:
                continue  # still open: drip on
            except OSError:
                break
        out["held"] = time.monotonic() - start
        out["sent"] = sent
    finally:
        sock.close()


def test_tcp_drip_client_is_cut_at_the_handshake_deadline(peer: Peer) -> None:
    """Before: 64 bytes x 10 s per recv, so a dripper held its connection ~10 min."""
    tk = peer.call("dump", "tcp", 100_000, 1, {})
    host, port = tk[4], tk[5]
    result: dict = {}
    dripper = threading.Thread(target=_drip, args=(host, port, 2.5, result), daemon=True)
    dripper.start()
    time.sleep(3)  # the dripper is mid-handshake
    # a legitimate load works meanwhile
    data = io.load_item([tk], timeout=20)
    assert digest(data) == digest(make_data(100_000, 1))
    dripper.join(40)
    assert not dripper.is_alive()
    # cut at the 10 s deadline, after at most a few bytes (not after 33 s or 64 bytes)
    assert result["held"] < tcp.HANDSHAKE_TIMEOUT + 4, result
    assert result["sent"] <= 6, result


@pytest.fixture
def own_server() -> Iterator[tcp.TcpServer]:
    """A tcp server in this process (the fixture's secret), closed at the end."""
    server = tcp.TcpServer()
    try:
        yield server
    finally:
        server.close()


def test_tcp_caps_unauthenticated_connections(own_server: tcp.TcpServer,
                                              peer: Peer) -> None:
    """More silent connections than the cap: the extra ones are closed at once, the
    server holds no more than ``MAX_UNAUTHENTICATED`` threads for them, and a real
    loader that was turned away backs off and gets its item once they time out."""
    key = own_server.store.put(memoryview(make_data(5000, 3)))
    tk = ("papyc", 1, "tcp", 0, own_server.host, own_server.port, key, 5000)
    silent = []
    try:
        for _ in range(tcp.MAX_UNAUTHENTICATED + 20):
            silent.append(socket.create_connection((own_server.host, own_server.port), 5))
        deadline = time.monotonic() + 5
        while own_server.turned_away < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert own_server.turned_away >= 20
        assert own_server.unauthenticated() <= tcp.MAX_UNAUTHENTICATED
        # the loader (another process) starts while every handshake slot is taken
        start = time.monotonic()
        assert peer.call("load", tk, {"timeout": 40}, timeout=60) == (
            5000, digest(make_data(5000, 3)))
        # it could only get in once the silent ones were cut at the deadline
        assert time.monotonic() - start < tcp.HANDSHAKE_TIMEOUT + 15
    finally:
        for sock in silent:
            sock.close()
    deadline = time.monotonic() + tcp.HANDSHAKE_TIMEOUT + 5
    while own_server.unauthenticated() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert own_server.unauthenticated() == 0
