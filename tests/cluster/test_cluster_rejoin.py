"""Hosts that come and go: a second ``up`` on the running cluster of the docker nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from papycluster.cluster import controller
from papycluster.cluster.client import open_remote_worker
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.state import load_state

if TYPE_CHECKING:  # the fixture comes from conftest.py
    from tests.cluster.harness import Harness

pytestmark = pytest.mark.timeout(600)


def _up(cluster: Harness, papy: str, tmp_path, nodes) -> controller.UpResult:
    text = cluster.hosts_toml(nodes, cluster_name=papy, connect_timeout=5)
    return controller.up(parse_hosts(text, str(tmp_path / "hosts.toml")))


def test_a_node_killed_and_back_and_a_new_node_join_by_a_second_up(cluster, papy,
                                                                    tmp_path):
    node1, node2, node3 = cluster.linux_nodes[:3]
    result = _up(cluster, papy, tmp_path, [node1, node2])
    assert result.failed == [], result.failed
    first = load_state()

    cluster.kill(node2)  # a power cut: its agent is gone with it
    cluster.restore()    # the machine is back, without an agent
    result = _up(cluster, papy, tmp_path, [node1, node2, node3])  # node3 is new
    assert result.failed == [], result.failed
    state = load_state()
    assert state.secret == first.secret
    assert state.hosts[node1.name].pid == first.hosts[node1.name].pid  # left alone
    assert [r.name for r in result.results if r.info.get("kept")] == [node1.name]
    assert sorted(state.hosts) == sorted(n.name for n in (node1, node2, node3))
    for node in (node1, node2, node3):
        w = open_remote_worker(node.name)
        try:
            assert w.ping(10) is True, node.name
        finally:
            w.close()
        assert len(cluster.processes(node, "papycluster.cluster.agent")) >= 1
    assert all(d.ok for d in controller.down())


def _where(x):
    """On the node: the item, the node's name and when it ran (the nodes share the
    docker host's clock)."""
    import socket
    import time

    time.sleep(0.2)
    return (x, socket.gethostname(), time.time())


def test_a_running_group_pool_takes_on_a_node_back_and_a_new_node(cluster, papy, tmp_path,
                                                                  caplog):
    """``NuMap(worker_remote="all")`` on node1 and node2; node2 is killed mid-run, comes
    back, and a second ``up`` starts it again with node3, new: the running pool takes
    on both (their ``workers`` each), and every item comes out once, in order."""
    import logging
    import threading
    import time

    from papycluster import NuMap

    from .harness import wait_until

    caplog.set_level(logging.WARNING)
    node1, node2, node3 = cluster.linux_nodes[:3]
    assert _up(cluster, papy, tmp_path, [node1, node2]).failed == []
    items = 600
    # PaPy's kind of buffer, a few tasklets in flight: most items still wait in the
    # lane when hosts join (an adaptive buffer would have handed them all out)
    numap = NuMap(worker_num=0, worker_remote="all", buffer=6)
    assert sorted(numap.worker_remote) == [(node1.name, 2), (node2.name, 2)]
    numap.add_task(_where, range(items))
    numap.start()
    out: list = []
    reader = threading.Thread(target=lambda: out.extend(numap), daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(out) >= 40, 120)
        cluster.kill(node2)
        cluster.restore()
        assert _up(cluster, papy, tmp_path, [node1, node2, node3]).failed == []
        back = time.time()
        reader.join(300)
        assert not reader.is_alive(), f"only {len(out)} of {items} results"
    finally:
        numap.stop()
        assert all(d.ok for d in controller.down())
    assert [r[0] for r in out] == list(range(items))  # none lost, none twice, in order
    after = {host for _, host, when in out if when > back}
    assert node2.name in after and node3.name in after, after
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"host {node2.name} is back" in m for m in messages), messages[-5:]
    assert any(f"host {node3.name} joined" in m for m in messages), messages[-5:]
