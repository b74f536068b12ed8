"""The agent's state and its RPyC service: what a controller may ask of a host.

Why a custom service rather than PaPy's classic ``SlaveService``: the classic server
executes anything for anyone who can reach the port. This one exposes a handful of
methods (:func:`make_service`), and only to peers that proved the cluster secret on the
raw socket before any RPyC traffic (``cluster.auth.HmacAuthenticator``, set up by
:mod:`papycluster.cluster.agent`). :class:`Agent` holds what all connections share:
the config, the workers (:class:`papycluster.cluster.relay.RemoteProc`), the counters.

Like the agent, it must run on the oldest Python a host may have (3.9).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import platform
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import rpyc
from rpyc.utils.server import ThreadedServer

from papycluster.cluster.agent_protocol import (
    PROTOCOL,
    capabilities,
    platform_name,
    results_in,
)
from papycluster.cluster.relay import RemoteProc

log = logging.getLogger("papycluster.agent")


class Agent:
    """State shared by all connections: config, workers, counters."""

    def __init__(self, name: str, cluster: str, profile: str, shares: dict[str, str],
                 workers: int, run_dir: str, advertise: str) -> None:
        self.name = name
        self.cluster = cluster
        self.profile = profile
        self.shares = shares
        self.workers = workers
        self.run_dir = run_dir
        self.advertise = advertise
        self.started = time.time()
        self.items_done = 0
        self.port = 0
        self.server: ThreadedServer | None = None
        self.lock = threading.Lock()
        self.procs: dict[int, RemoteProc] = {}
        #: Workers that died by themselves -> their owner tags, until their pool (or
        #: this agent's end) has what they left removed.
        self.dead_owners: dict[int, str] = {}
        self.next_id = 0
        self.caps = capabilities(profile, shares)
        self.mp = self._context()
        self.secret: str | bytes = b""  # set by main: the stream listener checks it
        self.bind = "0.0.0.0"
        self.streams: Any = None  # cluster.stream.StreamListener, started on first use

    def _context(self) -> Any:
        # forkserver: forking a threaded agent is unsafe; spawn where fork does not exist.
        methods = multiprocessing.get_all_start_methods()
        if self.profile == "windows" or "forkserver" not in methods:
            return multiprocessing.get_context("spawn")
        return multiprocessing.get_context("forkserver")

    def info(self) -> dict[str, Any]:
        try:
            load = list(os.getloadavg())
        except (AttributeError, OSError):
            load = None
        with self.lock:
            running = sum(1 for p in self.procs.values() if not p.closed)
        import papycluster
        from papycluster import __version__
        return {
            "name": self.name, "cluster": self.cluster, "pid": os.getpid(),
            "hostname": socket.gethostname(), "address": self.advertise, "port": self.port,
            "python": platform.python_version(), "executable": sys.executable,
            "platform": platform_name(), "profile": self.profile,
            "started": self.started, "uptime": time.time() - self.started,
            "workers": self.workers, "workers_running": running,
            "items_done": self.items_done, "load": load, "cpus": os.cpu_count(),
            "version": __version__, "protocol": PROTOCOL, "run_dir": self.run_dir,
            "package": os.path.dirname(os.path.abspath(papycluster.__file__)),
            "ports": {"agent": self.port},
            **self.caps,
        }

    def count(self, message: bytes) -> None:
        """Count the results in one reply of a worker: one message carries several
        when their tasklets were fast (the worker coalesces them), so counting
        messages undercounted the items done."""
        n = results_in(message)
        with self.lock:
            self.items_done += n

    def open_worker(self, callback: Callable, on_broken: Callable = lambda: None) -> int:
        from papycluster.engine.process import ProcessWorker

        worker = ProcessWorker(self.mp, name=f"papycluster-worker-{self.name}")
        with self.lock:
            self.next_id += 1
            wid = self.next_id

        def broken() -> None:
            self.close_worker(wid)
            on_broken()

        proc = RemoteProc(wid, worker, callback, self.count, broken)
        with self.lock:
            self.procs[wid] = proc
        log.info("worker %s started (pid %s)", wid, worker.pid)
        return wid

    def open_stream(self, wid: int) -> tuple[int, str, str]:
        """The port of the stream listener, a one-time token for worker ``wid``, and
        the listener's wire ("curve": encrypted, or "hmac", see cluster.stream)."""
        from papycluster.cluster import stream

        with self.lock:
            if self.streams is None:
                self.streams = stream.listener(self.bind, self.secret, self._attach)
            listener = self.streams
        return listener.port, listener.issue(wid), listener.wire

    def encrypted_streams(self) -> bool:
        """Whether workers' bytes travel only encrypted here (then never by RPyC)."""
        from papycluster.cluster import stream

        if self.streams is not None:
            return self.streams.wire == "curve"
        return stream.encrypted_here()

    def _attach(self, wid: int, channel: Any) -> bool:
        """Give a stream to worker ``wid``; False if it is gone or has one already."""
        proc = self.procs.get(wid)
        if proc is None or proc.closed or proc.stream is not None:
            return False
        proc.attach(channel, lambda data: self.send(wid, data))
        return True

    def send(self, wid: int, data: bytes) -> None:
        proc = self.procs.get(wid)
        if proc is None or proc.closed:
            raise EOFError(f"worker {wid} on {self.name} is gone")
        try:
            proc.worker.send(data)
        except (OSError, ValueError) as exc:
            raise EOFError(f"worker {wid} on {self.name} is gone: {exc}")

    def close_worker(self, wid: int) -> None:
        with self.lock:
            proc = self.procs.pop(wid, None)
            died = proc is not None and not proc.worker.is_alive()
            if died:
                self.dead_owners[wid] = proc.worker.owner  # before a sweep can ask
        if proc is not None:
            proc.stop(sweep=not died)

    def sweep(self, wid: int) -> int:
        """Remove what worker ``wid`` left if it died by itself; how many things.

        A dead worker that is not closed yet (its connection's end is on its way) is
        closed first; a live one is left alone.
        """
        from papycluster.transport import registry

        proc = self.procs.get(wid)
        if proc is not None and not proc.worker.is_alive():
            self.close_worker(wid)
        with self.lock:
            owner = self.dead_owners.pop(wid, None)
        if owner is None:
            return 0
        removed = registry.sweep(owner)
        log.info("worker %s had died; removed %d thing(s) it left", wid, removed)
        return removed

    def stop_all(self) -> None:
        for wid in list(self.procs):
            self.close_worker(wid)
        for wid in list(self.dead_owners):  # no pool is left to load their items
            self.sweep(wid)

    def shutdown(self, remove_run_dir: bool = True) -> None:
        """Stop workers and the server, remove the run directory, exit."""
        log.info("shutting down")
        self.stop_all()
        if self.streams is not None:
            self.streams.close()
        if self.server is not None:
            try:
                self.server.close()
            except Exception:
                pass
        if remove_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        logging.shutdown()
        os._exit(0)


