"""Attacks on the tcp and udp listeners by peers that do not know the cluster secret.

Each test is an attack that worked before issue 20: a client dripping one byte of its
handshake every 2.5 s kept a tcp connection (and its server thread) for minutes; a
flood of HELLO datagrams made udp loads fail, and each 20-byte HELLO earned a 68-byte
answer. The servers are real ones in another process (a spawned peer), the attackers
real sockets in threads of this one. The bounds asserted are the protocol's deadlines
with a wide margin, not performance figures.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from papycluster.transport import auth, curve, tcp, udp
from papycluster.transport import udp_wire as wire
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
    peer.call("setenv", curve.ENCRYPT_ENV, "0")  # the HMAC handshake of the plain server
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
    tk = ("papyc", 2, "tcp", 0, own_server.host, own_server.port, key, 5000, "hmac")
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


def _flood(host: str, port: int, stop: Any, sockets: int) -> None:
    """Send valid HELLOs from ``sockets`` addresses as fast as this process can."""
    socks = []
    for _ in range(sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((host, port))
        s.setblocking(False)
        socks.append(s)
    hello = wire.HELLO.pack(udp.MAGIC, udp.VERSION, udp.T_HELLO, os.urandom(16))
    sent = 0
    while not stop.is_set():
        for s in socks:
            for _ in range(50):
                try:
                    s.send(hello)
                    sent += 1
                except OSError:  # buffer full, or the answers refused: keep going
                    pass
    stop.sent = sent  # type: ignore[attr-defined]


def test_udp_loads_get_through_a_hello_flood(peer: Peer) -> None:
    """Before: 17 of 18 loads failed during a flood (4 greetings of 1 s, and the flood
    evicted their challenges). A flooding process hammers the server; every load of ours
    must still get its item, whole."""
    tickets = [peer.call("dump", "udp", 200_000, seed, {}) for seed in range(8)]
    host, port = tickets[0][4], tickets[0][5]
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    flooder = ctx.Process(target=_flood, args=(host, port, stop, 8), daemon=True)
    flooder.start()
    try:
        time.sleep(1.5)  # the flood is on
        assert flooder.is_alive()
        for seed, tk in enumerate(tickets):
            data = io.load_item([tk], timeout=30)
            assert digest(data) == digest(make_data(200_000, seed))
    finally:
        stop.set()
        flooder.join(10)
        if flooder.is_alive():
            flooder.kill()


def _probe(sock: socket.socket, datagram: bytes) -> list[bytes]:
    sock.send(datagram)
    answers = []
    sock.settimeout(0.3)
    while True:
        try:
            answers.append(sock.recv(70000))
        except TimeoutError:
            return answers


def test_udp_answers_no_more_bytes_than_it_got_before_authentication() -> None:
    """Before: a 20-byte HELLO earned a 68-byte CHALLENGE (3.4x amplification)."""
    tk = io.dump_item([b"payload" * 100], "udp")
    key = tk[6].encode()
    head = wire.HEAD.pack(udp.MAGIC, udp.VERSION, udp.T_HELLO)
    probes = [
        head + os.urandom(16),  # the old, short HELLO
        wire.HEAD.pack(udp.MAGIC, 2, udp.T_HELLO) + os.urandom(16),  # version 2's
        wire.HELLO.pack(udp.MAGIC, udp.VERSION, udp.T_HELLO, os.urandom(16)),
        wire.HELLO.pack(udp.MAGIC, udp.VERSION, udp.T_HELLO, os.urandom(16)) + b"x",
        wire.GET.pack(udp.MAGIC, udp.VERSION, udp.T_GET, os.urandom(16), key, 0, 0, 1,
                      os.urandom(32)),
        wire.WINDOW.pack(udp.MAGIC, udp.VERSION, udp.T_WINDOW, os.urandom(16), 0, 256,
                         os.urandom(32)),
        wire.DONE.pack(udp.MAGIC, udp.VERSION, udp.T_DONE, os.urandom(16), os.urandom(32)),
        b"garbage",
        b"PU" + bytes([udp.VERSION]) + bytes(range(256)) * 4,
    ]
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((tk[4], tk[5]))
        for probe in probes:
            answers = _probe(sock, probe)
            assert sum(map(len, answers)) <= len(probe), (probe[:4], answers)
            answered += len(answers)
        # a GET signed with the wrong secret, on a real challenge: nothing either
        cnonce = os.urandom(16)
        (challenge,) = _probe(sock, wire.HELLO.pack(udp.MAGIC, udp.VERSION, udp.T_HELLO,
                                                    cnonce))
        snonce = wire.CHALLENGE.unpack(challenge)[4]
        proof = auth.mac(b"w" * 32, b"papyc-udp-client", snonce, cnonce, key, b"\x00",
                         (0).to_bytes(4, "big"), (1).to_bytes(4, "big"))
        assert _probe(sock, wire.GET.pack(udp.MAGIC, udp.VERSION, udp.T_GET, snonce, key,
                                          0, 0, 1, proof)) == []
    assert answered == 1  # only the well-formed HELLO of this version
    assert io.load_item([tk]) == b"payload" * 100


def test_udp_greetings_are_rate_limited_per_peer() -> None:
    """One address sending 200 HELLOs at once gets a burst of challenges, not 200; another
    address is not affected."""
    tk = io.dump_item([b"x"], "udp")
    hello = wire.HELLO.pack(udp.MAGIC, udp.VERSION, udp.T_HELLO, os.urandom(16))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((tk[4], tk[5]))
        start = time.monotonic()
        for _ in range(200):
            sock.send(hello)
        elapsed = time.monotonic() - start
        sock.settimeout(1.0)
        answers = 0
        try:
            while True:
                sock.recv(2048)
                answers += 1
        except TimeoutError:
            pass
    # the burst, plus what the rate refills while we send and the server reads
    assert 1 <= answers <= wire.GREETING_BURST + wire.GREETING_RATE * (elapsed + 1.5) + 1
    assert io.load_item([tk]) == b"x"  # another address (the loader's) gets through
