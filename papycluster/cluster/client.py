"""The controller's side of an agent: authenticated connections and remote workers.

:func:`open_remote_worker` is what the engine's remote lane calls. One
:class:`RemoteWorker` is one worker process on a host, driven with the same byte
protocol as a local :class:`papycluster.engine.process.ProcessWorker`; the agent relays
the bytes unchanged, so nothing about tasklets is decided here.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
from dataclasses import dataclass
from typing import Any

import rpyc
from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream

from papycluster.cluster import stream
from papycluster.cluster.agent_protocol import PROTOCOL, protocol_config
from papycluster.cluster.auth import client_handshake, secret_from_env
from papycluster.cluster.errors import AuthError, ClusterError, VersionMismatchError
from papycluster.errors import WorkerLostError

log = logging.getLogger("papycluster.client")

_LOST = object()


def _keepalive(sock: socket.socket) -> None:
    """Notice a dead host in about a minute rather than never."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 20), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, opt):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
            except OSError:
                pass


class AgentConnection:
    """An authenticated RPyC connection to one agent, served by a background thread.

    The background thread is needed because the agent pushes worker replies back through
    callbacks; it also notices when the connection dies.
    """

    def __init__(self, address: str, port: int, secret: str, name: str | None = None,
                 timeout: float = 10.0, check_version: bool = True) -> None:
        self.address = address
        self.port = port
        self.name = name or f"{address}:{port}"
        self._secret = secret  # for the worker streams (cluster.stream)
        try:
            sock = socket.create_connection((address, port), timeout=timeout)
        except TimeoutError:
            raise ConnectionError(f"agent {self.name} ({address}:{port}): connection "
                                  f"timed out after {timeout:g} s")
        except OSError as exc:
            raise ConnectionError(f"agent {self.name} ({address}:{port}): {exc.strerror or exc}")
        try:
            client_handshake(sock, secret, timeout)
        except AuthError as exc:
            sock.close()
            raise AuthError(f"agent {self.name} ({address}:{port}): {exc}")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalive(sock)
        # No zlib on frames (RPyC compresses those over 3 KB by default): a 1 MB item
        # then cost about 10 ms of CPU at each end and random data does not shrink; the
        # agent's side turns it off too (AgentService.on_connect).
        self.conn = rpyc.connect_channel(Channel(SocketStream(sock), compress=False),
                                         config=protocol_config())
        self._closed = threading.Event()
        self._listeners: list[Any] = []
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"papycluster-agent-{self.name}")
        self._thread.start()
        if check_version:
            try:
                self._check_version(timeout)
            except BaseException:
                self.close()
                raise

    def _check_version(self, timeout: float) -> None:
        """Refuse an agent of another papycluster version or protocol (one round trip).

        ``down`` skips this (``check_version=False``): a mismatched agent must still be
        stoppable.
        """
        from papycluster import __version__

        try:
            res = rpyc.async_(self.conn.root.version)()
            res.set_expiry(max(0.5, timeout))
            theirs = json.loads(res.value)
        except AttributeError:  # an agent older than the version check
            theirs = {"version": "unknown (older than the version check)", "protocol": 0}
        except rpyc.AsyncResultTimeout:
            raise ConnectionError(f"agent {self.name} ({self.address}:{self.port}): no "
                                  f"answer to the version check within {timeout:g} s")
        if theirs.get("version") != __version__ or theirs.get("protocol") != PROTOCOL:
            raise VersionMismatchError(
                f"{self.name} ({self.address}:{self.port})",
                f"{theirs.get('version')} (protocol {theirs.get('protocol')})",
                f"{__version__} (protocol {PROTOCOL})")

    def _serve(self) -> None:
        try:
            while not self._closed.is_set():
                self.conn.serve(0.5)
        except Exception as exc:  # EOFError when the agent or the network is gone
            if not self._closed.is_set():
                log.info("connection to agent %s lost: %r", self.name, exc)
        finally:
            self._closed.set()
            for listener in list(self._listeners):
                listener()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def root(self) -> Any:
        return self.conn.root

    def info(self) -> dict[str, Any]:
        """The agent's health and capabilities (one JSON string over the wire)."""
        return json.loads(self.conn.root.info())

    def close(self) -> None:
        self._closed.set()
        try:
            self.conn.close()
        except Exception:
            pass
        self._thread.join(2.0)


