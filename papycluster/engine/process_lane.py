"""The lane of a NuMap's local worker processes: one pipe each, a getter, respawn.

Each process has its own pipe, and the lane knows which tasklets each one holds: when
a process dies, its tasklets run again (at most ``retries`` times) and a new process
takes its place. One getter thread reads the results of all of them through a
selector (``multiprocessing.connection.wait`` on Windows, where pipes are not
selectable). Tasklets go out in batches when the NuMap's sender has several waiting
(see ``NuMap._sender``). The interface is :class:`papycluster.engine.lanes.Lane`.
"""

from __future__ import annotations

import logging
import selectors
import sys
import threading
from collections import deque
from multiprocessing.connection import wait
from typing import Any

from papycluster.engine import process as proto
from papycluster.engine.lanes import QUEUED, Hub, join_all
from papycluster.errors import WorkerLostError

log = logging.getLogger("papycluster.numap")

#: Most tasklets sent to a process in one message.
BATCH_MAX = 32

_GONE = object()


class _ProcessSlot:
    """One local worker process and the tasklets it holds."""

    def __init__(self, context: Any, name: str) -> None:
        self.worker = proto.ProcessWorker(context, name=name)
        #: (task id, index) -> (task, item, attempts so far): resent if the process dies
        self.inflight: dict[tuple[int, int], tuple[Any, Any, int]] = {}
        self.defined: set[int] = set()
        self.send_lock = threading.Lock()
        self.dead = False
        #: After a worker died holding several tasklets: those still to run here one at
        #: a time (see ProcessLane._next_suspect); None when the worker takes any tasklet.
        self.quarantine: deque | None = None


