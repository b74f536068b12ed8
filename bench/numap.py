"""NuMap against multiprocessing.Pool.imap, on the same trivial work, in one run.

A trivial function over 20,000 items on 2 worker processes. Every row is timed from
the constructor to the last result (so the workers' start counts for both), and the
rows are measured in interleaved repetitions, so that the noise of a shared machine
hits every row alike. The table gives medians and each row's ratio to the
``Pool(2).imap(chunksize=1)`` baseline over the same kind of input (a range, or a
generator) measured in the same run.

Rows:
  * ``NuMap(f, data, worker_num=2)``: the default constructor, whose buffer adapts
    (issue 13: the goal is >= 1.0x Pool, over a range and over a generator);
  * ``buffer=2``: PaPy's default buffer given explicitly (``stride * tasks``), kept
    exact: every item waits for a round trip;
  * ``buffer=2000``: a deep explicit buffer.

With ``--remote`` the same rows run on 2 remote workers, one on each of two agents on
this machine (``up_local``, loopback, no SSH; started once for the run, their start not
timed), against the same local Pool: the default constructor, ``buffer=256``, and the
round trip of one item alone (p50 and p90 of ``--single`` items, each sent when the
previous came back), which batching must not make longer.

Run: ``python bench/numap.py [--items N] [--repeats R] [--remote]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import statistics
import time
from collections.abc import Callable, Iterable

from papycluster import NuMap

WORKERS = 2
#: The agents of ``--remote`` (``up_local`` names them so).
REMOTE_HOSTS = ("local1", "local2")


def trivial(x: int) -> int:
    return x + 1


def _data(items: int, generator: bool) -> Iterable[int]:
    return (x for x in range(items)) if generator else range(items)


def run_numap(items: int, generator: bool, buffer: int | None) -> float:
    start = time.perf_counter()
    if buffer is None:
        numap = NuMap(trivial, _data(items, generator), worker_num=WORKERS)
    else:
        numap = NuMap(trivial, _data(items, generator), worker_num=WORKERS, buffer=buffer)
    total = sum(numap)
    elapsed = time.perf_counter() - start
    numap.stop()
    assert total == sum(range(1, items + 1))
    return items / elapsed


def run_remote(items: int, generator: bool, buffer: int | None) -> float:
    remote = [(name, 1) for name in REMOTE_HOSTS]
    start = time.perf_counter()
    if buffer is None:
        numap = NuMap(trivial, _data(items, generator), worker_num=0, worker_remote=remote)
    else:
        numap = NuMap(trivial, _data(items, generator), worker_num=0, worker_remote=remote,
                      buffer=buffer)
    total = sum(numap)
    elapsed = time.perf_counter() - start
    numap.stop()
    assert total == sum(range(1, items + 1))
    return items / elapsed


def single_round_trips(count: int) -> list[float]:
    """Seconds from handing one item to a remote worker to its result, one at a time
    (the workers already started)."""
    feed: queue.Queue = queue.Queue()

    def items() -> Iterable[int]:
        while (x := feed.get()) is not None:
            yield x

    numap = NuMap(trivial, items(), worker_num=0,
                  worker_remote=[(name, 1) for name in REMOTE_HOSTS])
    times = []
    try:
        feed.put(0)
        next(numap)  # the workers are open
        for i in range(count):
            t0 = time.perf_counter()
            feed.put(i)
            if next(numap) != i + 1:
                raise RuntimeError("wrong result")
            times.append(time.perf_counter() - t0)
    finally:
        feed.put(None)
        numap.stop()
    return times


def run_pool(items: int, generator: bool) -> float:
    start = time.perf_counter()
    pool = multiprocessing.Pool(WORKERS)
    total = sum(pool.imap(trivial, _data(items, generator), chunksize=1))
    elapsed = time.perf_counter() - start
    pool.close()
    pool.join()
    assert total == sum(range(1, items + 1))
    return items / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--remote", action="store_true",
                        help="2 remote workers on 2 local agents instead of local rows")
    parser.add_argument("--single", type=int, default=200,
                        help="--remote: one-item round trips to time")
    options = parser.parse_args()
    if options.remote:
        remote_main(options)
        return
    n = options.items
    cases: dict[tuple[str, str], Callable[[], float]] = {}
    for kind, generator in (("range", False), ("generator", True)):
        cases[kind, "Pool(2).imap(chunksize=1)"] = lambda g=generator: run_pool(n, g)
        cases[kind, "NuMap(f, data, worker_num=2)"] = (
            lambda g=generator: run_numap(n, g, None))
        cases[kind, "NuMap(..., buffer=2)  PaPy's"] = lambda g=generator: run_numap(n, g, 2)
        cases[kind, "NuMap(..., buffer=2000)"] = lambda g=generator: run_numap(n, g, 2000)
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
    for _ in range(options.repeats):  # interleaved
        for key, case in cases.items():
            rates[key].append(case())
    print(f"{n} trivial items, {WORKERS} worker processes, median of {options.repeats} "
          f"interleaved runs (constructor to last result)")
    print(f"{'input':<11}{'case':<32}{'items/s':>12}{'ratio':>8}")
    for (kind, name), values in rates.items():
        baseline = statistics.median(rates[kind, "Pool(2).imap(chunksize=1)"])
        median = statistics.median(values)
        print(f"{kind:<11}{name:<32}{median:>12,.0f}{median / baseline:>8.2f}")


def remote_main(options: argparse.Namespace) -> None:
    import os
    import tempfile

    from papycluster.cluster import controller

    os.environ.setdefault("PAPYCLUSTER_STATE", os.path.join(
        tempfile.mkdtemp(prefix="papyc-bench-numap-"), "state.json"))
    result = controller.up_local(2)
    if result.failed:
        raise SystemExit(f"up_local failed: {result.failed}")
    n = options.items
    cases: dict[str, Callable[[], float]] = {
        "Pool(2).imap(chunksize=1)": lambda: run_pool(n, False),
        "remote NuMap, default": lambda: run_remote(n, False, None),
        "remote NuMap, buffer=256": lambda: run_remote(n, False, 256),
        "remote NuMap, generator": lambda: run_remote(n, True, None),
    }
    rates: dict[str, list[float]] = {key: [] for key in cases}
    trips: list[float] = []
    try:
        for _ in range(options.repeats):  # interleaved
            for key, case in cases.items():
                rates[key].append(case())
            trips += single_round_trips(max(1, options.single // options.repeats))
    finally:
        controller.down()
    baseline = statistics.median(rates["Pool(2).imap(chunksize=1)"])
    print(f"{n} trivial items over a range, 2 remote workers on 2 local agents "
          f"(loopback), median of {options.repeats} interleaved runs (constructor to "
          "last result)")
    print(f"{'case':<32}{'items/s':>12}{'ratio':>8}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<32}{median:>12,.0f}{median / baseline:>8.2f}")
    trips.sort()
    print(f"one item alone, round trip over {len(trips)} items: p50 "
          f"{statistics.median(trips) * 1e3:.2f} ms, p90 "
          f"{trips[int(len(trips) * 0.9)] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
