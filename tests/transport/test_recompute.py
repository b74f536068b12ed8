"""Data parked on a producer that dies is recomputed, not lost (issue 12), on one host.

Two or three process pools joined by a direct transport. A worker process of a producing
stage is killed (SIGKILL) while the items it dumped still wait in it: their tickets point
at nothing. The engine must compute those items again from the inputs that gave them,
hand the new tickets on, and deliver exactly one correct result per input: no error
item, no duplicate, input order kept. ``Plumber.stats["recomputed"]`` counts them.

For ``file`` and ``mysql`` the data outlives its producer: the consumer still loads
items whose producer was killed, and nothing is recomputed.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter

import pytest

from papycluster import NuMap, Piper, Plumber, Worker, workers

N = 120
KILL_AT = 10  # results collected when the producer worker is killed


def _stage(func, load: bool, dump: str | None, **dump_options) -> Worker:
    functions, arguments, kwargs = [], [], []
    if load:
        functions += [workers.io.load_item, workers.io.pickle_loads]
        arguments += [(), ()]
        kwargs += [{}, {}]
    functions.append(func)
    arguments.append(())
    kwargs.append({})
    if dump is not None:
        functions += [workers.io.pickle_dumps, workers.io.dump_item]
        arguments += [(), (dump,)]
        kwargs += [{}, dump_options]
    return Worker(functions, arguments, kwargs)


def _run(stages: list[Piper], killer_stage: int, caplog) -> tuple[list, Plumber]:
    """Run ``stages`` + a collector; kill a worker of ``stages[killer_stage]`` (the one
    that produced the first collected item) once KILL_AT results are out."""
    out: list = []
    killed: list[int] = []

    def collect(inbox):  # noqa: ANN001, ANN202
        item = inbox[0]
        out.append(item)
        if len(out) == KILL_AT:
            pid = _producer_pid(item, killer_stage)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return item

    last = Piper(Worker(collect), name="collect")
    plumber = Plumber()
    plumber.add_pipe((*stages, last))
    caplog.set_level(logging.WARNING)
    plumber.start([range(N)])
    plumber.run()
    try:
        assert plumber.wait(120), f"the run did not end: {len(out)} of {N} results"
        # what recovery remembers is let go as the items move on: nothing is left
        for stage in stages:
            assert len(stage._lineage) == 0, f"{stage.name} still holds lineage"
            assert stage._inboxes.take(0) is None and not stage._inboxes._held
    finally:
        plumber.pause()
        plumber.stop()
    assert killed, "no producer was killed"
    return out, plumber


def _producer_pid(item, stage: int) -> int:
    return item[1]["pids"][stage]


def tracing(inbox):  # noqa: ANN001, ANN201
    """First stage: the value and the pid that produced it."""
    return (inbox[0], {"pids": [os.getpid()]})


def tracing_on(inbox):  # noqa: ANN001, ANN201
    value, trace = inbox[0]
    return (value, {"pids": [*trace["pids"], os.getpid()]})


def finishing(inbox):  # noqa: ANN001, ANN201
    time.sleep(0.003)
    value, trace = inbox[0]
    return (value * value, {"pids": [*trace["pids"], os.getpid()]})


def _check(out: list, plumber: Plumber) -> None:
    values = [item[0] for item in out]
    counts = Counter(values)
    assert not [item for item in out if isinstance(item, Exception)], out[:3]
    assert [v for v, c in counts.items() if c > 1] == [], "duplicates reached the output"
    assert values == [x * x for x in range(N)], "lost, wrong or out of order"
    assert plumber.stats["errors_out"] == 0


@pytest.mark.parametrize("transport", ["tcp", "udp", "fifo"])
def test_items_parked_on_a_killed_producer_are_recomputed(transport, caplog):
    producer = Piper(_stage(tracing, False, transport),
                     parallel=NuMap(worker_num=2, buffer=40), name="produce")
    consumer = Piper(_stage(finishing, True, None), parallel=NuMap(worker_num=2, buffer=2),
                     name="consume")
    out, plumber = _run([producer, consumer], 0, caplog)
    _check(out, plumber)
    recomputed = plumber.stats["recomputed"]
    assert recomputed > 0, "nothing was parked on the killed producer?"
    warned = [r for r in caplog.records if "recomputed by produce" in r.getMessage()]
    assert len(warned) == recomputed
    assert all("consume: item" in r.getMessage() for r in warned)


def test_a_chain_of_direct_transports_is_recomputed_hop_by_hop(caplog):
    """tcp -> tcp: the middle stage's worker dies; its items' own inputs were taken
    from the first stage already (consumed on load), so recomputing them needs the
    first stage again."""
    first = Piper(_stage(tracing, False, "tcp"), parallel=NuMap(worker_num=1, buffer=60),
                  name="first")
    middle = Piper(_stage(tracing_on, True, "tcp"), parallel=NuMap(worker_num=2, buffer=40),
                   name="middle")
    last = Piper(_stage(finishing, True, None), parallel=NuMap(worker_num=1, buffer=2),
                 name="last")
    out, plumber = _run([first, middle, last], 1, caplog)
    _check(out, plumber)
    messages = [r.getMessage() for r in caplog.records]
    assert any("recomputed by middle" in m for m in messages)
    assert any("recomputed by first" in m for m in messages), "no second hop"


def test_a_lazy_consumer_recomputes_too(caplog):
    producer = Piper(_stage(tracing, False, "tcp"), parallel=NuMap(worker_num=2, buffer=40),
                     name="produce")
    consumer = Piper(_stage(finishing, True, None), name="consume")  # in this process
    out, plumber = _run([producer, consumer], 0, caplog)
    _check(out, plumber)
    assert plumber.stats["recomputed"] > 0


@pytest.mark.parametrize("transport", ["file", "shm"])
def test_data_that_outlives_its_producer_is_loaded_not_recomputed(transport, caplog):
    producer = Piper(_stage(tracing, False, transport),
                     parallel=NuMap(worker_num=2, buffer=40), name="produce")
    consumer = Piper(_stage(finishing, True, None), parallel=NuMap(worker_num=2, buffer=2),
                     name="consume")
    out, plumber = _run([producer, consumer], 0, caplog)
    _check(out, plumber)
    assert plumber.stats["recomputed"] == 0


def test_mysql_rows_outlive_their_producer(mariadb, caplog):
    my = mariadb.kwargs()
    producer = Piper(Worker((tracing, workers.io.pickle_dumps, workers.io.dump_db_item),
                            ((), (), ("mysql",)), ({}, {}, my)),
                     parallel=NuMap(worker_num=2, buffer=40), name="produce")
    consumer = Piper(Worker((workers.io.load_db_item, workers.io.pickle_loads, finishing),
                            ((), (), ()), ({"password": my["password"]}, {}, {})),
                     parallel=NuMap(worker_num=2, buffer=2), name="consume")
    out, plumber = _run([producer, consumer], 0, caplog)
    _check(out, plumber)
    assert plumber.stats["recomputed"] == 0
    assert mariadb.query("SELECT COUNT(*) FROM temp") == [(0,)]  # every row consumed


def test_a_fifo_load_notices_its_producer_dying_after_the_request(tmp_path):
    """The loader holds the item fifo open itself (it never sees an end of file): when
    the server dies after the request went out, the load must say so rather than wait
    for its whole timeout."""
    import threading

    from papycluster.transport import ProducerLostError
    from papycluster.workers import io

    from .peer import Peer

    peer = Peer()
    try:
        tk = peer.call("dump_value", "fifo", b"x" * 100_000, {})
        os.kill(peer.process.pid, signal.SIGSTOP)  # the server can no longer answer
        stat = f"/proc/{peer.process.pid}/stat"
        while open(stat).read().rsplit(")", 1)[1].split()[0] != "T":
            time.sleep(0.01)  # until the kernel has stopped every thread of it
        failure: list = []

        def load() -> None:
            try:
                io.load_item([tk], timeout=600)
            except Exception as exc:
                failure.append(exc)

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(0.5)  # the request is in the control fifo, the header never comes
        os.kill(peer.process.pid, signal.SIGKILL)
        loader.join(60)  # bounded: the load's own timeout is ten minutes
        assert not loader.is_alive(), "the load waits for a dead producer"
    finally:
        peer.close()
    assert len(failure) == 1 and isinstance(failure[0], ProducerLostError), failure
    assert "ended" in str(failure[0])
