"""Worker streams: a remote worker's bytes on a direct connection, behind the same proof.

Real agents on loopback (``up_local``: no SSH, the same agent). By default a stream is
encrypted (CurveZMQ): a peer with another secret, one without CURVE and raw garbage
are refused before anything of theirs is deserialized, a token the agent did not issue
and a second stream for a worker are refused, and the agent takes no worker bytes over
RPyC (in clear). With encryption off (``PAPYCLUSTER_ENCRYPT=0``) the stream is a plain
socket behind the HMAC proof, with the same refusals, and a controller that cannot open
one keeps working through RPyC.
"""

from __future__ import annotations

import os
import pickle
import secrets
import socket

import pytest
import zmq

from papycluster.cluster import controller, stream
from papycluster.cluster.auth import MAGIC, NONCE, new_secret
from papycluster.cluster.client import open_remote_worker
from papycluster.cluster.errors import AuthError
from papycluster.cluster.state import load_state
from papycluster.errors import WorkerLostError
from papycluster.transport import SecretError, curve
from tests.agents.test_cluster_agent import _Bomb, _run


def _log(state, host: str) -> str:
    return open(os.path.join(state.hosts[host].run_dir, "agent.log")).read()


@pytest.fixture
def plain_cluster(cluster_name, monkeypatch):
    """Two local agents with encryption off: plain, authenticated streams."""
    monkeypatch.setenv("PAPYCLUSTER_ENCRYPT", "0")
    result = controller.up_local(2, cluster=cluster_name, profiles=["native", "windows"])
    assert result.failed == [], result.failed
    yield load_state()
    controller.down()


# -- encrypted streams (the default) ---------------------------------------------------

@pytest.mark.parametrize("host", ["local1", "local2"])  # native and Windows profile
def test_worker_bytes_travel_on_an_encrypted_stream(local_cluster, host):
    w = open_remote_worker(host)
    try:
        assert w.wire == "curve"
        big = os.urandom(3 << 20)  # frames far bigger than one socket buffer
        assert _run(w, len, [big, b"", b"x"]) == [(True, 3 << 20), (True, 0), (True, 1)]
        assert _run(w, bytes, [big], key="echo") == [(True, big)]
    finally:
        w.close()


def test_encrypted_stream_refuses_peers_without_the_secret(local_cluster, tmp_path):
    w = open_remote_worker("local1")
    marker = tmp_path / "unpickled"
    bomb = pickle.dumps(_Bomb(str(marker)))
    try:
        port, token, wire = w._conn.root.open_stream(w.wid)
        assert wire == "curve"
        # another secret: refused in the CURVE handshake
        with pytest.raises(SecretError, match="does not know the cluster secret"):
            stream.open_channel("127.0.0.1", port, token, new_secret(), wire, timeout=5)
        # ZeroMQ without CURVE, and a client key of no cluster (an attacker who knows
        # the server's public key), each sending the token and then a pickle: no answer
        server_public = curve.Keys(local_cluster.secret.encode()).server_public
        for client_keys in (None, zmq.curve_keypair()):
            context = zmq.Context()
            try:
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                if client_keys is not None:
                    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
                    sock.setsockopt(zmq.CURVE_PUBLICKEY, client_keys[0])
                    sock.setsockopt(zmq.CURVE_SECRETKEY, client_keys[1])
                sock.connect(f"tcp://127.0.0.1:{port}")
                sock.send(bytes.fromhex(token))
                sock.send(bomb)
                assert not sock.poll(2000)
                sock.close(linger=0)
            finally:
                context.term()
        # raw bytes: at most ZeroMQ's greeting comes back, never an answer
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(bomb.ljust(64, b"\0") + bomb * 10)
            s.settimeout(5)
            got = b""
            try:
                while chunk := s.recv(4096):
                    got += chunk
            except (ConnectionResetError, TimeoutError):
                pass
        assert len(got) <= 64
        assert not marker.exists()
        # none of them got the token to the agent: it is still unused (and refused only
        # because the worker has its stream already)
        with pytest.raises(ConnectionError, match="has its stream already"):
            stream.open_channel("127.0.0.1", port, token, local_cluster.secret, wire,
                                timeout=5)
        assert _run(w, abs, [-3]) == [(True, 3)]  # the worker's real stream is untouched
    finally:
        w.close()
    assert "CURVE: refused a peer whose key is not this cluster's" in _log(local_cluster,
                                                                         "local1")


