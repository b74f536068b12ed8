"""The mutual HMAC handshake that every papycluster listener runs first.

Both ends prove that they know the cluster secret before anything else is read::

    server -> client   greeting + snonce (32 bytes)
    client -> server   cnonce (32) + MAC(secret, client_label, snonce, cnonce)
    server -> client   MAC(secret, server_label, cnonce, snonce)

The server checks the client's proof with :func:`hmac.compare_digest` and only then
proves itself back, so a peer without the secret never reaches code that deserializes
anything (RPyC's brine, pickles, tcp requests), and a process squatting on a port
cannot collect what a client would send next. The secret never crosses the wire.

One implementation for every listener; what tells the uses apart is a
:class:`Handshake`: its greeting (so a stray client fails at once, naming what
answered) and its two MAC labels (so a proof made for one use is worth nothing in
another). :data:`TCP` is the tcp transport's item servers; :data:`AGENT` is an agent's
RPyC port and its per-worker streams.

The server has one deadline (:data:`HANDSHAKE_DEADLINE`, 10 s) over the whole
exchange, sends included, so a peer dripping one byte at a time holds a connection and
its thread for at most that long; the client has one too. MACs are HMAC-SHA256 over
the label and length-prefixed parts (:func:`mac`), which udp's datagrams use as well.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import time
from typing import NamedTuple

from papycluster.errors import PapyError
from papycluster.wire.frames import recv_exact

NONCE = 32
DIGEST = 32
#: The whole handshake, not each read, must finish within this many seconds.
HANDSHAKE_DEADLINE = 10.0


class Handshake(NamedTuple):
    """One use of the handshake: what the server is called in messages, its greeting,
    the two MAC labels, and the greetings of its earlier versions (named in the error
    a client gives when it meets one, rather than "not a papycluster server")."""

    peer: str
    greeting: bytes
    client_label: bytes
    server_label: bytes
    older: tuple[bytes, ...] = ()


TCP = Handshake("tcp server", b"PAPYCT1\n", b"papyc-client", b"papyc-server")
#: A2: the MAC of :func:`mac` (A1 concatenated label and nonces, with its own code).
AGENT = Handshake("agent", b"PAPYCLUSTER-A2\r\n", b"papyc-agent-client",
                  b"papyc-agent-server", older=(b"PAPYCLUSTER-A1\r\n",))


class HandshakeError(PapyError):
    """A handshake failed; the message says at which step and why."""


class NotAPeer(HandshakeError):
    """The server's greeting is not the one expected (another program, or version)."""


class Refused(HandshakeError):
    """The server closed the connection after our proof: most likely another secret."""


class Impostor(HandshakeError):
    """The server answered with a wrong proof: it does not know the secret."""


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def mac(secret: str | bytes, label: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 of ``label`` and ``parts`` (length-prefixed, so parts cannot shift)."""
    h = hmac.new(_key(secret), label, hashlib.sha256)
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def nonce() -> bytes:
    """A fresh nonce: :data:`NONCE` random bytes."""
    return secrets.token_bytes(NONCE)


def serve(sock: socket.socket, secret: str | bytes, kind: Handshake,
          timeout: float = HANDSHAKE_DEADLINE) -> None:
    """Make the client on ``sock`` prove the secret; :class:`HandshakeError` if not.

    Reads at most ``NONCE + DIGEST`` bytes from the peer before deciding, and only
    compares them. The whole exchange has one deadline of ``timeout`` seconds. The
    socket's timeout is left at what remained of it: the caller sets the next one.
    """
    deadline = time.monotonic() + timeout
    snonce = nonce()
    try:
        sock.settimeout(timeout)
        sock.sendall(kind.greeting + snonce)
        answer = recv_exact(sock, NONCE + DIGEST, deadline, "the answer to the greeting")
    except OSError as exc:
        raise HandshakeError(f"handshake failed before authentication ({exc})") from None
    cnonce, digest = answer[:NONCE], answer[NONCE:]
    if not hmac.compare_digest(digest, mac(secret, kind.client_label, snonce, cnonce)):
        raise HandshakeError("it does not know the cluster secret (wrong proof)")
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(mac(secret, kind.server_label, cnonce, snonce))
    except OSError as exc:
        raise HandshakeError(f"handshake failed at its end ({exc})") from None


def greet(sock: socket.socket, secret: str | bytes, kind: Handshake, where: str,
          deadline: float | None = None) -> None:
    """Prove the secret to the server on ``sock`` (``where``, for messages) and check
    that it knows it too.

    :class:`NotAPeer`, :class:`Refused` or :class:`Impostor` when the server is not
    what we expect; a failure before that is the ``OSError`` of the socket
    (:class:`~papycluster.wire.frames.PeerClosed` with ``got == 0`` when the server
    closed before greeting, a ``TimeoutError`` at ``deadline``).
    """
    size = len(kind.greeting)
    hello = recv_exact(sock, size + NONCE, deadline, "the greeting")
    if hello[:size] != kind.greeting:
        if any(hello.startswith(old) for old in kind.older):
            raise NotAPeer(f"{where} speaks another version of the papycluster "
                           f"{kind.peer} handshake (it greeted {hello[:size]!r}, this "
                           f"version expects {kind.greeting!r}): restart it with this "
                           "papycluster version")
        raise NotAPeer(f"{where} is not a papycluster {kind.peer} "
                       f"(it greeted {hello[:size]!r})")
    snonce = hello[size:]
    cnonce = nonce()
    sock.sendall(cnonce + mac(secret, kind.client_label, snonce, cnonce))
    try:
        proof = recv_exact(sock, DIGEST, deadline, "the server's proof")
    except ConnectionError:
        raise Refused(f"{where} refused our proof: does it use the same cluster "
                      "secret?") from None
    if not hmac.compare_digest(proof, mac(secret, kind.server_label, cnonce, snonce)):
        raise Impostor(f"{where} does not know the cluster secret")
