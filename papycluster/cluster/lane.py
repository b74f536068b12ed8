"""The lane of a NuMap's remote workers: worker processes on cluster agents.

The engine finds it through :mod:`papycluster.hooks` (``'remote'``), so that the
engine imports nothing of the cluster layer; its interface is
:class:`papycluster.engine.lanes.Lane`. One thread per remote worker takes tasklets
from the lane's queue and sends them the same bytes a local process gets, with up to
``REMOTE_DEPTH`` messages in flight. Small items travel several to a message: the
batch grows while the messages stay small and more tasklets wait than idle workers
need, and shrinks for big items (:class:`_BatchSize`); the worker process runs them one
by one and answers as they finish (fast results coalesced, a slow one at once).

A lane given a host group (``NuMap(worker_remote="all")``) looks at the cluster state
every ``JOIN_EVERY`` seconds and takes on the group's hosts that are new, or that were
lost and have a new agent (``papycluster up`` started it again), with their
``workers`` each; lost hosts are dropped as always.

Remote items are never lost silently: a remote worker whose host dies, or shows no sign
of life for ``heartbeat`` seconds, gives its tasklets back to the queue, and a
surviving worker runs them again (at most ``retries`` times); only when no worker of
the lane survives do they become :class:`WorkerLostError` items naming the host.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

from papycluster.cluster.client import open_remote_worker
from papycluster.cluster.state import load_state
from papycluster.engine import process as proto
from papycluster.engine.lanes import HEARTBEAT_EVERY, Hub, QueueLane, join_all
from papycluster.errors import WorkerLostError

log = logging.getLogger("papycluster.numap")

#: Messages of tasklets in flight per remote worker: the second hides the round trip.
REMOTE_DEPTH = 2

#: Most tasklets in one message to a remote worker, and the size past which a message
#: is too big to grow (its pickled bytes): see _BatchSize.
MAX_BATCH = 256
BATCH_BYTES = 1 << 20

#: Seconds between two looks of a host group's lane at the cluster state.
JOIN_EVERY = 1.0

#: How long a stop waits for the agents of remote workers lost mid-run to remove what
#: those left (a cut-off host cannot answer; its agent removes it when it ends).
SWEEP_TIMEOUT = 2.0


def group_members(group: str) -> list[tuple[str, int, tuple]]:
    """``(host, workers, agent)`` of each host of ``group`` in the cluster state:
    ``'all'`` is every host, another name the hosts that list it in ``groups``.
    ``agent`` tells one start of its agent from the next. ValueError when the group
    has no host up."""
    state = load_state(missing_ok=True)
    hosts = state.hosts if state is not None else {}
    members = [(name, max(1, entry.workers), (entry.connect, entry.agent_port, entry.pid))
               for name, entry in sorted(hosts.items())
               if group == "all" or group in entry.groups]
    if not members:
        raise ValueError(f"worker_remote={group!r}: no host of the running cluster is "
                         "in that group (`papycluster status` lists them; a host joins "
                         "a group by `groups = [...]` in the hosts file)")
    return members


class RemoteLane(QueueLane):
    """One worker process per entry of ``specs`` (a host of the cluster, or
    ``'host:port'`` of an agent), fed from one queue; with ``group``, also the hosts
    that join that group later (see the module's docstring)."""

    kind = "remote"
    local = False

    def __init__(self, hub: Hub, specs: list[str], group: str | None = None) -> None:
        self.group = group
        #: A group's hosts -> the agent their workers were opened on (group_members).
        self.members: dict[str, tuple] = {}
        self._stopped = False
        self.specs = list(specs)
        self.size = len(specs)
        self.idle = 0  # remote workers waiting for a tasklet
        self.lost_hosts: set[str] = set()  # hosts declared lost (for the run)
        #: The open remote workers, and those lost mid-run with the thread closing
        #: each (what they left is asked of their agents at close).
        self.workers: list[Any] = []
        self._lost_workers: list[tuple[Any, threading.Thread]] = []
        super().__init__(hub, len(specs),
                         [f"remote-{spec}-{i}" for i, spec in enumerate(specs)])

    def _thread_args(self, i: int) -> tuple:
        return (self.specs[i],)

    def start(self) -> None:
        if self.group is not None:
            try:
                self.members = {h: agent for h, _, agent in group_members(self.group)}
            except ValueError:
                self.members = {}
            threading.Thread(target=self._watch, daemon=True,
                             name=f"{self.hub.name}-join-{self.group}").start()
        super().start()

    def _watch(self) -> None:
        """Take on the group's hosts that join, or come back with a new agent."""
        hub = self.hub
        while not hub.closing.wait(JOIN_EVERY) and not self._stopped:
            try:
                members = group_members(self.group)
            except Exception:  # no state for a moment (a concurrent up), or no host
                continue
            for host, n, agent in members:
                known = self.members.get(host)
                if known is None or (known != agent and host in self.lost_hosts):
                    self._join(host, n, agent, "joined" if known is None else
                               "is back")

    def _join(self, host: str, n: int, agent: tuple, how: str) -> None:
        hub = self.hub
        threads = [threading.Thread(target=self._serve, args=(host,), daemon=True,
                                    name=f"{hub.name}-remote-{host}-{len(self.specs) + i}")
                   for i in range(n)]
        with hub.cond:
            if self._stopped:
                return
            self.members[host] = agent
            self.lost_hosts.discard(host)
            self.specs += [host] * n
            self.size += n
            self.alive += n
            self.threads += threads
        log.warning("%s: host %s %s: %d remote worker(s) on it join the pool", hub.name,
                    host, how, n)
        for thread in threads:
            thread.start()

    def stop(self) -> None:
        with self.hub.cond:
            self._stopped = True
        super().stop()

    def close(self, deadline: float) -> None:
        join_all(self.threads, deadline)
        self._sweep_lost(SWEEP_TIMEOUT)
        for worker in self.workers:
            try:
                worker.close()
            except Exception as exc:
                log.warning("%s: closing remote worker %s: %r", self.hub.name,
                            getattr(worker, "name", worker), exc)
        self.workers = []

    # -- one remote worker -----------------------------------------------------------

    def _serve(self, spec: str) -> None:
        """Serve tasklets from the lane through one worker process on an agent.

        While a reply is awaited the agent is pinged; a host that shows no sign of life
        for ``heartbeat`` seconds is declared lost. The tasklet it held goes back to
        the lane for a surviving worker (at most ``retries`` times); this worker is
        dropped, so a host that comes back cannot deliver a duplicate.
        """
        hub = self.hub
        try:
            remote = open_remote_worker(spec, timeout=min(10.0, hub.heartbeat))
        except Exception as exc:
            log.error("%s: cannot open a remote worker on %s: %s", hub.name, spec, exc)
            self._worker_lost(spec, exc, None)
            return
        with hub.cond:
            self.workers.append(remote)
        if not hub.log_to_driver:
            try:
                remote.send(proto.dumps(("opt", {"log_to_driver": False})))
            except Exception:
                pass  # a broken connection fails the first tasklet's send
        defined: set[int] = set()
        held: deque[tuple] = deque()  # sent, not yet answered; oldest first
        alive = _Liveness()
        batch = _BatchSize()
        while True:
            while len(held) < REMOTE_DEPTH * batch.limit:
                tasklet = self._next_tasklet(wait=not held)
                if tasklet is None:
                    if not held:
                        return  # the stop mark
                    break  # nothing more queued: wait for a reply
                if not held:
                    alive.touch()  # silence counts only while the host owes us a reply
                known = spec in self.lost_hosts
                if known or getattr(remote, "lost", False):
                    # A worker of a host already known lost, or whose connection ended
                    # while it was idle: this tasklet never left, so it goes back
                    # unchanged (no retry is used up) and the worker ends. The first
                    # news of a host is a warning, as when a worker is lost with items.
                    (log.info if known else log.warning)(
                        "%s: remote worker on %s lost while idle (0 item(s) in flight): "
                        "%s", hub.name, spec, "its host was lost" if known else
                        getattr(remote, "lost_reason", "its connection ended"))
                    self.queue.put(tasklet)
                    self._worker_lost(spec, WorkerLostError(
                        f"worker on {spec}: its host was lost"), list(held))
                    self._drop(remote)
                    return
                tasklets = [tasklet]
                while len(tasklets) < batch.limit:  # what waits and no idle worker needs
                    more = self._next_tasklet(wait=False)
                    if more is None:
                        break
                    tasklets.append(more)
                data = self._message(tasklets)
                if data is None:
                    continue  # none of them could be pickled: each has its error item
                held.extend(tasklets)
                try:
                    # A send waits for room in a buffer, never for the agent (a refused
                    # one fails the next reply): no sign of life, only replies and pings.
                    for task, _, _, _ in tasklets:
                        if task.id not in defined:
                            remote.send(proto.dumps(("def", task.id, task.remote_blob)))
                            defined.add(task.id)
                    remote.send(data)
                except Exception as exc:
                    self._lost_running(spec, remote, exc, held)
                    return
                hub.weigh(len(data), len(tasklets))
                batch.sent(len(tasklets), len(data))
            try:
                reply = self._await_reply(remote, spec, alive)
                if reply is None:
                    return  # closing
                results = proto.decode_results(reply, f"the worker on {spec}")
            except Exception as exc:
                self._lost_running(spec, remote, exc, held)
                return
            hub.weigh(len(reply), len(results))
            answered = {(task_id, reply_index) for task_id, reply_index, _, _ in results}
            if answered:
                kept = [t for t in held if (t[0].id, t[1]) not in answered]
                held.clear()
                held.extend(kept)
            with hub.cond:
                self.inflight -= len(results)
                if not held and hub.adaptive():
                    hub.grow()  # this worker ran out of work: the buffer may hold it back
            for task_id, reply_index, ok, value in results:
                hub.deliver(task_id, reply_index, ok, value, spec)

    def _message(self, tasklets: list[tuple]) -> bytes | None:
        """The ``run`` message of ``tasklets``; one that cannot be pickled is taken out
        of the list and becomes its own error item (it never left, so no worker is
        lost for it). None if none is left."""
        try:
            return proto.dumps(("run", [(t[0].id, t[1], t[2]) for t in tasklets]))
        except Exception:
            pass
        good = []
        for tasklet in tasklets:
            task, index, item, _ = tasklet
            try:
                proto.dumps(item)
            except Exception as exc:
                with self.hub.cond:
                    self.inflight -= 1
                self.hub.deliver(task.id, index, False, proto.describe_exception(exc))
                continue
            good.append(tasklet)
        tasklets[:] = good
        if not good:
            return None
        return proto.dumps(("run", [(t[0].id, t[1], t[2]) for t in good]))

    def _next_tasklet(self, wait: bool) -> tuple | None:
        """The next tasklet for a remote worker; None for the stop mark or nothing.

        A worker that already has a tasklet in flight takes another one only when
        more are queued than workers wait idle, so that pipelining hides the round
        trip to a host without taking work from an idle worker.
        """
        if wait:
            with self.hub.cond:
                self.idle += 1
            try:
                return self.queue.get()
            finally:
                with self.hub.cond:
                    self.idle -= 1
        if self.queue.qsize() <= self.idle:
            return None
        try:
            tasklet = self.queue.get_nowait()
        except queue.Empty:
            return None
        if tasklet is None:  # the stop mark is for a worker that waits: leave it there
            self.queue.put(None)
        return tasklet

    def _lost_running(self, spec: str, remote: Any, exc: BaseException,
                      held: deque) -> None:
        task, index = held[0][0], held[0][1]
        log.warning("%s: remote worker on %s lost while running item %d of task %d "
                    "(%d item(s) in flight): %s", self.hub.name, spec, index, task.id,
                    len(held), exc)
        # The agent saying that this worker's process ended proves the host is alive:
        # its other workers stay in the lane.
        self._worker_lost(spec, exc, list(held),
                          host_alive=getattr(remote, "process_ended", False))
        self._drop(remote)

    def _await_reply(self, remote: Any, spec: str, alive: _Liveness) -> bytes | None:
        """The next reply of ``remote``; None when closing; WorkerLostError if silent.

        ``alive`` is when the host last showed a sign of life (a reply, a ping); the
        host is declared lost before ``heartbeat`` seconds pass since then, so it is
        always declared within ``heartbeat`` of going silent.
        """
        heartbeat = self.hub.heartbeat
        ping = getattr(remote, "ping", None)
        while True:
            try:
                reply = remote.recv(timeout=HEARTBEAT_EVERY)
                alive.touch()
                return reply
            except TimeoutError:
                if self.hub.closing.is_set():
                    return None
            if ping is None:
                continue
            if ping(timeout=HEARTBEAT_EVERY):
                alive.touch()
            elif alive.silent() + 2 * HEARTBEAT_EVERY > heartbeat:
                raise WorkerLostError(
                    f"host {spec} did not answer for {alive.silent():.1f} s "
                    f"(heartbeat {heartbeat:g} s)")

    def _drop(self, remote: Any) -> None:
        """Close a lost remote worker without waiting on a host that may be cut off."""
        closing = threading.Thread(target=_close_quietly, args=(remote,), daemon=True,
                                   name=f"{self.hub.name}-drop-"
                                        f"{getattr(remote, 'name', '?')}")
        with self.hub.cond:
            if remote in self.workers:
                self.workers.remove(remote)
            self._lost_workers.append((remote, closing))
        closing.start()

    def _worker_lost(self, spec: str, exc: BaseException, held: list[tuple] | None,
                     host_alive: bool = False) -> None:
        """A remote worker is gone: resend what it held, or fail it with the queue.

        Each tasklet ``held`` goes back to the lane while another worker of the lane
        survives and its retries are not used up; when none survives, every queued
        tasklet becomes an error item naming the host. A worker lost while holding
        tasklets marks its host lost (unless ``host_alive``: its agent reported that
        only the worker's process ended), so that the host's idle workers leave the lane
        at their next tasklet instead of each using up a retry (or a heartbeat) on it.
        """
        hub = self.hub
        failed = []
        with hub.cond:
            self.alive -= 1
            self.lost = f"{spec}: {exc}"
            if held and not host_alive:  # lost while running: so are the others there
                self.lost_hosts.add(spec)
            survivors = self.alive
            for task, index, item, attempts in held or ():
                if survivors and attempts < hub.retries:
                    self.queue.put((task, index, item, attempts + 1))
                else:
                    self.inflight -= 1
                    failed.append((task, index, attempts))
        for task, index, attempts in failed:
            hub.deliver(task.id, index, False, _lost(spec, index, task.id, exc, attempts))
        if survivors:
            return
        while True:
            try:
                tasklet = self.queue.get_nowait()
            except queue.Empty:
                return
            if tasklet is None:
                self.queue.put(None)
                return
            task, index, _, attempts = tasklet
            with hub.cond:
                self.inflight -= 1
            hub.deliver(task.id, index, False, _lost(spec, index, task.id, exc, attempts))

    def _sweep_lost(self, timeout: float) -> None:
        """Ask the agents of remote workers lost mid-run to remove what those left.

        A host that is gone or cut off cannot answer: each request runs in its own
        thread and the stop waits at most ``timeout`` for all of them (the agent
        removes the rest when it ends).
        """
        name = self.hub.name
        with self.hub.cond:
            lost, self._lost_workers = self._lost_workers, []
        threads = []
        for remote, closing in lost:
            if getattr(remote, "sweep", None) is None:
                continue

            def ask(remote: Any = remote, closing: threading.Thread = closing) -> None:
                closing.join(timeout)  # the agent learns of the death by the close
                try:
                    remote.sweep(timeout=timeout)
                except Exception as exc:
                    log.info("%s: could not have %s remove what its lost worker left: "
                             "%r", name, getattr(remote, "name", remote), exc)

            thread = threading.Thread(target=ask, daemon=True,
                                      name=f"{name}-sweep-{getattr(remote, 'name', '?')}")
            thread.start()
            threads.append(thread)
        join_all(threads, time.monotonic() + timeout)


class _BatchSize:
    """How many tasklets the next message to a remote worker may carry.

    It starts at one, so an item alone leaves at once and its round trip is that of
    one item. Each message that was filled (more tasklets were waiting than it could
    take) and stayed small doubles it, up to ``MAX_BATCH``; a message bigger than
    ``BATCH_BYTES`` halves it, so big items travel one by one, as before.
    """

    def __init__(self) -> None:
        self.limit = 1

    def sent(self, count: int, nbytes: int) -> None:
        if nbytes > BATCH_BYTES:
            self.limit = max(1, self.limit // 2)
        elif count >= self.limit and nbytes * 2 <= BATCH_BYTES:
            self.limit = min(MAX_BATCH, self.limit * 2)


class _Liveness:
    """When a remote host last showed a sign of life (a reply or a ping)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def silent(self) -> float:
        return time.monotonic() - self.last


def _lost(spec: str, index: int, task_id: int, exc: BaseException,
          attempts: int = 0) -> BaseException:
    tried = f" (after {attempts + 1} attempts)" if attempts else ""
    return WorkerLostError(f"item {index} of task {task_id} was lost with its remote "
                           f"worker on {spec}{tried}: {exc}")


def _close_quietly(remote: Any) -> None:
    try:
        remote.close(sweep=False)  # swept when the NuMap stops (RemoteLane._sweep_lost)
    except Exception as exc:
        log.debug("closing lost remote worker %s: %r", getattr(remote, "name", remote), exc)
