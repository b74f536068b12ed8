"""The cluster's secret files, and the agents' side of the handshake that proves it.

Every agent listener (the RPyC port, :class:`HmacAuthenticator`, and the per-worker
stream listener) runs :func:`server_handshake` on the raw socket before a single
RPyC/brine byte is read, so a peer that does not know the secret never reaches code
that deserializes anything. The handshake is mutual: the client also checks that the
agent knows the secret, so a process squatting on the agent's port cannot collect
tasklets.

The handshake is :mod:`papycluster.wire.handshake` (the same code as the tcp
transport's) with the agent's greeting :data:`MAGIC` and labels; here its failures
become :class:`AuthError`. The secret itself never crosses the wire. A wrong proof
closes the socket at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time

from papycluster.cluster.errors import AuthError
from papycluster.transport.auth import SECRET_ENV, SECRET_FILE_ENV
from papycluster.wire import handshake
from papycluster.wire.handshake import DIGEST, HANDSHAKE_DEADLINE, NONCE

#: The agent's greeting (A2 since the handshake is shared with tcp: an agent that
#: greets with A1 is named as another version by the client).
MAGIC = handshake.AGENT.greeting
HANDSHAKE_TIMEOUT = HANDSHAKE_DEADLINE

__all__ = ["DIGEST", "HANDSHAKE_TIMEOUT", "MAGIC", "NONCE", "SECRET_ENV", "SECRET_FILE_ENV",
           "AuthError", "HmacAuthenticator", "client_handshake", "new_secret",
           "read_secret_file", "secret_from_env", "server_handshake", "write_secret_file"]

log = logging.getLogger("papycluster.auth")


def new_secret() -> str:
    """A fresh cluster secret: 256 random bits as hex."""
    return secrets.token_hex(32)


def server_handshake(sock: socket.socket, secret: str | bytes,
                     timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Make the peer on ``sock`` prove the secret; raise :class:`AuthError` if it does not.

    One deadline of ``timeout`` seconds over the whole exchange. The socket is left
    blocking (timeout ``None``) on success.
    """
    try:
        handshake.serve(sock, secret, handshake.AGENT, timeout)
    except handshake.HandshakeError as exc:
        raise AuthError(str(exc)) from None
    sock.settimeout(None)


def client_handshake(sock: socket.socket, secret: str | bytes,
                     timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Prove the secret to the agent on ``sock`` and check that it knows it too, all
    within ``timeout`` seconds. The socket is left blocking on success."""
    try:
        handshake.greet(sock, secret, handshake.AGENT, "the peer",
                        time.monotonic() + timeout)
    except handshake.HandshakeError as exc:
        raise AuthError(str(exc)) from None
    except OSError as exc:
        raise AuthError(f"handshake failed: {exc}") from None
    sock.settimeout(None)


class HmacAuthenticator:
    """An RPyC authenticator: the HMAC challenge/response above, logged when refused."""

    def __init__(self, secret: str | bytes, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self._secret = secret
        self.timeout = timeout
        self.refused = 0

    def __call__(self, sock: socket.socket) -> tuple[socket.socket, str]:
        from rpyc.utils.authenticators import AuthenticationError

        try:
            peer = "{}:{}".format(*sock.getpeername()[:2])
        except OSError:
            peer = "?"
        try:
            server_handshake(sock, self._secret, self.timeout)
        except AuthError as exc:
            self.refused += 1
            log.warning("refused connection from %s: %s", peer, exc)
            raise AuthenticationError(str(exc))
        try:  # RPyC writes small frames; without this, Nagle + delayed ACK cost ~40 ms each
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:
            pass
        return sock, "papycluster-peer"


def read_secret_file(path: str) -> str:
    with open(os.path.expanduser(path), encoding="ascii") as f:
        secret = f.read().strip()
    if not secret:
        raise AuthError(f"secret file {path} is empty")
    return secret


def write_secret_file(path: str, secret: str) -> None:
    """Write ``secret`` to ``path`` created 0600 (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
        os.write(fd, secret.encode("ascii"))
    finally:
        os.close(fd)


def secret_from_env() -> str | None:
    """The secret from ``PAPYCLUSTER_SECRET`` or ``PAPYCLUSTER_SECRET_FILE``, if set."""
    value = os.environ.get(SECRET_ENV)
    if value:
        return value.strip()
    path = os.environ.get(SECRET_FILE_ENV)
    if path:
        return read_secret_file(path)
    return None
