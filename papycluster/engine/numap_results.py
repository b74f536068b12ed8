"""A NuMap's results side: ``next()``, ``next_result()``, ``rerun()`` and iteration.

Why a separate module: :class:`papycluster.engine.numap.NuMap` is one object with two
halves that meet only at its condition and its task records. Feeding, workers and
stopping stay in :mod:`.numap`; taking results out (ordering, timeouts and ``skip``,
the buffer's release, reruns) is here, as a base class of ``NuMap`` that uses the same
attributes (``_cond``, ``_tasks``, ``_semaphore``, ``_lanes``...). It holds no state of
its own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from papycluster.engine.feed import POLL, Budget
from papycluster.engine.lane_set import LaneSet
from papycluster.engine.tasks import Task
from papycluster.errors import NuMapTimeoutError, WorkerLostError


class NuMapResults:
    """The reading half of a NuMap (see :class:`papycluster.engine.numap.NuMap`)."""

    name: str
    ordered: bool
    _cond: threading.Condition
    _tasks: list[Task]
    _tasks_tracked: dict[int, dict[int, Any]]
    _started: bool
    _kept: bool
    _feeding: bool
    _readers: int
    _generation: int
    _reruns: dict[tuple[int, int], list]
    _rerun_count: int
    _semaphore: Budget | None
    _lanes: LaneSet

    def _dispatch(self, task: Task, index: int, item: Any, attempts: int = 0) -> None:
        raise NotImplementedError  # NuMap's

    def next(self, timeout: float | None = None, task: int = 0, block: bool = True) -> Any:
        """The next result of ``task``; an exception result is raised.

        Raises :class:`NuMapTimeoutError` (a ``TimeoutError``) when nothing comes in
        ``timeout`` seconds; with ``skip`` the late result is dropped when it arrives,
        otherwise a later ``next()`` returns it. Raises ``StopIteration`` after the
        task's last result.
        """
        _, ok, value, _ = self.next_result(timeout, task, block)
        if not ok:
            raise value
        return value

    def next_result(self, timeout: float | None = None, task: int = 0, block: bool = True
                    ) -> tuple[int, bool, Any, str | None]:
        """Like :meth:`next`, but return ``(index, ok, value, source)``, never raising
        the value: the input position it belongs to, whether it is a result or the
        exception the function raised, and the remote host that computed it (None for
        a local worker). A piper uses it to know which input each result came from."""
        if not self._started and not (self._kept and task < len(self._tasks)):
            raise RuntimeError(f"{self.name}: next() on a NuMap that is not started "
                               "(before start(), or after its final stop)")
        if not block:
            timeout = 0.0
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if task >= len(self._tasks):
                if not self._started:
                    raise RuntimeError(f"{self.name}: next() before start()")
                raise StopIteration  # stopped: the tasks are gone
            t = self._tasks[task]
            while True:
                got = self._take(t)
                if got is not None:
                    index, ok, value = got
                    break
                if t.finished():
                    raise StopIteration
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    awaited = t.next_index
                    self._time_out(t)
                    error = NuMapTimeoutError(
                        f"{self.name}: no result for task {task} item {awaited} "
                        f"within {timeout} s")
                    error.index = awaited if self.ordered else None
                    raise error
                self._readers += 1
                try:
                    self._cond.wait(remaining if remaining is not None else POLL * 10)
                finally:
                    self._readers -= 1
            t.returned += 1
            if t.track:
                self._tasks_tracked[t.id][index] = value
            source = t.sources.pop(index, None)
        assert self._semaphore is not None
        self._semaphore.release()
        return index, ok, value, source

    def rerun(self, task: int, item: Any, timeout: float | None = None
              ) -> tuple[bool, Any, str | None]:
        """Run ``task``'s function once more on ``item``: ``(ok, value, source)``.

        An extra tasklet for a started NuMap, outside its tasks' streams and buffer: it
        goes to the least loaded live worker, is resent like any other if that worker is
        lost, and its result goes to this caller only. The engine uses it to recompute
        an item whose data was lost with the host that held it (see ``Piper``).
        ``timeout`` bounds the wait (NuMapTimeoutError); a stop ends it with a
        WorkerLostError result.
        """
        with self._cond:
            if not self._feeding or task >= len(self._tasks):
                raise RuntimeError(f"{self.name}: rerun() needs a started NuMap with task "
                                   f"{task}")
            self._rerun_count += 1
            index = -self._rerun_count
            key = (task, index)
            waiting: list = []
            self._reruns[key] = waiting
            generation = self._generation
            t = self._tasks[task]
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._lanes.ensure_local()
            self._dispatch(t, index, item)
            with self._cond:
                while not waiting:
                    if generation != self._generation:
                        return False, WorkerLostError(
                            f"{self.name}: stopped while rerunning an item of task "
                            f"{task}"), None
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise NuMapTimeoutError(f"{self.name}: no result for a rerun of "
                                                f"task {task} within {timeout} s")
                    self._cond.wait(POLL * 10 if left is None else min(left, POLL * 10))
                return waiting[0]
        finally:
            with self._cond:
                self._reruns.pop(key, None)

    def _take(self, t: Task) -> tuple[int, bool, Any] | None:
        return t.take(self.ordered)

    def _time_out(self, t: Task) -> None:
        """With skip, give up on the awaited item: its result is dropped on arrival."""
        if t.give_up(self.ordered):
            assert self._semaphore is not None
            self._semaphore.release()

    def __iter__(self) -> NuMapResults:
        return self

    def __next__(self) -> Any:
        return self.next()
