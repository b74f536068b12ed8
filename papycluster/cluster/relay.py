"""The relay of one remote worker process: its replies to the controller, and back.

The agent (:mod:`papycluster.cluster.agent_service`) starts one
:class:`papycluster.engine.process.ProcessWorker` per ``open_worker``; a
:class:`RemoteProc` forwards that process's replies, unchanged bytes, to the controller
that asked for it: through the RPyC callback, without waiting for each
acknowledgement (at most ``UNACKED_MAX`` in flight, each bounded by the RPC timeout),
or through the worker's stream once the controller attached one
(:mod:`papycluster.cluster.stream`). A controller that is gone or stuck gets its
worker stopped, so nothing outlives its user.

Like the agent, it must run on the oldest Python a host may have (3.9).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait as mp_wait
from typing import Any

from papycluster.cluster.agent_protocol import SYNC_REQUEST_TIMEOUT, UNACKED_MAX

log = logging.getLogger("papycluster.agent")


class RemoteProc:
    """One worker process of one controller connection, with its relay thread."""

    def __init__(self, wid: int, worker: Any, callback: Callable, on_result: Callable,
                 on_broken: Callable) -> None:
        self.wid = wid
        self.on_broken = on_broken
        self.worker = worker
        self.callback = callback
        self.on_result = on_result
        self.closed = False
        # Send times of replies handed over but not acknowledged yet, oldest first, and
        # the first acknowledgement that came back as an error.
        self._unacked: deque = deque()
        self._acks = threading.Condition()
        self._ack_error = ""
        # The worker's stream to its controller, once attached (a cluster.stream
        # Channel): replies go there instead of through the RPyC callback.
        self.stream: Any = None
        self.thread = threading.Thread(target=self._relay, name=f"relay-{wid}", daemon=True)
        self.thread.start()

    def attach(self, channel: Any, deliver: Callable[[Any], None]) -> None:
        """Take the controller's stream (a ``cluster.stream.Channel``): its frames go
        to the worker (``deliver``), the worker's replies go back on it."""
        self.stream = channel  # sends are bounded: a stuck controller is dropped
        threading.Thread(target=self._read_stream, args=(channel, deliver), daemon=True,
                         name=f"stream-{self.wid}").start()

    def _read_stream(self, channel: Any, deliver: Callable[[Any], None]) -> None:
        """Frames from the controller to the worker, until the stream ends."""
        reason = "the controller closed the stream"
        while not self.closed:
            try:
                data = channel.recv()
            except OSError as exc:
                reason = f"the stream failed: {exc}"
                break
            if data is None:
                break
            try:
                deliver(data)
            except EOFError:
                return  # the worker is gone; the relay says so
        if not self.closed:
            log.info("worker %s: %s; stopping it", self.wid, reason)
            threading.Thread(target=self.on_broken, daemon=True).start()

    def _hand_over(self, data: Any) -> None:
        """Give one reply to the controller; do not wait for its acknowledgement.

        ``callback`` is an asynchronous RPyC request (see ``exposed_open_worker``):
        waiting for each answer put a network round trip between two replies of one
        worker. Answers are counted as they come (in order, on one connection); one that
        is an error, or an acknowledgement older than the RPC timeout, means that the
        controller is gone or stuck, and raises here.
        """
        with self._acks:
            while True:
                if self._ack_error:
                    raise ConnectionError(self._ack_error)
                late = self._unacked and \
                    time.monotonic() - self._unacked[0] > SYNC_REQUEST_TIMEOUT
                if late:
                    raise TimeoutError(f"no acknowledgement from the controller for "
                                       f"{SYNC_REQUEST_TIMEOUT:g} s")
                if len(self._unacked) < UNACKED_MAX:
                    break
                self._acks.wait(1.0)
            self._unacked.append(time.monotonic())
        try:
            result = self.callback(data)
        except BaseException:
            with self._acks:
                self._unacked.pop()
            raise
        if hasattr(result, "add_callback"):
            result.add_callback(self._acknowledged)  # runs in the serving thread
        else:  # a plain function (called in process): done when it returns
            self._acknowledged(None)

    def _acknowledged(self, result: Any) -> None:
        with self._acks:
            if self._unacked:
                self._unacked.popleft()
            if result is not None and result.error and not self._ack_error:
                self._ack_error = f"the controller failed a reply: {result._obj!r}"
            self._acks.notify_all()

    def _check_acks(self) -> None:
        """Between replies: the same checks as a hand-over, without handing anything."""
        with self._acks:
            if self._ack_error:
                raise ConnectionError(self._ack_error)
            if self._unacked and time.monotonic() - self._unacked[0] > SYNC_REQUEST_TIMEOUT:
                raise TimeoutError(f"no acknowledgement from the controller for "
                                   f"{SYNC_REQUEST_TIMEOUT:g} s")

    def _relay(self) -> None:
        """Forward every reply of the worker process to the controller, then say 'lost'."""
        conn = self.worker.conn
        while not self.closed:
            try:
                ready = mp_wait([conn, self.worker.sentinel], timeout=1.0)
            except (OSError, ValueError):
                break
            try:
                if not ready:
                    self._check_acks()
                    continue
                if conn in ready or conn.poll(0):
                    try:
                        data = conn.recv_bytes()
                    except (EOFError, OSError, ValueError):
                        break
                    if data[:4] != b"OUT\n":  # output lines are no result
                        self.on_result(data)
                    stream = self.stream  # stop() may drop it meanwhile
                    if stream is not None:
                        stream.send(data)
                    else:
                        self._hand_over(data)
                elif self.worker.sentinel in ready:
                    break
            except Exception as exc:  # controller gone or stuck: the reply is lost
                if self.closed:
                    break  # stopped meanwhile: nobody waits for this reply
                log.warning("worker %s: cannot hand a reply to the controller (%s); "
                            "stopping it and dropping the connection", self.wid, exc)
                self.closed = True
                # the controller must learn (WorkerLostError), not wait for a reply
                # that will never come
                threading.Thread(target=self.on_broken, daemon=True).start()
                break
        if not self.closed:
            log.info("worker %s (pid %s) ended", self.wid, self.worker.pid)
            try:
                stream = self.stream
                if stream is not None:  # an empty frame: the process is gone
                    stream.send(b"")
                else:
                    self.callback(None)  # tell the controller the process is gone
            except Exception:
                pass
        self.closed = True
        self._close_stream()

    def _close_stream(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()

    def stop(self, sweep: bool = True) -> None:
        """End the process, and with ``sweep`` remove what it left (nothing, normally).

        A worker that ends when asked released its items itself. One that died by
        itself (killed) left them behind; those are not removed here: its pool may
        still load the ones it handed out before it died, and asks later
        (:meth:`Agent.sweep`).
        """
        self.closed = True
        try:
            self.worker.stop(sweep=sweep)
        except Exception as exc:  # already gone
            log.debug("stopping worker %s: %s", self.wid, exc)
        self._close_stream()
