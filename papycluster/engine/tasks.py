"""A NuMap's tasks: a function over an iterable, the results so far, their iterator.

What a task holds for the NuMap (``engine.numap``) between feeding and ``next()``: how
many items were pulled and admitted, the results waiting (by index when ordered, in
arrival order otherwise), what was skipped after a timeout, and which host computed
each remote result.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from papycluster.engine import process as proto


@dataclass(eq=False)
class Task:
    """One task of a NuMap: a function over an iterable, and its results so far."""

    id: int
    func: Callable
    iterable: Iterable
    args: tuple
    kwargs: dict
    timeout: float | None
    block: bool
    track: bool
    skip: bool
    blob: bytes | BaseException | None = None  # cloudpickled (func, args, kwargs)
    remote_blob: bytes | None = None  # the same for remote workers (engine.shipping)
    pulled: int = 0  # items taken from the iterable so far
    fed: int = 0  # tasklets admitted to the buffer so far
    total: int | None = None  # known once the iterable is exhausted (or stopped)
    next_index: int = 0  # ordered: the index next() returns next
    returned: int = 0  # results returned or skipped so far
    results: dict[int, tuple[bool, Any]] = field(default_factory=dict)  # ordered
    arrived: deque = field(default_factory=deque)  # unordered
    skipped: set[int] = field(default_factory=set)  # ordered: indexes to drop
    drop_next: int = 0  # unordered: late results to drop
    closed: bool = False  # the NuMap was stopped: no more results will come
    delivered: set[int] = field(default_factory=set)  # unordered: against duplicates
    sources: dict[int, str] = field(default_factory=dict)  # remote: which host answered

    def finished(self) -> bool:
        return self.closed or (self.total is not None and self.returned >= self.total)

    def pickle(self, remote: bool) -> None:
        """Pickle the function for worker processes (and once more for remote ones,
        see engine.shipping); one that cannot be pickled fails each of its items."""
        try:
            self.blob = proto.pickle_task(self.func, self.args, self.kwargs, remote=False)
            if remote:
                self.remote_blob = proto.pickle_task(self.func, self.args, self.kwargs)
        except Exception as exc:
            self.blob = proto.describe_exception(exc)

    def store(self, index: int, ok: bool, value: Any, source: str | None,
              ordered: bool) -> bool | None:
        """Keep a result for ``next()``: True if stored, False if dropped (a late
        result of an item skipped after a timeout), None for a duplicate."""
        if ordered:
            duplicate = index in self.results or (
                index < self.next_index and index not in self.skipped)
        else:
            duplicate = index in self.delivered
            self.delivered.add(index)
        if duplicate:
            return None
        if source is not None:
            self.sources[index] = source
        if ordered:
            if index in self.skipped:
                self.skipped.discard(index)
                return False
            self.results[index] = (ok, value)
        else:
            if self.drop_next:
                self.drop_next -= 1
                return False
            self.arrived.append((index, ok, value))
        return True

    def take(self, ordered: bool) -> tuple[int, bool, Any] | None:
        """The next result ``(index, ok, value)`` to return, or None (not there yet)."""
        if ordered:
            if self.next_index in self.results:
                index = self.next_index
                ok, value = self.results.pop(index)
                self.next_index += 1
                return index, ok, value
            return None
        if self.arrived:
            return self.arrived.popleft()
        return None

    def give_up(self, ordered: bool) -> bool:
        """With skip, give up on the awaited item (its result is dropped on arrival):
        True if an item was given up (its room in the buffer is free again)."""
        if not self.skip or self.finished():
            return False
        if ordered:
            self.skipped.add(self.next_index)
            self.next_index += 1
        else:
            self.drop_next += 1
        self.returned += 1
        return True


class NuMapTask:
    """The iterator of one task's results (what ``add_task`` and ``get_task`` return)."""

    def __init__(self, numap: Any, task: int, timeout: float | None = None,  # a NuMap
                 block: bool = True) -> None:
        self.numap = numap
        self.task = task
        self.timeout = timeout
        self.block = block

    def __iter__(self) -> NuMapTask:
        return self

    def __next__(self) -> Any:
        return self.numap.next(timeout=self.timeout, task=self.task, block=self.block)

    next = __next__

    def __repr__(self) -> str:
        return f"<NuMapTask {self.task} of {self.numap.name}>"


class Failed:
    """An upstream error pulled from a task's iterable: it becomes that item's result."""

    __slots__ = ("exception",)

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception


def close_tasks(tasks: list[Task]) -> None:
    """Feeding has ended: every task's total is what has been handed out."""
    for task in tasks:
        if task.total is None:
            task.total = task.fed
