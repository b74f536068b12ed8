"""Feeding a NuMap: weave the tasks, admit tasklets to the buffer, send them.

The *putter* thread weaves the tasks round-robin, ``stride`` items of one task at a
time, and admits each item (a *tasklet*) only while the buffer (:class:`Budget`, PaPy's
semaphore) has room. The *sender* thread hands what was admitted to the NuMap's lanes,
in batches of what waits, so a pull that blocks (a generator, an upstream task) never
holds back a tasklet already admitted, and a tasklet never waits for others to join it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from papycluster.engine.tasks import Failed, Task, close_tasks

log = logging.getLogger("papycluster.numap")

#: How often blocked manager threads look at the stop flag (seconds).
POLL = 0.1


class Budget:
    """PaPy's buffer: room for tasklets admitted and not yet returned by ``next()``.

    A semaphore whose size can change: a fixed ``buffer=`` never changes it; an
    adaptive one grows it (and shrinks it for big items; tasklets already admitted
    stay). ``waiting`` tells that the feeding thread waits for room.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.waiting = False
        #: Adaptive buffer: bytes per tasklet (item sent + result back), estimated.
        self.tasklet_bytes = 0.0
        self._cond = threading.Condition(threading.Lock())

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        with self._cond:
            if self.used < self.capacity:
                self.used += 1
                return True
            if not blocking:
                return False
            self.waiting = True
            try:
                self._cond.wait(timeout)
            finally:
                self.waiting = False
            if self.used < self.capacity:
                self.used += 1
                return True
            return False

    def release(self) -> None:
        with self._cond:
            self.used -= 1
            self._cond.notify()

    def resize(self, capacity: int) -> None:
        with self._cond:
            self.capacity = capacity
            self._cond.notify()

    def grow(self, most: int, bytes_in_flight: int) -> None:
        """A worker ran out of work while the putter waited for room (and a reader
        waited for a result): the buffer holds the pool back, so double it, within
        ``most`` tasklets and ``bytes_in_flight`` bytes."""
        if not self.waiting:
            return
        bound = most
        if self.tasklet_bytes:
            bound = min(bound, int(bytes_in_flight // self.tasklet_bytes))
        if self.capacity < bound:
            self.resize(min(bound, self.capacity * 2))

    def weigh(self, nbytes: int, count: int, floor: int, bytes_in_flight: int) -> None:
        """Count ``nbytes`` for ``count`` items sent or results received: tasklets
        too big for ``bytes_in_flight`` shrink the buffer back towards ``floor``
        (PaPy's)."""
        share = 2 * nbytes / count  # as much again for the other way
        if self.tasklet_bytes:
            self.tasklet_bytes += (share - self.tasklet_bytes) * 0.1
        else:
            self.tasklet_bytes = share
        bound = max(floor, int(bytes_in_flight // max(self.tasklet_bytes, 1.0)))
        if self.capacity > bound:
            self.resize(bound)


class Feed:
    """One feeding run of a NuMap: its putter and sender threads.

    ``generation`` is the NuMap's when the run starts and ``current()`` its generation
    now (a stop bumps it: the threads of an older run end). ``deliver`` stores a result
    (an upstream error becomes the item's), ``send(batch)`` hands tasklets to the lanes
    (at most ``batch_limit()`` at a time), and ``done()`` is called once every admitted
    tasklet was sent.
    """

    def __init__(self, name: str, tasks: list[Task], stride: int, budget: Budget,
                 cond: threading.Condition, stopping: threading.Event, generation: int,
                 current: Callable[[], int], deliver: Callable[..., None],
                 batch_limit: Callable[[], int], send: Callable[[list], None],
                 done: Callable[[], None]) -> None:
        self.name, self.tasks, self.stride, self.budget = name, tasks, stride, budget
        self.cond, self.stopping = cond, stopping
        self.generation, self.current = generation, current
        self.deliver, self.batch_limit, self.send, self.done = (deliver, batch_limit,
                                                                send, done)
        self.outbox: deque[tuple[Task, int, Any]] = deque()
        self.wake = threading.Event()
        self.pulled_all = False  # the putter has ended
        self.sent_all = False  # ... and the sender has sent everything it admitted
        self.threads = [
            threading.Thread(target=self._putter, name=f"{name}-putter", daemon=True),
            threading.Thread(target=self._sender, name=f"{name}-sender", daemon=True)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _weave(self) -> Iterator[tuple[Task, Iterator]]:
        """Yield ``(task, iterator)`` round-robin, ``stride`` times per task and round.

        The putter pulls one item per step. Stopping takes effect at a round boundary,
        so every task completes the round.
        """
        active = [(task, iter(task.iterable)) for task in self.tasks]
        while active and not self.stopping.is_set():
            for entry in active:
                for _ in range(self.stride):
                    if entry[0].total is not None:
                        break
                    yield entry
            active = [entry for entry in active if entry[0].total is None]

    def _putter(self) -> None:
        """Feed the workers: pull an item, wait for room in the buffer, queue it.

        The sender thread sends what is queued; the putter never holds a tasklet back,
        so a pull that blocks (a generator, an upstream task) delays nothing admitted.
        """
        generation, tasks, cond = self.generation, self.tasks, self.cond
        try:
            for task, iterator in self._weave():
                if generation != self.current():
                    return  # stopped while blocked on an upstream task
                index = task.pulled
                try:
                    item = next(iterator)
                except StopIteration:
                    with cond:
                        task.total = task.fed
                        cond.notify_all()
                    continue
                except Exception as exc:  # an upstream error becomes this item's
                    item = Failed(exc)
                task.pulled += 1
                if not self._acquire() or generation != self.current():
                    break
                with cond:
                    task.fed += 1
                if isinstance(item, Failed):
                    self.deliver(task.id, index, False, item.exception)
                    continue
                self.outbox.append((task, index, item))
                if not self.wake.is_set():
                    self.wake.set()
        except Exception as exc:  # never die silently: fail the tasks instead
            log.exception("%s: the feeding thread failed", self.name)
            with cond:
                for task in tasks:
                    if task.total is None:
                        task.results.setdefault(task.fed, (False, exc))
                        task.arrived.append((task.fed, False, exc))
                        task.fed += 1
        finally:
            with cond:
                close_tasks(tasks)
                cond.notify_all()
            self.pulled_all = True
            self.wake.set()

    def _sender(self) -> None:
        """Send the queued tasklets, in batches of what waits (at most a batch limit).

        Batches form by themselves while the workers or the pipes are busy; a tasklet
        never waits for others to join it.
        """
        outbox = self.outbox
        while True:
            self.wake.wait(POLL)
            self.wake.clear()
            while outbox:
                if self.generation != self.current():
                    return
                limit = self.batch_limit()
                batch = [outbox.popleft()]
                while outbox and len(batch) < limit:
                    batch.append(outbox.popleft())
                self.send(batch)
            if self.pulled_all and not outbox:
                break
            if self.generation != self.current():
                return
        self.sent_all = True
        self.done()

    def _acquire(self) -> bool:
        """Take room in the buffer; False when the NuMap stops meanwhile."""
        if self.budget.acquire(blocking=False):
            return True
        while not self.stopping.is_set():
            if self.budget.acquire(timeout=POLL):
                return True
        return False
