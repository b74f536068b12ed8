"""A live view of a running pipeline: per piper, items done, items/s, errors, where.

Each piper counts what leaves it (:class:`Counts`, updated under the piper's own lock,
so the counts are exact); :class:`ProgressDisplay` draws them with rich, refreshed a
few times a second, from ``Plumber.start`` to the end of the run. A user turns it on
with ``Plumber(progress=True)`` or ``plumber.start(datas, progress=True)``; by default
it is on when stdout is a terminal. A rich ``Console`` may be given instead of True
(a test draws to one that writes to a string).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

#: Seconds over which the current rate (items/s) is measured.
RATE_WINDOW = 5.0


class Counts:
    """What one piper has given so far: items, error items, and who computed them."""

    def __init__(self) -> None:
        self.done = 0
        self.errors = 0
        self.started: float | None = None  # when the first item came out
        self.last: float | None = None
        self.sources: Counter[str] = Counter()  # remote host -> items it computed
        self._marks: list[tuple[float, int]] = []  # (time, done) for the rate

    def count(self, error: bool, source: str | None = None) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        self.done += 1
        self.errors += error
        self.last = now
        if source:
            self.sources[source] += 1
        if not self._marks or now - self._marks[-1][0] >= 0.25:
            self._marks.append((now, self.done))
            while len(self._marks) > 2 and now - self._marks[1][0] > RATE_WINDOW:
                del self._marks[0]

    def rate(self, now: float | None = None) -> float:
        """Items per second over the last few seconds (0 while nothing came out)."""
        now = time.monotonic() if now is None else now
        if not self._marks:
            return 0.0
        then, before = self._marks[0]
        if now - then < 1e-3:
            return 0.0
        if self.last is not None and now - self.last > RATE_WINDOW:
            return 0.0  # idle or finished: no current rate
        return (self.done - before) / (now - then)

    def average(self) -> float:
        """Items per second from the first item to the last."""
        if self.started is None or self.last is None or self.last <= self.started:
            return 0.0
        return (self.done - 1) / (self.last - self.started)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def where(piper: Any) -> str:
    """Where a piper's work runs: its NuMap's workers, or the thread that pulls it."""
    numap = piper.parallel
    if not numap:
        return "inline (the reading thread)"
    parts = []
    if numap.worker_num:
        kind = "processes" if numap.worker_type == "process" else "threads"
        parts.append(f"{numap.worker_num} local {kind}")
    for host, n in numap.worker_remote:
        parts.append(f"{host} x{n}")
    text = ", ".join(parts)
    seen = piper.progress.sources
    if seen:  # the hosts that answered so far, busiest first
        text += " (" + ", ".join(f"{h}: {n}" for h, n in seen.most_common(4)) + ")"
    return text


def render(pipers: Sequence[Any], title: str = "papycluster", now: float | None = None
           ) -> Any:
    """A rich Table of the pipers' counts (what the live display shows)."""
    from rich.table import Table

    now = time.monotonic() if now is None else now
    table = Table(title=title)
    for column, justify in (("piper", "left"), ("done", "right"), ("items/s", "right"),
                            ("errors", "right"), ("runs on", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for piper in pipers:
        counts = piper.progress
        errors = f"[red]{counts.errors}[/red]" if counts.errors else "0"
        state = " [green]done[/green]" if piper.finished else ""
        rate = counts.average() if piper.finished else counts.rate(now)
        table.add_row(f"{piper.name}{state}", str(counts.done), f"{rate:,.1f}", errors,
                      where(piper))
    return table


def wanted(progress: Any) -> bool:
    """``progress`` as given (True, False, a Console), or None: on at a terminal."""
    if progress is None:
        isatty = getattr(sys.stdout, "isatty", None)
        return bool(isatty and isatty())
    return progress is not False


class ProgressDisplay:
    """Draw :func:`render` live (rich ``Live``) until :meth:`stop`."""

    def __init__(self, pipers: Callable[[], Sequence[Any]], console: Any = None,
                 refresh_per_second: float = 4.0, title: str = "papycluster") -> None:
        from rich.console import Console
        from rich.live import Live

        self._pipers = pipers
        self._title = title
        self.console = console if console is not None else Console()
        self._live = Live(get_renderable=self._render, console=self.console,
                          refresh_per_second=refresh_per_second, transient=False)
        self._lock = threading.Lock()
        self._running = False

    def _render(self) -> Any:
        return render(self._pipers(), self._title)

    def start(self) -> None:
        with self._lock:
            if not self._running:
                self._live.start(refresh=True)
                self._running = True

    def stop(self) -> None:
        """Draw the final counts and stop refreshing (idempotent)."""
        with self._lock:
            if self._running:
                self._running = False
                self._live.refresh()
                self._live.stop()
