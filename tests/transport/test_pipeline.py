"""The seed chapter's pipelines on the real engine: two pipers, two process NuMaps.

The two snippets run as printed in the seed, with only the import line changed
(``('tcp')`` and ``('sqlite')`` are bare strings: one argument each), with a real
``func``. Results are checked by pulling the same pipeline through a ``Dagger``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from papycluster import NuMap, Piper, Plumber, Worker, workers
from papycluster.engine import Dagger
from papycluster.errors import PiperError, WorkerError
from papycluster.transport import sqlite as sqlite_mod
from papycluster.transport import ticket as ticket_mod

from .test_transports import still_there
from .test_udp import LossyProxy


def func(inbox):  # noqa: ANN001, ANN201 - a PaPy worker function, as in the seed
    """A real function for both ends: squares a number, or sums a list."""
    x = inbox[0]
    if isinstance(x, list):
        return sum(x)
    return [x] * x  # upstream: a list of x copies of x (so items differ in size)


def results(upstream: Worker, downstream: Worker, data: list, start_method: str = "spawn",
            workers_up: int = 2, workers_down: int = 2) -> list:
    up = Piper(upstream, parallel=NuMap(worker_num=workers_up, start_method=start_method))
    down = Piper(downstream, parallel=NuMap(worker_num=workers_down,
                                            start_method=start_method))
    dagger = Dagger()
    dagger.add_pipe((up, down))
    dagger.connect([data])
    dagger.start()
    try:
        return list(down)
    finally:
        dagger.stop()
        dagger.disconnect(forced=True)


def test_seed_snippet_tcp() -> None:
    upstream = Worker((func, workers.io.pickle_dumps, workers.io.dump_item),
                      ((), (), ('tcp')))  # noqa: UP034 - the seed's spelling
    downstream = Worker((workers.io.load_item, workers.io.pickle_loads, func),
                        ((), (), ()))
    up_piper = Piper(upstream, parallel=NuMap())
    down_piper = Piper(downstream, parallel=NuMap())
    pipes = Plumber()
    pipes.add_pipe((up_piper, down_piper))
    pipes.start([range(100)])
    pipes.run()
    pipes.wait()
    pipes.pause()
    pipes.stop()
    assert pipes.stats["items_out"] == 100 and pipes.stats["errors_out"] == 0
    assert results(upstream, downstream, list(range(100))) == [x * x for x in range(100)]


def test_seed_snippet_sqlite(share: Path) -> None:
    upstream = Worker((func, workers.io.pickle_dumps, workers.io.dump_db_item),
                      ((), (), ('sqlite')))  # noqa: UP034 - the seed's spelling
    downstram = Worker((workers.io.load_db_item, workers.io.pickle_loads, func),
                       ((), (), ()))
    up_piper = Piper(upstream, parallel=NuMap())
    down_piper = Piper(downstram, parallel=NuMap())
    pipes = Plumber()
    pipes.add_pipe((up_piper, down_piper))
    pipes.start([range(100)])
    pipes.run()
    pipes.wait()
    pipes.pause()
    pipes.stop()
    assert pipes.stats["items_out"] == 100 and pipes.stats["errors_out"] == 0
    assert results(upstream, downstram, list(range(100))) == [x * x for x in range(100)]
    with sqlite3.connect(sqlite_mod.default_path()) as conn:
        assert conn.execute("SELECT COUNT(*) FROM temp").fetchone()[0] == 0  # all consumed


@pytest.mark.parametrize("kind", ["tcp", "udp", "fifo", "shm", "file"])
def test_every_transport_through_the_engine(kind: str) -> None:
    upstream = Worker((func, workers.io.pickle_dumps, workers.io.dump_item),
                      ((), (), (kind)))  # noqa: UP034
    downstream = Worker((workers.io.load_item, workers.io.pickle_loads, func))
    data = list(range(0, 3000, 97))
    assert results(upstream, downstream, data) == [x * x for x in data]


@pytest.mark.parametrize("serializer", ["json", "marshal"])
def test_other_serializers_through_the_engine(serializer: str) -> None:
    dumps = getattr(workers.io, f"{serializer}_dumps")
    loads = getattr(workers.io, f"{serializer}_loads")
    upstream = Worker((func, dumps, workers.io.dump_item), ((), (), ("fifo",)))
    downstream = Worker((workers.io.load_item, loads, func))
    assert results(upstream, downstream, [3, 5, 7]) == [9, 25, 49]


def test_numpy_items_through_the_engine() -> None:
    np = pytest.importorskip("numpy")
    upstream = Worker((_make_array, workers.io.pickle_dumps, workers.io.dump_item),
                      ((), (), ("shm",)))
    downstream = Worker((workers.io.load_item, workers.io.pickle_loads, _array_sum))
    assert results(upstream, downstream, [10, 1000, 200_000]) == [
        float(np.arange(n, dtype=np.float64).sum()) for n in (10, 1000, 200_000)]


def _make_array(inbox):  # noqa: ANN001, ANN202
    import numpy as np

    return np.arange(inbox[0], dtype=np.float64)


def _array_sum(inbox):  # noqa: ANN001, ANN202
    return float(inbox[0].sum())


def _passthrough(inbox):  # noqa: ANN001, ANN202
    return inbox[0]


@pytest.mark.parametrize("kind", ["tcp", "udp", "fifo", "shm", "file", "sqlite"])
def test_items_nobody_loads_are_cleaned_when_the_pipeline_stops(kind: str,
                                                                 share: Path) -> None:
    """Upstream dumps; downstream passes the tickets on and never loads; stop cleans up."""
    if kind == "sqlite":
        dump = Worker((workers.io.pickle_dumps, workers.io.dump_db_item),
                      ((), (kind,)), ({}, {"db": str(share / "unloaded.sqlite")}))
    else:
        dump = Worker((workers.io.pickle_dumps, workers.io.dump_item), ((), (kind,)))
    tickets = results(dump, Worker(_passthrough), [bytes(5000 + i) for i in range(20)],
                      workers_down=1)
    assert len(tickets) == 20 and all(t[2] == kind for t in tickets)
    # results() has stopped both pools: nothing of the unloaded items is left.
    assert [t for t in tickets if still_there(t)] == []


def test_plumber_stop_cleans_up_too(share: Path) -> None:
    """The same through a Plumber (which discards outputs): the share stays empty."""
    def ours() -> set[str]:
        return {p.name for p in share.iterdir() if p.name.startswith("papyc-")}

    before = ours()
    dump = Worker((workers.io.pickle_dumps, workers.io.dump_item), ((), ("file",)))
    up = Piper(dump, parallel=NuMap(worker_num=2, start_method="spawn"))
    down = Piper(Worker(_passthrough), parallel=NuMap(worker_num=1, start_method="spawn"))
    pipes = Plumber()
    pipes.add_pipe((up, down))
    pipes.start([[bytes(5000 + i) for i in range(20)]])
    pipes.run()
    pipes.wait()
    assert len(ours() - before) == 20  # dumped, never loaded: still waiting
    pipes.stop()
    assert pipes.stats["items_out"] == 20 and pipes.stats["errors_out"] == 0
    assert ours() - before == set()


def _via_proxy(inbox, port):  # noqa: ANN001, ANN202
    tk = inbox[0]
    return (*tk[:5], port, *tk[6:])


def test_a_lost_udp_datagram_is_a_worker_error_for_that_item() -> None:
    """The upstream pool dumps six items; a second pool loads them through a real UDP
    proxy that drops the third item's datagram: that item, and only it, is an error."""
    proxy: LossyProxy | None = None
    upstream = Worker((workers.io.pickle_dumps, workers.io.dump_item), ((), ("udp",)))
    up = Piper(upstream, parallel=NuMap(worker_num=1, start_method="spawn"))
    # Pull the tickets first, then load them through a proxy in a second pipeline.
    dagger = Dagger()
    dagger.add_piper(up)
    dagger.connect([[b"item-%d" % i for i in range(6)]])
    dagger.start()
    try:
        tickets = list(up)
        assert all(t[2] == "udp" for t in tickets)
        proxy = LossyProxy((tickets[0][4], tickets[0][5]),
                           lambda n, d: None if n == 3 else d)  # the third item's datagram
        loader = Worker((_via_proxy, workers.io.load_item, workers.io.pickle_loads),
                        ((proxy.port,), (), ()))
        down = Piper(loader, parallel=NuMap(worker_num=1, start_method="spawn"))
        second = Dagger()
        second.add_piper(down)
        second.connect([tickets])
        second.start()
        try:
            out = list(down)
        finally:
            second.stop()
            second.disconnect(forced=True)
    finally:
        dagger.stop()
        dagger.disconnect(forced=True)
        if proxy is not None:
            proxy.close()
    assert [o for i, o in enumerate(out) if i != 2] == [b"item-%d" % i for i in range(6)
                                                         if i != 2]
    assert isinstance(out[2], PiperError)
    cause = out[2].args[0]
    assert isinstance(cause, WorkerError) and "lost or corrupt" in str(cause.exception)


def test_ticket_is_what_crosses_the_manager(share: Path) -> None:
    upstream = Worker((workers.io.pickle_dumps, workers.io.dump_item), ((), ("file",)))
    up = Piper(upstream, parallel=NuMap(worker_num=1, start_method="spawn"))
    dagger = Dagger()
    dagger.add_piper(up)
    dagger.connect([[bytes(3_000_000)]])
    dagger.start()
    try:
        (tk,) = list(up)
    finally:
        dagger.stop()
        dagger.disconnect(forced=True)
    assert ticket_mod.parse(tk)[0].name == "file"
    # The upstream pool has stopped, so its unloaded file is gone too.
    assert not (share / tk[5]).exists()
