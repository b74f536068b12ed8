"""NuMap: a lazy, multi-task, parallel ``imap`` over thread, process or remote workers.

The semantics are PaPy's (``papy-spec.md`` section 1): tasks are added before
``start()``; the *putter* thread weaves them round-robin, ``stride`` items of one task
at a time, and hands each item (a *tasklet*) to a worker only while the ``buffer``
semaphore has room, so exactly ``buffer`` tasklets are in flight before a result is
taken. Results come back per task, in input order (``ordered=True``) or in completion
order. A task may consume another task's results (chaining), also across NuMaps.

What is different from PaPy, and why:

* Every tasklet is accounted for until its result is taken. Each process worker has its
  own pipe, and the manager knows which tasklets each one holds: when a worker dies,
  its tasklets become :class:`WorkerLostError` results and a new worker takes its place.
  Nothing ever waits for a result that cannot come.
* Functions travel with cloudpickle, once per task and worker, not once per item; items
  with the standard pickle. Lambdas, closures and ``__main__`` functions work, under
  ``fork``, ``spawn`` and ``forkserver`` alike.
* An exception, or a result that cannot be pickled, comes back as that item's result
  (with its traceback text); it never kills a worker or the feeding thread.
* All threads are daemons and every live NuMap is stopped at interpreter exit, so a
  program ends promptly however the pipeline ended.
* Remote workers (``worker_remote``) are worker processes on cluster agents; the
  manager sends them the same bytes it sends to local processes.
* Without an explicit ``buffer`` a process pool's buffer adapts: it starts at PaPy's
  ``stride * tasks`` and doubles whenever a worker runs out of work while the feeding
  thread waits for room and a reader waits for a result (the buffer, not the workers
  nor the reader, is then what holds the pool back), up to ``ADAPTIVE_MAX`` tasklets
  and to ``BYTES_IN_FLIGHT`` bytes of items and results in flight. An explicit
  ``buffer=`` is PaPy's exact bound. A sender thread hands the tasklets to the workers
  in batches of what is waiting, so items from a generator are batched too without
  ever being held back while the feeding thread blocks on its input.
* The local workers of a NuMap whose inputs are all consumed and whose tasklets have
  all come back end (PaPy's workers ended with their input); a rerun, or a new start
  after ``stop()``, starts new ones. A program creating many NuMaps without stopping
  them does not pile up processes.

Where the parts live: this module keeps the tasks, the buffer's bounds, starting and
stopping; taking results out (ordering, timeouts, reruns) is in :mod:`.numap_results`;
the task records are in :mod:`.tasks`, the buffer and the feeding
threads in :mod:`.feed`. The executors are *lanes* behind one interface
(:mod:`.lanes`: its contract, and local threads; :mod:`.process_lane`: local
processes; ``papycluster.cluster.lane``: remote workers, found through
:mod:`papycluster.hooks`), gathered per NuMap in :mod:`.lane_set`.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from papycluster import hooks
from papycluster.engine import output
from papycluster.engine.feed import Budget, Feed
from papycluster.engine.lane_set import LaneSet, engine_of
from papycluster.engine.lanes import HEARTBEAT_EVERY, Hub, join_all
from papycluster.engine.numap_results import NuMapResults
from papycluster.engine.tasks import NuMapTask, Task, close_tasks

log = logging.getLogger("papycluster.numap")

#: Most tasklets an adaptive buffer (no ``buffer=`` given) lets in flight.
ADAPTIVE_MAX = 2048

#: Bytes of items and results an adaptive buffer lets in flight (estimated from the
#: pickled sizes seen so far): a pool of 16 MB items stays at PaPy's buffer.
BYTES_IN_FLIGHT = 32 << 20

_live: weakref.WeakSet[NuMap] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop every NuMap still running when the interpreter exits (PaPy hung here)."""
    for numap in list(_live):
        try:
            numap._stop(timeout=1.0)
        except Exception:  # pragma: no cover - best effort at exit
            pass


class NuMap(NuMapResults):
    """A parallel, lazy, multi-task ``imap`` with PaPy's interface.

    ``NuMap(func, iterable)`` starts at once (one task); otherwise add tasks with
    :meth:`add_task` (or call the NuMap), then :meth:`start`, then read results with
    :meth:`next` or through the task iterators.

    ``worker_type`` is ``'process'`` (default) or ``'thread'``; ``worker_remote`` is a
    list of ``(host, n)`` (a host of the running cluster, or ``'host:port'`` of an
    agent) adding ``n`` remote workers each; or the name of a host group of the running
    cluster (``'all'``, or a ``groups`` name of the hosts file), whose hosts get their
    ``workers`` each and which takes on hosts that join it or come back while the
    NuMap runs (``papycluster up`` again); or an engine cluster the tasklets run on
    instead, ``worker_num`` at a time: ``'dask://host:port'`` or a
    ``distributed.Client``, ``'ray://host:port'`` or ``'ray'`` (papycluster.engines).
    ``start_method`` picks the multiprocessing start method for local processes
    (default: the platform's).

    Remote items are never lost silently: a remote worker whose host dies, or shows no
    sign of life for ``heartbeat`` seconds, gives its item back, and a surviving remote
    worker of this NuMap runs it again (at most ``retries`` times); only when no
    remote worker survives does it become a :class:`WorkerLostError` item.

    What remote workers print reaches this terminal, each line prefixed with its host;
    ``log_to_driver=False`` (or ``PAPYCLUSTER_LOG_TO_DRIVER=0``) keeps it in the
    agents' logs only (see :mod:`papycluster.engine.output`).
    """

    def __init__(self, func: Callable | None = None, iterable: Iterable | None = None,
                 args: tuple | None = None, kwargs: dict | None = None,
                 worker_type: str | None = None, worker_num: int | None = None,
                 worker_remote: list[tuple[str, int]] | str | Any = None,
                 stride: int | None = None, buffer: int | None = None,
                 ordered: bool = True, skip: bool = False, name: str | None = None,
                 start_method: str | None = None, retries: int = 2,
                 heartbeat: float = 10.0, log_to_driver: bool | None = None) -> None:
        self.log_to_driver = output.log_to_driver(log_to_driver)  # see engine.output
        self.name = name or f"numap_{id(self)}"
        if not self.name.isidentifier():
            raise ValueError(f"NuMap name {self.name!r} must be a Python identifier")
        self.worker_type = worker_type or "process"
        if self.worker_type not in ("process", "thread"):
            raise ValueError(f"worker_type must be 'process' or 'thread', not "
                             f"{self.worker_type!r}")
        #: ('dask' | 'ray', target) for a NuMap on an engine cluster (see lane_set)
        self.engine = engine_of(worker_remote)
        if self.engine is not None:
            worker_remote = None  # worker_num is then the tasklets in flight on it
        #: A host group of the cluster (``'all'``, or a group of the hosts file): its
        #: hosts now, with their ``workers`` each; hosts that join it later, or come
        #: back after a loss, are taken on while the NuMap runs (see cluster.lane).
        self.group = worker_remote if isinstance(worker_remote, str) else None
        if self.group is not None:
            worker_remote = hooks.hosts_prober("group")(self.group)
        self.worker_remote = [(str(host), int(n)) for host, n in (worker_remote or [])]
        for host, n in self.worker_remote:
            if n < 1:
                raise ValueError(f"worker_remote entry {host!r} needs at least 1 worker")
        if worker_num is None:
            worker_num = stride or (0 if self.worker_remote else os.cpu_count() or 1)
        if worker_num < 0:
            raise ValueError("worker_num must be >= 0")
        self.worker_num = worker_num
        n_remote = sum(n for _, n in self.worker_remote)
        self.stride = stride or (self.worker_num + n_remote)
        if self.stride < 1:
            raise ValueError("a NuMap needs at least one local or remote worker")
        self.buffer = buffer
        self.ordered = ordered
        self.skip = skip
        self.start_method = start_method
        if retries < 0 or heartbeat <= HEARTBEAT_EVERY:
            raise ValueError(f"retries must be >= 0 and heartbeat > {HEARTBEAT_EVERY} s")
        self.retries = retries
        self.heartbeat = heartbeat
        self._tasks: list[Task] = []
        self._tasks_tracked: dict[int, dict[int, Any]] = {}
        self._cond = threading.Condition(threading.Lock())
        self._started = False
        self._stopping = threading.Event()  # stop feeding
        self._closing = threading.Event()  # stop collecting too: the workers are ending
        self._threads: list[threading.Thread] = []  # the putter and the sender
        self._semaphore: Budget | None = None  # PaPy's buffer (its name in PaPy)
        self._feed: Feed | None = None
        self._readers = 0  # threads waiting in next() for a result
        #: A task dumps items that its worker process holds (or serves) until a loader
        #: takes them: such workers stay until stop(), whatever their input.
        self._parks = False
        self._stage1 = False
        self._feeding = False
        self._generation = 0  # bumped by every stop: late threads see they are stale
        self._reruns: dict[tuple[int, int], list] = {}  # rerun(): results awaited
        self._rerun_count = 0
        #: After ``stop(forced=True)``: the tasks are kept, closed, so that iterating
        #: them gives what had arrived and then ends; the final stop forgets them.
        self._kept = False
        #: What the lanes may use of this NuMap.
        self._hub = Hub(name=self.name, cond=self._cond, stopping=self._stopping,
                        closing=self._closing, retries=self.retries,
                        heartbeat=self.heartbeat, log_to_driver=self.log_to_driver,
                        deliver=self._deliver, dispatch=self._dispatch,
                        settle=self._retire_if_idle, inputs_done=self._inputs_done,
                        generation=lambda: self._generation,
                        context=self._context, weigh=self._weigh, grow=self._grow,
                        adaptive=lambda: self._adaptive, parked=self._parked)
        #: The executors (see engine.lanes): the local lane first, then the remote one.
        self._lanes = LaneSet(self._hub, self.worker_type, self.worker_num,
                              [host for host, n in self.worker_remote for _ in range(n)],
                              self.engine, self.group)
        if bool(func) != bool(iterable):
            raise ValueError("NuMap(func, iterable) needs both or neither")
        if func and iterable:
            self.add_task(func, iterable, args, kwargs)
            self.start()

    def __repr__(self) -> str:
        return (f"NuMap(name={self.name!r}, worker_type={self.worker_type!r}, "
                f"worker_num={self.worker_num}, worker_remote={self.worker_remote}, "
                f"stride={self.stride}, buffer={self.buffer}, ordered={self.ordered}, "
                f"skip={self.skip})")

    # -- tasks ---------------------------------------------------------------------

    def add_task(self, func: Callable, iterable: Iterable, args: tuple | None = None,
                 kwargs: dict | None = None, timeout: float | None = None,
                 block: bool = True, track: bool = False,
                 skip: bool | None = None) -> NuMapTask:
        """Add ``func(item, *args, **kwargs)`` over ``iterable`` as a new task.

        ``iterable`` may be another task's iterator (chaining); add tasks in
        topological order. ``skip`` overrides the NuMap's ``skip`` for this task.
        Returns the iterator of the task's results.
        """
        if self._started:
            raise RuntimeError(f"{self.name}: cannot add a task after start()")
        self._forget_kept()
        if not callable(func):
            raise TypeError(f"{self.name}: task function {func!r} is not callable")
        task = Task(id=len(self._tasks), func=func, iterable=iterable,
                     args=tuple(args or ()), kwargs=dict(kwargs or {}), timeout=timeout,
                     block=block, track=track, skip=self.skip if skip is None else skip)
        self._tasks.append(task)
        if track:
            self._tasks_tracked[task.id] = {}
        return NuMapTask(self, task.id, timeout, block)

    __call__ = add_task

    def pop_task(self, number: int | bool) -> None:
        """Remove the last ``number`` tasks (all if ``number is True``); before start."""
        if self._started:
            raise RuntimeError(f"{self.name}: cannot pop a task after start()")
        count = len(self._tasks) if number is True else int(number)
        for _ in range(min(count, len(self._tasks))):
            task = self._tasks.pop()
            self._tasks_tracked.pop(task.id, None)

    def get_task(self, task: int = 0, timeout: float | None = None,
                 block: bool = True) -> NuMapTask:
        """An iterator over the results of task number ``task``."""
        return NuMapTask(self, task, timeout, block)

    # -- start and stop ------------------------------------------------------------

    def start(self, stages: tuple[int, ...] = (1, 2)) -> None:
        """Start the workers (stage 1) and the feeding and collecting threads (stage 2).

        The two stages let pipers that share a NuMap add all their tasks before the
        feeding starts.
        """
        if 1 in stages:
            if self._stage1:
                raise RuntimeError(f"{self.name}: already started")
            self._forget_kept()
            self._start_workers()
            self._stage1 = True
            self._started = True
            _live.add(self)
        if 2 in stages:
            if not self._stage1:
                raise RuntimeError(f"{self.name}: start stage 1 before stage 2")
            if self._feeding:
                raise RuntimeError(f"{self.name}: already feeding")
            self._start_feeding()
            self._feeding = True

    def _context(self) -> Any:
        return multiprocessing.get_context(self.start_method)

    def _start_workers(self) -> None:
        self._stopping.clear()
        self._closing.clear()
        self._lanes.start()

    @property
    def _slots(self) -> list:
        """The local worker processes (for tests and status)."""
        return self._lanes.slots

    @property
    def _remote_workers(self) -> list:
        """The open remote workers (for tests and status)."""
        return self._lanes.remote_workers

    def _start_feeding(self) -> None:
        floor = len(self._tasks) * self.stride or self.stride
        self._semaphore = Budget(self.buffer or floor)
        self._parks = False  # until a worker process says it dumped an item
        for task in self._tasks:
            if self.worker_type == "process" or self.worker_remote or self.engine:
                task.pickle(remote=bool(self.worker_remote or self.engine))
        self._feed = feed = Feed(
            self.name, self._tasks, self.stride, self._semaphore, self._cond,
            self._stopping, self._generation, current=lambda: self._generation,
            deliver=self._deliver, batch_limit=self._batch_limit,
            send=self._lanes.send, done=self._retire_if_idle)
        feed.start()
        self._threads += feed.threads

    @property
    def _adaptive(self) -> bool:
        """No ``buffer=`` given, and only worker processes (local or remote): the
        buffer may grow."""
        return self.buffer is None and self._lanes.may_adapt()

    def stop(self, ends: Iterable[int] | None = None, forced: bool = False) -> None:
        """Stop feeding, end the workers and make the NuMap reusable.

        With ``ends`` (task ids), feeding stops at the next round boundary and the
        remaining results of those tasks are read and discarded first (PaPy's
        behaviour). Without it the NuMap stops at once. With ``forced=True`` (and no
        ``ends``) the results that had arrived can still be read: iterating a task
        gives them, then ends with ``StopIteration``, as in PaPy after
        ``stop(forced=True)``; the final stop (``stop(ends)``, ``_stop()``, or adding
        a task to reuse the NuMap) forgets them, and ``next()`` then raises
        ``RuntimeError``. A NuMap that was never started is left as it is.
        """
        if not self._started:
            if ends is not None:
                self._forget_kept()
            return
        if ends is not None:
            self._stopping.set()
            for end in ends:
                while True:
                    try:
                        self.next(task=end, timeout=None)
                    except StopIteration:
                        break
                    except Exception:
                        continue
        self._stop(keep=forced and ends is None)

    def _stop(self, timeout: float = 5.0, keep: bool = False) -> None:
        if not self._started:
            if not keep:
                self._forget_kept()
            return
        self._stopping.set()
        self._closing.set()
        self._lanes.wait_retired(timeout)
        with self._cond:
            self._generation += 1
            self._close_tasks()
            for task in self._tasks:
                task.closed = True
            self._cond.notify_all()
        if self._feed is not None:
            self._feed.wake.set()  # the sender sees the stop at once
        self._lanes.stop()  # every lane is asked to stop before any is waited for
        deadline = time.monotonic() + timeout
        join_all(self._threads, deadline)
        self._lanes.close(deadline)
        self._threads = []
        self._feed = None
        self._kept = keep
        if not keep:
            self._tasks = []
        self._started = self._stage1 = self._feeding = False
        _live.discard(self)

    def _forget_kept(self) -> None:
        """The final stop: forget the tasks a ``stop(forced=True)`` kept for reading."""
        if self._kept:
            self._kept = False
            self._tasks = []

    def _close_tasks(self, tasks: list[Task] | None = None) -> None:
        """Feeding has ended: every task's total is what has been handed out."""
        close_tasks(self._tasks if tasks is None else tasks)

    # -- feeding -------------------------------------------------------------------

    def _grow(self) -> None:
        """A worker ran out of work (called with ``_cond`` held): the buffer may grow
        (see Budget.grow) if a reader waits, within ``ADAPTIVE_MAX`` tasklets and
        ``BYTES_IN_FLIGHT`` bytes."""
        if self._semaphore is not None and self._readers:
            self._semaphore.grow(ADAPTIVE_MAX, BYTES_IN_FLIGHT)

    def _weigh(self, nbytes: int, count: int) -> None:
        """Count ``nbytes`` for ``count`` items sent or results received (adaptive
        buffer only; see Budget.weigh)."""
        if count and self._adaptive and self._semaphore is not None:
            floor = len(self._tasks) * self.stride or self.stride
            self._semaphore.weigh(nbytes, count, floor, BYTES_IN_FLIGHT)

    def _batch_limit(self) -> int:
        assert self._semaphore is not None
        return self._lanes.batch_limit(self._semaphore.capacity)

    def _dispatch(self, task: Task, index: int, item: Any, attempts: int = 0) -> None:
        """Hand one tasklet to the least loaded lane (process, thread or remote)."""
        self._lanes.dispatch(task, index, item, attempts)

    # -- idle workers ----------------------------------------------------------------

    def _inputs_done(self) -> bool:
        """Every input consumed and sent, nothing to rerun (``_cond`` held): the
        local workers may end once they hold nothing (see engine.lane_set)."""
        feed = self._feed
        return (self._started and not self._parks
                and feed is not None and feed.sent_all
                and feed.generation == self._generation
                and not self._reruns)

    def _parked(self) -> None:
        with self._cond:
            self._parks = True

    def _retire_if_idle(self) -> None:
        self._lanes.retire_if_idle()

    def _deliver(self, task_id: int, index: int, ok: bool, value: Any,
                 source: str | None = None) -> None:
        """Store a result for ``next()``; late results of skipped items are dropped.

        ``source`` names the remote host that computed it. Negative indexes are the
        extra tasklets of :meth:`rerun`, whose callers wait for them.
        """
        with self._cond:
            if index < 0:
                waiting = self._reruns.get((task_id, index))
                if waiting is not None and not waiting:
                    waiting.append((ok, value, source))
                    self._cond.notify_all()
                return
            if task_id >= len(self._tasks):
                return  # a result from before a restart
            stored = self._tasks[task_id].store(index, ok, value, source, self.ordered)
            if stored is None:
                log.warning("%s: dropped a duplicate result for item %d of task %d",
                            self.name, index, task_id)
            elif stored:
                self._cond.notify_all()
