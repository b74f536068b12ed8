"""Which secret the network transports use, and their side of the handshake.

The handshake itself (a mutual HMAC challenge/response, one deadline over all of it)
is :mod:`papycluster.wire.handshake`, shared with the cluster's agents; here it gets
tcp's greeting and the transports' errors: a server logs and drops a peer that fails,
a loader gets a :class:`SecretError` saying where its own secret comes from. Nothing a
peer sends is deserialized before it has proved the secret.

The secret comes from ``PAPYCLUSTER_SECRET`` or from the file named by
``PAPYCLUSTER_SECRET_FILE`` (the cluster sets one of them on every host). There is
no built-in default: a default secret would be a password everyone knows.

Without either, a process makes an *ephemeral run secret* (256 random bits) the first
time it needs one, and hands it to the worker processes it starts itself (see
:func:`secret_for_children`), so that two local NuMaps exchange items over ``tcp``
or ``udp`` with no setup, while any other process, which does not have it, is
refused. Inside a cluster the cluster secret is configured and used, as before.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

from papycluster.transport.base import SecretError, TransportError, log
from papycluster.wire import handshake
from papycluster.wire.frames import PeerClosed, recv_exact
from papycluster.wire.handshake import (
    DIGEST,
    HANDSHAKE_DEADLINE,
    NONCE,
    mac,
    nonce,
)

SECRET_ENV = "PAPYCLUSTER_SECRET"
SECRET_FILE_ENV = "PAPYCLUSTER_SECRET_FILE"
MIN_SECRET = 16

#: Sent first by a tcp server: protocol name and version, so a stray client fails early.
HELLO = handshake.TCP.greeting
#: DIGEST, HANDSHAKE_DEADLINE, NONCE, PeerClosed, mac, nonce and recv_exact are
#: :mod:`papycluster.wire`'s, named here too for the transports (udp) and their tests.
__all__ = ["DIGEST", "HANDSHAKE_DEADLINE", "HELLO", "NONCE", "PeerClosed", "mac", "nonce",
           "recv_exact", "configured", "run_secret", "secret_for_children",
           "adopt_run_secret", "get_secret", "server_handshake", "client_handshake",
           "secret_hint"]

_cache: tuple[tuple[str | None, str | None], bytes] | None = None
_run_secret: bytes | None = None
_run_lock = threading.Lock()


def configured() -> bool:
    """Whether a cluster secret is configured (``PAPYCLUSTER_SECRET[_FILE]``)."""
    return bool(os.environ.get(SECRET_ENV) or os.environ.get(SECRET_FILE_ENV))


def run_secret() -> bytes:
    """This run's ephemeral secret: made on first use, or the one our starter gave us."""
    global _run_secret
    with _run_lock:
        if _run_secret is None:
            _run_secret = secrets.token_hex(32).encode("ascii")
        return _run_secret


def secret_for_children() -> bytes | None:
    """What a worker process that we start must be handed: the run secret when no
    cluster secret is configured, else ``None`` (it reads the configured one, as we do).

    It goes to the child in the arguments of its ``multiprocessing`` entry point, not
    in its environment and never on a command line or in a file. Those arguments
    travel over a pipe (``spawn``), over the forkserver's socket in a 0700 directory
    (``forkserver``) or in the forked memory (``fork``): other users see none of them.
    An environment variable would be safe from other users too (``/proc/PID/environ``
    is readable only by the same user), but a forkserver's children inherit the
    forkserver's environment, not ours at the time, and a ``PAPYCLUSTER_SECRET`` of
    ours would pass for a configured cluster secret (the cluster's own would then not
    be set up on the controller, see ``negotiate.prepare_controller_env``) and leak to
    every unrelated program the user's code starts.
    """
    return None if configured() else run_secret()


def adopt_run_secret(secret: bytes | None) -> None:
    """In a worker process: use the run secret of the process that started us."""
    global _run_secret
    if secret:
        with _run_lock:
            _run_secret = bytes(secret)


def get_secret() -> bytes:
    """The cluster secret as bytes (or this run's ephemeral one when none is configured);
    a :class:`SecretError` when the configured one is unusable, saying how to fix it."""
    global _cache
    env = os.environ.get(SECRET_ENV)
    path = os.environ.get(SECRET_FILE_ENV)
    if not env and not path:
        return run_secret()
    if _cache is not None and _cache[0] == (env, path):
        return _cache[1]
    if env:
        secret = env.encode()
    elif path:
        try:
            with open(path, "rb") as handle:
                secret = handle.read().strip()
        except OSError as exc:
            raise SecretError(f"cannot read the cluster secret from {SECRET_FILE_ENV}="
                              f"{path!r}: {exc}") from None
    else:  # pragma: no cover - handled above
        raise AssertionError("no secret configured")
    if len(secret) < MIN_SECRET:
        source = SECRET_ENV if env else f"{SECRET_FILE_ENV}={path!r}"
        raise SecretError(f"the cluster secret from {source} is too short "
                          f"({len(secret)} bytes, need at least {MIN_SECRET})")
    _cache = ((env, path), secret)
    return secret


def server_handshake(sock: socket.socket, secret: bytes, peer: object,
                     timeout: float = HANDSHAKE_DEADLINE) -> bool:
    """Authenticate a client that connected to us; True if it knows the secret.

    :func:`papycluster.wire.handshake.serve` with tcp's greeting: one deadline of
    ``timeout`` seconds over the whole exchange. A failure is logged with the peer's
    address, never raised: the server thread just drops the connection.
    """
    try:
        handshake.serve(sock, secret, handshake.TCP, timeout)
    except handshake.HandshakeError as exc:
        log.warning("refused %s: %s", peer, exc)
        return False
    return True


def client_handshake(sock: socket.socket, secret: bytes, where: str) -> None:
    """Prove ourselves to the server at ``where`` and check that it knows the secret too.

    The whole exchange must finish within the socket's timeout (at most
    :data:`HANDSHAKE_DEADLINE`), which is restored after it. A server that is not a tcp
    server is a :class:`TransportError`; one that refuses our proof or cannot prove
    its own is a :class:`SecretError` that says where our secret comes from. A server
    that closes before greeting raises :class:`PeerClosed` with ``got == 0`` (tcp
    backs off and tries again: it was turning connections away).
    """
    previous = sock.gettimeout()
    limit = HANDSHAKE_DEADLINE if previous is None else min(previous, HANDSHAKE_DEADLINE)
    try:
        handshake.greet(sock, secret, handshake.TCP, where, time.monotonic() + limit)
    except handshake.NotAPeer as exc:
        raise TransportError(str(exc)) from None
    except handshake.Refused as exc:
        raise SecretError(f"{exc} {secret_hint()}") from None
    except handshake.Impostor as exc:
        raise SecretError(f"{exc}; refusing its data. {secret_hint()}") from None
    sock.settimeout(previous)


def secret_hint() -> str:
    """Where this process's secret comes from, for the error of a refused handshake."""
    if configured():
        return f"(this process uses the one of {SECRET_ENV} or {SECRET_FILE_ENV})"
    return (f"(this process has no {SECRET_ENV} or {SECRET_FILE_ENV}, so it uses its own "
            "run's ephemeral secret, which only the worker processes it started share: "
            "set the same secret in both processes to exchange items between them)")
