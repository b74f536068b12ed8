"""A node that dies (``docker kill``) or is cut off (``docker network disconnect``)
while a pipeline runs on it: the run ends, the lost items are error items that name
the node, and nothing hangs (every wait here is bounded)."""

from __future__ import annotations

import secrets
import threading
import time
from typing import TYPE_CHECKING

import pytest

from papycluster import NuMap, Piper, PiperError, Plumber, Worker
from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.state import load_state

from .harness import record_errors

if TYPE_CHECKING:  # the fixture comes from conftest.py
    from .harness import Harness

pytestmark = pytest.mark.timeout(900)

N = 60


def run_with_fault(cluster: Harness, fault, second: tuple[str, ...] = ("node2",)
                   ) -> tuple[list, list[PiperError], bool]:
    """Items through node1 then ``second`` (slowly), ``fault`` applied to node2 mid-run."""
    out: list = []
    started = threading.Event()

    def slow(inbox):
        import socket
        import time

        time.sleep(0.25)
        return (inbox[0], socket.gethostname())

    def collect(inbox):
        out.append(inbox[0])
        if len(out) >= 3:
            started.set()
        return inbox[0]

    s1 = Piper(Worker(lambda inbox: inbox[0] * 2),
               parallel=NuMap(worker_num=0, worker_remote=[("node1", 1)]), name="double")
    s2 = Piper(Worker(slow), parallel=NuMap(worker_num=0,
                                            worker_remote=[(h, 2) for h in second]),
               name="slow")
    last = Piper(Worker(collect), parallel=False, name="collect")
    errors: list[PiperError] = record_errors(last)
    plumber = Plumber()
    plumber.add_pipe((s1, s2, last))
    plumber.start([range(N)])
    try:
        plumber.run()
        assert started.wait(120), "no item came back from node2 before the fault"
        fault(cluster.nodes["node2"])
        finished = plumber.wait(240)
    finally:
        plumber.pause()
        plumber.stop()
    return out, errors, finished


@pytest.mark.parametrize("fault", ["docker kill", "network disconnect"])
def test_node_lost_during_a_run(cluster: Harness, linux_up: str, fault: str):
    t0 = time.monotonic()
    action = cluster.kill if fault == "docker kill" else cluster.disconnect
    out, errors, finished = run_with_fault(cluster, action)
    elapsed = time.monotonic() - t0
    assert finished, f"the run did not end after node2 was lost ({elapsed:.0f}s)"
    assert all(host == "node2" for _, host in out)
    assert len(out) + len(errors) == N
    assert errors, "node2 was lost mid-run, yet every item came back"
    texts = [repr(e) for e in errors]
    # the items node2 held when it went say so, and so do those still queued for it
    assert any("node2" in t and "lost" in t for t in texts), texts[:3]
    assert all("node2" in t for t in texts), texts[:3]


@pytest.mark.parametrize("fault", ["docker kill", "network disconnect"])
def test_items_of_a_lost_node_go_to_a_survivor(cluster: Harness, linux_up: str, fault: str):
    action = cluster.kill if fault == "docker kill" else cluster.disconnect
    out, errors, finished = run_with_fault(cluster, action, second=("node2", "node3"))
    assert finished
    assert errors == [], [repr(e) for e in errors[:3]]
    # every item exactly once, whoever ran it
    assert sorted(value for value, _ in out) == [2 * i for i in range(N)]
    hosts = [host for _, host in out]
    assert set(hosts) <= {"node2", "node3"}
    assert hosts[-1] == "node3"  # node2 was gone by the end


@pytest.mark.parametrize("fault", ["docker kill", "network disconnect"])
def test_node_lost_while_up_ships_to_it(cluster: Harness, tmp_path,
                                        monkeypatch: pytest.MonkeyPatch, fault: str):
    monkeypatch.setenv("PAPYCLUSTER_STATE", str(tmp_path / "state" / "state.json"))
    monkeypatch.delenv("PAPYCLUSTER_SECRET", raising=False)
    monkeypatch.delenv("PAPYCLUSTER_SECRET_FILE", raising=False)
    victim = cluster.nodes["node2"]
    action = cluster.kill if fault == "docker kill" else cluster.disconnect
    for node in cluster.linux_nodes:
        cluster.make_bare(node)
    hit = threading.Event()

    def progress(host: str, message: str) -> None:
        # node2 goes away in the middle of `up`: just as papycluster is shipped to it
        if host == victim.name and message.startswith("shipping") and not hit.is_set():
            hit.set()
            action(victim)

    text = cluster.hosts_toml(cluster.linux_nodes, cluster_name="u" + secrets.token_hex(4),
                              connect_timeout=5)
    try:
        result = controller.up(parse_hosts(text, str(tmp_path / "hosts.toml")),
                               progress=progress)
        assert hit.is_set(), "up never shipped to node2"
        assert [f.name for f in result.failed] == [victim.name]
        [failure] = result.failed
        assert failure.cause in ("unreachable", "timeout", "deploy failed", "check failed",
                                 "agent failed"), failure
        assert sorted(result.up) == ["node1", "node3"]
        rows = controller.status()
        assert sorted(r["name"] for r in rows if r["ok"]) == ["node1", "node3"]
        downs = controller.down()
        assert all(d.ok for d in downs), downs
    finally:
        cluster.restore()
        if load_state(missing_ok=True) is not None:
            controller.down()
        cluster.kill_agents()
