"""The cluster secret and the HMAC challenge/response that network transports use.

Both ends prove that they know the cluster secret before anything else is read: the
server sends a fresh nonce, the client answers with its own nonce and an HMAC over
both, the server checks it with :func:`hmac.compare_digest` and only then proves
itself back. Nothing a peer sends is deserialized before that; a peer that fails is
logged and dropped. The secret itself never crosses the wire.

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

import hashlib
import hmac
import os
import secrets
import socket
import threading
import time

from papycluster.errors import PapyError
from papycluster.transport.base import SecretError, TransportError, log

SECRET_ENV = "PAPYCLUSTER_SECRET"
SECRET_FILE_ENV = "PAPYCLUSTER_SECRET_FILE"
MIN_SECRET = 16

NONCE = 32
DIGEST = 32
#: Sent first by the server: protocol name and version, so a stray client fails early.
HELLO = b"PAPYCT1\n"
#: The whole server handshake, not each read, must finish within this many seconds (as
#: the cluster's own handshake): a peer dripping one byte at a time is cut at the deadline.
HANDSHAKE_DEADLINE = 10.0

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


def mac(secret: bytes, label: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 of ``label`` and ``parts`` (length-prefixed, so parts cannot shift)."""
    h = hmac.new(secret, label, hashlib.sha256)
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def nonce() -> bytes:
    return secrets.token_bytes(NONCE)


class PeerClosed(PapyError, ConnectionError):
    """The peer closed the connection; ``got`` bytes of the expected ones had come.

    A ``ConnectionError`` for the callers that handle a lost peer, and a
    :class:`~papycluster.errors.PapyError` like every error of the package.
    """

    def __init__(self, message: str, got: int) -> None:
        ConnectionError.__init__(self, message)
        self.got = got


def recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """Read exactly ``n`` bytes or raise ``ConnectionError``.

    Without ``deadline`` each read is bounded by the socket's own timeout; with one (a
    :func:`time.monotonic` instant) the reads *together* are, so a peer that sends one
    byte just before each timeout cannot stretch the wait (``TimeoutError`` at the
    deadline).
    """
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"handshake deadline passed after {got} of {n} bytes")
            sock.settimeout(left)
        k = sock.recv_into(view[got:])
        if k == 0:
            raise PeerClosed(f"peer closed the connection after {got} of {n} bytes", got)
        got += k
    return bytes(buf)


def server_handshake(sock: socket.socket, secret: bytes, peer: object,
                     timeout: float = HANDSHAKE_DEADLINE) -> bool:
    """Authenticate a client that connected to us; True if it knows the secret.

    Reads at most ``NONCE + DIGEST`` bytes from the peer before deciding, and only
    compares them; a failure is logged with the peer's address. The whole exchange
    has one deadline of ``timeout`` seconds (sends included), so an unauthenticated
    peer holds a connection and its thread for at most that long.
    """
    deadline = time.monotonic() + timeout
    snonce = nonce()
    try:
        sock.settimeout(timeout)
        sock.sendall(HELLO + snonce)
        answer = recv_exact(sock, NONCE + DIGEST, deadline)
    except (OSError, ConnectionError) as exc:
        log.warning("refused %s: handshake failed before authentication (%s)", peer, exc)
        return False
    cnonce, digest = answer[:NONCE], answer[NONCE:]
    if not hmac.compare_digest(digest, mac(secret, b"papyc-client", snonce, cnonce)):
        log.warning("refused %s: it does not know the cluster secret", peer)
        return False
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(mac(secret, b"papyc-server", cnonce, snonce))
    except OSError as exc:
        log.warning("refused %s: handshake failed at its end (%s)", peer, exc)
        return False
    return True


def client_handshake(sock: socket.socket, secret: bytes, where: str) -> None:
    """Prove ourselves to the server at ``where`` and check that it knows the secret too."""
    hello = recv_exact(sock, len(HELLO) + NONCE)
    if hello[:len(HELLO)] != HELLO:
        raise TransportError(f"{where} is not a papycluster tcp server "
                             f"(it greeted {hello[:len(HELLO)]!r})")
    snonce = hello[len(HELLO):]
    cnonce = nonce()
    sock.sendall(cnonce + mac(secret, b"papyc-client", snonce, cnonce))
    try:
        proof = recv_exact(sock, DIGEST)
    except ConnectionError:
        raise SecretError(f"{where} refused us: does it use the same cluster secret? "
                          f"{secret_hint()}") from None
    if not hmac.compare_digest(proof, mac(secret, b"papyc-server", cnonce, snonce)):
        raise SecretError(f"{where} does not know the cluster secret; refusing its data. "
                          f"{secret_hint()}")


def secret_hint() -> str:
    """Where this process's secret comes from, for the error of a refused handshake."""
    if configured():
        return f"(this process uses the one of {SECRET_ENV} or {SECRET_FILE_ENV})"
    return (f"(this process has no {SECRET_ENV} or {SECRET_FILE_ENV}, so it uses its own "
            "run's ephemeral secret, which only the worker processes it started share: "
            "set the same secret in both processes to exchange items between them)")
