"""The controller against the docker nodes: ``up`` deploys papycluster to bare hosts,
``status`` shows them, ``down`` leaves nothing behind, and a dead or cut-off node is
reported by name while the others come up."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.state import load_state

from .harness import AGENT

if TYPE_CHECKING:  # the fixture comes from conftest.py
    from tests.cluster.harness import Harness

pytestmark = pytest.mark.timeout(900)


def config_for(cluster: Harness, name: str, tmp_path: Path, nodes=None, **kw):
    text = cluster.hosts_toml(nodes, cluster_name=name, **kw)
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    return parse_hosts(text, str(path))


def test_up_status_down_on_all_four_nodes(cluster: Harness, papy: str, tmp_path: Path):
    for node in cluster.nodes.values():
        cluster.make_bare(node)  # earlier tests of the session may have shipped it
        assert cluster.processes(node, AGENT) == [], node.name
    config = config_for(cluster, papy, tmp_path)
    messages: list[tuple[str, str]] = []
    result = controller.up(config, progress=lambda h, m: messages.append((h, m)))
    assert result.failed == [], result.failed
    assert sorted(result.up) == sorted(cluster.nodes)
    # bare hosts: papycluster was shipped to every one of them
    for node in cluster.nodes.values():
        assert any(h == node.name and "shipping" in m for h, m in messages), node.name

    state = load_state()
    rows = {r["name"]: r for r in controller.status()}
    assert sorted(rows) == sorted(cluster.nodes)
    for node in cluster.nodes.values():
        row = rows[node.name]
        assert row["ok"], row
        agents = cluster.processes(node, AGENT)
        assert len(agents) == 1, (node.name, agents)
        assert state.secret not in agents[0]  # never on a command line
    for node in cluster.linux_nodes:
        assert rows[node.name]["os"] == "linux"
        assert rows[node.name]["fork"] is True
    [win] = cluster.windows_nodes
    assert rows[win.name]["os"] == "windows"
    assert rows[win.name]["profile"] == "windows"
    assert (rows[win.name]["fork"], rows[win.name]["fifo"], rows[win.name]["shm"]) == \
        (False, False, False)

    downs = controller.down()
    assert all(d.ok for d in downs), downs
    assert sorted(d.name for d in downs) == sorted(cluster.nodes)
    for node in cluster.nodes.values():
        assert cluster.processes(node, "papycluster") == [], node.name
        assert cluster.processes(node, "multiprocessing") == [], node.name
    assert load_state(missing_ok=True) is None


def test_down_leaves_no_temp_file(cluster: Harness, papy: str, tmp_path: Path):
    for node in cluster.nodes.values():
        assert cluster.temp_files(node) == [], f"{node.name} was not clean before `up`"
    assert controller.up(config_for(cluster, papy, tmp_path)).failed == []
    assert all(d.ok for d in controller.down())
    left = {n.name: cluster.temp_files(n) for n in cluster.nodes.values()}
    assert left == {n: [] for n in cluster.nodes}


def test_up_again_reuses_the_shipped_bundle(cluster: Harness, papy: str, tmp_path: Path):
    nodes = [cluster.nodes["node1"], cluster.nodes["win1"]]
    config = config_for(cluster, papy, tmp_path, nodes)
    assert controller.up(config).failed == []
    assert all(d.ok for d in controller.down())
    messages: list[tuple[str, str]] = []
    result = controller.up(config, progress=lambda h, m: messages.append((h, m)))
    assert result.failed == []
    for node in nodes:
        assert any(h == node.name and "already cached" in m for h, m in messages), messages
        assert not any(h == node.name and "shipping" in m for h, m in messages), messages
    assert all(d.ok for d in controller.down())


@pytest.mark.parametrize("fault", ["docker kill", "network disconnect"])
def test_up_names_a_dead_or_cut_off_node(cluster: Harness, papy: str, tmp_path: Path,
                                         fault: str):
    victim = cluster.nodes["node2"]
    if fault == "docker kill":
        cluster.kill(victim)
    else:
        cluster.disconnect(victim)
    config = config_for(cluster, papy, tmp_path, connect_timeout=5)
    result = controller.up(config)
    assert [f.name for f in result.failed] == [victim.name]
    [failure] = result.failed
    assert failure.cause in ("unreachable", "timeout"), failure
    assert sorted(result.up) == sorted(n for n in cluster.nodes if n != victim.name)
    rows = {r["name"]: r for r in controller.status()}
    assert victim.name not in rows
    assert all(r["ok"] for r in rows.values())

    downs = controller.down()
    assert all(d.ok for d in downs), downs
    for node in cluster.nodes.values():
        if node is not victim:
            assert cluster.processes(node, "papycluster") == [], node.name
