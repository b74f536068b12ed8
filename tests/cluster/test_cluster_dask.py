"""A Dask cluster on the bare docker nodes, started by the test, runs NuMaps from here.

``up`` ships Dask to node1..node3 as wheels (the hosts file's ``packages``: the nodes
have no network); the test starts a scheduler on node1 and a worker (no nanny) on each
node with papycluster's own site of that node on ``PYTHONPATH``, over SSH, and kills
them by their pid at the end. The controller is this machine: its client reaches the
scheduler and the workers over the harness network. Items go between the nodes'
workers by ``tcp`` (tickets naming each worker's node) and by the ``engine`` transport.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING

import pytest

from papycluster import NuMap
from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts
from papycluster.engines.hosts import dask_hosts
from tests.engines import semantics
from tests.plugins.helpers import collect

if TYPE_CHECKING:  # the fixture comes from conftest.py
    from tests.cluster.harness import Harness

pytestmark = pytest.mark.timeout(900)

PORT = 8786


def site_path(_: int) -> str:
    """On a node's agent worker: the PYTHONPATH papycluster's own site is on."""
    return os.environ["PYTHONPATH"]


def host_after(x: tuple[int, float]) -> tuple[int, str]:
    time.sleep(x[1])
    return x[0], socket.gethostname()


def where_and_size(inbox: list) -> tuple[str, int]:
    return socket.gethostname(), len(inbox[0])




def start(cluster: Harness, node, command: str, log: str) -> int:
    """``command`` in the background on ``node`` (as its user); its pid."""
    result = cluster.ssh(node, f"nohup {command} > {log} 2>&1 < /dev/null & echo $!")
    assert result.rc == 0, result.err
    return int(result.out.split()[-1])


@pytest.fixture
def dask_on_nodes(cluster: Harness, papy: str, tmp_path):
    import distributed

    nodes = [cluster.nodes[name] for name in ("node1", "node2", "node3")]
    text = cluster.hosts_toml(nodes, cluster_name=papy, connect_timeout=5).replace(
        "[cluster]\n", f'[cluster]\npackages = ["distributed=={distributed.__version__}"]\n')
    result = controller.up(parse_hosts(text, str(tmp_path / "hosts.toml")))
    assert result.failed == [], result.failed
    paths = {}
    for node in nodes:
        numap = NuMap(site_path, [0], worker_num=0, worker_remote=[(node.name, 1)])
        try:
            paths[node.name] = numap.next(timeout=120)
        finally:
            numap.stop()
    scheduler = f"{nodes[0].ip}:{PORT}"
    pids = {}
    try:
        pids["node1", "scheduler"] = start(
            cluster, nodes[0], f"env PYTHONPATH={paths['node1']} python3 -m "
            f"distributed.cli.dask_scheduler --host {nodes[0].ip} --port {PORT} "
            "--no-dashboard", "/tmp/dask-scheduler.log")
        for node in nodes:
            pids[node.name, "worker"] = start(
                cluster, node, f"env PYTHONPATH={paths[node.name]} python3 -m "
                f"distributed.cli.dask_worker tcp://{scheduler} --host {node.ip} "
                "--nthreads 1 --no-nanny --no-dashboard", "/tmp/dask-worker.log")
        client = distributed.Client(f"tcp://{scheduler}", timeout=60)
        try:
            client.wait_for_workers(3, timeout=120)
            yield client, scheduler, pids, {n.name: n for n in nodes}
        finally:
            client.close()
    finally:
        for (name, _), pid in pids.items():
            cluster.docker_exec(cluster.nodes[name], f"kill -9 {pid}", check=False)
        assert all(d.ok for d in controller.down())


def test_numaps_run_on_a_dask_cluster_of_the_nodes(cluster: Harness, dask_on_nodes):
    client, scheduler, pids, nodes = dask_on_nodes
    items = [(i, 0.3) for i in range(24)]
    numap = NuMap(host_after, items, worker_remote=f"dask://{scheduler}", worker_num=3)
    try:
        out = [numap.next(timeout=120) for _ in items]
    finally:
        numap.stop()
    assert [i for i, _ in out] == list(range(24))
    assert {host for _, host in out} == {"node1", "node2", "node3"}

    # tcp tickets name each worker's node: items go between the nodes' workers
    sizes = [1 + i % 4 for i in range(24)]
    out, _ = semantics.two_stage(client, "tcp", sizes, where_and_size, worker_num=3)
    assert [size for _, size in out] == [n << 20 for n in sizes], out
    assert len({host for host, _ in out}) >= 2

    # negotiated from the hosts the workers report: shm asked for, three nodes -> tcp
    reported = dask_hosts(client)
    assert sorted(h["hostname"] for h in reported) == ["node1", "node2", "node3"]
    assert sorted(h["name"] for h in reported) == sorted(n.ip for n in nodes.values())
    with pytest.warns(RuntimeWarning, match="shm works only on one host"):
        out, up = semantics.two_stage(client, "shm", sizes[:12], where_and_size,
                                      worker_num=3)
    assert up.worker.args[1] == ("tcp",)
    assert [size for _, size in out] == [n << 20 for n in sizes[:12]], out

    # the engine transport: items stay in the cluster, names cross the controller
    out, _ = semantics.two_stage(client, "engine", sizes[:12], where_and_size,
                                 worker_num=3)
    assert [size for _, size in out] == [n << 20 for n in sizes[:12]], out
    assert not [n for n in client.list_datasets() if str(n).startswith("papyc-")]

    # a worker killed mid-run: the scheduler runs its tasklets on the others
    items = [(i, 0.5) for i in range(18)]
    numap = NuMap(host_after, items, worker_remote=client, worker_num=3)

    def kill_node2(got: list) -> None:
        if len(got) == 3:
            cluster.docker_exec(nodes["node2"], f"kill -9 {pids['node2', 'worker']}")

    try:
        out = collect(iter(numap), each=kill_node2)
    finally:
        numap.stop()
    assert [x[0] for x in out] == list(range(18)), out
    assert len(client.scheduler_info()["workers"]) == 2
