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

Run: ``python bench/numap.py [--items N] [--repeats R]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterable

from papycluster import NuMap

WORKERS = 2


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
    options = parser.parse_args()
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


if __name__ == "__main__":
    main()
