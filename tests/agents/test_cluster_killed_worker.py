"""A remote worker killed with SIGKILL: its agent removes what it left when the pool stops.

A real agent on this machine (``up_local``): the worker's shm segments and files in the
default share are kept while the pool runs (a loader may still want them) and are gone
once it has stopped, as the items of a worker that ended normally.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections import Counter

import pytest

from papycluster import NuMap, transport


def _there(tk: tuple) -> bool:
    if tk[2] == "shm":
        return os.path.exists("/dev/shm/" + tk[4])
    return os.path.exists(os.path.join(tempfile.gettempdir(), tk[5]))  # share "default"


def _dump_with_pid(x, kind):
    from papycluster import transport

    return (transport.dump(bytes([x]) * (5000 + x), kind), os.getpid())


def _fed(first, then, go):
    """``first``, then ``then`` once ``go`` is set: the pool keeps running meanwhile."""
    yield from first
    go.wait(30)
    yield from then


@pytest.mark.parametrize("kind", ["shm", "file"])
def test_a_killed_remote_workers_items_go_when_its_pool_stops(local_cluster, kind,
                                                             monkeypatch):
    # This process loads one item itself: a file item is checked with the cluster secret
    # (a pipeline's controller gets it from negotiate.prepare_controller_env).
    monkeypatch.setenv("PAPYCLUSTER_SECRET", local_cluster.secret)
    go = threading.Event()
    numap = NuMap(worker_num=0, worker_remote=[("local1", 2)], retries=2)
    task = numap.add_task(_dump_with_pid, _fed(range(20), range(20, 30), go), args=(kind,))
    numap.start()
    try:
        out = [next(task) for _ in range(20)]
        victim, _ = Counter(pid for _, pid in out).most_common(1)[0]
        theirs = [(x, tk) for x, (tk, pid) in enumerate(out) if pid == victim]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(victim):
            time.sleep(0.02)
        assert not _alive(victim)
        go.set()  # more items: the pool finds the worker lost and drops it
        out += [next(task) for _ in range(10)]
        assert all(pid != victim for _, pid in out[20:])
        # Dropped mid-run, its items stay: a loader may still want them ...
        assert all(_there(tk) for _, tk in theirs)
        x, tk = theirs[0]
        assert bytes(transport.load(tk)) == bytes([x]) * (5000 + x)
    finally:
        go.set()
        numap.stop()
    # ... until the pool stops.
    assert [tk for tk, _ in out if _there(tk)] == []


def _alive(pid: int) -> bool:
    """Running, not a zombie (the agent, not this process, reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
