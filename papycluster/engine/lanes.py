"""Lanes: the executors of a NuMap (local threads, local processes, remote workers).

A NuMap keeps what makes it a NuMap (tasks, weaving, the buffer, ordering, timeouts,
reruns); the workers that run its tasklets are *lanes* behind one small interface, so
that the NuMap never switches on the kind of executor and the engine never imports the
cluster layer (the remote lane lives in ``papycluster.cluster.lane``, the lanes of Dask
and Ray in ``papycluster.engines``; all are found through :mod:`papycluster.hooks`).

The contract of a lane (:class:`Lane`):

* ``kind`` (``'thread'``, ``'process'``, ``'remote'``, ``'dask'``, ``'ray'``) and
  ``local`` (local lanes end when a NuMap's inputs are all consumed; remote ones stay
  until ``stop()``).
* ``start()`` starts its threads (local processes start when the lane is built,
  remote workers are opened by the lane's threads).
* ``load()``, called with the NuMap's lock held: tasklets in flight per live worker,
  ``QUEUED`` when the lane can only queue a tasklet behind others, ``inf`` when it
  cannot take one. The NuMap submits to the least loaded lane.
* ``submit(task, index, item, attempts)``, called without the lock: take the tasklet
  (it is then the lane's until its result reaches ``hub.deliver``), or False when the
  lane can no longer take it (the NuMap tries another lane). A lane whose worker dies
  runs the tasklets it held again (at most ``hub.retries`` times), on its own workers
  or through ``hub.dispatch``; every tasklet ends in exactly one ``hub.deliver``, a
  :class:`WorkerLostError` result when no worker is left.
* ``busy()`` (lock held): it holds tasklets, or has some to send again.
* ``lost``: why workers of the lane were lost ("" if none), for error messages.
* ``stop()`` asks its workers to end and wakes its threads (it may wait briefly for
  processes to end); ``close(deadline)`` then joins its threads by ``deadline``
  (``time.monotonic()``) and releases what the lane holds. The NuMap stops every lane
  before it closes any, so that no thread waits on another lane meanwhile.

A lane uses its NuMap only through the :class:`Hub` the NuMap gives it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from papycluster.engine import process as proto

#: Seconds between heartbeats while a remote reply is awaited.
HEARTBEAT_EVERY = 1.0

#: The load of a lane that can only queue a tasklet behind others (every worker of a
#: process lane in quarantine): finite, so it is used when no other lane can take it.
QUEUED = 1e18


@dataclass(eq=False)
class Hub:
    """What a lane may use of its NuMap: its lock, its flags and its callbacks."""

    name: str
    cond: threading.Condition
    stopping: threading.Event  # feeding stops
    closing: threading.Event  # collecting stops too: the workers are ending
    retries: int
    heartbeat: float
    log_to_driver: bool
    #: deliver(task_id, index, ok, value, source=None): a result for next()
    deliver: Callable[..., None]
    #: dispatch(task, index, item, attempts): a tasklet to the least loaded lane
    dispatch: Callable[..., None]
    #: settle(): a lane ran out of work; local workers may end if all are idle
    settle: Callable[[], None]
    #: inputs_done() (lock held): every input was consumed and sent, nothing to rerun
    inputs_done: Callable[[], bool]
    #: the NuMap's generation (bumped by every stop): late threads see they are stale
    generation: Callable[[], int]
    #: the multiprocessing context of local processes
    context: Callable[[], Any]
    #: adaptive buffer: weigh(nbytes, count) of items sent or results received, and
    #: grow() when a worker ran out of work (lock held); adaptive() tells if it is
    weigh: Callable[[int, int], None]
    grow: Callable[[], None]
    adaptive: Callable[[], bool]
    #: parked(): a worker process dumped an item that waits in it: no local worker
    #: may end idle before stop() (see transport.base.note_parked)
    parked: Callable[[], None]
    #: worker processes that died mid-run: what they left is removed at stop
    dead_workers: list = field(default_factory=list)


class Lane(Protocol):
    """The interface of a NuMap's executor (see the module docstring)."""

    kind: str
    local: bool
    lost: str

    def start(self) -> None: ...

    def load(self) -> float: ...

    def submit(self, task: Any, index: int, item: Any, attempts: int = 0) -> bool: ...

    def busy(self) -> bool: ...

    def stop(self) -> None: ...

    def close(self, deadline: float) -> None: ...


class TaskletQueue(queue.Queue):
    """A lane's queue of tasklets, where a rerun goes first.

    A rerun (negative index, see ``NuMap.rerun``) recomputes an item whose data was
    lost with its host, and the whole pipeline downstream waits for it: behind an
    adaptive buffer's thousands of queued tasklets it would wait for all of them.
    """

    def put_first(self, tasklet: Any) -> None:
        with self.not_full:
            self.queue.appendleft(tasklet)
            self.unfinished_tasks += 1
            self.not_empty.notify()


class QueueLane:
    """The part of a lane that is the same for threads and remote workers: ``size``
    serving threads take tasklets from one queue; a None in it ends one of them.

    A subclass names its ``kind`` and ``local``, and gives ``_serve`` (one thread's
    loop) the arguments that tell its threads apart (``_thread_args``)."""

    kind = ""
    local = False

    def __init__(self, hub: Hub, size: int, names: list[str] | None = None) -> None:
        self.hub = hub
        self.queue: TaskletQueue = TaskletQueue()
        self.alive = size
        self.inflight = 0
        self.lost = ""  # why the last worker of this lane was lost (for error messages)
        names = names or [f"{self.kind}-{i}" for i in range(size)]
        self.threads = [threading.Thread(target=self._serve, args=self._thread_args(i),
                                         name=f"{hub.name}-{name}", daemon=True)
                        for i, name in enumerate(names)]

    def _thread_args(self, i: int) -> tuple:
        return ()

    def _serve(self, *args: Any) -> None:
        raise NotImplementedError

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def load(self) -> float:
        return self.inflight / self.alive if self.alive else float("inf")

    def submit(self, task: Any, index: int, item: Any, attempts: int = 0) -> bool:
        with self.hub.cond:
            if not self.alive:
                return False
            self.inflight += 1
            tasklet = (task, index, item, attempts)
            if index < 0:  # a rerun: ahead of the queued tasklets
                self.queue.put_first(tasklet)
            else:
                self.queue.put(tasklet)
        return True

    def busy(self) -> bool:
        return bool(self.inflight)

    def stop(self) -> None:
        for _ in self.threads:
            self.queue.put(None)

    def close(self, deadline: float) -> None:
        join_all(self.threads, deadline)


class ThreadLane(QueueLane):
    """Local threads that take tasklets from one queue."""

    kind = "thread"
    local = True

    def __init__(self, hub: Hub, size: int) -> None:
        super().__init__(hub, size, [f"thread-{i}" for i in range(size)])

    def _serve(self) -> None:
        hub = self.hub
        while True:
            tasklet = self.queue.get()
            if tasklet is None:
                return
            task, index, item, _ = tasklet
            ok, value = proto.call(task.func, task.args, task.kwargs, item)
            with hub.cond:
                self.inflight -= 1
            hub.deliver(task.id, index, ok, value)
            if not self.inflight:
                hub.settle()


def join_all(threads: list[threading.Thread], deadline: float) -> None:
    """Join ``threads`` (but the calling one) by ``deadline`` (``time.monotonic()``)."""
    for thread in threads:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
