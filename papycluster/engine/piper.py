"""Piper: one node of a pipeline, a Worker evaluated over its inputs by a pool.

A piper takes one item from each upstream input (a *zip*), groups ``consume`` of them
into one inbox, evaluates its Worker on it (lazily, or in parallel on a NuMap), and
emits ``produce`` items per evaluation. Each piper may feed several downstream pipers:
they share its output through a fan-out that lets the fastest run ahead of the slowest
only by a bounded number of items.

The rules that keep item counts exact, so that zips downstream never go out of step:
an evaluation that fails or times out still yields exactly ``produce`` items (error
items), and a timed-out result is dropped when it arrives late.

A piper remembers the input behind each ticket it hands downstream, so that an item
whose data was lost with the host that held it is recomputed rather than lost
(:mod:`papycluster.engine.lineage`). The counting rules (zip, consume, produce, fan-out)
are in :mod:`papycluster.engine.piping`.

With a NuMap of ``stride`` s, ``produce`` and ``consume`` work in blocks of s
evaluations, as in PaPy: ``produce=2`` emits the first item of each of the s results,
then the second of each (``11, 21, 31, 12, 22, 32``), and ``consume=2`` is the
inverse, grouping item i with item i + s of its block.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from papycluster.engine import lineage
from papycluster.engine.numap import NuMap
from papycluster.engine.piping import (
    Fanout,
    chain,
    consumer,
    plain_next,
    produce_blocks,
    zip_inputs,
)
from papycluster.engine.progress import Counts
from papycluster.engine.worker import Worker
from papycluster.errors import NuMapTimeoutError, PiperError, WorkerError

log = logging.getLogger("papycluster.piper")

class Piper(lineage.Recovery):
    """A pipeline node: ``Piper(worker, parallel=NuMap(...), consume=1, produce=1, ...)``.

    ``worker`` is a Worker, a function, a sequence of them, or a Piper whose worker is
    reused. ``parallel`` is a NuMap, or False for lazy evaluation in the consumer's
    thread. See ``DESIGN.md`` section 2 for every option.
    """

    def __init__(self, worker: Any, parallel: NuMap | bool = False, consume: int = 1,
                 produce: int = 1, spawn: int = 1, timeout: float | None = None,
                 branch: Any = None, debug: bool = False, name: str | None = None,
                 track: bool = False, repeat: bool = False) -> None:
        if isinstance(worker, Piper):
            worker = worker.worker
        if isinstance(worker, Worker):
            self.worker = worker
        elif callable(worker) or (isinstance(worker, Sequence) and worker
                                  and not isinstance(worker, str | bytes)):
            try:
                self.worker = Worker(worker)
            except TypeError as exc:
                raise PiperError(f"Piper: cannot make a Worker of {worker!r}: {exc}")
        else:
            raise PiperError(f"Piper: {worker!r} is not a Worker, a function or a "
                             "sequence of them")
        if parallel is not False and parallel is not None and not isinstance(parallel,
                                                                              NuMap):
            raise PiperError(f"Piper: parallel must be a NuMap or False, not {parallel!r}")
        for option, value in (("consume", consume), ("produce", produce), ("spawn", spawn)):
            if not isinstance(value, int) or value < 1:
                raise PiperError(f"Piper: {option} must be a positive int, not {value!r}")
        if track and not isinstance(parallel, NuMap):
            raise PiperError("Piper: track=True needs a parallel NuMap")
        self.parallel: NuMap | bool = parallel if isinstance(parallel, NuMap) else False
        #: PaPy's name: the NuMap, or the builtin lazy ``map`` for a linear piper.
        self.imap: Any = self.parallel if self.parallel else map
        self.log = log
        self.consume = consume
        self.produce = produce
        self.spawn = spawn
        self.timeout = timeout
        self.branch = branch
        self.debug = debug
        self.track = track
        self.repeat = repeat
        self.name = name or f"piper_{id(self)}"
        self.connected = False
        self.started = False
        self.finished = False
        self.inbox: Any = None
        self.outbox: Iterator | None = None
        self.imap_tasks: list[Any] = []
        self.tee_num = 0
        #: PaPy's fan-out attributes, kept for code that reads them: ``tees`` holds one
        #: view of this piper's output per downstream piper (from stage 0 of ``start``),
        #: ``tee_locks`` one lock, and one more per downstream piper. The fan-out itself
        #: is ``Fanout``, which needs no lock-step between consumers.
        self.tees: list[_TeeIterator] = []
        self.tee_locks: list[threading.Lock] = [threading.Lock()]
        self._fanout: Fanout | None = None
        self._lock = threading.Lock()
        self._init_recovery()
        self._input_closed = False
        #: What has left this piper so far (the progress display reads it).
        self.progress = Counts()
        self._source: str | None = None  # the host that computed the last result

    def __repr__(self) -> str:
        return f"Piper({self.worker.__name__}, name={self.name!r})"

    def __iter__(self) -> Piper:
        return self

    # -- wiring --------------------------------------------------------------------

    def connect(self, inbox: Sequence[Any]) -> Piper:
        """Connect to upstream pipers and/or iterables; returns self (PaPy's ``__call__``).

        With several inputs, one item of each is zipped into the inbox, in the order
        given.
        """
        if self.started:
            raise PiperError(f"{self.name}: cannot connect a started piper")
        if self.connected:
            raise PiperError(f"{self.name}: already connected")
        if self.parallel and self.parallel._stage1:
            raise PiperError(f"{self.name}: its NuMap is already started")
        inputs: list[Iterator] = []
        self._upstreams = []
        for source in inbox:
            if isinstance(source, Piper):
                inputs.append(_TeeIterator(source, source._add_consumer()))
                self._upstreams.append(source)
            else:
                inputs.append(_Source(iter(source), self))
                self._upstreams.append(None)
        self._input_closed = False
        stride = self.parallel.stride if self.parallel else 1
        self.inbox = consumer(zip_inputs(inputs), self.consume, stride)
        # One result per input, so each result knows its inbox: what recovery needs.
        recovering = self.spawn == 1 and self.produce == 1
        self._inboxes = lineage.Inboxes(self.inbox) if recovering else None
        if self._inboxes is not None:
            self.inbox = self._inboxes
        if self.parallel:
            skip = True if self.timeout is not None else None
            self.imap_tasks = [
                self.parallel.add_task(self.worker, self.inbox, timeout=self.timeout,
                                       track=self.track, skip=skip)
                for _ in range(self.spawn)
            ]
            outbox: Iterator = chain(self.imap_tasks, stride, self._safe_next)
        elif recovering:
            outbox = chain([_LazyTask(self.worker, self.inbox)], 1, self._lazy_next)
        else:
            tasks = [map(self.worker, self.inbox) for _ in range(self.spawn)]
            outbox = chain(tasks, 1, plain_next)
        if self.produce > 1:
            outbox = produce_blocks(outbox, self.produce, stride, self.name, self.repeat)
        self.outbox = outbox
        self.connected = True
        return self

    __call__ = connect

    def _add_consumer(self) -> int:
        self.tee_num += 1
        lock = threading.Lock()
        lock.acquire()  # as PaPy's: taken until the fan-out hands this consumer a turn
        self.tee_locks.append(lock)
        return self.tee_num - 1

    def disconnect(self, forced: bool = False) -> None:
        """Undo ``connect``; the NuMap's tasks of this piper are removed."""
        if not self.connected:
            raise PiperError(f"{self.name}: not connected")
        if self.started:
            raise PiperError(f"{self.name}: stop it before disconnecting")
        if self.parallel and self.parallel._stage1:
            raise PiperError(f"{self.name}: its NuMap is still started")
        if self.parallel:
            tasks = self.parallel._tasks
            ids = [t.task for t in self.imap_tasks]
            if not tasks or not ids:
                pass  # a NuMap stopped for good has forgotten its tasks already
            elif [t.id for t in tasks[-len(ids):]] == ids:
                self.parallel.pop_task(len(ids))
            elif forced:
                self.parallel.pop_task(True)
            else:
                raise PiperError(f"{self.name}: its tasks are not the NuMap's last ones")
        self.inbox = self.outbox = None
        self.imap_tasks = []
        self.tee_num = 0
        self.tees = []
        self.tee_locks = [threading.Lock()]
        self._fanout = None
        self._inboxes = None
        self._upstreams = []
        self._lineage.clear()
        self.connected = False

    # -- running -------------------------------------------------------------------

    def start(self, stages: Sequence[int] | None = None) -> None:
        """Start: stage 0 prepares the fan-out; stages 1 and 2 start the NuMap.

        A linear piper is started by stage 0, a parallel one only once stage 2 has
        started its NuMap's feeding: ``started`` (and ``next()``) say so. Pipers that
        share a NuMap are started with ``(0, 1)`` each, then ``(2,)`` each.
        """
        if not self.connected:
            raise PiperError(f"{self.name}: connect it before starting")
        if stages is None:
            stages = (0, 1, 2) if self.parallel else (0,)
        if 0 in stages and not self.started:
            self._fanout = Fanout(self._next_result, max(self.tee_num, 1))
            self._lineage = lineage.Lineage(self.tee_num)
            self.tees = [_TeeIterator(self, i) for i in range(self.tee_num)]
            self.finished = False
            self.started = not self.parallel
            self.progress.reset()
        if self.parallel and 2 in stages and self._fanout is None:
            raise PiperError(f"{self.name}: start stage 0 before stage 2")
        if self.parallel:
            numap_stages = tuple(s for s in stages if s in (1, 2))
            if 1 in numap_stages and self.parallel._stage1:
                numap_stages = tuple(s for s in numap_stages if s != 1)
            if 2 in numap_stages and self.parallel._feeding:
                numap_stages = tuple(s for s in numap_stages if s != 2)
            if numap_stages:
                self.parallel.start(numap_stages)
            if 2 in stages:
                self.started = True

    def stop(self, forced: bool = False, **kwargs: Any) -> None:
        """Stop the piper's NuMap (unfinished pipers need ``forced=True``)."""
        if not self.started:
            raise PiperError(f"{self.name}: not started")
        if not self.finished and not forced:
            raise PiperError(f"{self.name}: not finished (use forced=True)")
        if self.parallel and self.parallel._started:
            ends = kwargs.get("ends")
            self.parallel.stop(ends=ends, forced=True)
        self.started = False

    def next(self) -> Any:
        """The next output item: a result, or a PiperError for a failed item.

        As in PaPy: ``PiperError`` at once unless the piper is connected and fully
        started; ``StopIteration`` after the last item, and again on every later call.
        """
        if not self.connected:
            raise PiperError(f"{self.name}: not connected")
        if self.finished:
            raise StopIteration
        if not self.started or self._fanout is None:
            raise PiperError(f"{self.name}: not started (stages 0, 1 and 2 for a "
                             "parallel piper)")
        if self.parallel and not self.parallel._started:
            raise PiperError(f"{self.name}: its NuMap {self.parallel.name} was stopped")
        return self._next_result()

    __next__ = next

    def _next_result(self) -> Any:
        assert self.outbox is not None
        with self._lock:
            try:
                item = next(self.outbox)
            except StopIteration:
                self.finished = True
                raise
            self.progress.count(isinstance(item, PiperError | WorkerError), self._source)
            self._source = None
        if isinstance(item, WorkerError):
            log.info("%s: item failed: %s", self.name, item)
            item = PiperError(item)
        if self.debug and isinstance(item, PiperError):
            raise item
        return item

    def _close_input(self) -> None:
        """Take no more items from the data this piper was connected to.

        What the piper has taken still flows downstream; then its inbox ends. This is
        how ``Dagger.stop`` ends a pipeline as PaPy's did, without losing items taken
        from the input.
        """
        self._input_closed = True

    def _safe_next(self, task: Any) -> Any:
        """Read one NuMap result; an exception or a timeout becomes an error item."""
        try:
            index, ok, value, source = task.numap.next_result(task.timeout, task.task,
                                                              task.block)
        except StopIteration:
            raise
        except NuMapTimeoutError as exc:  # skipped: its inbox is not needed any more
            self._settle_inbox(getattr(exc, "index", None), [])
            return PiperError(exc)
        except Exception as exc:  # the NuMap itself failed
            return PiperError(exc)
        self._source = source
        ok, value = self._settle(index, ok, value, source)
        if not ok:  # an exception, a lost worker, a pickling failure
            return value if isinstance(value, PiperError) else PiperError(value)
        return value

    def _lazy_next(self, task: _LazyTask) -> Any:
        return self._settle(*task.next_result())[1]

# -- iterator plumbing ------------------------------------------------------------


class _LazyTask:
    """A lazy piper's evaluation, one inbox at a time, with the position of each."""

    def __init__(self, worker: Worker, inbox: Iterator) -> None:
        self.worker = worker
        self.inbox = inbox
        self.position = 0

    def next_result(self) -> tuple[int, bool, Any, None]:
        inbox = next(self.inbox)
        self.position += 1
        return self.position - 1, True, self.worker(inbox), None


class _Source:
    """A piper's view of the data it was connected to; ends when its input is closed."""

    def __init__(self, iterator: Iterator, piper: Piper) -> None:
        self.iterator = iterator
        self.piper = piper

    def __iter__(self) -> _Source:
        return self

    def __next__(self) -> Any:
        if self.piper._input_closed:
            raise StopIteration
        return next(self.iterator)


class _TeeIterator:
    """One consumer's view of an upstream piper's output."""

    def __init__(self, piper: Piper, index: int) -> None:
        self.piper = piper
        self.index = index

    def __iter__(self) -> _TeeIterator:
        return self

    def __next__(self) -> Any:
        fanout = self.piper._fanout
        if fanout is None:
            raise PiperError(f"{self.piper.name}: read before it was started")
        return fanout.get(self.index)

