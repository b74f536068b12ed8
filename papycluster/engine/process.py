"""Worker processes and the byte protocol they speak.

A NuMap talks to each of its worker processes over one duplex pipe. Every message is
one pickled tuple sent with ``send_bytes``, so the same bytes can be relayed unchanged
by a cluster agent to a worker process on another host (the agent never unpickles a
tasklet; it only forwards bytes between an authenticated peer and its own process).

Manager to worker::

    ("def", task_key, blob)         blob = pickle of ("task", cloudpickle of (func, args,
                                    kwargs), sources)
    ("run", [(task_key, index, item), ...])
    ("drop", task_key)              forget a task's function
    ("opt", {"log_to_driver": bool}) relay printed lines or not (engine.output)
    ("exit",)

Worker to manager::

    ("res", [(task_key, index, ok, kind, payload), ...])   one or more results
    b"OUT\n" + JSON                  lines the tasklets printed (engine.output)

``ok`` is False when the value is the exception that the function raised; it carries
its traceback text in ``remote_traceback`` and a note that names the process and host.
Where it arrives, that text becomes its ``__cause__`` (a :class:`RemoteTraceback`), so
that the worker's frames are printed first, as with ``concurrent.futures``; ``sources``
(the user's source lines, see :mod:`.shipping`) let those frames show the lines.
Each value travels in its own envelope: ``kind`` None means ``payload`` is the value
itself (bytes, str, numbers, flat tuples of them such as tickets: nothing that could
fail to unpickle); otherwise ``kind`` is the value's type name and ``payload`` its own
pickle. So a value that pickles on the worker but cannot be rebuilt by the manager (an
exception whose ``__init__`` takes other arguments than its ``args``, a class the
manager cannot import) becomes a :class:`RemoteError` for that item alone, naming the
type and the host, and never costs the other results of the message or the worker.
A value that cannot be pickled at all is replaced by a :class:`RemoteError` too, so
the manager always gets an answer for every tasklet it sent.

Functions travel with cloudpickle (lambdas, closures and ``__main__`` functions work);
items with the standard pickle protocol 5, falling back to cloudpickle. The messages
themselves are made and read in :mod:`.messages`; this module is the worker loop and
its handle.
"""

from __future__ import annotations

import multiprocessing
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from typing import Any

from papycluster.engine import output, shipping
from papycluster.engine.messages import (  # noqa: F401 (re-exported: proto.dumps etc.)
    HOST_ENV,
    PARKED,
    PROTOCOL,
    attach_remote_traceback,
    call,
    decode_results,
    describe_exception,
    dumps,
    encode_results,
    loads,
    pickle_task,
    user_packages,
    where,
)
from papycluster.errors import RemoteError

#: Results of fast tasklets are sent together while more input waits, but never held
#: longer than this (seconds), nor after a tasklet slower than ``FAST``.
COALESCE_FOR = 0.002
FAST = 0.0005
COALESCE_MAX = 64
#: Messages a worker reads ahead of the one it runs, to prefetch their items.
LOOK_AHEAD = 4


