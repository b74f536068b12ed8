"""NuMap semantics that must hold on any engine lane: one body, run per engine."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import pytest

from papycluster import (
    NuMap,
    NuMapTimeoutError,
    Piper,
    Plumber,
    Worker,
    WorkerLostError,
    workers,
)
from tests.engines.conftest import hold_on_first_run, kill_when_running, pid_gone
from tests.plugins.helpers import collect


def square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError(f"three is refused ({x})")
    return x * x


def results_in_order(target) -> None:
    numap = NuMap(square_or_fail, range(12), worker_remote=target, worker_num=3)
    try:
        out = collect(iter(numap))
    finally:
        numap.stop()
    assert [v for i, v in enumerate(out) if i != 3] == [x * x for x in range(12) if x != 3]
    assert isinstance(out[3], ValueError) and "three is refused" in str(out[3])
    assert "raised in pid" in "".join(getattr(out[3], "__notes__", []))


def sleep_then(x: tuple[int, float]) -> int:
    time.sleep(x[1])
    return x[0]


def unordered_comes_as_it_completes(target) -> None:
    items = [(0, 1.5), (1, 0.0), (2, 0.0), (3, 0.0)]
    numap = NuMap(sleep_then, items, worker_remote=target, worker_num=2, ordered=False)
    try:
        out = list(numap)
    finally:
        numap.stop()
    assert sorted(out) == [0, 1, 2, 3] and out[-1] == 0


def lazy_within_the_buffer(target) -> None:
    pulled: list = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield (i, 0.0)

    numap = NuMap(worker_remote=target, worker_num=2, buffer=4)
    task = numap.add_task(sleep_then, source())
    numap.start()
    try:
        time.sleep(1.0)
        assert len(pulled) <= 5  # 4 admitted, at most one pulled and waiting for room
        assert next(task) == 0
    finally:
        numap.stop()


def enter_and_leave(x: tuple[int, str]) -> int:
    """Counts the tasklets running at once in a directory (one file each)."""
    index, where = x
    mine = Path(where) / f"run-{index}-{os.getpid()}"
    mine.touch()
    seen = len(list(Path(where).glob("run-*")))
    time.sleep(0.3)
    mine.unlink()
    return seen


def worker_num_bounds_the_tasks_in_flight(target, tmp_path: Path, workers: int) -> None:
    """The engine has ``workers`` slots; worker_num=1 runs one tasklet at a time."""
    items = [(i, str(tmp_path)) for i in range(6)]
    numap = NuMap(enter_and_leave, items, worker_remote=target, worker_num=1)
    try:
        assert set(numap) == {1}
    finally:
        numap.stop()
    numap = NuMap(enter_and_leave, items, worker_remote=target, worker_num=workers)
    try:
        assert max(numap) == workers  # the control: the engine does run them side by side
    finally:
        numap.stop()


def timeouts_are_error_items_and_skip_drops_them(target) -> None:
    items = [(0, 0.0), (1, 3.0), (2, 0.0)]
    numap = NuMap(worker_remote=target, worker_num=2, skip=True)
    task = numap.add_task(sleep_then, items, timeout=1.0)
    numap.start()
    try:
        out = collect(task)
    finally:
        numap.stop()
    assert out[0] == 0 and isinstance(out[1], NuMapTimeoutError) and out[2:] == [2]


def length(inbox: list) -> int:
    return len(inbox[0])


def double(inbox: list) -> int:
    return 2 * inbox[0]


def keep(inbox: list, sink: list) -> int:
    sink.append(inbox[0])  # a linear (serial) last piper: in the controller, in order
    return inbox[0]


def a_pipeline_runs_on_the_engine(target) -> None:
    out: list = []
    first = Piper(Worker(length), parallel=NuMap(worker_remote=target, worker_num=2))
    second = Piper(Worker(double), parallel=NuMap(worker_remote=target, worker_num=2))
    last = Piper(Worker(keep, (out,)))
    pipes = Plumber()
    pipes.add_pipe((first, second, last))
    pipes.start([["a", "bb", "ccc", "dddd"]])
    pipes.run()
    try:
        assert pipes.wait(60)
    finally:
        pipes.stop()
    assert out == [2, 4, 6, 8]


def megabytes(inbox: list) -> bytes:
    return b"x" * (inbox[0] << 20)


def size_of(inbox: list) -> int:
    return len(inbox[0])


def two_stage(target, kind: str, sizes=range(1, 6), then=size_of, worker_num: int = 2
              ) -> tuple[list, Piper]:
    """A Plumber: items of ``sizes`` MB made by a pool on the engine, sent by ``kind``
    (negotiated from the hosts of the engine's workers) to a second pool there, whose
    ``then`` results a serial last piper keeps. The results, in order, and the first
    piper (its ``dump_item`` type is the negotiated one)."""
    out: list = []
    up = Piper(Worker((megabytes, workers.io.dump_item), ((), (kind,))),
               parallel=NuMap(worker_remote=target, worker_num=worker_num))
    down = Piper(Worker((workers.io.load_item, then)),
                 parallel=NuMap(worker_remote=target, worker_num=worker_num))
    pipes = Plumber()
    pipes.add_pipe((up, down, Piper(Worker(keep, (out,)))))
    pipes.start([list(sizes)])
    pipes.run()
    try:
        assert pipes.wait(300)
    finally:
        pipes.stop()
    return out, up


def transport_between_engine_workers(target, kind: str) -> None:
    """``kind`` tickets go from one engine worker to another (the producer serves the
    item, tcp and udp prove the run's secret both ends were handed)."""
    out, _ = two_stage(target, kind)
    assert out == [i << 20 for i in range(1, 6)]


TRANSPORTS = pytest.mark.parametrize("kind", ["tcp", "udp", "file", "engine"])


def negotiated_between_engine_workers(target, requested: str) -> str:
    """The pools' hosts are asked of the engine and the pipe's transport picked from
    them; the items arrive by it, without a warning (a feasible choice). The transport
    chosen."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback warns
        out, up = two_stage(target, requested, range(1, 5))
    assert out == [i << 20 for i in range(1, 5)]
    return up.worker.args[1][0]


def killed_worker_run(target, mark_dir: Path, items: int, **numap_options) -> list:
    """The results of ``hold_on_first_run`` on ``items`` inputs, whose worker running
    item 5 the first time is SIGKILLed (and is gone)."""
    killer = kill_when_running(mark_dir)
    numap = NuMap(hold_on_first_run, range(items), args=(str(mark_dir),),
                  worker_remote=target, worker_num=2, **numap_options)
    try:
        out = collect(iter(numap))
    finally:
        numap.stop()
    killer.join(5)
    assert pid_gone(int((mark_dir / "killed").read_text()))
    return out


def assert_only_item_5_lost(out: list, *causes: str) -> None:
    """Every item but 5 gave its result; 5 is one WorkerLostError naming ``causes``."""
    assert len(out) == 8
    assert [v for i, v in enumerate(out) if i != 5] == [2 * x for x in range(8) if x != 5]
    assert isinstance(out[5], WorkerLostError)
    for cause in ("item 5 of task 0", *causes):
        assert cause in str(out[5]), out[5]


ALL = [results_in_order, unordered_comes_as_it_completes, lazy_within_the_buffer,
       timeouts_are_error_items_and_skip_drops_them, a_pipeline_runs_on_the_engine]


def ids(case) -> str:
    return case.__name__


cases = pytest.mark.parametrize("case", ALL, ids=ids)
