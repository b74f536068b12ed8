"""What the benchmarks share: timing a two-piper pipeline between its first and last result,
and timing each host's steps of ``papycluster up``/``down`` from their progress messages.

Imported by ``bench/transports.py`` and ``bench/cluster.py`` (run as scripts, so this folder
is on ``sys.path``).
"""

from __future__ import annotations

import threading
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


#: ``up``'s progress messages (their beginnings) -> the step that starts with them.
#: (The first match counts; the list holds the messages of earlier versions too.)
UP_STEPS = [("connecting", "ssh connect"),
            ("checking Python, OS, temp dir, port;", "check+start"),
            ("checking", "check/probe"), ("shipping", "ship"), ("papycluster already", "ship"),
            ("starting agent", "start agent"), ("waiting for the agent", "agent answers"),
            ("up:", None)]


class StepClock:
    """A progress callback of ``up`` or ``down`` that times each host's steps (from one
    message to the next), to show where the wall time of a visit goes."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: dict[str, list[tuple[float, str]]] = {}
        self.lock = threading.Lock()

    def __call__(self, host: str, message: str) -> None:
        with self.lock:
            self.marks.setdefault(host, []).append((time.perf_counter(), message))

    def steps(self) -> dict[str, float]:
        """Per step, its longest duration over the hosts (seconds)."""
        out: dict[str, float] = {}
        for marks in self.marks.values():
            for (t0, msg), (t1, _) in zip(marks, marks[1:], strict=False):
                step = next((name for prefix, name in UP_STEPS if msg.startswith(prefix)),
                            msg.split(" ")[0])
                if step is not None:
                    out[step] = max(out.get(step, 0.0), t1 - t0)
        return out
