"""``papycluster check -f`` against the docker nodes: real hosts, a real cut between two."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.preflight import run_preflight

if TYPE_CHECKING:  # the fixture comes from conftest.py
    from tests.cluster.harness import Harness, Node

pytestmark = pytest.mark.timeout(600)


@contextlib.contextmanager
def no_route(cluster: Harness, node: Node, to: Node) -> Iterator[None]:
    """``node`` can send nothing to ``to`` (a 'prohibit' route in its own network
    namespace, as a firewall that rejects), so neither can talk to the other; sshd on
    both still answers the controller."""
    pid = cluster.docker("inspect", "-f", "{{.State.Pid}}", node.container).stdout.strip()

    def ip_route(verb: str) -> None:
        subprocess.run(["nsenter", "-t", pid, "-n", "-m", "ip", "route", verb, "prohibit",
                        f"{to.ip}/32"], check=True, capture_output=True, timeout=30)

    ip_route("add")
    try:
        yield
    finally:
        ip_route("del")


def _config(cluster: Harness, papy: str, tmp_path, nodes=None):
    text = cluster.hosts_toml(nodes or cluster.linux_nodes, cluster_name=papy,
                              connect_timeout=5, start_timeout=30)
    return parse_hosts(text, str(tmp_path / "hosts.toml"))


def test_preflight_of_the_linux_nodes_and_a_pair_that_cannot_reach(cluster, papy, tmp_path):
    node1, node2, node3 = cluster.linux_nodes[:3]
    config = _config(cluster, papy, tmp_path)
    found = run_preflight(config)
    assert found.ok, [(h.name, h.problems) for h in found.hosts]
    names = [n.name for n in cluster.linux_nodes]
    for a in ["controller", *names]:
        for b in names:
            if a != b:
                r = found.pair(a, b)
                assert r is not None and r.ok, (a, b, r)
    assert {h.facts["os"] for h in found.hosts} == {"linux"}
    # the probes left nothing behind (other tests' files, e.g. Dask's logs, may be there)
    assert [f for f in cluster.temp_files(node1) if "papycluster" in f] == []
    assert [p for p in cluster.share_dir.iterdir() if "preflight" in p.name] == []

    with no_route(cluster, node3, node2):
        found = run_preflight(config)
    assert found.ok  # up would work: only direct transports node3 -> node2 would not
    # node3 can send nothing to node2, nor answer it: both ways are cut, each named
    for a, b in [(node3, node2), (node2, node3)]:
        cut = found.pair(a.name, b.name)
        assert not cut.ok and b.ip in cut.detail, cut
    for a, b in [(node1, node2), (node2, node1), (node1, node3), (node3, node1)]:
        assert found.pair(a.name, b.name).ok, (a.name, b.name)


def test_a_dead_node_is_named_in_bounded_time(cluster, papy, tmp_path):
    node1, node2 = cluster.linux_nodes[:2]
    config = _config(cluster, papy, tmp_path, [node1, node2])
    cluster.kill(node2)
    started = time.monotonic()
    found = run_preflight(config)
    took = time.monotonic() - started
    assert not found.ok
    report = {h.name: h for h in found.hosts}
    assert report[node1.name].ok
    assert [p.cause for p in report[node2.name].problems] in (["unreachable"], ["timeout"])
    assert took < 60, took  # connect_timeout is 5 s
