"""The lane of an engine (Dask, Ray): each tasklet is one task submitted to it.

``size`` threads (the NuMap's ``worker_num``: the tasklets in flight on the engine)
take tasklets from the lane's queue, submit each as one engine task running
:func:`papycluster.engines.runner.run`, and wait for it. So the NuMap keeps what makes
it one: it pulls its inputs lazily, within its buffer, ``stride`` items of a task at a
time, and orders, skips and times out results itself; the engine only runs them.

Faults are the engine's to handle first: a worker it loses while running a tasklet is
retried there (Dask's ``retries`` and its scheduler's ``allowed-failures``, Ray's
``max_retries``, both set from the NuMap's ``retries``). What the engine finally gives
up on becomes that item's :class:`WorkerLostError`, naming the engine and the cause;
every tasklet ends in exactly one ``hub.deliver``. An exception of the user's function
is the item's result, never retried (see :mod:`.runner`).

A subclass connects to its engine in ``__init__`` (a clear error naming the address
when it cannot) and gives ``_define`` (a task's function into the engine's store, once
per task), ``_submit``, ``_wait``, ``_outcome`` and ``_cancel``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from typing import Any

from papycluster.engine.lanes import HEARTBEAT_EVERY, Hub, QueueLane
from papycluster.engines import runner
from papycluster.errors import WorkerLostError

log = logging.getLogger("papycluster.numap")


class EngineLane(QueueLane):
    """``size`` concurrent tasklets on an engine named ``where`` (for messages)."""

    kind = "engine"
    local = False

    def __init__(self, hub: Hub, size: int, where: str) -> None:
        if size < 1:
            raise ValueError(f"{hub.name}: a NuMap on {where} needs worker_num >= 1 "
                             "(the tasklets in flight on the engine)")
        self.where = where
        self.tag = secrets.token_hex(6)  # names what this lane leaves in the engine
        self._defined: dict[int, tuple[str, Any]] = {}  # task id -> (key, stored blob)
        self._define_lock = threading.Lock()
        super().__init__(hub, size, [f"{self.kind}-{i}" for i in range(size)])

    # -- what an engine gives ----------------------------------------------------------

    def _define(self, defined: tuple) -> Any:
        """A task's definition (``runner.definition``) put in the engine's store (what
        ``_submit`` passes on)."""
        raise NotImplementedError

    @staticmethod
    def _setup() -> Any:
        """A function that readies an engine worker process and gives the host the
        engine reaches it by (see :mod:`.runner`)."""
        return None

    def _submit(self, key: str, stored: Any, item: Any, name: str) -> Any:
        """One engine task running ``runner.run(key, stored, item)``: its handle."""
        raise NotImplementedError

    def _wait(self, handle: Any, timeout: float) -> bool:
        """Whether the task is over (done, failed or cancelled) within ``timeout``."""
        raise NotImplementedError

    def _outcome(self, handle: Any) -> Any:
        """The task's return value; raises what the engine gave up with."""
        raise NotImplementedError

    def _cancel(self, handle: Any) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Let go of what the lane holds on the engine (close())."""

    # -- the lane ----------------------------------------------------------------------

    def close(self, deadline: float) -> None:
        super().close(deadline)
        self._defined.clear()
        try:
            self._release()
        except Exception as exc:
            log.warning("%s: releasing %s: %r", self.hub.name, self.where, exc)

    def _definition(self, task: Any) -> tuple[str, Any]:
        """The key and stored blob of ``task``, put in the engine's store once."""
        with self._define_lock:
            known = self._defined.get(task.id)
            if known is None:
                blob = task.remote_blob
                key = hashlib.sha1(blob).hexdigest()
                stored = self._define(runner.definition(blob, self._setup(), self.tag))
                known = self._defined[task.id] = (key, stored)
            return known

    def _serve(self) -> None:
        hub = self.hub
        while True:
            tasklet = self.queue.get()
            if tasklet is None:
                return
            task, index, item, attempts = tasklet
            outcome = self._run(task, index, item)
            if outcome is None:
                return  # closing: the NuMap no longer waits for it
            ok, value, source = outcome
            with hub.cond:
                self.inflight -= 1
            hub.deliver(task.id, index, ok, value, source)

    def _run(self, task: Any, index: int, item: Any) -> tuple[bool, Any, Any] | None:
        """``(ok, value, source)`` of one tasklet on the engine; None when closing."""
        hub = self.hub
        try:
            key, stored = self._definition(task)
            handle = self._submit(key, stored, item, f"{hub.name}-t{task.id}-i{index}")
        except Exception as exc:
            return False, self._lost(task, index, "could not be submitted", exc), None
        try:
            while not self._wait(handle, HEARTBEAT_EVERY):
                if hub.closing.is_set():
                    try:
                        self._cancel(handle)
                    except Exception:
                        pass  # the engine forgets it with the lane's client
                    return None
            ok, value, source = self._outcome(handle)
        except Exception as exc:
            return False, self._lost(task, index, "was given up by the engine", exc), None
        return ok, value, source

    def _lost(self, task: Any, index: int, what: str, exc: BaseException
              ) -> WorkerLostError:
        self.lost = f"{self.where}: {exc!r}"
        log.warning("%s: item %d of task %d %s (%s): %r", self.hub.name, index, task.id,
                    what, self.where, exc)
        return WorkerLostError(f"item {index} of task {task.id} {what} ({self.where}, "
                               f"retries {self.hub.retries}): {type(exc).__name__}: {exc}")