def serve(conn: Connection) -> None:
    """The loop of a worker process: read messages, run tasklets, answer each.

    Results of fast tasklets are coalesced while more input is already waiting,
    which halves the messages per item for trivial functions; a slow tasklet's result
    is never held back. It returns on ``("exit",)`` or when the manager's end of the
    pipe is gone, so an orphaned worker never outlives its manager.
    """
    functions: dict[Any, tuple[Callable, tuple, dict]] = {}
    parent = multiprocessing.parent_process()
    sentinel = parent.sentinel if parent is not None else None
    poller = select.poll() if hasattr(select, "poll") else None
    if poller is not None:
        poller.register(conn.fileno(), select.POLLIN)
        if sentinel is not None:
            poller.register(sentinel, select.POLLIN)
    pending: list[tuple[Any, int, bool, Any]] = []
    since = 0.0
    # Messages read early, in order, so that their items could be prefetched.
    ahead: deque = deque()

    # One message at a time on the pipe: the output relay's thread sends too.
    send_lock = threading.Lock()
    relay = output.start(conn.send_bytes, send_lock)

    from papycluster.transport import base as transport_base

    told_parked = False

    def flush() -> None:
        nonlocal told_parked
        data = encode_results(pending)
        with send_lock:
            if relay is not None:  # what the tasklets printed goes first
                relay.flush(partial=True)
            if not told_parked and transport_base.parked_here():
                conn.send_bytes(PARKED)  # before the results of the tasklet that parked
                told_parked = True
            conn.send_bytes(data)
        pending.clear()

    def input_ready(timeout: float | None) -> bool:
        """Is a message waiting? Raises EOFError if the manager died meanwhile.

        Under fork a worker inherits the manager's end of its own pipe, so the
        manager's death does not show as EOF on it: the parent's sentinel tells.
        """
        if poller is None:
            ready = mp_wait([conn] + ([sentinel] if sentinel is not None else []),
                            timeout)
            if conn not in ready and ready:
                raise EOFError("the manager process is gone")
            return conn in ready
        events = dict(poller.poll(None if timeout is None else timeout * 1000))
        if conn.fileno() in events:
            return True
        if sentinel is not None and sentinel in events:
            raise EOFError("the manager process is gone")
        return False

    # Tasks whose function can start its work early (Worker.prefetch): found once, at
    # definition, so that other tasklets pay nothing for the read-ahead.
    prefetching: set = set()

    def define(message: tuple) -> None:
        _, task_key, blob = message
        try:
            loaded = loads(blob)
            if loaded[0] == "task":  # (see pickle_task); a bare 3-tuple is taken too
                shipping.install_sources(loaded[2])
                loaded = loads(loaded[1])
            func, args, kwargs = loaded
            functions[task_key] = (func, args, kwargs)
        except Exception as exc:
            functions[task_key] = (_raiser(describe_exception(exc)), (), {})
        if getattr(functions[task_key][0], "can_prefetch", False):
            prefetching.add(task_key)
        else:
            prefetching.discard(task_key)

    def look_ahead() -> None:
        """Read the messages already waiting and start the prefetch of their items.

        Only done before a tasklet whose Worker can prefetch (``load_item`` first), so
        that the next item travels while this one is computed. Definitions are taken
        at once (a key is never reused); everything else keeps its order in ``ahead``.
        """
        while len(ahead) < LOOK_AHEAD and input_ready(0):
            message = loads(conn.recv_bytes())
            if message[0] == "def":
                define(message)
                continue
            ahead.append(message)
            if message[0] == "run":
                for task_key, _, item in message[1]:
                    if task_key in prefetching:
                        functions[task_key][0].prefetch(item)

    try:
        while True:
            if pending and not (len(pending) < COALESCE_MAX
                                and time.monotonic() - since < COALESCE_FOR
                                and (ahead or input_ready(0))):
                flush()
            if ahead:
                message = ahead.popleft()
            else:
                input_ready(None)
                try:
                    message = loads(conn.recv_bytes())
                except (EOFError, OSError):
                    return
            kind = message[0]
            if kind == "run":
                for task_key, index, item in message[1]:
                    started = time.monotonic()
                    try:
                        func, args, kwargs = functions[task_key]
                    except KeyError:
                        ok, value = False, RemoteError(
                            "KeyError", f"task {task_key!r} was never defined", "", where())
                    else:
                        if task_key in prefetching:
                            look_ahead()
                        ok, value = call(func, args, kwargs, item)
                    if not pending:
                        since = started
                    pending.append((task_key, index, ok, value))
                    if time.monotonic() - started > FAST:
                        flush()
            elif kind == "def":
                define(message)
            elif kind == "drop":
                functions.pop(message[1], None)
                prefetching.discard(message[1])
            elif kind == "opt":
                if relay is not None and "log_to_driver" in message[1]:
                    relay.enabled = bool(message[1]["log_to_driver"])
            elif kind == "exit":
                return
    except (EOFError, OSError, BrokenPipeError):
        return
    finally:
        if relay is not None:
            relay.close()


