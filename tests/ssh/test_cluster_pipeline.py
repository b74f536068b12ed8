"""Whole pipelines whose pipers run on agents: local (Windows profile) and over SSH."""

from __future__ import annotations

import warnings

import pytest

from papycluster import NuMap, Piper, PiperError, Plumber, Worker, workers
from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.state import load_state
from papycluster.errors import WorkerLostError
from tests.plugins.helpers import agent_pids, free_range, hosts_toml, run_dirs


def _pipeline(up_host: str, down_host: str, transport: str, n: int = 30):
    out: list = []

    def square(inbox):
        if inbox[0] == 13:
            raise ValueError("unlucky 13")
        return inbox[0] ** 2

    def collect(inbox):
        out.append(inbox[0])
        return inbox[0]

    up = Piper(Worker((square, workers.io.pickle_dumps, workers.io.dump_item),
                      ((), (), (transport,))),
               parallel=NuMap(worker_num=0, worker_remote=[(up_host, 2)]), name="square")
    down = Piper(Worker((workers.io.load_item, workers.io.pickle_loads,
                         lambda inbox: inbox[0] + 1)),
                 parallel=NuMap(worker_num=0, worker_remote=[(down_host, 1)]), name="plus1")
    last = Piper(Worker(collect), parallel=False, name="collect")
    plumber = Plumber()
    plumber.add_pipe((up, down, last))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plumber.start([range(n)])
    try:
        plumber.run()
        assert plumber.wait(120)
    finally:
        plumber.pause()
        plumber.stop()
    assert not any(isinstance(x, PiperError) for x in out)  # errors skip the collector
    assert plumber.stats["items_out"] == n
    return sorted(out), plumber.stats["errors_out"], [str(w.message) for w in caught], up


def test_windows_profile_falls_back_to_file(cluster_name):
    result = controller.up_local(2, cluster=cluster_name, profiles=["native", "windows"])
    assert result.failed == []
    try:
        good, errors, warns, up = _pipeline("local1", "local2", "shm")
        assert good == sorted(i * i + 1 for i in range(30) if i != 13)
        assert errors == 1  # item 13 raised on local1: an error item, not a crash
        assert up.worker.args[2] == ("file",)
        [warning] = [w for w in warns if "shm" in w]
        assert "local1" in warning and "local2" in warning and "windows" in warning
    finally:
        assert all(d.ok for d in controller.down())
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []


def test_pipeline_over_ssh_hosts_with_tcp(sshd, cluster_name, remote_cache):
    config = parse_hosts(hosts_toml(sshd, cluster_name, [{"name": "alpha"}, {"name": "beta"}],
                                    remote_cache), "h.toml")
    result = controller.up(config)
    assert sorted(result.up) == ["alpha", "beta"], result.failed
    try:
        good, errors, warns, up = _pipeline("alpha", "beta", "tcp", n=40)
        assert good == sorted(i * i + 1 for i in range(40) if i != 13)
        assert errors == 1
        assert up.worker.args[2] == ("tcp",) and warns == []
        rows = {r["name"]: r for r in controller.status()}
        assert rows["alpha"]["items_done"] > 0 and rows["beta"]["items_done"] > 0
    finally:
        assert all(d.ok for d in controller.down())
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []


def item_server_ports(_: int) -> tuple[int, int]:
    """On a worker: the ports its tcp and udp item servers listen on (from tickets)."""
    tcp = workers.io.dump_item([b"x" * 100], "tcp")
    udp = workers.io.dump_item([b"y" * 100], "udp")
    return tcp[5], udp[5]  # (magic, version, transport, flags, host, port, ...)


def test_every_listener_of_an_agent_is_in_its_ports(sshd, cluster_name, remote_cache):
    """``ports`` per host: the agent takes the range's first port, its workers' item
    servers ports of the range, and a tcp pipeline runs between the two hosts."""
    ranges = {"alpha": free_range(12), "beta": free_range(12)}
    hosts = [{"name": n, "ports": f"{r.start}-{r.stop - 1}", "agent_port": r.start}
             for n, r in ranges.items()]
    config = parse_hosts(hosts_toml(sshd, cluster_name, hosts, remote_cache), "h.toml")
    result = controller.up(config)
    assert sorted(result.up) == ["alpha", "beta"], result.failed
    try:
        for name, entry in load_state().hosts.items():
            assert entry.agent_port == ranges[name].start
        good, errors, _, up = _pipeline("alpha", "beta", "tcp", n=20)
        assert good == sorted(i * i + 1 for i in range(20) if i != 13) and errors == 1
        for name, r in ranges.items():
            numap = NuMap(item_server_ports, [0], worker_num=0, worker_remote=[(name, 1)])
            try:
                tcp_port, udp_port = numap.next(timeout=60)
            finally:
                numap.stop()
            assert tcp_port in r and udp_port in r, (name, r, tcp_port, udp_port)
    finally:
        assert all(d.ok for d in controller.down())


def test_unknown_remote_host_is_an_error_not_a_hang(cluster_name, caplog):
    result = controller.up_local(1, cluster=cluster_name)
    assert result.up == ["local1"]
    try:
        numap = NuMap(worker_num=0, worker_remote=[("nosuchhost", 1)])
        numap.add_task(abs, [-1, -2])
        numap.start()
        try:
            with pytest.raises(WorkerLostError):
                for _ in range(2):
                    value = numap.next(timeout=30)
                    if isinstance(value, Exception):
                        raise value
        finally:
            numap.stop()
        assert "unknown host 'nosuchhost'" in caplog.text
        assert "has local1" in caplog.text
    finally:
        controller.down()


def test_check_matrix_on_bare_ssh_hosts(sshd, cluster_name, remote_cache):
    """Every transport works from the shipped bundle on hosts without papycluster."""
    from papycluster.cluster.check import run_check

    config = parse_hosts(hosts_toml(sshd, cluster_name, [{"name": "alpha"}, {"name": "beta"}],
                                    remote_cache), "h.toml")
    result = controller.up(config)
    assert sorted(result.up) == ["alpha", "beta"], result.failed
    try:
        cells = run_check(size=200_000, repeat=1)
        assert {c.transport for c in cells if c.status == "ok"} == {
            "shm", "fifo", "tcp", "udp", "file", "manager"}
        assert [c for c in cells if c.status != "ok"] == []  # one machine: all feasible
    finally:
        assert all(d.ok for d in controller.down())
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []
