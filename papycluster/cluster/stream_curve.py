"""Worker streams over ZeroMQ with CURVE: a remote worker's bytes, encrypted.

The plain streams of :mod:`papycluster.cluster.stream` prove the cluster secret when
they open and then carry tasklets (your functions and their arguments) and results in
clear. These carry the same frames on a CurveZMQ connection, with the cluster's keys
(:mod:`papycluster.transport.curve`): both ends authenticated, every frame encrypted,
and a peer without the secret stopped inside libzmq's handshake, before one byte of it
reaches the agent.

The agent has one ROUTER socket for all its workers' streams; the controller a DEALER
socket per worker (:class:`papycluster.transport.tcp_curve.CurveClient`, whose
monitor reports the handshake and a dropped connection). The DEALER's first message is
the worker's one-time token; the agent answers ``OK`` or why not, and from then on
every message is one frame of the worker, as on a plain stream (an empty frame from
the agent: the worker process ended).

ZeroMQ sockets belong to one thread each. Both ends therefore keep one thread that owns
the sockets; other threads hand it their frames through an ``inproc`` PUSH socket
(zero-copy) and take the frames meant for them from a queue. Sends never block: the
frames in flight are bounded by the engine (a worker answers only tasklets it was
given, and the pool gives it at most its buffer).

Runs on the agent too: Python 3.9, no ``match``, no runtime ``X | Y``.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
from collections.abc import Callable
from typing import Any

from papycluster.transport import curve
from papycluster.transport.tcp_curve import CurveClient, bind_in_range
from papycluster.wire.frames import SMALL

log = logging.getLogger("papycluster.stream")

TOKEN = 32
#: The agent's answer to a token it bound to a worker (anything else says why not).
ACCEPTED = b"OK"
#: Seconds a connecting controller waits for that answer.
ANSWER_TIMEOUT = 10.0
_CLOSED = None


def _pending(recv: Callable[[], Any]) -> Any:
    """Every message waiting on a socket, without blocking (``recv`` passes NOBLOCK)."""
    z = curve.zmq()
    while True:
        try:
            yield recv()
        except z.Again:
            return


def _payload(frame: Any) -> Any:
    """A received frame's bytes: small ones as bytes, large ones without a copy."""
    return frame.bytes if len(frame) < SMALL else frame.buffer


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


class _Pipe:
    """Frames from any thread to the thread that owns the sockets: a PUSH socket
    shared under a lock (a lock is all ZeroMQ asks of a socket used by several
    threads), and its PULL end in the owner's poller."""

    def __init__(self, context: Any) -> None:
        z = curve.zmq()
        address = f"inproc://papycluster.stream.{secrets.token_hex(8)}"
        self.pull = context.socket(z.PULL)
        self.pull.setsockopt(z.LINGER, 0)
        self.pull.setsockopt(z.RCVHWM, 0)
        self.pull.bind(address)
        self.push = context.socket(z.PUSH)
        self.push.setsockopt(z.LINGER, 0)
        self.push.setsockopt(z.SNDHWM, 0)
        self.push.connect(address)
        self.lock = threading.Lock()

    def put(self, frames: list) -> None:
        with self.lock:
            if self.push is None:
                raise ConnectionError("the stream is closed")
            self.push.send_multipart(frames, copy=len(frames[-1]) < SMALL)

    def close(self) -> None:
        with self.lock:
            push, self.push = self.push, None
        if push is not None:
            push.close(linger=0)
        self.pull.close(linger=0)


class AgentChannel:
    """One worker's stream at the agent: :meth:`send` replies, :meth:`recv` tasklets."""

    wire = "curve"

    def __init__(self, listener: CurveStreamListener, peer: bytes) -> None:
        self.listener = listener
        self.peer = peer
        self.inbox: queue.Queue = queue.Queue()
        self.closed = False

    def send(self, data: Any) -> None:
        if self.closed:
            raise ConnectionError("the worker's stream is closed")
        self.listener._pipe.put([self.peer, data])

    def recv(self) -> Any:
        """The next frame of the controller, or None once the stream ended."""
        frame = self.inbox.get()
        if frame is _CLOSED:
            self.inbox.put(_CLOSED)
        return frame

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.listener._forget(self.peer)
        self.inbox.put(_CLOSED)


class CurveStreamListener:
    """The agent's side: a CURVE ROUTER that admits the cluster's controllers, binds
    each connection to the worker whose token it presents, and hands the worker's
    stream to ``attach`` (the same contract as :class:`.stream.StreamListener`)."""

    wire = "curve"

    def __init__(self, bind: str, secret: str | bytes,
                 attach: Callable[[int, Any], bool]) -> None:
        z = curve.zmq()
        self.attach = attach
        self.tokens: dict = {}
        self.channels: dict = {}
        self.lock = threading.Lock()
        self.context = z.Context()
        self.gate = curve.Gate(self.context)
        keys = curve.Keys(_secret_bytes(secret))
        self.gate.allow(keys)
        self.sock = self.context.socket(z.ROUTER)
        keys.as_server(self.sock)
        self.sock.setsockopt(z.LINGER, 0)
        self.sock.setsockopt(z.ROUTER_MANDATORY, 1)  # a reply to a gone peer fails
        self.sock.setsockopt(z.SNDHWM, 0)
        self.sock.setsockopt(z.RCVHWM, 0)
        self.sock.setsockopt(z.HANDSHAKE_IVL, 10_000)
        self.sock.setsockopt(z.HEARTBEAT_IVL, 2000)
        self.sock.setsockopt(z.HEARTBEAT_TIMEOUT, 10_000)
        try:
            self.port = bind_in_range(self.sock, bind, "the agent's worker-stream "
                                      "listener")
        except BaseException:
            self.sock.close(linger=0)
            self.gate.stop()
            self.context.term()
            raise
        self._pipe = _Pipe(self.context)
        self.closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="papycluster-streams-curve")
        self._thread.start()

    def issue(self, wid: int) -> str:
        """A one-time token that binds the next stream presenting it to worker ``wid``."""
        token = os.urandom(TOKEN)
        with self.lock:
            self.tokens[token] = wid
        return token.hex()

    def refused(self) -> int:
        """How many CURVE handshakes the gate refused."""
        return self.gate.refused

    def _loop(self) -> None:
        z = curve.zmq()
        poller = z.Poller()
        poller.register(self.sock, z.POLLIN)
        poller.register(self._pipe.pull, z.POLLIN)
        try:
            while not self.closed:
                ready = dict(poller.poll(250))
                if self._pipe.pull in ready:
                    self._send_out(z)
                if self.sock in ready:
                    self._take_in(z)
        except z.ZMQError:
            if not self.closed:
                log.exception("the worker-stream listener failed")
        finally:
            self.sock.close(linger=0)
            with self.lock:
                channels = list(self.channels.values())
            for channel in channels:
                channel.close()

    def _send_out(self, z: Any) -> None:
        pull = self._pipe.pull
        for frames in _pending(lambda: pull.recv_multipart(z.NOBLOCK, copy=False)):
            peer = frames[0].bytes
            try:
                self.sock.send_multipart(frames, copy=False, flags=z.NOBLOCK)
            except z.ZMQError as exc:  # EHOSTUNREACH: the controller is gone
                with self.lock:
                    channel = self.channels.get(peer)
                if channel is not None:
                    log.info("a worker's stream lost its controller (%s)", exc)
                    channel.close()

    def _take_in(self, z: Any) -> None:
        for frames in _pending(lambda: self.sock.recv_multipart(z.NOBLOCK, copy=False)):
            if len(frames) != 2:
                continue  # not a DEALER of ours: one frame per message
            peer, frame = frames[0].bytes, frames[1]
            with self.lock:
                channel = self.channels.get(peer)
            if channel is not None:
                channel.inbox.put(_payload(frame))
                continue
            answer = self._admit(peer, frame.bytes)
            try:
                self.sock.send_multipart([peer, answer], flags=z.NOBLOCK)
            except z.ZMQError:
                pass

    def _admit(self, peer: bytes, token: bytes) -> bytes:
        """Bind a new connection to its worker: the answer to its token."""
        with self.lock:
            wid = self.tokens.pop(token, None) if len(token) == TOKEN else None
        if wid is None:
            why = "a token this agent did not issue (or issued and used)"
        else:
            channel = AgentChannel(self, peer)
            with self.lock:
                self.channels[peer] = channel
            if self.attach(wid, channel):
                return ACCEPTED
            with self.lock:
                self.channels.pop(peer, None)
            why = f"worker {wid} is gone or has its stream already"
        log.warning("encrypted stream refused: %s", why)
        return why.encode()

    def _forget(self, peer: bytes) -> None:
        with self.lock:
            self.channels.pop(peer, None)

    def close(self) -> None:
        self.closed = True
        self._thread.join(2.0)
        self._pipe.close()
        self.gate.stop()
        self.context.term()


