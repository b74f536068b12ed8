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

The listener uses an ephemeral port (hosts already reach each other's ephemeral ports
for the tcp transport), or one of the hosts file's ``ports``
(:mod:`papycluster.wire.ports`). A controller that cannot open a stream keeps RPyC for
that worker, so a firewall costs speed, not function.

This module runs on the agent too: Python 3.9, no ``match``, no runtime ``X | Y``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from papycluster.cluster.auth import (
    HANDSHAKE_TIMEOUT,
    AuthError,
    client_handshake,
    server_handshake,
)
from papycluster.wire import ports
from papycluster.wire.frames import FRAME, SMALL, recv_exact, recv_frame, send_frame

#: The frames are papycluster.wire's; named here for the agent and the client.
__all__ = ["FRAME", "HANDSHAKE_TIMEOUT", "SMALL", "TIMEOUT", "TOKEN", "StreamListener",
           "close", "connect", "recv_frame", "send_frame"]

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


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class StreamListener:
    """The agent's side: accepts streams, admits those that prove the secret and
    present a token that :meth:`issue` handed out, and gives them to ``attach``."""

    def __init__(self, bind: str, secret: str | bytes,
                 attach: Callable[[int, socket.socket], bool]) -> None:
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
