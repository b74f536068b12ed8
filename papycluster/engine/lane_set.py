"""The lanes of one NuMap: starting them, the least loaded one, ending the idle ones.

A NuMap has at most two lanes (see :mod:`papycluster.engine.lanes`): a local one
(processes or threads) first, then a remote one, found through
:mod:`papycluster.hooks` so that the engine imports nothing of the cluster layer. A
tasklet goes to the least loaded lane that takes it.

The local workers of a NuMap whose inputs are all consumed and whose tasklets have
all come back end (PaPy's workers ended with their input); a rerun, or a new start
after ``stop()``, starts new ones. Remote workers stay until ``stop()``.

A NuMap on an engine cluster (``worker_remote="dask://..."``, a ``distributed.Client``,
``"ray://..."`` or ``"ray"``: see :func:`engine_of`) has one lane, the engine's
(``papycluster.engines``, found through :mod:`papycluster.hooks` too), with
``worker_num`` tasklets in flight on it; the engines themselves are imported there only.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from papycluster import hooks
from papycluster.engine.lanes import Hub, Lane, ThreadLane
from papycluster.engine.process_lane import ProcessLane
from papycluster.errors import WorkerLostError

log = logging.getLogger("papycluster.numap")


def engine_of(worker_remote: Any) -> tuple[str, Any] | None:
    """``('dask' | 'ray', target)`` when ``worker_remote`` names an engine cluster,
    None for agents (a list of ``(host, n)``, or a host group's name such as
    ``'all'``); ValueError for any other string."""
    if isinstance(worker_remote, str):
        if worker_remote.startswith("dask://"):
            return "dask", worker_remote
        if worker_remote == "ray" or worker_remote.startswith("ray://"):
            return "ray", worker_remote
        if worker_remote.isidentifier():
            return None  # a host group of the running cluster
        raise ValueError(f"worker_remote={worker_remote!r}: a string names a host group "
                         "of the cluster ('all', or a group of the hosts file) or an "
                         "engine cluster ('dask://host:port', 'ray://host:port' or "
                         "'ray'); papycluster agents are also a list of (host, n)")
    if type(worker_remote).__module__.split(".")[0] == "distributed":
        return "dask", worker_remote  # a distributed.Client
    return None


class LaneSet:
    """The lanes of a NuMap, built from its ``worker_type``, ``worker_num`` and the
    specs of its remote workers (one per worker), or the ``engine`` it runs on
    (:func:`engine_of`)."""

    def __init__(self, hub: Hub, worker_type: str, worker_num: int,
                 remote_specs: list[str], engine: tuple[str, Any] | None = None,
                 group: str | None = None) -> None:
        self.hub = hub
        self.group = group  # remote_specs are its members now; joiners come later
        self.worker_type = worker_type
        self.worker_num = worker_num
        self.remote_specs = remote_specs
        self.engine = engine
        self.lanes: list[Lane] = []
        #: The local workers ended because the inputs were all consumed (see
        #: retire_if_idle); _lock orders ending and starting them again.
        self.retired = False
        self._retiring: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.retired = False
        if self.engine is not None:
            kind, target = self.engine  # papycluster.engines, through the hooks
            lane = hooks.lane_factory(kind)(self.hub, target, self.worker_num)
            with self.hub.cond:
                self.lanes.append(lane)
            lane.start()
            return
        self.start_local()
        if self.remote_specs or self.group:
            factory = hooks.lane_factory("remote")  # cluster.lane
            lane = (factory(self.hub, self.remote_specs, group=self.group) if self.group
                    else factory(self.hub, self.remote_specs))
            with self.hub.cond:
                self.lanes.append(lane)
            lane.start()

    def start_local(self) -> None:
        """Start the local lane: processes and their getter, or threads."""
        if not self.worker_num or self.engine is not None:
            return
        kind = ProcessLane if self.worker_type == "process" else ThreadLane
        lane = kind(self.hub, self.worker_num)
        with self.hub.cond:
            self.lanes.insert(0, lane)
        lane.start()

    @property
    def slots(self) -> list:
        """The local worker processes (for tests and status)."""
        return [slot for lane in self.lanes if isinstance(lane, ProcessLane)
                for slot in lane.slots]

    @property
    def remote_workers(self) -> list:
        """The open remote workers (for tests and status)."""
        return [w for lane in self.lanes if lane.kind == "remote"
                for w in getattr(lane, "workers", ())]

    def may_adapt(self) -> bool:
        """Whether an adaptive buffer may grow here: every lane runs its tasklets in
        other processes (local or remote), each batch of them carried as one message."""
        lanes = self.lanes
        return bool(lanes) and all(lane.kind in ("process", "remote") for lane in lanes)

    def processes_only(self) -> ProcessLane | None:
        """The lane of local processes when it is the only one, else None."""
        lanes = self.lanes
        if len(lanes) == 1 and isinstance(lanes[0], ProcessLane):
            return lanes[0]
        return None

    # -- dispatch ----------------------------------------------------------------------

    def dispatch(self, task: Any, index: int, item: Any, attempts: int = 0) -> None:
        """Hand one tasklet to the least loaded lane that takes it; when none is
        left, its result is a WorkerLostError naming what was lost."""
        hub = self.hub
        if isinstance(task.blob, BaseException):
            hub.deliver(task.id, index, False, task.blob)
            return
        check = False
        while True:
            with hub.cond:
                target = self._least_loaded(check)
            if target is None:
                break
            if target.submit(task, index, item, attempts):
                return
            check = True  # it could not take it: from now on, lanes that can
        with hub.cond:
            lost = "; ".join(lane.lost for lane in self.lanes if lane.lost)
        error = WorkerLostError(f"{hub.name}: no worker is left to run item {index} "
                                f"of task {task.id}" + (f" (lost: {lost})" if lost else ""))
        hub.deliver(task.id, index, False, error)

    def _least_loaded(self, check: bool) -> Lane | None:
        """The lane to try (lock held): the only one, as it is (it picks its own
        worker, so a tasklet costs one scan), unless ``check``; else the least
        loaded lane that can take a tasklet, or None."""
        lanes = self.lanes
        if len(lanes) == 1 and not check:
            return lanes[0]
        target: Lane | None = None
        best = float("inf")
        for lane in lanes:
            load = lane.load()
            if load < best:
                target, best = lane, load
        return target

    def send(self, batch: list[tuple[Any, int, Any]]) -> None:
        """Hand out a batch of tasklets (the sender's): several go to the processes in
        one message when they are the only lane (see batch_limit)."""
        if len(batch) == 1:
            self.dispatch(*batch[0])
        elif batch:
            sendable = []
            for task, index, item in batch:
                if isinstance(task.blob, BaseException):
                    self.hub.deliver(task.id, index, False, task.blob)
                else:
                    sendable.append((task, index, item))
            lane = self.processes_only()
            if lane is not None:
                lane.submit_many(sendable)
            else:
                for tasklet in sendable:  # the lanes changed since the batch was made
                    self.dispatch(*tasklet)
        batch.clear()

    def batch_limit(self, capacity: int) -> int:
        """Tasklets per message: only for process-only pools with a deep buffer."""
        lane = self.processes_only()
        return 1 if lane is None else lane.batch_limit(capacity)

    # -- idle workers ------------------------------------------------------------------

    def _idle(self) -> bool:
        """All inputs consumed, every tasklet back, nothing to rerun (lock held).

        Only lanes of local workers: remote workers stay until ``stop()``.
        """
        return (not self.retired and not self.hub.closing.is_set()
                and self.hub.inputs_done()
                and bool(self.lanes)
                and all(lane.local for lane in self.lanes)
                and not any(lane.busy() for lane in self.lanes))

    def retire_if_idle(self) -> None:
        """End the local workers once they can get no more work (PaPy's ended with
        their input), in a thread of its own: the caller may be one of them."""
        with self.hub.cond:
            if self._retiring is not None or not self._idle():
                return
            thread = threading.Thread(target=self._retire, args=(self.hub.generation(),),
                                      name=f"{self.hub.name}-retire", daemon=True)
            self._retiring = thread
            thread.start()  # under the lock: whoever sees it can join it

    def _retire(self, generation: int) -> None:
        try:
            with self._lock:
                with self.hub.cond:
                    if generation != self.hub.generation() or not self._idle():
                        return
                    self.retired = True
                    lanes = [lane for lane in self.lanes if lane.local]
                    self.lanes = [lane for lane in self.lanes if not lane.local]
                for lane in lanes:
                    lane.stop()
                    lane.close(time.monotonic() + 5.0)
                log.debug("%s: inputs consumed, the idle local workers ended",
                          self.hub.name)
        finally:
            with self.hub.cond:
                self._retiring = None

    def ensure_local(self) -> None:
        """Start the local workers again if they ended idle (a rerun needs them)."""
        with self._lock:
            if not self.retired or self.hub.closing.is_set():
                return
            self.start_local()
            with self.hub.cond:
                self.retired = False

    # -- stop --------------------------------------------------------------------------

    def wait_retired(self, timeout: float) -> None:
        """Idle workers ending: let them end first."""
        with self.hub.cond:  # set and started under the lock: read it under the lock
            retiring = self._retiring
        if retiring is not None and retiring is not threading.current_thread():
            retiring.join(timeout)

    def stop(self) -> None:
        """Ask every lane to stop (before any is waited for)."""
        for lane in list(self.lanes):
            lane.stop()

    def close(self, deadline: float) -> None:
        """Wait for the lanes by ``deadline`` and release them; then remove what the
        worker processes that died mid-run left (as the others')."""
        for lane in list(self.lanes):
            lane.close(deadline)
        with self.hub.cond:
            dead = list(self.hub.dead_workers)
            self.hub.dead_workers.clear()
        for worker in dead:
            worker.sweep()
        self.lanes = []