class ControllerChannel:
    """The controller's end of one worker's encrypted stream: a DEALER socket whose
    handshake :class:`CurveClient` saw succeed, and the thread that owns it."""

    wire = "curve"

    def __init__(self, address: str, port: int, token: str, secret: str | bytes,
                 timeout: float) -> None:
        z = curve.zmq()
        self.where = f"{address}:{port}"
        self.inbox: queue.Queue = queue.Queue()
        self.reason = ""
        self.closed = False
        self.client = CurveClient(z.Context(), curve.Keys(_secret_bytes(secret)),
                                  address, port, timeout, own_context=True)
        sock = self.client.sock
        try:
            sock.setsockopt(z.SNDHWM, 0)
            sock.setsockopt(z.RCVHWM, 0)
            sock.send(bytes.fromhex(token))
            if not sock.poll(int(min(timeout, ANSWER_TIMEOUT) * 1000)):
                raise TimeoutError(f"the agent at {self.where} did not answer the "
                                   f"stream's token within {timeout:g} s")
            answer = sock.recv()
            if answer != ACCEPTED:
                raise ConnectionError(f"the agent at {self.where} refused the stream: "
                                      + answer.decode(errors="replace"))
            self._pipe = _Pipe(self.client.context)
        except BaseException:
            self.client.close()
            raise
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"papycluster-stream-curve-{self.where}")
        self._thread.start()

    def send(self, data: Any) -> None:
        if self.closed:
            raise ConnectionError(f"the stream to {self.where} is closed: {self.reason}")
        self._pipe.put([data])

    def recv(self) -> Any:
        """The next frame of the worker, or None once the stream ended; OSError when
        the connection to the agent dropped."""
        frame = self.inbox.get()
        if frame is _CLOSED or isinstance(frame, OSError):
            self.inbox.put(frame)
        if isinstance(frame, OSError):
            raise frame
        return frame

    def _loop(self) -> None:
        z = curve.zmq()
        sock, pull = self.client.sock, self._pipe.pull
        poller = z.Poller()
        poller.register(sock, z.POLLIN)
        poller.register(pull, z.POLLIN)
        poller.register(self.client.monitor, z.POLLIN)
        failure: Any = _CLOSED
        try:
            while not self.closed:
                ready = dict(poller.poll(250))
                if pull in ready:
                    for frames in _pending(lambda: pull.recv_multipart(z.NOBLOCK,
                                                                       copy=False)):
                        sock.send_multipart(frames, copy=False, flags=z.NOBLOCK)
                if sock in ready:
                    for frame in _pending(lambda: sock.recv(z.NOBLOCK, copy=False)):
                        self.inbox.put(_payload(frame))
                if self.client.monitor in ready and not self.client.healthy():
                    # libzmq would reconnect, and what was in flight would be gone
                    # unseen: the stream ends here, and the engine resubmits
                    failure = ConnectionError(f"the encrypted stream to {self.where} "
                                              "dropped")
                    self.reason = str(failure)
                    break
        except z.ZMQError as exc:
            if not self.closed:
                failure = ConnectionError(f"the stream to {self.where} failed: {exc}")
                self.reason = str(failure)
        finally:
            self.closed = True
            self.inbox.put(failure)
            self._pipe.close()
            self.client.close()

    def close(self) -> None:
        if not self.closed:
            self.reason = self.reason or "closed here"
            self.closed = True
        if threading.current_thread() is not self._thread:
            self._thread.join(2.0)
