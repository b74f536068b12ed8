"""Worker streams: one direct, authenticated socket per remote worker for its bytes.

RPyC carries the control of a remote worker well (open, ping, close), its data less
so: every message is a request that is answered, brine-encoded and dispatched by a
serving thread at both ends. Measured between two docker nodes sharing two cores, that
cost the controller 0.40 s of CPU and each agent 0.13 s for 1,000 items of 1 MB, on a
machine that was then 87% busy (with streams: 0.22 s, 0.06 s, 75% busy). A stream is
one TCP connection per worker that carries length-prefixed frames
(:func:`papycluster.wire.frames.send_frame`) and nothing else: the controller's
protocol messages one way, the worker's replies the other, both unchanged (the agent
still never unpickles).

Opening: the controller asks the agent over RPyC (``open_stream(wid)``) for the port of
the agent's stream listener and a one-time token. It connects, both ends prove the
cluster secret with the same HMAC handshake as the agent's RPyC port, and then it sends
the token, which binds the connection to that worker. Nothing is read from a peer
before it has proved the secret, and nothing but the token until the token matched.
A zero-length frame from the agent says that the worker process ended.

Two wires carry these frames. With encryption on (the default, as for ``tcp`` items)
and pyzmq on the agent, the stream is a CurveZMQ connection
(:mod:`papycluster.cluster.stream_curve`); with ``encrypt = false``, or on an agent
without pyzmq, it is the plain socket below. Either way the agent and the controller
see a :class:`Channel`: ``send`` a frame, ``recv`` the next (None at the end),
``close``.

The listener uses an ephemeral port (hosts already reach each other's ephemeral ports
for the tcp transport), or one of the hosts file's ``ports``
(:mod:`papycluster.wire.ports`). A controller that cannot open a plain stream keeps
RPyC for that worker, so a firewall costs speed, not function; an encrypted stream
has no such fallback (RPyC's bytes are in clear), and the agent refuses a worker's
bytes over RPyC when it offers encrypted streams.

This module runs on the agent too: Python 3.9, no ``match``, no runtime ``X | Y``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

from papycluster.cluster.auth import (
    HANDSHAKE_TIMEOUT,
    AuthError,
    client_handshake,
    server_handshake,
)
from papycluster.wire import ports
from papycluster.wire.frames import FRAME, SMALL, recv_exact, recv_frame, send_frame

#: The frames are papycluster.wire's; named here for the agent and the client.
__all__ = ["FRAME", "HANDSHAKE_TIMEOUT", "SMALL", "TIMEOUT", "TOKEN", "Channel",
           "SocketChannel", "StreamListener", "close", "connect", "encrypted_here",
           "listener", "open_channel", "recv_frame", "send_frame"]

log = logging.getLogger("papycluster.stream")

TOKEN = 32
#: Bound on every send, and on every read inside a frame, on an open stream (seconds).
TIMEOUT = 10.0


def close(sock: socket.socket) -> None:
    """End a stream at once, waking a reader that waits on it at either end."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class Channel(Protocol):
    """One worker's stream, as the agent and the controller use it (either wire)."""

    def send(self, data: Any) -> None:
        """Send one frame; OSError when the stream is gone."""

    def recv(self) -> Any:
        """The next frame (bytes-like), None at the end; OSError when it broke."""

    def close(self) -> None:
        """End the stream, waking a reader that waits on it."""


class SocketChannel:
    """The plain wire's :class:`Channel`: frames on an authenticated TCP socket."""

    wire = "hmac"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, data: Any) -> None:
        send_frame(self.sock, data, self.lock)

    def recv(self) -> Any:
        try:
            return recv_frame(self.sock)
        except ValueError as exc:  # closed under us
            raise ConnectionError(str(exc)) from None

    def close(self) -> None:
        close(self.sock)


def encrypted_here() -> bool:
    """Whether this agent's streams are encrypted: encryption is on (``--encrypt``,
    ``PAPYCLUSTER_ENCRYPT``) and pyzmq with CURVE can be had here."""
    from papycluster.transport import curve

    return curve.enabled() and curve.usable()


def listener(bind: str, secret: str | bytes, attach: Callable[[int, Any], bool]) -> Any:
    """The agent's stream listener: encrypted where :func:`encrypted_here`, else plain.
    ``attach(wid, channel)`` takes a new worker's :class:`Channel`."""
    if encrypted_here():
        from papycluster.cluster.stream_curve import CurveStreamListener

        return CurveStreamListener(bind, secret, attach)
    return StreamListener(bind, secret, lambda wid, sock: attach(wid, SocketChannel(sock)))


def open_channel(address: str, port: int, token: str, secret: str | bytes, wire: str,
                 timeout: float) -> Any:
    """The controller's end of a worker's stream, on the wire the agent named."""
    if wire == "curve":
        from papycluster.cluster.stream_curve import ControllerChannel

        return ControllerChannel(address, port, token, secret, timeout)
    if wire != "hmac":
        raise ValueError(f"a worker stream on an unknown wire {wire!r}")
    return SocketChannel(connect(address, port, token, secret, timeout))


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class StreamListener:
    """The plain wire's agent side: accepts streams, admits those that prove the secret and
    present a token that :meth:`issue` handed out, and gives them to ``attach``."""

    def __init__(self, bind: str, secret: str | bytes,
                 attach: Callable[[int, socket.socket], bool]) -> None:
        self.wire = "hmac"
        self.secret = secret
        self.attach = attach
        self.tokens: dict = {}
        self.lock = threading.Lock()
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = ports.bind_port(self.sock, bind, "the agent's worker-stream listener")
        self.sock.listen(64)
        self.closed = False
        threading.Thread(target=self._accept, name="papycluster-streams",
                         daemon=True).start()

    def issue(self, wid: int) -> str:
        """A one-time token that binds the next stream presenting it to worker ``wid``."""
        token = os.urandom(TOKEN)
        with self.lock:
            self.tokens[token] = wid
        return token.hex()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                if self.closed:
                    return
                continue
            threading.Thread(target=self._admit, args=(conn, peer), daemon=True,
                             name="papycluster-stream-admit").start()

    def _admit(self, conn: socket.socket, peer: Any) -> None:
        where = "{}:{}".format(*peer[:2])
        try:
            _tune(conn)
            server_handshake(conn, self.secret, HANDSHAKE_TIMEOUT)
            conn.settimeout(HANDSHAKE_TIMEOUT)
            token = recv_exact(conn, TOKEN, what="its token")
            with self.lock:
                wid = self.tokens.pop(token, None)
            if wid is None:
                raise AuthError("a token this agent did not issue (or issued and used)")
            conn.settimeout(TIMEOUT)
            if self.attach(wid, conn):
                return
            raise ConnectionError(f"worker {wid} is gone or has its stream already")
        except (AuthError, OSError) as exc:
            log.warning("stream from %s refused: %s", where, exc)
        conn.close()

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def connect(address: str, port: int, token: str, secret: str | bytes,
            timeout: float) -> socket.socket:
    """The controller's side: connect, prove the secret both ways, present the token."""
    sock = socket.create_connection((address, port), timeout=timeout)
    try:
        _tune(sock)
        client_handshake(sock, secret, timeout)
        sock.settimeout(timeout)
        sock.sendall(bytes.fromhex(token))
        sock.settimeout(TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock
