"""Remote pools lose no item when an agent dies or stops answering (real agents).

Two local agents serve one NuMap. One is killed (its whole process group) or frozen
with SIGSTOP, which looks to the controller like a network cut: the TCP connection stays
open and nothing answers. Every item must come back exactly once, right.
"""

from __future__ import annotations

import os
import signal
import time

from papycluster import NuMap, RemoteError, WorkerLostError
from papycluster.cluster import controller
from papycluster.cluster.state import load_state
from tests.plugins.helpers import collect

ITEMS = 300


def slow_square(x):
    time.sleep(0.01)
    return x * x


def run_with_fault(fault, heartbeat=4.0):
    result = controller.up_local(2)
    assert result.failed == []
    victim = load_state().hosts["local2"].pid
    numap = NuMap(worker_num=0, worker_remote=[("local1", 2), ("local2", 2)],
                  buffer=16, heartbeat=heartbeat, retries=2)
    task = numap.add_task(slow_square, range(ITEMS))
    numap.start()
    out = []
    try:
        for i, value in enumerate(task):
            out.append(value)
            if i == ITEMS // 3:
                os.killpg(victim, fault)
    finally:
        numap.stop()
        if fault == signal.SIGSTOP:
            os.killpg(victim, signal.SIGCONT)  # the host comes back
            time.sleep(1.0)
        controller.down()
    return out


def test_a_killed_agent_loses_no_item(cluster_name):
    out = run_with_fault(signal.SIGKILL)
    assert not [x for x in out if isinstance(x, Exception)]
    assert out == [x * x for x in range(ITEMS)]


def test_a_silent_agent_is_declared_lost_and_its_items_rerun(cluster_name):
    out = run_with_fault(signal.SIGSTOP)
    assert not [x for x in out if isinstance(x, Exception)]
    assert out == [x * x for x in range(ITEMS)]


def test_items_fail_only_when_no_remote_worker_survives(cluster_name):
    assert controller.up_local(1).failed == []
    victim = load_state().hosts["local1"].pid
    numap = NuMap(worker_num=0, worker_remote=[("local1", 2)], buffer=8, heartbeat=4.0)
    task = numap.add_task(slow_square, range(50))
    numap.start()

    def kill_after_five(out: list) -> None:
        if len(out) == 5:
            os.killpg(victim, signal.SIGKILL)

    try:
        out = collect(task, WorkerLostError, each=kill_after_five)
    finally:
        numap.stop()
        controller.down()
    assert len(out) == 50
    lost = [x for x in out if isinstance(x, WorkerLostError)]
    assert lost and all("local1" in str(x) for x in lost), [str(x) for x in lost
                                                          if "local1" not in str(x)]
    assert out[:5] == [x * x for x in range(5)]


def picky_on(x, bad=3):
    """Raises, for ``bad``, an exception that pickles on the agent's worker but cannot
    be rebuilt on the controller (its ``__init__`` wants other arguments than its args,
    as papycluster's TicketError once did)."""
    class Picky(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}-{b}")

    if x == bad:
        raise Picky(1, 2)
    return x


def test_an_error_the_controller_cannot_rebuild_costs_that_item_not_the_host(
        cluster_name, caplog):
    assert controller.up_local(1).failed == []
    numap = NuMap(worker_num=0, worker_remote=[("local1", 2)], buffer=4, retries=2)
    task = numap.add_task(picky_on, range(40))
    numap.start()
    try:
        out = collect(task)  # error items among the results
    finally:
        numap.stop()
        controller.down()
    assert len(out) == 40
    assert isinstance(out[3], RemoteError) and "Picky" in str(out[3]), repr(out[3])
    assert "local1" in str(out[3]), str(out[3])
    assert out[:3] + out[4:] == [x for x in range(40) if x != 3]
    assert not [r for r in caplog.records if " lost " in r.getMessage()], \
        [r.getMessage() for r in caplog.records]


def _square(inbox):
    time.sleep(0.002)
    return inbox[0] * inbox[0]


def test_items_parked_on_a_killed_agent_are_recomputed(cluster_name, caplog):
    """Two remote stages on two agents joined by tcp: killing one agent (its whole
    process group) loses its workers and the items they held for the next stage; those
    are computed again from their inputs, and every result comes out once, right."""
    from papycluster import Piper, Plumber, Worker, workers

    assert controller.up_local(2).failed == []
    victim = load_state().hosts["local2"].pid
    pools = [("local1", 2), ("local2", 2)]
    first = Piper(Worker((_square, workers.io.pickle_dumps, workers.io.dump_item),
                         ((), (), ("tcp",))),
                  parallel=NuMap(worker_num=0, worker_remote=pools, buffer=40,
                                 heartbeat=4.0), name="square")
    second = Piper(Worker((workers.io.load_item, workers.io.pickle_loads, _square)),
                   parallel=NuMap(worker_num=0, worker_remote=pools, buffer=4,
                                  heartbeat=4.0), name="again")
    out = []

    def collect(inbox):
        out.append(inbox[0])
        if len(out) == ITEMS // 3:
            os.killpg(victim, signal.SIGKILL)
        return inbox[0]

    plumber = Plumber()
    plumber.add_pipe((first, second, Piper(Worker(collect), name="collect")))
    plumber.start([range(ITEMS)])
    plumber.run()
    try:
        assert plumber.wait(120)
    finally:
        plumber.pause()
        plumber.stop()
        controller.down()
    assert out == [x ** 4 for x in range(ITEMS)], [x for x in out if isinstance(x, Exception)]
    assert plumber.stats["errors_out"] == 0
    assert plumber.stats["recomputed"] > 0
    warned = [r.getMessage() for r in caplog.records if "recomputed by square" in
              r.getMessage()]
    assert len(warned) == plumber.stats["recomputed"]
    # Parked on the killed agent, or taken by one of its workers that died with it
    assert any("(parked on local2)" in m for m in warned), warned[:3]
    assert all("again: item" in m and "parked on local" in m for m in warned), warned[:3]
