"""What the benchmarks share: timing a two-piper pipeline between its first and last result.

Imported by ``bench/transports.py`` and ``bench/cluster.py`` (run as scripts, so this folder
is on ``sys.path``).
"""

from __future__ import annotations

import time

from papycluster import Piper
from papycluster.engine import Dagger


def items_per_second(up: Piper, down: Piper, n: int, size: int, kind: str) -> float:
    """Run ``n + 1`` items through ``up -> down``; items/s from the first result on.

    ``down`` must yield each item's size; anything else is a failed run, not a figure.
    The first result is not timed, so pool start-up does not count.
    """
    dagger = Dagger()
    dagger.add_pipe((up, down))
    dagger.connect([range(n + 1)])
    dagger.start()
    try:
        first = next(down)
        t0 = time.perf_counter()
        count = 0
        for result in down:
            if result != size:
                raise RuntimeError(f"{kind}: got {result!r}, expected {size} bytes")
            count += 1
        elapsed = time.perf_counter() - t0
    finally:
        dagger.stop()
        dagger.disconnect(forced=True)
    if first != size or count != n:
        raise RuntimeError(f"{kind}: {count} of {n} items, first {first!r}")
    return n / elapsed


def items_for(size: int, quick: bool, budget: int, most: int, least: int = 8) -> int:
    """How many items of ``size`` bytes one measurement moves: about ``budget`` bytes,
    between ``least`` and ``most`` items; a quarter of that with ``quick``."""
    n = max(least, min(most, budget // size))
    return max(least, n // 4) if quick else n
