"""CurveZMQ for the tcp transport: keys from the cluster secret, and who may connect.

Why CURVE rather than the HMAC handshake alone: the handshake proves the secret but
leaves the items in clear on the wire, and an item is often a pickle. CurveZMQ (in
libzmq, through pyzmq) authenticates both ends and encrypts every frame with session
keys that change per connection.

The keys travel like the secret because they are made from it: each process derives
the cluster's server key pair and client key pair with HMAC-SHA256 of the secret
(``up`` makes the secret, so ``up`` makes the keys; nothing new is written, nothing is
put on a command line). A server accepts only a client that proves the client key
pair's secret half (a ZAP handler checks the public key its CURVE handshake proved),
and a client completes the handshake only with a server that holds the server key pair.
So a peer without the cluster secret is refused inside libzmq's handshake, before one
byte of a request reaches papycluster, and nothing it sends is ever deserialized.

Encryption can be turned off for trusted networks (``PAPYCLUSTER_ENCRYPT=0``, the
hosts file's ``encrypt = false``): tcp then keeps the HMAC handshake over a plain
socket (:mod:`papycluster.transport.tcp`), which is as fast as a raw socket.

pyzmq is imported only when an encrypted tcp item is first dumped or loaded; a host
without it gets an error that says how to ship it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from typing import Any

from papycluster.transport.base import TransportError

ENCRYPT_ENV = "PAPYCLUSTER_ENCRYPT"
#: The ZAP domain of papycluster's CURVE servers (what the Gate answers for).
ZAP_DOMAIN = b"papycluster"


def enabled() -> bool:
    """Whether tcp items are encrypted here (the default; ``PAPYCLUSTER_ENCRYPT=0``
    turns it off)."""
    return os.environ.get(ENCRYPT_ENV, "1").strip().lower() not in ("0", "false", "no",
                                                                    "off")


def usable() -> bool:
    """Whether this host can serve and load tcp items as configured (encryption off,
    or pyzmq with CURVE here): what an agent reports to the negotiation."""
    if not enabled():
        return True
    try:
        zmq()
    except TransportError:
        return False
    return True


def zmq() -> Any:
    """The pyzmq module, or a TransportError saying how to get it on this host."""
    try:
        import zmq as module
    except ImportError:
        raise TransportError(
            "tcp: encrypted items need pyzmq on this host, which it lacks (papycluster "
            "ships it with `up` to UNIX hosts; elsewhere pip install pyzmq), or set "
            f"{ENCRYPT_ENV}=0 (encrypt = false in the hosts file) on a trusted network"
        ) from None
    if not module.has("curve"):
        raise TransportError("tcp: this host's libzmq was built without CURVE; install "
                             f"a pyzmq wheel, or set {ENCRYPT_ENV}=0")
    return module


class Keys:
    """The cluster's CURVE key pairs, derived from ``secret`` (z85-encoded bytes)."""

    def __init__(self, secret: bytes) -> None:
        z = zmq()
        from zmq.utils import z85

        self.server_secret = z85.encode(_derive(secret, b"server"))
        self.server_public = z.curve_public(self.server_secret)
        self.client_secret = z85.encode(_derive(secret, b"client"))
        self.client_public = z.curve_public(self.client_secret)

    def as_server(self, sock: Any) -> None:
        """Make ``sock`` a CURVE server with the cluster's server keys."""
        z = zmq()
        sock.setsockopt(z.CURVE_SERVER, 1)
        sock.setsockopt(z.CURVE_SECRETKEY, self.server_secret)
        sock.setsockopt(z.CURVE_PUBLICKEY, self.server_public)
        sock.setsockopt(z.ZAP_DOMAIN, ZAP_DOMAIN)

    def as_client(self, sock: Any) -> None:
        """Make ``sock`` a CURVE client that trusts only the cluster's server key."""
        z = zmq()
        sock.setsockopt(z.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(z.CURVE_PUBLICKEY, self.client_public)
        sock.setsockopt(z.CURVE_SECRETKEY, self.client_secret)


def _derive(secret: bytes, role: bytes) -> bytes:
    return hmac.new(secret, b"papycluster curve " + role, hashlib.sha256).digest()


class Gate:
    """The ZAP handler of one zmq context: admits a CURVE client whose proven public
    key is the client key of a secret this process knows (the cluster's; after a
    change of secret, the new one), refuses every other, and counts the refusals."""

    def __init__(self, context: Any) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self._allowed: set[bytes] = set()
        self._lock = threading.Lock()
        self.refused = 0
        self.authenticator = ThreadAuthenticator(context, log=_quiet_log())
        self.authenticator.start()
        self.authenticator.configure_curve_callback(ZAP_DOMAIN.decode(),
                                                    credentials_provider=self)

    def allow(self, keys: Keys) -> None:
        with self._lock:
            self._allowed.add(keys.client_public)

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by pyzmq's authenticator for each CURVE handshake."""
        with self._lock:
            ok = key in self._allowed
            if not ok:
                self.refused += 1
        return ok

    def stop(self) -> None:
        self.authenticator.stop()


def _quiet_log() -> Any:
    """pyzmq's authenticator logs every refusal at DEBUG; ours counts them instead."""
    import logging

    return logging.getLogger("papycluster.transport.curve.zap")
