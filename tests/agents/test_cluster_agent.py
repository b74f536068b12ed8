"""The agent on loopback: authentication, the remote-worker contract, profiles, loss."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import time
from pathlib import Path

import cloudpickle
import pytest

from papycluster.cluster import ClusterError, connect, controller
from papycluster.cluster.auth import (
    MAGIC,
    NONCE,
    client_handshake,
    new_secret,
    server_handshake,
)
from papycluster.cluster.client import AgentConnection, open_remote_worker
from papycluster.cluster.errors import AuthError
from papycluster.engine.process import decode_results
from papycluster.errors import WorkerLostError
from tests.plugins.helpers import agent_pids, run_dirs


def _run(worker, func, items, args=(), key="t", timeout=30.0):
    worker.send(pickle.dumps(("def", key, cloudpickle.dumps((func, args, {})))))
    worker.send(pickle.dumps(("run", [(key, i, x) for i, x in enumerate(items)])))
    out: list = []
    while len(out) < len(items):
        out += decode_results(worker.recv(timeout))
    return [r[2:] for r in sorted(out, key=lambda r: r[1])]


def test_closures_lambdas_and_remote_errors(local_cluster):
    offset = 7
    w = open_remote_worker("local1")
    try:
        assert _run(w, lambda x: x + offset, [1, 2, 3]) == [(True, 8), (True, 9), (True, 10)]
        ok, err = _run(w, lambda x: 1 / x, [0], key="div")[0]
        assert not ok and isinstance(err, ZeroDivisionError)
        assert "local1" in " ".join(err.__notes__)
        assert "ZeroDivisionError" in err.remote_traceback
        with pytest.raises(TimeoutError):
            w.recv(0.2)
    finally:
        w.close()


def test_host_port_spec_with_secret_file(local_cluster, tmp_path, monkeypatch):
    entry = local_cluster.hosts["local2"]
    secret_file = tmp_path / "secret"
    secret_file.write_text(local_cluster.secret)
    monkeypatch.setenv("PAPYCLUSTER_SECRET_FILE", str(secret_file))
    w = open_remote_worker(f"127.0.0.1:{entry.agent_port}")
    try:
        assert w.name == "local2"  # the state names it
        assert _run(w, str.upper, ["a"]) == [(True, "A")]
    finally:
        w.close()


def test_status_and_windows_profile(local_cluster):
    rows = {r["name"]: r for r in controller.status()}
    assert rows["local1"]["ok"] and rows["local2"]["ok"]
    assert rows["local1"]["fork"] is True and rows["local1"]["os"] == "linux"
    win = rows["local2"]
    assert (win["os"], win["fork"], win["fifo"], win["shm"]) == ("windows", False, False,
                                                                 False)
    assert "file" in win["transports"] and "shm" not in win["transports"]
    # workers on the windows profile are spawned, and still work
    w = open_remote_worker("local2")
    try:
        assert _run(w, lambda x: os.environ["PAPYCLUSTER_PROFILE"] + str(x), [1]) == [
            (True, "windows1")]
    finally:
        w.close()


def test_worker_env_for_transports(local_cluster):
    w = open_remote_worker("local1")
    # multiprocessing's temp dir (forkserver socket) lives in the run dir, not in /tmp
    run_dir = local_cluster.hosts["local1"].run_dir
    assert list(Path(run_dir).glob("pymp-*"))
    keys = ("PAPYCLUSTER_SECRET_FILE", "PAPYCLUSTER_ADVERTISE_HOST", "PAPYCLUSTER_SHARES",
            "PAPYCLUSTER_HOST_NAME")
    try:
        [(ok, env)] = _run(w, lambda _: {k: os.environ.get(k) for k in keys}
                           | {"inline": os.environ.get("PAPYCLUSTER_SECRET")}, [0])
    finally:
        w.close()
    assert ok
    assert env["PAPYCLUSTER_HOST_NAME"] == "local1"
    assert env["PAPYCLUSTER_ADVERTISE_HOST"] == "127.0.0.1"
    assert env["PAPYCLUSTER_SHARES"] == "{}"
    assert env["inline"] is None
    with open(env["PAPYCLUSTER_SECRET_FILE"]) as f:
        assert f.read() == local_cluster.secret
    assert os.stat(env["PAPYCLUSTER_SECRET_FILE"]).st_mode & 0o777 == 0o600


def test_worker_process_death_is_worker_lost(local_cluster):
    w = open_remote_worker("local1")
    try:
        [(ok, pid)] = _run(w, lambda _: os.getpid(), [0])
        assert w.ping(5) is True
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError, match="local1"):
            w.recv(20)
        with pytest.raises(WorkerLostError):
            w.recv(1)
        assert w.ping(5) is False
    finally:
        w.close()


def test_frozen_agent_fails_ping_in_bounded_time(local_cluster):
    """SIGSTOP looks like a network cut: the connection stays, nothing answers."""
    w = open_remote_worker("local1")
    pid = local_cluster.hosts["local1"].pid
    try:
        assert w.ping(5) is True
        os.kill(pid, signal.SIGSTOP)
        try:
            while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
                time.sleep(0.01)  # until the kernel has stopped it
            assert w.ping(0.5) is False
        finally:
            os.kill(pid, signal.SIGCONT)
        assert w.ping(5) is True  # and it recovers
    finally:
        w.close()


def test_agent_death_is_worker_lost(local_cluster):
    w = open_remote_worker("local2")
    try:
        assert _run(w, abs, [-1]) == [(True, 1)]
        os.kill(local_cluster.hosts["local2"].pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError):
            w.recv(20)
        with pytest.raises(WorkerLostError):
            for _ in range(50):  # the connection may take a moment to notice
                w.send(pickle.dumps(("run", [("t", 0, 1)])))
                time.sleep(0.1)
    finally:
        w.close()


def test_wrong_secret_is_refused_both_ways(local_cluster):
    entry = local_cluster.hosts["local1"]
    with pytest.raises(AuthError, match="refused|secret"):
        AgentConnection("127.0.0.1", entry.agent_port, new_secret(), "local1", 5)
    # and the agent still serves good peers afterwards
    conn = AgentConnection("127.0.0.1", entry.agent_port, local_cluster.secret, "local1")
    try:
        assert conn.info()["name"] == "local1"
    finally:
        conn.close()


class _Bomb:
    """Unpickling this touches a file: proof that something was deserialized."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_nothing_is_unpickled_before_the_proof(local_cluster, tmp_path):
    entry = local_cluster.hosts["local1"]
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Bomb(str(marker)))
    with socket.create_connection(("127.0.0.1", entry.agent_port), timeout=5) as s:
        hello = s.recv(len(MAGIC) + NONCE)
        assert hello.startswith(MAGIC)
        s.sendall(payload.ljust(64, b"\0") + payload * 10)
        s.settimeout(5)
        assert s.recv(100) == b""  # closed without an answer
    with socket.create_connection(("127.0.0.1", entry.agent_port), timeout=5) as s:
        s.recv(len(MAGIC) + NONCE)
        s.sendall(b"x")  # too short: the agent waits, then gives up; we hang up first
    assert not marker.exists()
    log = open(os.path.join(entry.run_dir, "agent.log")).read()
    assert "refused connection from 127.0.0.1" in log


