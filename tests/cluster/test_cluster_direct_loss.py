"""Issue 12: direct transports between hosts survive a node loss.

10,000 items through two remote stages on node1..node3 (two workers per node each);
stage 1 ends with ``pickle_dumps, dump_item`` (tcp, udp, or file on the share), stage 2
starts with ``load_item, pickle_loads``; a local piper collects. At a random point one
node is ``docker kill``ed (or ``docker pause``d: frozen, its TCP stack still answering).
Items parked on the victim (tcp, udp) must be recomputed from their inputs; items on
the share must still load although their producer died. The output must hold exactly
one correct result per input, in input order: none lost, none duplicated, no error item.

Each test prints one summary line (``-rP`` shows it) and writes its figures to
``<pytest tmp dir>/node-loss/direct-<transport>-<fault>.json``: items recomputed, time
to detect (from the fault to the engine's first warning naming the victim), run time.
``PAPYCLUSTER_FAULT_SEED=<seed>`` replays a run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from papycluster import NuMap, Piper, Plumber, Worker, workers

from .harness import SHARE_NAME, record_errors, wait_until, write_report

if TYPE_CHECKING:  # the fixtures come from conftest.py
    from .harness import Harness

pytestmark = pytest.mark.timeout(900)

N = 10_000
PER_NODE = 2
SEED_VARIABLE = "PAPYCLUSTER_FAULT_SEED"
HANG_BOUND = 60.0  # s: a detection slower than this is a hang
START_WAIT = float(os.environ.get("PAPYCLUSTER_START_WAIT", 300))
RUN_WAIT = 400.0


def _seed() -> int:
    value = os.environ.get(SEED_VARIABLE)
    return int(value) if value else random.SystemRandom().randrange(2**32)


def _stages() -> tuple:
    """The stage functions; nested, so that cloudpickle ships them by value."""
    def square(inbox):
        value = inbox[0]
        return (value, value * value, b"x" * 2000)  # a payload worth a direct path

    def plus_one(inbox):
        import socket

        value, squared, payload = inbox[0]
        if len(payload) != 2000:  # no assert: pytest rewrites them, the nodes lack it
            raise ValueError(f"item {value}: {len(payload)} bytes of payload")
        return (value, squared + 1, socket.gethostname())

    return square, plus_one


def _naming(records: list[logging.LogRecord], host: str) -> list[logging.LogRecord]:
    """The engine's warnings that name ``host`` as lost or as where data was parked."""
    return [r for r in records if r.name in ("papycluster.numap", "papycluster.piper")
            and (f"remote worker on {host} lost" in r.getMessage()
                 or f"parked on {host})" in r.getMessage())]


@pytest.mark.parametrize("transport, fault", [
    ("tcp", "docker kill"), ("udp", "docker kill"), ("file", "docker kill"),
    ("tcp", "docker pause")])
