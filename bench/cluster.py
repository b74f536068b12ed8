"""Benchmark: moving items between two docker nodes, per transport and item size.

Starts the docker harness (``tests/cluster/harness.py``: bare nodes reached over SSH,
a shared folder, MariaDB), brings papycluster up on ``node1`` and ``node2`` with
``controller.up`` as a user would, and runs a two-piper pipeline: the first piper's
worker on node1 makes items of 100 B, 10 KB, 1 MB and 16 MB, the second's on node2
loads them and returns their length (``tcp``: encrypted by CURVE, the default;
``tcp-clear``: the same with ``PAPYCLUSTER_ENCRYPT=0`` in the dumping worker, the HMAC
socket in clear). Each transport is compared with:

* the *manager* path (no transport: the item goes node1 -> this machine -> node2),
* a *raw* baseline measured in the same run: a plain TCP socket from node1 to node2,
  the items streamed back to back by two bare Python processes.

Throughput is measured between the first and the last result, so pool start-up does
not count. Every configuration runs ``--reps`` times, interleaved, and the median is
printed. Then ``papycluster up`` is timed on one bare node and on all four nodes (the
shipped bundle purged after each run, so every ``up`` ships it), interleaved.
``--windows`` adds node1 -> win1 (the Windows-profile node: file on the share).
The manager path's bytes go on the worker streams, encrypted by CURVE like ``tcp``;
``--no-encrypt`` runs the whole table with ``encrypt = false`` (streams in clear).

    python bench/cluster.py [--reps 3] [--quick] [--only tcp,file] [--sizes '1 MB']
    python bench/cluster.py --up-only --reps 5     # only the timing of ``up``
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timing import StepClock, items_for, items_per_second  # noqa: E402

from papycluster import NuMap, Piper, Worker, workers  # noqa: E402
from papycluster.cluster import controller  # noqa: E402
from papycluster.cluster.hosts import parse_hosts  # noqa: E402
from tests.cluster.harness import Harness, started  # noqa: E402

SIZES = [("100 B", 100), ("10 KB", 10_000), ("1 MB", 1 << 20), ("16 MB", 16 << 20)]
KINDS = ["manager", "tcp", "tcp-clear", "udp", "file", "mysql"]
#: Roughly how many bytes (and at most how many items) one measurement moves.
BUDGET = 96 << 20
MAX_ITEMS = 1000
MIN_ITEMS = 8
RAW_PORT = 47011
#: Items in flight per NuMap. PaPy's default (stride x tasks = 1 here) leaves every item
#: waiting for the previous one's round trip through this machine; a user of remote pools
#: sets a deeper buffer, so that the remote lane can keep a tasklet queued on each node.
#: The manager path and every transport run with the same one.
BUFFER = 4

_BLOCKS: dict[int, bytes] = {}


def count_for(size: int, quick: bool) -> int:
    return items_for(size, quick, BUDGET, MAX_ITEMS, MIN_ITEMS)


# -- worker functions (defined in __main__, so they travel by value) -------------------

def make_item(inbox: Any, size: int) -> bytes:
    """The same random block every time: no generation cost inside the measurement."""
    block = _BLOCKS.get(size)
    if block is None:
        block = _BLOCKS[size] = random.Random(size).randbytes(size)
    return block


def nbytes(inbox: Any) -> int:
    return len(inbox[0])


def encrypt_switch(inbox: Any, on: bool) -> Any:
    """In the dumping worker of a tcp pipe: items served by CURVE (the default) or by
    the HMAC socket in clear (``tcp-clear``: ``PAPYCLUSTER_ENCRYPT=0``)."""
    import os

    os.environ["PAPYCLUSTER_ENCRYPT"] = "1" if on else "0"
    return inbox[0]


# -- pipelines -------------------------------------------------------------------------

def run_pipeline(h: Harness, kind: str, size: int, n: int, pair: tuple[str, str]) -> float:
    """Items per second from pair[0] to pair[1] with transport ``kind``."""
    up_funcs: list[Any] = [make_item]
    up_args: list[tuple] = [(size,)]
    up_kwargs: list[dict] = [{}]
    down_funcs: list[Any] = []
    down_args: list[tuple] = []
    down_kwargs: list[dict] = []
    if kind == "mysql":
        db = h.db
        up_funcs.append(workers.io.dump_db_item)
        up_args.append(("mysql",))
        up_kwargs.append({"table": "bench", "host": db.host, "port": db.port,
                          "user": db.user, "password": db.password, "db": db.database})
        down_funcs.append(workers.io.load_db_item)
        down_args.append(())
        down_kwargs.append({"password": db.password})
    elif kind != "manager":
        if kind in ("tcp", "tcp-clear"):
            up_funcs.append(encrypt_switch)
            up_args.append((kind == "tcp",))
            up_kwargs.append({})
            kind = "tcp"
        up_funcs.append(workers.io.dump_item)
        up_args.append((kind,))
        up_kwargs.append({"share": "data"} if kind == "file" else {})
        down_funcs.append(workers.io.load_item)
        down_args.append(())
        down_kwargs.append({})
    down_funcs.append(nbytes)
    down_args.append(())
    down_kwargs.append({})
    up = Piper(Worker(tuple(up_funcs), tuple(up_args), tuple(up_kwargs)),
               parallel=NuMap(worker_num=0, worker_remote=[(pair[0], 1)], buffer=BUFFER))
    down = Piper(Worker(tuple(down_funcs), tuple(down_args), tuple(down_kwargs)),
                 parallel=NuMap(worker_num=0, worker_remote=[(pair[1], 1)], buffer=BUFFER))
    return items_per_second(up, down, n, size, kind)


# -- the raw baseline: two bare Python processes on the nodes ---------------------------

RAW_RECEIVER = """
import socket, struct, time
srv = socket.create_server(("0.0.0.0", {port}))
srv.settimeout(60)
conn, _ = srv.accept()
conn.settimeout(120)
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def recv_into(view):
    got = 0
    while got < view.nbytes:
        k = conn.recv_into(view[got:])
        if not k:
            raise ConnectionError("raw sender went away")
        got += k
