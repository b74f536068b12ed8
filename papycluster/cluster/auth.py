"""The cluster secret and the HMAC handshake that proves it.

Every agent listener runs :func:`server_handshake` on the raw socket before a single
RPyC/brine byte is read, so a peer that does not know the secret never reaches code
that deserializes anything. The handshake is mutual: the client also checks that the
agent knows the secret, so a process squatting on the agent's port cannot collect
tasklets.

Wire format (all fixed-size, no parsing)::

    agent  -> client   MAGIC (16 bytes) + nonce_a (32 bytes)
    client -> agent    nonce_c (32) + HMAC-SHA256(secret, b"client" + nonce_a + nonce_c)
    agent  -> client   HMAC-SHA256(secret, b"agent" + nonce_c + nonce_a)

The secret itself never crosses the wire. A wrong proof closes the socket at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
import time

from papycluster.cluster.errors import AuthError

MAGIC = b"PAPYCLUSTER-A1\r\n"
NONCE = 32
DIGEST = 32
HANDSHAKE_TIMEOUT = 10.0

SECRET_ENV = "PAPYCLUSTER_SECRET"
SECRET_FILE_ENV = "PAPYCLUSTER_SECRET_FILE"

log = logging.getLogger("papycluster.auth")


def new_secret() -> str:
    """A fresh cluster secret: 256 random bits as hex."""
    return secrets.token_hex(32)


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AuthError("handshake timed out")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:  # not yet TimeoutError on Python 3.9 hosts
            raise AuthError("handshake timed out")
        if not chunk:
            raise AuthError("peer closed the connection during the handshake")
        buf += chunk
    return bytes(buf)


def _mac(secret: str | bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(_key(secret), label + b"".join(parts), hashlib.sha256).digest()


def server_handshake(sock: socket.socket, secret: str | bytes,
                     timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Make the peer on ``sock`` prove the secret; raise :class:`AuthError` if it does not.

    The socket is left blocking (timeout ``None``) on success.
    """
    deadline = time.monotonic() + timeout
    nonce_a = os.urandom(NONCE)
    try:
        sock.settimeout(timeout)
        sock.sendall(MAGIC + nonce_a)
        reply = _recv_exact(sock, NONCE + DIGEST, deadline)
        nonce_c, proof = reply[:NONCE], reply[NONCE:]
        if not hmac.compare_digest(proof, _mac(secret, b"client", nonce_a, nonce_c)):
            raise AuthError("wrong proof of the cluster secret")
        sock.sendall(_mac(secret, b"agent", nonce_c, nonce_a))
        sock.settimeout(None)
    except OSError as exc:
        raise AuthError(f"handshake failed: {exc}")


def client_handshake(sock: socket.socket, secret: str | bytes,
                     timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Prove the secret to the agent on ``sock`` and check that it knows it too."""
    deadline = time.monotonic() + timeout
    try:
        hello = _recv_exact(sock, len(MAGIC) + NONCE, deadline)
        if hello[: len(MAGIC)] != MAGIC:
            raise AuthError("the peer is not a papycluster agent (bad greeting)")
        nonce_a = hello[len(MAGIC):]
        nonce_c = os.urandom(NONCE)
        sock.sendall(nonce_c + _mac(secret, b"client", nonce_a, nonce_c))
        try:
            answer = _recv_exact(sock, DIGEST, deadline)
        except AuthError:
            raise AuthError("the agent refused our proof: wrong cluster secret")
        if not hmac.compare_digest(answer, _mac(secret, b"agent", nonce_c, nonce_a)):
            raise AuthError("the agent does not know the cluster secret")
        sock.settimeout(None)
    except OSError as exc:
        raise AuthError(f"handshake failed: {exc}")


class HmacAuthenticator:
    """An RPyC authenticator: the HMAC challenge/response above, logged when refused."""

    def __init__(self, secret: str | bytes, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self._secret = _key(secret)
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
