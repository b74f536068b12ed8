"""papycluster.wire on real sockets: the one read-exactly, the frames, the handshake.

Every listener (tcp item servers, agents, worker streams) relies on these: a short read
must say how far it got, a dripping peer must be cut at the deadline, and a proof made
for one use of the handshake must be worth nothing in another.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from papycluster.cluster import auth as cauth
from papycluster.cluster.errors import AuthError
from papycluster.transport import auth as tauth
from papycluster.wire import frames, handshake

SECRET = b"s" * 32


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    return a, b


def test_a_short_read_names_what_and_how_far() -> None:
    a, b = _pair()
    with a, b:
        a.sendall(b"abc")
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(frames.PeerClosed, match="after 3 of 9 bytes of the header") as e:
            frames.recv_exact(b, 9, what="the header")
        assert e.value.got == 3 and isinstance(e.value, ConnectionError)


def test_the_deadline_bounds_all_reads_together() -> None:
    """A peer sending a byte every 0.3 s never trips a 1 s socket timeout, only the
    deadline over the whole read."""
    a, b = _pair()
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.3):
            try:
                a.sendall(b"x")
            except OSError:
                return

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    b.settimeout(1.0)
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match=r"timed out at the deadline after \d+ of 64 bytes"):
            frames.recv_exact(b, 64, time.monotonic() + 1.5)
        assert time.monotonic() - start < 2.5
    finally:
        stop.set()
        t.join(5)
        a.close()
        b.close()


def test_frames_round_trip_and_end() -> None:
    a, b = _pair()
    lock = threading.Lock()
    big = bytes(range(256)) * 1024  # over SMALL: header and payload sent apart
    sender = threading.Thread(target=lambda: [frames.send_frame(a, data, lock)
                                              for data in (b"", b"hi", big)])
    with a, b:
        sender.start()
        assert [bytes(frames.recv_frame(b)) for _ in range(3)] == [b"", b"hi", big]
        sender.join(10)
        a.sendall(frames.FRAME.pack(10) + b"1234")
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(frames.PeerClosed, match="after 4 of 10 bytes of a 10-byte frame"):
            frames.recv_frame(b)
    c, d = _pair()
    with c, d:
        c.shutdown(socket.SHUT_WR)
        assert frames.recv_frame(d) is None  # a clean end between frames


def _serve(sock: socket.socket, kind: handshake.Handshake, out: list) -> threading.Thread:
    def run() -> None:
        try:
            handshake.serve(sock, SECRET, kind, 5)
            out.append("ok")
        except handshake.HandshakeError as exc:
            out.append(exc)
        sock.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_tcp_and_agent_handshakes_do_not_cross() -> None:
    a, b = _pair()
    out: list = []
    t = _serve(a, handshake.AGENT, out)
    with b, pytest.raises(handshake.NotAPeer, match="is not a papycluster tcp server"):
        handshake.greet(b, SECRET, handshake.TCP, "x", time.monotonic() + 5)
    t.join(10)
    assert isinstance(out[0], handshake.HandshakeError)
    # and a proof made with the tcp labels fails at an agent, greeting or not
    a, b = _pair()
    out = []
    t = _serve(a, handshake.AGENT, out)
    with b:
        hello = frames.recv_exact(b, len(cauth.MAGIC) + cauth.NONCE)
        snonce, cnonce = hello[len(cauth.MAGIC):], handshake.nonce()
        b.sendall(cnonce + handshake.mac(SECRET, handshake.TCP.client_label, snonce, cnonce))
        t.join(10)
    assert "does not know the cluster secret" in str(out[0])


def test_both_facades_agree_with_the_one_handshake() -> None:
    a, b = _pair()
    out: list = []
    t = _serve(a, handshake.TCP, out)
    with b:
        tauth.client_handshake(b, SECRET, "tcp server here")
        assert b.gettimeout() == 10  # the caller's timeout is restored
    t.join(10)
    assert out == ["ok"]
    a, b = _pair()

    def agent() -> None:
        cauth.server_handshake(a, SECRET.decode(), 5)

    t = threading.Thread(target=agent, daemon=True)
    t.start()
    with b:
        cauth.client_handshake(b, SECRET, 5)  # str at one end, bytes at the other
    t.join(10)
    a.close()


def test_an_agent_of_the_older_handshake_is_named_as_another_version() -> None:
    a, b = _pair()
    with a, b:
        a.sendall(b"PAPYCLUSTER-A1\r\n" + handshake.nonce())
        with pytest.raises(AuthError, match="another version of the papycluster agent "
                                            "handshake.*restart it"):
            cauth.client_handshake(b, SECRET, 5)