def test_handshake_is_mutual():
    a, b = socket.socketpair()
    import threading

    errors: list = []

    def server():
        try:
            server_handshake(a, "the-real-secret", 5)
        except AuthError as exc:
            errors.append(exc)

    t = threading.Thread(target=server)
    t.start()
    with pytest.raises(AuthError):
        client_handshake(b, "another-secret", 5)
    t.join(10)
    assert errors and "wrong proof" in str(errors[0])
    a.close()
    b.close()


def test_connect_api(local_cluster):
    cluster = connect()
    assert cluster.hosts == ["local1", "local2"]
    assert cluster.info("local2")["os"] == "windows"
    with pytest.raises(ClusterError, match="unknown host 'nope'"):
        cluster.worker("nope")
    w = cluster.worker("local1")
    try:
        assert _run(w, len, ["abc"]) == [(True, 3)]
    finally:
        w.close()
    pool = cluster.pool("local2", 2)
    assert pool.worker_remote == [("local2", 2)] and pool.worker_num == 0
    pool.add_task(lambda x: (x, os.environ["PAPYCLUSTER_HOST_NAME"]), [1, 2, 3])
    pool.start()
    try:
        assert list(pool) == [(1, "local2"), (2, "local2"), (3, "local2")]
    finally:
        pool.stop()


def test_no_cluster_is_a_clear_error():
    with pytest.raises(ClusterError, match="no cluster is up"):
        connect()
    with pytest.raises(ClusterError, match="no cluster is up"):
        open_remote_worker("alpha")


def test_down_without_state_sweeps_this_controllers_local_cluster():
    from papycluster.cluster.controller import local_cluster_name
    from papycluster.cluster.state import state_path

    assert controller.up_local(2).failed == []
    name = local_cluster_name()
    assert len(agent_pids(name, children=False)) == 2
    state_path().unlink()  # the controller crashed and lost its state
    results = controller.down()
    assert [r.name for r in results] == [name] and results[0].ok
    assert len(results[0].killed) == 2
    assert agent_pids(name) == [] and run_dirs(name) == []
    assert controller.down() == []  # nothing is running now: not an error (issue 19)


def test_a_planted_symlink_run_dir_is_refused(cluster_name, tmp_path):
    import tempfile

    from papycluster.cluster.agent import default_run_dir

    target = tmp_path / "victim"
    target.mkdir()
    link = Path(default_run_dir(cluster_name, "local1"))
    assert Path(tempfile.gettempdir()) in link.parents
    link.symlink_to(target)
    try:
        result = controller.up_local(1, cluster=cluster_name)
        assert result.up == [] and "symbolic link" in result.results[0].detail
        assert list(target.iterdir()) == []  # nothing written through the link
    finally:
        link.unlink()