class RemoteWorker:
    """One worker process on a remote agent, with ProcessWorker's byte protocol.

    ``send(bytes)`` forwards one protocol message; ``recv(timeout)`` returns the next
    reply or raises ``TimeoutError`` (nothing yet) or ``WorkerLostError`` (the process,
    the agent or the connection is gone).
    """

    def __init__(self, conn: AgentConnection, name: str) -> None:
        self.name = name
        self._conn = conn
        self._queue: queue.Queue = queue.Queue()
        self._lost_reason = ""
        #: The agent said that the worker process ended: the host itself is fine.
        self.process_ended = False
        conn._listeners.append(self._connection_lost)
        root = conn.root
        self.wid = root.open_worker(self._on_message)
        # looked up once: each attribute of a netref costs a round trip (and a frozen
        # agent would hold that lookup for the whole RPC timeout)
        self._send = rpyc.async_(root.send)
        self._alive = rpyc.async_(root.worker_alive)
        self._close_worker = root.close_worker
        self._stream: Any = None  # a cluster.stream Channel
        self._open_stream(root)

    def _open_stream(self, root: Any) -> None:
        """Carry this worker's bytes on a direct stream (see :mod:`.stream`). If a
        plain stream cannot be had, they keep going through RPyC, slower but the same;
        an encrypted one must open (the agent takes no bytes in clear then)."""
        wire = "hmac"
        try:
            port, token, wire = root.open_stream(self.wid)
            channel = stream.open_channel(self._conn.address, int(port), token,
                                          self._conn._secret, wire, timeout=10.0)
        except Exception as exc:
            if wire == "curve":
                self._close_quietly()
                raise WorkerLostError(
                    f"worker on {self.name}: cannot open its encrypted stream to "
                    f"{self._conn.address} ({exc}); is the agent's port open to this "
                    "host (see the hosts file's ports)?") from None
            log.info("worker on %s: no stream (%s); its bytes go through RPyC", self.name,
                     exc)
            return
        self._stream = channel
        threading.Thread(target=self._read_stream, args=(channel,), daemon=True,
                         name=f"papycluster-stream-{self.name}").start()

    def _close_quietly(self) -> None:
        try:
            self._close_worker(self.wid, True)
        except Exception:
            pass

    @property
    def wire(self) -> str:
        """What carries this worker's bytes: "curve" (an encrypted stream), "hmac" (a
        plain stream) or "rpyc"."""
        return getattr(self._stream, "wire", "rpyc")

    def _read_stream(self, channel: Any) -> None:
        reason = "the stream to the agent closed"
        while True:
            try:
                data = channel.recv()
            except OSError as exc:
                reason = f"the stream to the agent failed: {exc}"
                break
            if not data:  # None: closed; empty frame: the agent says the process ended
                if data is not None:
                    reason = "the worker process ended"
                    self.process_ended = True
                break
            self._queue.put(data)
        if not self._lost_reason:
            self._lost_reason = reason
        self._queue.put(_LOST)

    @property
    def streaming(self) -> bool:
        """Do this worker's bytes travel on a direct stream (not through RPyC)?"""
        return self._stream is not None

    def _on_message(self, data: bytes | None) -> None:
        # runs in the connection's serving thread; must not block
        if data is None:
            self._lost_reason = "the worker process ended"
            self.process_ended = True
            self._queue.put(_LOST)
        else:
            self._queue.put(bytes(data))

    def _connection_lost(self) -> None:
        if not self._lost_reason:
            self._lost_reason = "the connection to the agent was lost"
        self._queue.put(_LOST)

    @property
    def lost_reason(self) -> str:
        """Why the worker is gone ('' while it is not known to be)."""
        return self._lost_reason or ("the connection to the agent was lost"
                                     if self._conn.closed else "")

    @property
    def lost(self) -> bool:
        """The connection or the worker process is known to be gone (no request made)."""
        return self._conn.closed or bool(self._lost_reason)

    def send(self, data: bytes) -> None:
        """Hand one message to the remote process without waiting for the agent.

        It goes on the worker's stream (each write bounded by ``stream.TIMEOUT``) or,
        without one, as an asynchronous RPyC request; either way in order with the
        others: waiting for an acknowledgement put a network round trip between two
        tasklets. A worker process that is gone makes the next ``recv`` raise
        ``WorkerLostError``; a host that is cut off or frozen is found by the engine's
        heartbeat (``ping``).
        """
        if self._conn.closed:
            raise WorkerLostError(f"worker on {self.name}: {self._lost_reason or 'closed'}")
        channel = self._stream  # close() may drop it meanwhile
        if channel is not None:
            try:
                channel.send(data)
            except OSError as exc:
                raise WorkerLostError(f"worker on {self.name}: sending on its stream: "
                                      f"{exc}")
            return
        try:
            res = self._send(self.wid, data)
        except (EOFError, OSError) as exc:
            raise WorkerLostError(f"worker on {self.name}: {exc}")
        res.add_callback(self._sent)

    def _sent(self, res: Any) -> None:
        # runs in the connection's serving thread when the agent has answered a send
        if res.error and not self._lost_reason:
            self._lost_reason = f"the agent refused a message: {res._obj}"
            self._queue.put(_LOST)

    def recv(self, timeout: float) -> bytes:
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise TimeoutError(f"no reply from the worker on {self.name} in {timeout:g} s")
        if item is _LOST:
            self._queue.put(_LOST)  # every later recv fails the same way
            raise WorkerLostError(f"worker on {self.name}: {self._lost_reason}")
        return item

    def ping(self, timeout: float = 2.0) -> bool:
        """Does the agent answer within ``timeout`` and is the worker process alive?

        The engine's heartbeat: a host that is cut off or frozen keeps its TCP connection
        open and simply stops answering, which only a bounded request can tell.
        """
        if self._conn.closed or self._lost_reason:
            return False
        try:
            res = self._alive(self.wid)
            res.set_expiry(max(0.01, timeout))
            return bool(res.value)
        except Exception:
            return False

    def sweep(self, timeout: float = 5.0) -> int:
        """After ``close(sweep=False)``: have the agent remove what the process left,
        if it died by itself (the agent keeps that until asked, see ``Agent.sweep``).

        A new connection, as the worker's own ended with it; bounded by ``timeout``.
        """
        conn = connect_agent(getattr(self, "_spec", self.name), timeout)
        try:
            res = rpyc.async_(conn.root.sweep_worker)(self.wid)
            res.set_expiry(timeout)
            return int(res.value)
        finally:
            conn.close()

    def close(self, sweep: bool = True) -> None:
        """Stop the remote process (and drop our connection if we own it).

        If the process had died (killed), ``sweep`` has the agent remove what it left;
        a pool that drops a lost worker mid-run passes False and calls :meth:`sweep`
        when it stops, as the items it handed out may still be loaded until then.
        """
        try:
            if not self._conn.closed:
                self._close_worker(self.wid, sweep)
        except Exception:
            pass
        finally:
            channel, self._stream = self._stream, None
            if channel is not None:
                channel.close()
            if getattr(self, "_owns_conn", False):
                self._conn.close()


