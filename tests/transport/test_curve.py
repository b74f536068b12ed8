"""The encrypted tcp transport (ZeroMQ + CURVE) refuses every peer without the secret.

Per direction and per kind of peer: a loader with another secret, a client key of no
cluster (an attacker who knows the server's public key), a peer speaking ZeroMQ without
CURVE, raw garbage on the port; and a rogue server, without the secret, whose answer
is a pickle that would create a marker file if it were ever loaded. Each is refused in
bounded time, before anything of it is deserialized, and the real item stays served.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from papycluster import transport
from papycluster.transport import curve, tcp, tcp_curve, ticket
from papycluster.workers import io

from .peer import SECRET, Peer, digest, make_data


def test_items_are_served_by_curve_by_default(peer: Peer) -> None:
    tk = peer.call("dump", "tcp", 300_000, 7, {})
    assert tk[-1] == "curve"
    assert digest(io.load_item([tk], timeout=20)) == digest(make_data(300_000, 7))


def test_a_loader_with_another_secret_is_refused(peer: Peer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tk = peer.call("dump", "tcp", 1000, 1, {})
    monkeypatch.setenv("PAPYCLUSTER_SECRET", "another-secret-" + "x" * 32)
    started = time.monotonic()
    with pytest.raises(transport.SecretError, match=f"tcp server 127.0.0.1:{tk[5]} does "
                       "not know the cluster secret"):
        io.load_item([tk], timeout=20)
    assert time.monotonic() - started < 20  # refused in the handshake, not timed out
    monkeypatch.undo()
    assert digest(io.load_item([tk], timeout=20)) == digest(make_data(1000, 1))


@pytest.fixture
def own_item() -> tuple[tuple, tcp_curve.CurveServer]:
    """An item of this process's CURVE server, and that server."""
    tk = io.dump_item([b"the real item"], "tcp")
    server = tcp.TRANSPORT.state.get().curve_server
    assert server is not None and tk[-1] == "curve"
    return tk, server


def events_of(sock: zmq.Socket, seconds: float) -> list[str]:
    """The monitor events of ``sock`` over ``seconds``."""
    monitor = sock.get_monitor_socket()
    seen = []
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            if monitor.poll(int(left * 1000)):
                seen.append(zmq.Event(recv_monitor_message(monitor)["event"]).name)
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
    return seen


def test_a_client_key_of_no_cluster_is_refused_by_the_gate(own_item) -> None:
    """Who knows the server's public key but not the secret: ZAP refuses its key."""
    tk, server = own_item
    foreign = curve.Keys(b"f" * 32)
    foreign.server_public = curve.Keys(SECRET.encode()).server_public
    refused = server.refused()
    context = zmq.Context()
    try:
        with pytest.raises(transport.SecretError, match="CURVE handshake failed"):
            tcp_curve.CurveClient(context, foreign, tk[4], tk[5], 10)
    finally:
        context.term()
    assert server.refused() == refused + 1
    assert io.load_item([tk]) == b"the real item"


def test_a_peer_without_curve_gets_no_answer(own_item) -> None:
    """ZeroMQ's NULL mechanism against a CURVE server: its request for the real key is
    never answered, the handshake never succeeds, the item stays."""
    tk, _ = own_item
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://{tk[4]}:{tk[5]}")
        sock.send(tcp_curve._REQ.pack(tcp_curve.OP_GET, tk[6].encode(), 1, tk[7], 1))
        # The monitor's events are evidence when they come, but libzmq does not always
        # report a failed handshake (a refused NULL peer may see no event at all in
        # 2 s); what must hold is that no reply comes and the handshake never succeeds.
        seen = events_of(sock, 2.0)
        assert not sock.poll(500)  # no reply
    finally:
        sock.close(linger=0)
        context.term()
    assert "HANDSHAKE_SUCCEEDED" not in seen, seen
    assert io.load_item([tk]) == b"the real item"


def test_garbage_on_the_port_is_dropped(own_item) -> None:
    tk, _ = own_item
    for junk in (os.urandom(200), b"\xff" + b"\x00" * 8 + b"\x7f" + os.urandom(64),
                 pickle.dumps({"a": 1}) * 10):
        with socket.create_connection((tk[4], tk[5]), timeout=5) as sock:
            sock.sendall(junk)
            sock.settimeout(5)
            got = b""
            try:
                while chunk := sock.recv(4096):
                    got += chunk
            except (ConnectionResetError, TimeoutError):
                pass
        assert len(got) <= 64  # at most ZeroMQ's greeting, never an item
    assert io.load_item([tk]) == b"the real item"


class Bomb:
    """Unpickling it creates ``path``: proof that a payload was deserialized."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def rogue_curve_server(payload: bytes) -> tuple[int, threading.Event]:
    """A CURVE server with the keys of another secret (no ZAP handler in its context:
    it takes any client), answering every request with ``payload``."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    curve.Keys(b"r" * 32).as_server(sock)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                if sock.poll(100):
                    peer, request = sock.recv_multipart()
                    rid = tcp_curve._REQ.unpack(request)[4]
                    sock.send_multipart([peer, tcp_curve._REP.pack(0, len(payload), rid),
                                         payload])
        finally:
            sock.close(linger=0)
            context.term()

    threading.Thread(target=serve, daemon=True).start()
    return port, stop


def test_a_loader_refuses_a_server_without_the_secret(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(Bomb(str(marker)))
    port, stop = rogue_curve_server(payload)
    tk = ticket.make("tcp", 0, "127.0.0.1", port, "ab" * 16, len(payload), "curve")
    try:
        started = time.monotonic()
        with pytest.raises(transport.SecretError, match="CURVE handshake failed"):
            pickle.loads(io.load_item([tk], timeout=10))  # would run the bomb
        assert time.monotonic() - started < 10
    finally:
        stop.set()
    assert not marker.exists()


def test_a_loader_refuses_a_plain_socket_that_sends_garbage() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def babble() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(os.urandom(4096))
            time.sleep(2)

    threading.Thread(target=babble, daemon=True).start()
    tk = ticket.make("tcp", 0, "127.0.0.1", port, "ab" * 16, 10, "curve")
    try:
        with pytest.raises(transport.TransportError, match=f"127.0.0.1:{port}"):
            io.load_item([tk], timeout=5)
    finally:
        listener.close()


def test_encryption_off_serves_by_the_hmac_socket(monkeypatch: pytest.MonkeyPatch,
                                                  peer: Peer) -> None:
    peer.call("setenv", curve.ENCRYPT_ENV, "0")
    tk = peer.call("dump", "tcp", 5000, 3, {})
    assert tk[-1] == "hmac"
    assert digest(io.load_item([tk], timeout=20)) == digest(make_data(5000, 3))


def test_a_frozen_producer_is_lost_not_waited_for(peer: Peer) -> None:
    """SIGSTOP the producer: its kernel keeps the connections open, so only silence
    tells. A pooled connection stops getting answers to its pings, a new one gets no
    handshake; both loads end with ProducerLostError (a recompute, not a hang)."""
    import signal

    tks = [peer.call("dump", "tcp", 1000, i, {}) for i in range(3)]
    assert digest(io.load_item([tks[0]])) == digest(make_data(1000, 0))  # now pooled
    os.kill(peer.process.pid, signal.SIGSTOP)
    try:
        for tk in tks[1:]:  # the pooled connection, then a new one
            with pytest.raises(transport.ProducerLostError, match=f"127.0.0.1:{tk[5]}"):
                io.load_item([tk], timeout=60)
    finally:
        os.kill(peer.process.pid, signal.SIGCONT)
