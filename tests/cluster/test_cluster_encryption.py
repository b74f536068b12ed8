"""On the wire of a docker node: tcp items and worker streams are encrypted by default.

node1's worker dumps pickled items that carry a marker, node2's worker loads them by
tcp; then the controller sends node2's worker tasklets whose arguments carry another
marker, and gets it back in the results (the worker streams). Meanwhile a packet
capture runs in node2's network namespace (an ``AF_PACKET`` socket of a root process
there: every frame in and out of the node). With encryption on, neither marker is in a
captured byte. The control run, with ``encrypt = false`` in the hosts file, finds both
there: the capture sees the items and the tasklets, so its silence above means
something. The item marker never crosses the controller: it is made on node1, and only
tickets and lengths come back.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from papycluster import NuMap, Piper, Plumber, Worker, workers
from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts

if TYPE_CHECKING:  # the fixture comes from conftest.py
    from tests.cluster.harness import Harness

pytestmark = pytest.mark.timeout(600)

#: Runs as root on node2 until killed: every frame of every interface, appended raw.
SNIFFER = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
s.settimeout(1.0)
with open(sys.argv[1], "wb") as out:
    print("listening", flush=True)
    while True:
        try:
            out.write(s.recv(65535))
            out.flush()
        except socket.timeout:
            pass
"""

CAPTURE = "/tmp/papy-capture.bin"


def marked(inbox: list) -> bytes:
    """On node1: a pickled payload that carries a marker made here (never shipped)."""
    import pickle

    tag = "-".join(["PAPY", "WIRE", "MARK", str(inbox[0]).zfill(4)])
    return pickle.dumps({"marker": tag * 40, "n": inbox[0]})


def size(inbox: list) -> int:
    return len(inbox[0])


def echo(text: str) -> str:
    return text


def run_and_capture(cluster: Harness, name: str, tmp_path, encrypt: bool
                    ) -> tuple[int, int]:
    """``up`` on node1 and node2, a tcp pipe node1 -> node2 and tasklets to node2; how
    often node2's capture holds the item marker and the tasklet marker."""
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    text = cluster.hosts_toml([node1, node2], cluster_name=name)
    text = text.replace("[cluster]\n", f"[cluster]\nencrypt = {str(encrypt).lower()}\n")
    result = controller.up(parse_hosts(text, str(tmp_path / f"hosts-{encrypt}.toml")))
    assert result.failed == [], result.failed
    try:
        cluster.docker_exec(node2, f"cat > /tmp/sniff.py <<'EOF'\n{SNIFFER}\nEOF")
        cluster.docker_exec(node2, f"rm -f {CAPTURE}; nohup python3 /tmp/sniff.py "
                                   f"{CAPTURE} > /tmp/sniff.log 2>&1 &")
        deadline = time.monotonic() + 20
        while "listening" not in cluster.docker_exec(node2, "cat /tmp/sniff.log",
                                                     check=False).stdout:
            assert time.monotonic() < deadline, "the capture did not start"
            time.sleep(0.2)
        out: list = []
        up = Piper(Worker((marked, workers.io.dump_item), ((), ("tcp",))),
                   parallel=NuMap(worker_num=0, worker_remote=[("node1", 1)]))
        down = Piper(Worker((workers.io.load_item, size)),
                     parallel=NuMap(worker_num=0, worker_remote=[("node2", 1)]))
        pipes = Plumber()
        pipes.add_pipe((up, down, Piper(Worker(lambda inbox: out.append(inbox[0])))))
        pipes.start([range(20)])
        pipes.run()
        try:
            assert pipes.wait(120)
        finally:
            pipes.stop()
        assert up.worker.args[1] == ("tcp",) and len(out) == 20 and all(out), out
        tasks = ["-".join(["PAPY", "TASK", "MARK", str(i)]) * 40 for i in range(20)]
        numap = NuMap(worker_num=0, worker_remote=[("node2", 1)])
        numap.add_task(echo, tasks)
        numap.start()
        try:
            assert list(numap) == tasks
        finally:
            numap.stop()
    finally:
        cluster.docker_exec(node2, "pkill -f /tmp/sniff.py", check=False)
        assert all(d.ok for d in controller.down())
    found = cluster.docker_exec(node2, "python3 -c \"import sys; data = open(sys.argv[1], "
                                "'rb').read(); print(len(data), data.count(b'PAPY-WIRE-"
                                "MARK-'), data.count(b'PAPY-TASK-MARK-'))\" " + CAPTURE,
                                check=True)
    captured, items, tasklets = map(int, found.stdout.split())
    assert captured > 40 * 1000, captured  # it saw the items and tasklets go by
    return items, tasklets


def test_items_and_tasklets_are_not_in_clear_on_the_wire(cluster: Harness, papy,
                                                         tmp_path):
    assert run_and_capture(cluster, papy, tmp_path, encrypt=True) == (0, 0)
    # control: the same run in clear shows both markers, so the capture would see them
    items, tasklets = run_and_capture(cluster, papy, tmp_path, encrypt=False)
    assert items > 0 and tasklets > 0, (items, tasklets)