def _raiser(exc: BaseException) -> Callable:
    """A function that raises ``exc``: a task whose function could not be loaded."""

    def raise_(item: Any, *args: Any, **kwargs: Any) -> Any:
        raise exc

    return raise_


def worker_main(conn: Connection, owner: str | None = None,
                run_secret: bytes | None = None) -> None:
    """Entry point of a worker process (picklable for spawn and forkserver).

    ``owner`` is the tag the starter chose for what this process leaves behind
    (see :meth:`ProcessWorker.sweep`). ``run_secret`` is the starter's ephemeral
    secret when no cluster secret is configured (see
    :func:`papycluster.transport.auth.secret_for_children`), so that its workers' tcp
    and udp items are loadable by each other and by nobody else.
    """
    if run_secret is not None:
        from papycluster.transport import auth

        auth.adopt_run_secret(run_secret)
    if owner is not None:
        from papycluster.transport import base as transport_base

        transport_base.set_owner_tag(owner)
    try:
        serve(conn)
    finally:
        conn.close()


class ProcessWorker:
    """A handle on one worker process: its pipe, its sentinel, and how to end it.

    Used by local process pools and by the cluster agent, which relays remote
    tasklets to processes like this one. The process names what it leaves on this host
    (files, fifos, segments of the direct transports) with :attr:`owner`, so that when
    it was killed, :meth:`sweep` still finds and removes them.
    """

    def __init__(self, context: Any, name: str = "papycluster-worker") -> None:
        from papycluster.transport import auth
        from papycluster.transport import base as transport_base

        self.owner = transport_base.new_owner_tag()
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=worker_main,
                                       args=(child, self.owner, auth.secret_for_children()),
                                       name=name, daemon=True)
        self.process.start()
        self._pid = self.process.pid  # still known once the process object is closed
        child.close()

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def sentinel(self) -> int:
        return self.process.sentinel

    def send(self, data: bytes) -> None:
        self.conn.send_bytes(data)

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout: float = 2.0, sweep: bool = True) -> None:
        """Ask the process to exit, then terminate and kill it if it does not.

        Then, with ``sweep``, remove what it left if it did not end cleanly (see
        :meth:`sweep`); one that returned released everything itself. A pool whose
        worker died mid-run passes False and sweeps when it stops: the dead worker's
        items may still be on their way to a loader until then.
        """
        try:
            self.conn.send_bytes(dumps(("exit",)))
        except (OSError, EOFError, ValueError):
            pass
        self.process.join(timeout)
        if self._alive():
            self.process.terminate()
            self.process.join(timeout)
        if self._alive():
            self.process.kill()
            self.process.join(timeout)
        self.conn.close()
        clean = self.process.exitcode == 0
        if not self._alive():
            self.process.close()
        if sweep and not clean:
            self.sweep()

    def _alive(self) -> bool:
        """Is the process running? Its sentinel says it ended even when its exit status
        was collected elsewhere (a second ``waitpid`` on it, which multiprocessing then
        takes for "still running" forever: seen under load with many pools stopping at
        once); such a process is marked ended (exit status unknown, so not clean)."""
        if not self.process.is_alive():
            return False
        if not mp_wait([self.process.sentinel], 0):
            return True
        popen = getattr(self.process, "_popen", None)
        if popen is not None and getattr(popen, "returncode", 0) is None:
            popen.returncode = -signal.SIGKILL  # ended; its status went to another waiter
        return False

    def sweep(self) -> None:
        """Remove what the ended process left on this host under its owner tag.

        A process that ended normally released everything itself, so this finds
        nothing; one killed with SIGKILL (the OOM killer, a user) left its files in the
        shares, its fifo directory and its shared-memory segments.
        """
        from papycluster.transport import base as transport_base
        from papycluster.transport import registry

        removed = registry.sweep(self.owner)
        if removed:
            transport_base.log.warning(
                "removed %d thing(s) that worker pid %s left behind (it did not end cleanly)",
                removed, self.pid)
