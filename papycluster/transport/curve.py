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

from papycluster.transport.base import TransportError, log

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


_zmq: list[Any] = []  # the module, once found usable (zmq() runs on every request)


def zmq() -> Any:
    """The pyzmq module, or a TransportError saying how to get it on this host."""
    if _zmq:
        return _zmq[0]
    try:
        import zmq as module
    except ImportError:
        raise TransportError(
            "tcp: encrypted items need pyzmq on this host, which it lacks (papycluster "
            "ships it with `up` to the hosts; elsewhere pip install pyzmq), or set "
            f"{ENCRYPT_ENV}=0 (encrypt = false in the hosts file) on a trusted network"
        ) from None
    if not module.has("curve"):
        raise TransportError("tcp: this host's libzmq was built without CURVE; install "
                             f"a pyzmq wheel, or set {ENCRYPT_ENV}=0")
    _zmq.append(module)
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
    """The ZAP handler (ZeroMQ RFC 27) of one zmq context: admits a CURVE client whose
    proven public key is the cluster's client key, refuses every other, and counts the
    refusals. Its own small thread and REP socket, rather than pyzmq's authenticator,
    which runs an asyncio loop that Windows' default (proactor) loop cannot drive."""

    ENDPOINT = "inproc://zeromq.zap.01"

    def __init__(self, context: Any) -> None:
        z = zmq()
        self._allowed: set[bytes] = set()
        self._lock = threading.Lock()
        self.refused = 0
        self._stop = threading.Event()
        self._sock = context.socket(z.REP)
        self._sock.setsockopt(z.LINGER, 0)
        self._sock.bind(self.ENDPOINT)
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name="papycluster-zap")
        self._thread.start()

    def allow(self, keys: Keys) -> None:
        from zmq.utils import z85

        with self._lock:
            self._allowed.add(z85.decode(keys.client_public))

    def _serve(self) -> None:
        z = zmq()
        try:
            while not self._stop.is_set():
                if not self._sock.poll(250):
                    continue
                request = self._sock.recv_multipart()
                # version, request id, domain, address, identity, mechanism, credentials
                ok = (len(request) == 7 and request[0] == b"1.0"
                      and request[2] == ZAP_DOMAIN and request[5] == b"CURVE"
                      and self._admits(request[6]))
                rid = request[1] if len(request) > 1 else b""
                self._sock.send_multipart([b"1.0", rid, b"200" if ok else b"400",
                                           b"OK" if ok else b"unknown key", b"", b""])
        except z.ZMQError:
            if not self._stop.is_set():
                raise
        finally:
            self._sock.close(linger=0)

    def _admits(self, key: bytes) -> bool:
        with self._lock:
            ok = key in self._allowed
            if not ok:
                self.refused += 1
        if not ok:
            log.warning("CURVE: refused a peer whose key is not this cluster's")
        return ok

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