@dataclass
class AgentAddress:
    name: str
    address: str
    port: int
    secret: str


def resolve(spec: str, state: Any = None) -> AgentAddress:
    """Turn ``'alpha'`` (a host of the running cluster) or ``'host:port'`` into an address."""
    from papycluster.cluster import state as state_mod

    if state is None:
        state = state_mod.load_state(missing_ok=True)
    if state is not None and spec in state.hosts:
        h = state.hosts[spec]
        return AgentAddress(spec, h.connect, h.agent_port, state.secret)
    host, sep, port = spec.rpartition(":")
    if sep and port.isdigit():
        secret = secret_from_env()
        name = spec
        if state is not None:
            secret = secret or state.secret
            for hname, h in state.hosts.items():
                if h.agent_port == int(port) and host in (h.connect, h.address):
                    name = hname
        if not secret:
            raise ClusterError(f"no cluster secret for agent {spec}: set PAPYCLUSTER_SECRET_FILE "
                               "or run `papycluster up` first")
        return AgentAddress(name, host.strip("[]"), int(port), secret)
    if state is None:
        raise ClusterError(f"unknown host {spec!r}: no cluster is up (run `papycluster up`), "
                           "or name an agent as 'host:port'")
    raise ClusterError(f"unknown host {spec!r}: the running cluster {state.cluster!r} has "
                       f"{', '.join(sorted(state.hosts)) or 'no hosts'}")


def connect_agent(spec: str, timeout: float = 10.0, state: Any = None) -> AgentConnection:
    """An authenticated connection to the agent named by ``spec``."""
    addr = resolve(spec, state)
    return AgentConnection(addr.address, addr.port, addr.secret, addr.name, timeout)


def open_remote_worker(spec: str, timeout: float = 10.0) -> RemoteWorker:
    """Start one worker process on the agent named by ``spec``; the engine's remote lane.

    ``spec`` is a host name of the running cluster (from the state written by ``up``)
    or ``'host:port'`` of an agent. Each RemoteWorker has its own connection, so workers
    never wait on each other and closing one stops exactly that process.
    """
    try:
        conn = connect_agent(spec, timeout)
    except (ConnectionError, AuthError, VersionMismatchError) as exc:
        raise WorkerLostError(f"cannot reach agent {spec!r}: {exc}")
    try:
        worker = RemoteWorker(conn, conn.name)
    except Exception:
        conn.close()
        raise
    worker._owns_conn = True
    worker._spec = spec
    return worker
