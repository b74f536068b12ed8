"""``up`` / ``status`` / remote workers / ``down`` against a real sshd on loopback."""

from __future__ import annotations

import pickle
from pathlib import Path

import cloudpickle

from papycluster.cluster import controller
from papycluster.cluster.client import open_remote_worker
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.state import load_state, state_path
from tests.plugins.helpers import agent_pids, hosts_toml, run_dirs


def _results(worker, n: int, timeout: float = 30.0) -> list:
    from papycluster.engine.process import decode_results

    out: list = []
    while len(out) < n:
        out += decode_results(worker.recv(timeout))
    return sorted(out, key=lambda r: r[1])


def test_up_status_worker_down(sshd, cluster_name, remote_cache, tmp_path):
    text = hosts_toml(sshd, cluster_name, [{"name": "alpha"}, {"name": "beta"}], remote_cache)
    config = parse_hosts(text, "hosts.toml")
    messages: list[tuple[str, str]] = []
    result = controller.up(config, progress=lambda h, m: messages.append((h, m)))
    assert result.failed == [], result.failed
    assert sorted(result.up) == ["alpha", "beta"]
    assert any(h == "alpha" and ("shipping" in m or "cached" in m) for h, m in messages)

    state = load_state()
    assert state_path().stat().st_mode & 0o777 == 0o600
    # the agents run the system Python with the shipped bundle, not our site-packages
    rows = {r["name"]: r for r in controller.status()}
    assert rows["alpha"]["ok"] and rows["beta"]["ok"]
    # (the same interpreter may serve both here: where papycluster comes from tells)
    assert Path(rows["alpha"]["package"]).is_relative_to(remote_cache)
    assert rows["alpha"]["profile"] == "native" and rows["alpha"]["fork"] is True
    assert list(remote_cache.glob("*.zip"))  # shipped and cached (imported from the zip)
    pids = agent_pids(cluster_name, children=False)
    assert len(pids) == 2
    # the secret is on no command line and in no environment of the agent
    for pid in pids:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        env = Path(f"/proc/{pid}/environ").read_bytes()
        assert state.secret.encode() not in cmd
        assert state.secret.encode() not in env

    # a remote worker on beta, through the byte protocol
    def scale(x, k):
        if x == 3:
            raise ValueError("three is bad")
        return x * k

    w = open_remote_worker("beta")
    try:
        assert w.name == "beta"
        w.send(pickle.dumps(("def", "t", cloudpickle.dumps((scale, (10,), {})))))
        w.send(pickle.dumps(("run", [("t", i, i) for i in range(5)])))
        res = _results(w, 5)
        assert [(r[1], r[2]) for r in res] == [(i, i != 3) for i in range(5)]
        assert [r[3] for r in res if r[2]] == [0, 10, 20, 40]
        err = res[3][3]
        assert isinstance(err, ValueError)
        assert "three is bad" in err.remote_traceback
        assert "beta" in str(err.__notes__)
        # the bare host runs the shipped packages, PyMySQL (mysql transport) included
        w.send(pickle.dumps(("def", "m", cloudpickle.dumps(
            (lambda _: [m.__file__ for m in (__import__("pymysql"), __import__("rpyc"))],
             (), {})))))
        w.send(pickle.dumps(("run", [("m", 0, None)])))
        [(_, _, ok, files)] = _results(w, 1)
        assert ok and all(str(remote_cache) in f for f in files), files
    finally:
        w.close()

    downs = controller.down()
    assert all(d.ok for d in downs), downs
    assert agent_pids(cluster_name) == []
    assert run_dirs(cluster_name) == []
    assert load_state(missing_ok=True) is None