def test_encrypted_stream_refuses_unknown_tokens_and_a_second_stream(local_cluster):
    w = open_remote_worker("local1")
    try:
        port, token, wire = w._conn.root.open_stream(w.wid)
        with pytest.raises(ConnectionError, match="a token this agent did not issue"):
            stream.open_channel("127.0.0.1", port, secrets.token_hex(stream.TOKEN),
                                local_cluster.secret, wire, timeout=5)
        with pytest.raises(ConnectionError, match="has its stream already"):
            stream.open_channel("127.0.0.1", port, token, local_cluster.secret, wire,
                                timeout=5)
        with pytest.raises(ConnectionError, match="did not issue"):  # used up
            stream.open_channel("127.0.0.1", port, token, local_cluster.secret, wire,
                                timeout=5)
        assert _run(w, abs, [-4]) == [(True, 4)]
    finally:
        w.close()
    assert "encrypted stream refused" in _log(local_cluster, "local1")


def test_encrypted_agents_take_no_worker_bytes_over_rpyc(local_cluster, tmp_path):
    w = open_remote_worker("local1")
    marker = tmp_path / "unpickled"
    try:
        with pytest.raises(Exception, match="only on its encrypted stream"):
            w._conn.root.send(w.wid, pickle.dumps(_Bomb(str(marker))))
        assert not marker.exists()
        assert _run(w, abs, [-5]) == [(True, 5)]
    finally:
        w.close()


def test_an_encrypted_stream_that_cannot_open_is_an_error(local_cluster, monkeypatch):
    def refused(*args, **kwargs):
        raise ConnectionRefusedError("a firewall, say")

    monkeypatch.setattr(stream, "open_channel", refused)
    with pytest.raises(WorkerLostError, match="cannot open its encrypted stream .*"
                       "a firewall, say"):
        open_remote_worker("local1")


# -- plain streams (encrypt = false) ---------------------------------------------------

@pytest.mark.parametrize("host", ["local1", "local2"])
def test_worker_bytes_travel_on_a_plain_stream(plain_cluster, host):
    w = open_remote_worker(host)
    try:
        assert w.wire == "hmac"
        big = os.urandom(3 << 20)
        assert _run(w, len, [big, b"x"]) == [(True, 3 << 20), (True, 1)]
    finally:
        w.close()


def test_plain_stream_refuses_peers_without_the_secret(plain_cluster, tmp_path):
    w = open_remote_worker("local1")
    try:
        port, token, wire = w._conn.root.open_stream(w.wid)
        assert wire == "hmac"
        with pytest.raises(AuthError):
            stream.connect("127.0.0.1", port, token, new_secret(), timeout=5)
        marker = tmp_path / "unpickled"
        payload = pickle.dumps(_Bomb(str(marker)))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert s.recv(len(MAGIC) + NONCE).startswith(MAGIC)
            s.sendall(payload.ljust(64, b"\0") + payload * 10)
            s.settimeout(5)
            try:
                assert s.recv(100) == b""  # closed without an answer
            except ConnectionResetError:
                pass  # closed with our bytes unread: the kernel says so with a reset
        assert not marker.exists()
        assert _run(w, abs, [-3]) == [(True, 3)]  # the real stream is untouched
    finally:
        w.close()
    assert "stream from 127.0.0.1" in _log(plain_cluster, "local1")


def test_plain_stream_refuses_unknown_tokens_and_a_second_stream(plain_cluster):
    w = open_remote_worker("local1")
    try:
        port, token, _ = w._conn.root.open_stream(w.wid)
        for forged in (secrets.token_hex(stream.TOKEN), token):  # unknown; 2nd stream
            sock = stream.connect("127.0.0.1", port, forged, plain_cluster.secret, timeout=5)
            with sock:
                sock.settimeout(5)
                assert sock.recv(1) == b""  # the agent hangs up
        assert _run(w, abs, [-4]) == [(True, 4)]
    finally:
        w.close()
    log = _log(plain_cluster, "local1")
    assert "a token this agent did not issue" in log
    assert "has its stream already" in log


def test_without_a_plain_stream_the_bytes_go_through_rpyc(plain_cluster, monkeypatch):
    def refused(*args, **kwargs):
        raise ConnectionRefusedError("a firewall, say")

    monkeypatch.setattr(stream, "connect", refused)
    w = open_remote_worker("local1")
    try:
        assert w.wire == "rpyc"
        assert _run(w, lambda x: x * 2, [1, 2]) == [(True, 2), (True, 4)]
    finally:
        w.close()
