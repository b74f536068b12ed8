"""NuMap against multiprocessing.Pool.imap, on the same trivial work, in one run.

A trivial function over 20,000 items on 2 worker processes. The NuMap rows and the
``Pool(2).imap(chunksize=1)`` baseline are measured in interleaved repetitions on the
same machine, and the table gives medians and each row's ratio to the baseline.

Rows:
  * ``NuMap, buffer=2000``: a deep buffer (many items in flight, like Pool.imap);
  * ``NuMap, PaPy default buffer``: ``buffer = stride * tasks`` = 2 here, PaPy's
    backpressure, where every item waits for a round trip;
  * ``NuMap over a generator``: the same deep buffer, with items from a generator,
    which the putter may not batch (its ``next()`` could block).

Run: ``python bench/numap.py [--items N] [--repeats R]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

from papycluster import NuMap

WORKERS = 2


def trivial(x: int) -> int:
    return x + 1


def run_numap(items: int, buffer: int | None, generator: bool) -> float:
    numap = NuMap(worker_num=WORKERS, buffer=buffer)
    data = (x for x in range(items)) if generator else range(items)
    task = numap.add_task(trivial, data)
    start = time.perf_counter()
    numap.start()
    total = sum(task)
    elapsed = time.perf_counter() - start
    numap.stop()
    assert total == sum(range(1, items + 1))
    return items / elapsed


def run_pool(items: int) -> float:
    with multiprocessing.Pool(WORKERS) as pool:
        start = time.perf_counter()
        total = sum(pool.imap(trivial, range(items), chunksize=1))
        elapsed = time.perf_counter() - start
    assert total == sum(range(1, items + 1))
    return items / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    cases = {
        "Pool(2).imap(chunksize=1)": lambda: run_pool(options.items),
        "NuMap, buffer=2000": lambda: run_numap(options.items, 2000, False),
        "NuMap, PaPy default buffer": lambda: run_numap(options.items, None, False),
        "NuMap over a generator, buffer=2000": lambda: run_numap(options.items, 2000, True),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(options.repeats):  # interleaved, so that noise hits every row alike
        for name, case in cases.items():
            rates[name].append(case())
    baseline = statistics.median(rates["Pool(2).imap(chunksize=1)"])
    print(f"{options.items} items, {WORKERS} worker processes, "
          f"median of {options.repeats} interleaved runs")
    print(f"{'case':<40}{'items/s':>12}{'ratio':>8}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<40}{median:>12,.0f}{median / baseline:>8.2f}")


if __name__ == "__main__":
    main()