header = bytearray(8)
for i in range({n} + 1):
    recv_into(memoryview(header))
    buf = bytearray(struct.unpack("!Q", header)[0])
    recv_into(memoryview(buf))
    if i == 0:
        t0 = time.perf_counter()
print({n} / (time.perf_counter() - t0))
conn.sendall(b"k")
"""

RAW_SENDER = """
import random, socket, struct, time
data = memoryview(random.Random({size}).randbytes({size}))
deadline = time.monotonic() + 30
while True:
    try:
        sock = socket.create_connection(({ip!r}, {port}), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
sock.settimeout(120)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range({n} + 1):
    sock.sendall(struct.pack("!Q", {size}))
    sock.sendall(data)
sock.recv(1)
"""


def raw_socket(h: Harness, size: int, n: int, pair: tuple[str, str]) -> float:
    sender, receiver = h.nodes[pair[0]], h.nodes[pair[1]]
    result: dict[str, Any] = {}

    def receive() -> None:
        result["rx"] = h.ssh_python(receiver, RAW_RECEIVER.format(port=RAW_PORT, n=n),
                                    timeout=180)

    thread = threading.Thread(target=receive)
    thread.start()
    tx = h.ssh_python(sender, RAW_SENDER.format(ip=receiver.ip, port=RAW_PORT, size=size,
                                                n=n), timeout=180)
    thread.join(200)
    rx = result.get("rx")
    if tx.rc != 0 or rx is None or rx.rc != 0:
        raise RuntimeError(f"raw socket {pair}: sender {tx}, receiver {rx}")
    return float(rx.out.strip())


# -- the table -------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a quarter of the items")
    parser.add_argument("--only", default="", help="comma-separated transports")
    parser.add_argument("--sizes", default="", help="comma-separated labels, e.g. '1 MB'")
    parser.add_argument("--windows", action="store_true",
                        help="also node1 -> win1 (Windows profile: file on the share)")
    parser.add_argument("--up-only", action="store_true",
                        help="skip the transports; only time `up` on 1 and 4 nodes")
    parser.add_argument("--no-encrypt", action="store_true",
                        help="encrypt = false in the hosts file: the manager path's worker "
                             "streams (and tcp) in clear, as on a trusted network")
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="papyc-bench-cluster-") as tmp:
        workdir = Path(tmp)
        os.environ["PAPYCLUSTER_STATE"] = str(workdir / "state" / "state.json")
        with started(workdir / "harness") as h:
            print(f"harness up at {time.perf_counter() - began:.0f} s", file=sys.stderr)
            if args.up_only:
                _time_up(h, workdir, args.reps)
                return
            nodes = [h.nodes["node1"], h.nodes["node2"]] + (
                [h.nodes["win1"]] if args.windows else [])
            text = h.hosts_toml(nodes, cluster_name="bench" + secrets.token_hex(3))
            if args.no_encrypt:
                text = text.replace("[cluster]\n", "[cluster]\nencrypt = false\n", 1)
            result = controller.up(parse_hosts(text, str(workdir / "hosts.toml")))
            if result.failed:
                raise SystemExit(f"papycluster up failed: {result.failed}")
            try:
                _run(h, args, began)
            finally:
                controller.down(purge_cache=True)
            _time_up(h, workdir, args.reps)


def _run(h: Harness, args: argparse.Namespace, began: float) -> None:
    kinds = KINDS
    if args.only:
        kinds = ["manager"] + [k for k in args.only.split(",") if k != "manager"]
    sizes = [s for s in SIZES if not args.sizes or s[0] in args.sizes.split(",")]
    pairs = [("node1", "node2")] + ([("node1", "win1")] if args.windows else [])
    cases = [(pair, label, kind, size) for pair in pairs for label, size in sizes
             for kind in kinds
             if pair[1] != "win1" or kind in ("manager", "file")]
    rates: dict[tuple, list[float]] = {}
    for rep in range(args.reps):
        order = cases[rep % len(cases):] + cases[:rep % len(cases)]
        for pair, label, kind, size in order:
            n = count_for(size, args.quick)
            rates.setdefault((pair, label, kind), []).append(
                run_pipeline(h, kind, size, n, pair))
        for pair in pairs:
            for label, size in sizes:
                rates.setdefault((pair, label, "socket"), []).append(
                    raw_socket(h, size, count_for(size, args.quick), pair))
        print(f"  repetition {rep + 1}/{args.reps} done at "
              f"{time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\npapycluster between docker nodes: two remote NuMaps (1 worker each), "
          f"median of {args.reps} interleaved repetitions, {os.cpu_count()} CPUs\n")
    head = (f"{'pipe':<15} {'size':<7} {'path':<8} {'items/s':>10} {'MB/s':>9} "
            f"{'x manager':>10} {'x raw':>7}")
    for pair in pairs:
        print(head)
        print("-" * len(head))
        for label, size in sizes:
            base = med.get((pair, label, "manager"))
            raw = med.get((pair, label, "socket"))
            for kind in kinds + ["socket"]:
                rate = med.get((pair, label, kind))
                if rate is None:
                    continue
                mbs = rate * size / 1e6
                xman = f"{rate / base:.2f}" if base and kind != "manager" else ""
                xraw = f"{rate / raw:.2f}" if raw and kind != "socket" else ""
                print(f"{pair[0] + ' -> ' + pair[1]:<15} {label:<7} {kind:<8} "
                      f"{rate:>10.1f} {mbs:>9.1f} {xman:>10} {xraw:>7}")
            print()
    print(f"total {time.perf_counter() - began:.0f} s")


def _time_up(h: Harness, workdir: Path, reps: int) -> None:
    """Wall time of ``papycluster up`` on one bare node and on four (median, ratio).

    Also the time of each step (the slowest host's), from ``up``'s progress messages.
    """
    groups = {"1 node": [h.nodes["node1"]], "4 nodes": list(h.nodes.values())}
    times: dict[str, list[float]] = {label: [] for label in groups}
    steps: dict[str, dict[str, list[float]]] = {label: {} for label in groups}
    for rep in range(reps):
        for label, nodes in groups.items():
            text = h.hosts_toml(nodes, cluster_name=f"up{rep}" + secrets.token_hex(3))
            config = parse_hosts(text, str(workdir / "hosts.toml"))
            clock = StepClock()
            start = time.perf_counter()
            result = controller.up(config, clock)
            elapsed = time.perf_counter() - start
            controller.down(purge_cache=True)
            if result.failed:
                raise SystemExit(f"papycluster up failed: {result.failed}")
            times[label].append(elapsed)
            for step, seconds in clock.steps().items():
                steps[label].setdefault(step, []).append(seconds)
        print(f"  up repetition {rep + 1}/{reps}: " + ", ".join(
            f"{label} {times[label][-1]:.2f} s" for label in groups),
            file=sys.stderr, flush=True)
    one = statistics.median(times["1 node"])
    print(f"\npapycluster up on bare nodes (ships the bundle), median of {reps}\n")
    print(f"{'hosts':<10} {'seconds':>8} {'x 1 node':>9}")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"{label:<10} {median:>8.2f} {median / one:>9.2f}")
    names = list(dict.fromkeys(s for label in groups for s in steps[label]))
    print(f"\nsteps (slowest host, median seconds)\n{'step':<15}" +
          "".join(f" {label:>8}" for label in groups))
    for name in names:
        print(f"{name:<15}" + "".join(
            f" {statistics.median(steps[label][name]):>8.2f}" if steps[label].get(name)
            else f" {'':>8}" for label in groups))


if __name__ == "__main__":
    main()