class ProcessLane:
    """``size`` local worker processes and the getter thread that reads them."""

    kind = "process"
    local = True
    lost = ""

    def __init__(self, hub: Hub, size: int) -> None:
        self.hub = hub
        context = hub.context()
        self._wake_r, self._wake_w = context.Pipe(duplex=False)
        self._getter_stop = threading.Event()
        self.slots = [_ProcessSlot(context, f"{hub.name}-worker-{i}") for i in range(size)]
        self.resends = 0  # tasklets of a dead worker not yet sent again
        self._getter = threading.Thread(target=self._get, name=f"{hub.name}-getter",
                                        daemon=True)

    def start(self) -> None:
        self._getter.start()

    # -- the Lane interface ----------------------------------------------------------

    def load(self) -> float:
        best = float("inf")
        for slot in self.slots:
            if not slot.dead and slot.quarantine is None and len(slot.inflight) < best:
                best = len(slot.inflight)
        if best == float("inf") and any(not slot.dead and slot.quarantine is not None
                                        for slot in self.slots):
            return QUEUED
        return best

    def submit(self, task: Any, index: int, item: Any, attempts: int = 0) -> bool:
        """Send a tasklet to the least loaded process, or queue it behind the suspects
        of a quarantine when every process is in one; False when none is left."""
        with self.hub.cond:
            target: _ProcessSlot | None = None
            best = float("inf")
            for slot in self.slots:
                if (not slot.dead and slot.quarantine is None
                        and len(slot.inflight) < best):
                    target, best = slot, len(slot.inflight)
            if target is None:
                waiting = [slot for slot in self.slots
                           if not slot.dead and slot.quarantine is not None]
                if not waiting:
                    return False
                waiting[0].quarantine.append((task, index, item, attempts))
                target, queued = waiting[0], True
            else:
                queued = False
                target.inflight[(task.id, index)] = (task, item, attempts)
        if queued:
            self._next_suspect(target)
            return True
        return self._send_to_slot(target, task, index, item)

    def submit_many(self, sendable: list[tuple[Any, int, Any]]) -> None:
        """Send several tasklets to the least loaded process in one message."""
        hub = self.hub
        try:
            data = proto.dumps(("run", [(t.id, i, item) for t, i, item in sendable]))
        except Exception:  # find the unpicklable item(s) one by one
            for task, index, item in sendable:
                hub.dispatch(task, index, item)
            return
        with hub.cond:
            live = [slot for slot in self.slots
                    if not slot.dead and slot.quarantine is None]
            if not live:
                slot = None
            else:
                slot = min(live, key=lambda s: len(s.inflight))
                for task, index, item in sendable:
                    slot.inflight[(task.id, index)] = (task, item, 0)
        hub.weigh(len(data), len(sendable))
        if slot is None or not self._send_raw(slot, [t for t, _, _ in sendable], data):
            if slot is not None:
                with hub.cond:
                    for task, index, _ in sendable:
                        slot.inflight.pop((task.id, index), None)
            for task, index, item in sendable:
                hub.dispatch(task, index, item)

    def batch_limit(self, capacity: int) -> int:
        """Tasklets per message for a buffer of ``capacity``."""
        return max(1, min(BATCH_MAX, capacity // (4 * len(self.slots))))

    def busy(self) -> bool:
        return bool(self.resends) or any(slot.inflight or slot.quarantine
                                         for slot in self.slots)

    def stop(self) -> None:
        self._getter_stop.set()
        for slot in self.slots:
            slot.worker.stop(timeout=2.0)
        try:
            self._wake_w.send_bytes(b"")
        except OSError:
            pass

    def close(self, deadline: float) -> None:
        join_all([self._getter], deadline)
        for conn in (self._wake_r, self._wake_w):
            conn.close()

    # -- sending ---------------------------------------------------------------------

    def _send_raw(self, slot: _ProcessSlot, tasks: list[Any], data: bytes) -> bool:
        """Send a ``run`` message, defining its tasks first; False if the pipe broke."""
        try:
            with slot.send_lock:
                for task in tasks:
                    if task.id not in slot.defined:
                        assert isinstance(task.blob, bytes)
                        slot.worker.send(proto.dumps(("def", task.id, task.blob)))
                        slot.defined.add(task.id)
                slot.worker.send(data)
            return True
        except (OSError, EOFError, ValueError):
            return False

    def _send_to_slot(self, slot: _ProcessSlot, task: Any, index: int, item: Any) -> bool:
        """Send a tasklet to a process; False if the process is gone (try another)."""
        hub = self.hub
        try:
            data = proto.dumps(("run", [(task.id, index, item)]))
        except Exception as exc:
            with hub.cond:
                slot.inflight.pop((task.id, index), None)
            hub.deliver(task.id, index, False, proto.describe_exception(exc))
            return True
        hub.weigh(len(data), 1)
        if self._send_raw(slot, [task], data):
            return True
        with hub.cond:
            taken = slot.inflight.pop((task.id, index), _GONE) is not _GONE
        if not taken:  # the getter already reported it as lost
            return True
        return hub.stopping.is_set()

    # -- collecting ------------------------------------------------------------------

    def _ending(self) -> bool:
        return self.hub.closing.is_set() or self._getter_stop.is_set()

    def _get(self) -> None:
        """Read results from the worker processes; replace the ones that die.

        It ends when the NuMap closes, or when the lane stops (idle workers ending).
        """
        if sys.platform == "win32":  # pipes are not selectable there
            return self._get_wait()
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r.fileno(), selectors.EVENT_READ, None)

        def watch(slot: _ProcessSlot) -> None:
            selector.register(slot.worker.conn.fileno(), selectors.EVENT_READ, (0, slot))
            selector.register(slot.worker.sentinel, selectors.EVENT_READ, (1, slot))

        for slot in self.slots:
            watch(slot)
        try:
            while not self._ending():
                for key, _ in selector.select(timeout=1.0):
                    if key.data is None or self._ending():
                        continue
                    kind, slot = key.data
                    if slot.dead:
                        continue
                    if kind == 0:
                        self._receive(slot)
                    else:
                        selector.unregister(slot.worker.conn.fileno())
                        selector.unregister(slot.worker.sentinel)
                        watch(self._replace(slot))
        finally:
            selector.close()

    def _get_wait(self) -> None:
        while not self._ending():
            by_conn = {slot.worker.conn: slot for slot in self.slots if not slot.dead}
            by_sentinel = {slot.worker.sentinel: slot for slot in self.slots
                           if not slot.dead}
            ready = wait([*by_conn, *by_sentinel, self._wake_r], timeout=1.0)
            for obj in ready:
                if obj in by_conn:
                    self._receive(by_conn[obj])
            for obj in ready:
                if obj in by_sentinel and not self._ending():
                    self._replace(by_sentinel[obj])

    def _receive(self, slot: _ProcessSlot) -> bool:
        """Read one message of results; False at the end of the pipe."""
        hub = self.hub
        try:
            data = slot.worker.conn.recv_bytes()
        except (EOFError, OSError):
            return False  # the sentinel reports the death
        if data == proto.PARKED:  # items wait in it now: it stays until stop()
            hub.parked()
            return True
        try:
            results = proto.decode_results(data, f"worker pid {slot.worker.pid}")
        except Exception as exc:  # a result that pickles but does not unpickle
            log.error("%s: undecodable result from pid %s: %r", hub.name,
                      slot.worker.pid, exc)
            return True
        hub.weigh(len(data), len(results))
        with hub.cond:
            for task_id, index, _, _ in results:
                slot.inflight.pop((task_id, index), None)
            if not slot.inflight and hub.adaptive():
                hub.grow()
        for task_id, index, ok, value in results:
            hub.deliver(task_id, index, ok, value)
        if slot.quarantine is not None:
            self._next_suspect(slot)
        if not slot.inflight:
            hub.settle()
        return True

    def _replace(self, slot: _ProcessSlot) -> _ProcessSlot:
        """A worker process died: drain what it said, respawn, resend what it held.

        Each tasklet it held goes to a live worker again, at most ``retries`` times (a
        process killed by the OOM killer or a user costs no item, as in Dask); one that
        keeps killing its worker becomes a WorkerLostError item.
        """
        hub = self.hub
        while True:
            try:
                if not slot.worker.conn.poll(0):
                    break
            except (EOFError, OSError):
                break
            if not self._receive(slot):
                break
        code = slot.worker.process.exitcode
        replacement = _ProcessSlot(hub.context(), slot.worker.process.name)
        again, failed = [], []
        with hub.cond:
            slot.dead = True
            lost = [(task, index, item, attempts)
                    for (_, index), (task, item, attempts) in slot.inflight.items()]
            slot.inflight.clear()
            suspects = list(slot.quarantine or ())
            if slot in self.slots:
                self.slots[self.slots.index(slot)] = replacement
            stopping = hub.stopping.is_set()
            if len(lost) == 1:  # it ran this one alone: the one that killed it
                task, index, item, attempts = lost[0]
                if attempts < hub.retries and not stopping:
                    (suspects if suspects else again).append((task, index, item,
                                                              attempts + 1))
                else:
                    failed.append((task, index, item, attempts))
            else:  # which one killed it is not known: each runs alone, uncharged
                suspects = lost + suspects
            if stopping:
                failed += suspects
                suspects = []
            if suspects:
                replacement.quarantine = deque(suspects)
            self.resends += len(again)  # the workers are not idle until they are sent
        log.warning("%s: worker pid %s died (exit code %s) holding %d item(s); %d resent%s",
                    hub.name, slot.worker.pid, code, len(lost), len(again) + len(suspects),
                    f", {len(suspects)} one at a time" if suspects else "")
        for task, index, _, attempts in failed:
            tried = f" (after {attempts + 1} attempts)" if attempts else ""
            error = WorkerLostError(
                f"{hub.name}: worker process pid {slot.worker.pid} died (exit code "
                f"{code}) while running item {index} of task {task.id}{tried}")
            hub.deliver(task.id, index, False, error)
        if again:  # not from this thread: a send may wait for a worker to read
            threading.Thread(target=self._resend, args=(again, hub.generation()),
                             daemon=True, name=f"{hub.name}-resend").start()
        if suspects:
            self._next_suspect(replacement)
        # Not swept yet: the items it dumped before it died may still be loaded.
        slot.worker.stop(timeout=0.5, sweep=False)
        with hub.cond:
            hub.dead_workers.append(slot.worker)
        return replacement

    def _next_suspect(self, slot: _ProcessSlot) -> None:
        """Send a quarantined worker its next suspect, alone; end the quarantine when
        none is left.

        The tasklets a worker held when it died run one at a time on its replacement,
        so that a second death names the one that kills (and charges it a retry), and
        the others, which died with it by bad luck, cost none. Sent only to a worker
        with nothing in flight, which is reading: the send does not block for long.
        """
        hub = self.hub
        with hub.cond:
            if slot.dead or slot.inflight or slot.quarantine is None:
                return
            if not slot.quarantine:
                slot.quarantine = None
                return
            task, index, item, attempts = slot.quarantine.popleft()
            slot.inflight[(task.id, index)] = (task, item, attempts)
        if not self._send_to_slot(slot, task, index, item):
            with hub.cond:
                self.resends += 1
            threading.Thread(target=self._resend, args=([(task, index, item, attempts)],
                                                        hub.generation()),
                             daemon=True, name=f"{hub.name}-resend").start()

    def _resend(self, tasklets: list[tuple], generation: int) -> None:
        for task, index, item, attempts in tasklets:
            if generation != self.hub.generation():
                return
            self.hub.dispatch(task, index, item, attempts)
            with self.hub.cond:
                self.resends -= 1
