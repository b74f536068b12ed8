"""Worker streams: a remote worker's bytes on a direct socket, behind the same proof.

Real agents on loopback (``up_local``: no SSH, the same agent). The stream listener must
refuse a peer without the cluster secret before reading anything it would deserialize,
refuse a token it did not issue and a second stream for a worker, and a controller that
cannot open a stream must keep working through RPyC.
"""

from __future__ import annotations

import os
import pickle
import secrets
import socket

import pytest

from papycluster.cluster import stream
from papycluster.cluster.auth import MAGIC, NONCE, new_secret
from papycluster.cluster.client import open_remote_worker
from papycluster.cluster.errors import AuthError
from tests.agents.test_cluster_agent import _Bomb, _run


def _log(state, host: str) -> str:
    return open(os.path.join(state.hosts[host].run_dir, "agent.log")).read()


@pytest.mark.parametrize("host", ["local1", "local2"])  # native and Windows profile
def test_worker_bytes_travel_on_a_stream(local_cluster, host):
    w = open_remote_worker(host)
    try:
        assert w.streaming
        big = os.urandom(3 << 20)  # frames far bigger than one socket buffer
        assert _run(w, len, [big, b"", b"x"]) == [(True, 3 << 20), (True, 0), (True, 1)]
        assert _run(w, bytes, [big], key="echo") == [(True, big)]
    finally:
        w.close()


def test_stream_refuses_peers_without_the_secret(local_cluster, tmp_path):
    w = open_remote_worker("local1")
    try:
        port, token = w._conn.root.open_stream(w.wid)
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
    assert "stream from 127.0.0.1" in _log(local_cluster, "local1")


def test_stream_refuses_unknown_tokens_and_a_second_stream(local_cluster):
    w = open_remote_worker("local1")
    try:
        port, token = w._conn.root.open_stream(w.wid)
        for forged in (secrets.token_hex(stream.TOKEN), token):  # unknown; 2nd stream
            sock = stream.connect("127.0.0.1", port, forged, local_cluster.secret, timeout=5)
            with sock:
                sock.settimeout(5)
                assert sock.recv(1) == b""  # the agent hangs up
        with pytest.raises(OSError):  # and the used token is gone
            sock = stream.connect("127.0.0.1", port, token, local_cluster.secret, timeout=5)
            with sock:
                sock.settimeout(5)
                if sock.recv(1) == b"":
                    raise ConnectionError("refused")
        assert _run(w, abs, [-4]) == [(True, 4)]
    finally:
        w.close()
    log = _log(local_cluster, "local1")
    assert "a token this agent did not issue" in log
    assert "has its stream already" in log


def test_without_a_stream_the_bytes_go_through_rpyc(local_cluster, monkeypatch):
    def refused(*args, **kwargs):
        raise ConnectionRefusedError("a firewall, say")

    monkeypatch.setattr(stream, "connect", refused)
    w = open_remote_worker("local1")
    try:
        assert not w.streaming
        assert _run(w, lambda x: x * 2, [1, 2]) == [(True, 2), (True, 4)]
    finally:
        w.close()
