"""The agent: one per host, an RPyC service that runs remote NuMap workers.

Why a custom service rather than PaPy's classic ``SlaveService``: the classic server
executes anything for anyone who can reach the port. This one exposes a handful of
methods, and only to peers that proved the cluster secret on the raw socket before any
RPyC traffic (:class:`papycluster.cluster.auth.HmacAuthenticator`).

The agent never unpickles a tasklet. ``open_worker`` starts a
:class:`papycluster.engine.process.ProcessWorker`; ``send`` relays the controller's
bytes to it unchanged, and a reader thread relays each reply back through a callback
that the controller passed. When the controller's connection goes away, its workers are
stopped, so nothing outlives its user.

This module must run on the oldest Python a host may have (3.9): no ``match``, no
runtime ``X | Y`` unions.

Run it as ``python -m papycluster.cluster.agent --secret-file F --run-dir D ...``;
:mod:`papycluster.cluster.remote.launch` does that, detached, on each host.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import multiprocessing
import os
import pickle
import platform
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait as mp_wait
from typing import Any

import rpyc
from rpyc.utils.server import ThreadedServer

from papycluster.cluster.auth import SECRET_FILE_ENV, HmacAuthenticator, read_secret_file
from papycluster.cluster.remote._procs import identity as process_identity

log = logging.getLogger("papycluster.agent")


def _compat_old_python() -> None:
    """Let the worker code (written for 3.11) report errors on a 3.9/3.10 host.

    ``traceback.format_exception(exc)`` with one argument is 3.10+. Patched here, at
    import, so that it also holds in the worker processes: forkserver and spawn both
    import this module (the agent's ``__main__``) before running a worker.
    """
    if sys.version_info >= (3, 10):  # noqa: UP036 (the agent runs on 3.9 hosts too)
        return
    import traceback

    original = traceback.format_exception
    missing = object()

    def format_exception(exc: Any, value: Any = missing, tb: Any = missing,
                         limit: Any = None, chain: bool = True) -> list:
        if value is missing:
            return original(type(exc), exc, exc.__traceback__, limit=limit, chain=chain)
        return original(exc, value, tb, limit=limit, chain=chain)

    traceback.format_exception = format_exception  # type: ignore[assignment]


_compat_old_python()

#: Seconds any single RPyC request may take before it fails (never wait forever).
#: ``PAPYCLUSTER_RPC_TIMEOUT`` in a process's environment changes it for that process
#: (each side bounds its own waits).
SYNC_REQUEST_TIMEOUT = float(os.environ.get("PAPYCLUSTER_RPC_TIMEOUT") or 30.0)
INFO_FILE = "agent.json"
SECRET_FILE = "secret"
LOG_FILE = "agent.log"


#: The agent's RPC protocol (its exposed methods and what they take and return). A
#: controller refuses an agent whose protocol or papycluster version differs from its
#: own, naming both, rather than failing later on a method that changed.
PROTOCOL = 3  # 2: each result value in its own envelope (engine.process); 3: output
#  messages, "opt", task definitions with source lines (engine.output, engine.shipping)
#: Replies a worker may have handed to its controller without an acknowledgement yet;
#: past this the relay waits (bounded by the RPC timeout) before it reads more.
UNACKED_MAX = 64


def protocol_config() -> dict[str, Any]:
    """RPyC settings shared by the agent and its clients: nothing implicit is allowed."""
    return {
        "allow_public_attrs": False,
        "allow_pickle": False,
        "allow_setattr": False,
        "allow_delattr": False,
        "sync_request_timeout": SYNC_REQUEST_TIMEOUT,
    }


def capabilities(profile: str, shares: dict[str, str]) -> dict[str, Any]:
    """What this host can do, as the negotiation needs it.

    The ``windows`` profile reports what a Windows host has (no fork, no FIFOs, no
    POSIX shared memory), so the fallback to the ``file`` transport is exercised on Linux.
    """
    windows = profile == "windows" or sys.platform == "win32"
    try:
        from multiprocessing import shared_memory  # noqa: F401
        has_shm = True
    except ImportError:
        has_shm = False
    share_info = {}
    for name, path in shares.items():
        share_info[name] = {"path": path, "exists": os.path.isdir(path),
                            "writable": os.access(path, os.W_OK)}
    return {
        "os": "windows" if windows else platform.system().lower(),
        "fork": hasattr(os, "fork") and not windows,
        "fifo": hasattr(os, "mkfifo") and not windows,
        "shm": has_shm and not windows,
        "shares": share_info,
        "transports": [t for t, ok in (
            ("shm", has_shm and not windows), ("fifo", hasattr(os, "mkfifo") and not windows),
            ("tcp", True), ("udp", True), ("file", True), ("manager", True)) if ok],
    }


_PLATFORM: list[str] = []


def platform_name() -> str:
    """``platform.platform()``, without its ``uname -p`` child process on Linux.

    ``platform.platform()`` reads the processor name, which on Linux means running
    ``uname -p``: a fork and exec in the first ``info()`` of every ``up``, for a word
    that it then drops ("unknown" on most distributions). The rest is the same.
    """
    if not _PLATFORM:
        u = platform.uname()  # its processor field is only computed when read
        if u.system == "Linux":
            lib, version = platform.libc_ver()
            parts = [u.system, u.release, u.machine] + (["with", lib + version] if lib
                                                         else [])
            _PLATFORM.append("-".join(p.replace(" ", "_") for p in parts if p))
        else:
            _PLATFORM.append(platform.platform())
    return _PLATFORM[0]


def results_in(message: bytes) -> int:
    """How many results one message of a worker process carries.

    The message comes from this agent's own worker process, so reading it here is no
    new trust; the values inside stay in their envelopes (bytes), nothing of the
    user's is rebuilt. Another kind of message counts as none, one that cannot be read
    as one (a reply all the same).
    """
    try:
        kind, results = pickle.loads(message)[:2]
        return len(results) if kind == "res" else 0
    except Exception:
        return 1


class _RemoteProc:
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
        # The worker's stream to its controller, once attached (see cluster.stream):
        # replies go there instead of through the RPyC callback.
        self.stream: socket.socket | None = None
        self._stream_lock = threading.Lock()
        self.thread = threading.Thread(target=self._relay, name=f"relay-{wid}", daemon=True)
        self.thread.start()

    def attach(self, sock: socket.socket, deliver: Callable[[Any], None]) -> None:
        """Take the controller's stream: its frames go to the worker (``deliver``), the
        worker's replies go back on it."""
        self.stream = sock  # with stream.TIMEOUT on sends: a stuck controller is dropped
        threading.Thread(target=self._read_stream, args=(sock, deliver), daemon=True,
                         name=f"stream-{self.wid}").start()

    def _read_stream(self, sock: socket.socket, deliver: Callable[[Any], None]) -> None:
        """Frames from the controller to the worker, until the stream ends."""
        from papycluster.cluster.stream import recv_frame

        reason = "the controller closed the stream"
        while not self.closed:
            try:
                data = recv_frame(sock)
            except (OSError, ValueError) as exc:  # ValueError: closed under us
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
                        from papycluster.cluster.stream import send_frame
                        send_frame(stream, data, self._stream_lock)
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
                    from papycluster.cluster.stream import send_frame
                    send_frame(stream, b"", self._stream_lock)
                else:
                    self.callback(None)  # tell the controller the process is gone
            except Exception:
                pass
        self.closed = True
        self._close_stream()

    def _close_stream(self) -> None:
        from papycluster.cluster import stream as streams

        stream, self.stream = self.stream, None
        if stream is not None:
            streams.close(stream)

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
        self.procs: dict[int, _RemoteProc] = {}
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

        proc = _RemoteProc(wid, worker, callback, self.count, broken)
        with self.lock:
            self.procs[wid] = proc
        log.info("worker %s started (pid %s)", wid, worker.pid)
        return wid

    def open_stream(self, wid: int) -> tuple[int, str]:
        """The port of the stream listener and a one-time token for worker ``wid``."""
        from papycluster.cluster.stream import StreamListener

        with self.lock:
            if self.streams is None:
                self.streams = StreamListener(self.bind, self.secret, self._attach)
            listener = self.streams
        return listener.port, listener.issue(wid)

    def _attach(self, wid: int, sock: socket.socket) -> bool:
        """Give a stream to worker ``wid``; False if it is gone or has one already."""
        proc = self.procs.get(wid)
        if proc is None or proc.closed or proc.stream is not None:
            return False
        proc.attach(sock, lambda data: self.send(wid, data))
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

            # Replies go back as asynchronous requests (see _RemoteProc._hand_over).
            wid = agent.open_worker(rpyc.async_(callback), drop)
            self._wids.add(wid)
            return wid

        def exposed_open_stream(self, wid: int) -> tuple[int, str]:
            if wid not in self._wids:
                raise KeyError(f"worker {wid} does not belong to this connection")
            return agent.open_stream(wid)

        def exposed_send(self, wid: int, data: bytes) -> None:
            if wid not in self._wids:
                raise KeyError(f"worker {wid} does not belong to this connection")
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


def default_run_dir(cluster: str, name: str) -> str:
    user = getpass.getuser()
    return os.path.join(tempfile.gettempdir(), f"papycluster-{user}-{cluster}-{name}")


def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description="papycluster agent (one per host)")
    parser.add_argument("--name", required=True, help="this host's name in the cluster")
    parser.add_argument("--cluster", default="papycluster")
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--advertise", default="", help="address peers use to reach us")
    parser.add_argument("--secret-file", required=True,
                        help="file (0600) holding the cluster secret; never pass it inline")
    parser.add_argument("--run-dir", default="")
    parser.add_argument("--profile", choices=("native", "windows"), default="native")
    parser.add_argument("--shares", default="{}", help="JSON: share name -> local path")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    run_dir = args.run_dir or default_run_dir(args.cluster, args.name)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    secret = read_secret_file(args.secret_file)
    shares = json.loads(args.shares)
    advertise = args.advertise or (args.bind if args.bind not in ("0.0.0.0", "") else
                                   socket.gethostname())
    # What the worker and transport processes read (inherited by every child).
    os.environ[SECRET_FILE_ENV] = os.path.abspath(args.secret_file)
    os.environ.pop("PAPYCLUSTER_SECRET", None)
    os.environ["PAPYCLUSTER_ADVERTISE_HOST"] = advertise
    if args.bind and args.bind != advertise:
        # the workers' tcp/udp item servers listen where the agent does (bind =
        # "0.0.0.0" behind NAT, where the advertised address is not one of this host's)
        os.environ["PAPYCLUSTER_BIND_HOST"] = args.bind
    else:
        os.environ.pop("PAPYCLUSTER_BIND_HOST", None)
    os.environ["PAPYCLUSTER_SHARES"] = json.dumps(shares)
    os.environ["PAPYCLUSTER_HOST_NAME"] = args.name
    os.environ["PAPYCLUSTER_PROFILE"] = args.profile
    # Workers relay what they print to their controller (engine.output), and still
    # write it to this log.
    os.environ["PAPYCLUSTER_RELAY_OUTPUT"] = "1"

    # multiprocessing's own temp dirs (the forkserver's socket) go in the run dir, so
    # that removing the run dir leaves nothing behind, even after a kill -9. Only this
    # process: the workers keep the host's temp dir (the file transport's default share),
    # and the agent keeps knowing it as that share, to remove what a killed worker left.
    if "default" not in shares:
        from papycluster.transport import shares as transport_shares

        transport_shares.set_share("default", tempfile.gettempdir())
    tempfile.tempdir = run_dir
    agent = Agent(args.name, args.cluster, args.profile, shares, args.workers, run_dir,
                  advertise)
    agent.secret = secret
    agent.bind = args.bind
    try:
        server = ThreadedServer(make_service(agent), hostname=args.bind, port=args.port,
                                authenticator=HmacAuthenticator(secret),
                                protocol_config=protocol_config(), reuse_addr=True,
                                logger=logging.getLogger("papycluster.agent.rpyc"))
    except OSError as exc:
        # launch shows this log line as the host's failure
        log.error("agent %s cannot listen on %s:%s: %s. If %s is not an address of this "
                  "host (behind NAT, or a name that resolves elsewhere), set bind = "
                  '"0.0.0.0" (or one of its addresses) for this host in the hosts file',
                  args.name, args.bind, args.port, exc, args.bind)
        sys.exit(2)
    agent.server = server
    agent.port = server.port
    # The forkserver is not started here: the first worker starts it (multiprocessing
    # does that on first use; it is exec'd, not forked, so the server's threads do not
    # matter). An agent is ready as soon as it listens; a host that `up` brings up but
    # never gets a worker pays for no second interpreter, and on hosts that share cores
    # the `up` of the others does not wait behind it.

    def _term(signum: int, frame: Any) -> None:
        threading.Thread(target=agent.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _term)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, _term)

    # "process": start time and command line, so that `down` kills this pid only while
    # it is still this agent (see cluster/remote/_procs.py: is_agent).
    info = {"pid": os.getpid(), "port": server.port, "name": args.name,
            "cluster": args.cluster, "started": agent.started,
            "process": process_identity(os.getpid())}
    tmp = os.path.join(run_dir, INFO_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(run_dir, INFO_FILE))
    log.info("agent %s listening on %s:%s (pid %s)", args.name, args.bind, server.port,
             os.getpid())
    try:
        server.start()
    finally:
        agent.shutdown()


if __name__ == "__main__":
    main()