def make_service(agent: Agent) -> type:
    """The RPyC service class bound to ``agent``; one instance per connection."""

    class AgentService(rpyc.Service):
        def on_connect(self, conn: Any) -> None:
            # Frames go out uncompressed, as the controller's (see client.AgentConnection).
            # RPyC offers no public switch on the server side; its Connection keeps the
            # channel as ``_channel``, and the first frame is sent after this returns.
            channel = getattr(conn, "_channel", None)
            if channel is not None:
                channel.compress = False
            self._wids: set = set()
            self._conn = conn

        def on_disconnect(self, conn: Any) -> None:
            for wid in list(self._wids):
                agent.close_worker(wid)

        def exposed_info(self) -> str:
            return json.dumps(agent.info())

        def exposed_ping(self) -> str:
            return agent.name

        def exposed_version(self) -> str:
            """What a controller checks first: one small answer, no other work."""
            from papycluster import __version__
            return json.dumps({"version": __version__, "protocol": PROTOCOL})

        def exposed_open_worker(self, callback: Callable) -> int:
            conn = self._conn

            def drop() -> None:
                try:
                    conn.close()
                except Exception:
                    pass

            # Replies go back as asynchronous requests (see RemoteProc._hand_over).
            wid = agent.open_worker(rpyc.async_(callback), drop)
            self._wids.add(wid)
            return wid

        def exposed_open_stream(self, wid: int) -> tuple[int, str, str]:
            if wid not in self._wids:
                raise KeyError(f"worker {wid} does not belong to this connection")
            return agent.open_stream(wid)

        def exposed_send(self, wid: int, data: bytes) -> None:
            if wid not in self._wids:
                raise KeyError(f"worker {wid} does not belong to this connection")
            if agent.encrypted_streams():
                # RPyC's bytes cross the network in clear, and they would be unpickled
                # by the worker: with encryption on they come only on its stream
                raise PermissionError(f"agent {agent.name} takes a worker's bytes only "
                                      "on its encrypted stream (encrypt = true)")
            agent.send(wid, bytes(data))

        def exposed_worker_alive(self, wid: int) -> bool:
            proc = agent.procs.get(wid)
            return bool(wid in self._wids and proc is not None and not proc.closed
                        and proc.worker.is_alive())

        def exposed_close_worker(self, wid: int, sweep: bool = True) -> None:
            """Stop worker ``wid``; if it had died, ``sweep`` removes what it left now
            (a pool that stops), else that waits for :meth:`exposed_sweep_worker`."""
            if wid in self._wids:
                self._wids.discard(wid)
                agent.close_worker(wid)
                if sweep:
                    agent.sweep(wid)

        def exposed_sweep_worker(self, wid: int) -> int:
            """Remove what worker ``wid`` left, if it died by itself (and is closed).

            Asked on a new connection (the worker's own ended with it), so any peer
            that proved the secret may ask; it removes only a dead process's leftovers.
            """
            return agent.sweep(int(wid))

        def exposed_shutdown(self) -> None:
            # answer first, then exit from another thread
            threading.Timer(0.2, agent.shutdown).start()

    return AgentService