def test_ten_thousand_items_over_a_direct_transport_one_node_lost(
        cluster: Harness, linux_up: str, transport: str, fault: str,
        caplog: pytest.LogCaptureFixture, tmp_path_factory: pytest.TempPathFactory):
    seed = _seed()
    rng = random.Random(seed)
    nodes = cluster.linux_nodes
    victim = rng.choice(nodes)
    point = rng.randrange(N // 10, N * 8 // 10)
    tag = f"[{transport}, {fault}, seed {seed} ({SEED_VARIABLE}), {victim.name} at {point}]"
    print(f"\n{tag}")
    caplog.set_level(logging.WARNING)

    out: list[tuple] = []
    reached = threading.Event()

    def collect(inbox):
        out.append(inbox[0])
        if len(out) >= point:
            reached.set()
        return inbox[0]

    square, plus_one = _stages()
    dump_options = {"share": SHARE_NAME} if transport == "file" else {}
    pools = [[(node.name, PER_NODE) for node in nodes] for _ in range(2)]
    s1 = Piper(Worker((square, workers.io.pickle_dumps, workers.io.dump_item),
                      ((), (), (transport,)), ({}, {}, dump_options)),
               parallel=NuMap(worker_num=0, worker_remote=pools[0]), name="square")
    s2 = Piper(Worker((workers.io.load_item, workers.io.pickle_loads, plus_one)),
               parallel=NuMap(worker_num=0, worker_remote=pools[1]), name="plus_one")
    last = Piper(Worker(collect), name="collect")
    errors = record_errors(last)
    plumber = Plumber()
    plumber.add_pipe((s1, s2, last))

    t_start = time.monotonic()
    plumber.start([range(N)])
    t_fault = t_detected = None
    finished = False
    try:
        plumber.run()
        assert reached.wait(START_WAIT), f"{tag} only {len(out)} results in {START_WAIT}s"
        t_fault = time.time()
        (cluster.kill if fault == "docker kill" else cluster.pause)(victim)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: _naming(caplog.records, victim.name), HANG_BOUND + 30,
                       pause=0.05)
        named = _naming(caplog.records, victim.name)
        if named:
            t_detected = min(r.created for r in named)
        finished = plumber.wait(RUN_WAIT)
    finally:
        plumber.pause()
        plumber.stop()
        cluster.restore()
    run_time = time.monotonic() - t_start

    counts = Counter(result[0] for result in out if isinstance(result, tuple))
    missing = sorted(set(range(N)) - set(counts))
    duplicated = sorted(value for value, c in counts.items() if c > 1)
    wrong = [r for r in out if not isinstance(r, tuple) or r[:2] != (r[0], r[0] ** 2 + 1)]
    hosts = Counter(r[2] for r in out if isinstance(r, tuple))
    detect = None if t_detected is None else t_detected - t_fault
    recomputed = plumber.stats["recomputed"]
    summary = {
        "transport": transport, "fault": fault, "seed": seed, "victim": victim.name,
        "fault_after_results": point, "items_in": N, "results_out": len(out),
        "error_items": len(errors), "lost": len(missing), "duplicated": len(duplicated),
        "wrong": len(wrong), "recomputed": recomputed,
        "time_to_detect_s": None if detect is None else round(detect, 2),
        "run_time_s": round(run_time, 1), "items_per_s": round(len(out) / run_time, 1),
        "second_stage_hosts": dict(sorted(hosts.items())),
    }
    report = write_report(tmp_path_factory.getbasetemp(),
                          f"direct-{transport}-{fault.replace(' ', '-')}", summary)
    print(f"{tag} items in {N}, results out {len(out)}, lost {len(missing)}, "
          f"duplicated {len(duplicated)}, error items {len(errors)}, recomputed "
          f"{recomputed}, time to detect {summary['time_to_detect_s']} s, run "
          f"{run_time:.1f} s ({summary['items_per_s']} items/s); {report}")

    assert finished, f"{tag} the run did not end within {RUN_WAIT}s of the fault"
    assert errors == [], f"{tag} error items: {[repr(e) for e in errors[:3]]}"
    assert missing == [], f"{tag} {len(missing)} lost, the first {missing[:10]}"
    assert duplicated == [], f"{tag} {len(duplicated)} duplicated: {duplicated[:10]}"
    assert wrong == [], f"{tag} wrong results, the first {wrong[:5]}"
    assert [r[0] for r in out] == list(range(N)), f"{tag} results out of input order"
    assert hosts[victim.name] > 0, f"{tag} {victim.name} ran nothing: {hosts}"
    assert detect is not None, f"{tag} no warning naming {victim.name}"
    assert detect < HANG_BOUND, f"{tag} detection took {detect:.1f}s (a hang?)"
    if transport == "file":
        # The data outlives its producer on the share: an item is recomputed only when
        # a consumer on the victim had taken it (the file is gone) and died with it.
        reasons = [r.getMessage() for r in caplog.records if "recomputed by" in
                   r.getMessage()]
        assert all("StaleTicketError" in m for m in reasons), f"{tag} {reasons[:3]}"


@pytest.mark.parametrize("transport", ["file", "mysql"])
def test_data_on_a_share_or_in_mariadb_loads_after_its_producer_died(
        cluster: Harness, linux_up: str, transport: str):
    """Items dumped by workers on node1, which is then killed: workers on node2 still
    load every one of them (nothing to recompute: the data never lived on node1)."""
    producer, consumer = cluster.nodes["node1"], cluster.nodes["node2"]
    db = cluster.db
    options = ({"share": SHARE_NAME} if transport == "file" else
               {"host": db.host, "port": db.port, "user": db.user, "password": db.password,
                "db": db.database})
    dump = workers.io.dump_item if transport == "file" else workers.io.dump_db_item
    load = workers.io.load_item if transport == "file" else workers.io.load_db_item
    load_options = {} if transport == "file" else {"password": db.password}
    items = [bytes([i]) * 10_000 for i in range(40)]

    def dumped(item):
        return dump([item], transport, **options)

    def loaded(tk):
        return bytes(load([tk], **load_options))

    # The producers die with their host while they still hold what they dumped (a
    # pool that stops normally removes its unloaded items).
    make = NuMap(worker_num=0, worker_remote=[(producer.name, 2)])
    make.add_task(dumped, items)
    make.start()
    take = NuMap(worker_num=0, worker_remote=[(consumer.name, 2)])
    try:
        tickets = list(make.get_task(0))
        cluster.kill(producer)
        take.add_task(loaded, tickets)
        take.start()
        got = list(take.get_task(0))
    finally:
        take.stop()
        make.stop()
        cluster.restore()
    assert got == items
