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
