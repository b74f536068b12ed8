"""Whole reads and writes on a socket: the one "read exactly n bytes" of the package.

Every protocol of papycluster reads fixed-size headers and payloads whose size it
knows beforehand (tcp requests and replies, the handshake, worker-stream frames), and
each used to carry its own loop, with three ways of saying that the peer went away.
Here there is one, :func:`recv_into_exact`, which fills a caller's buffer in place
(``recv_into``: a 16 MB item is received straight into the bytearray that is returned
to the user, see :mod:`papycluster.transport.buffers`) and fails in one of two ways:

* :class:`PeerClosed` (a ``ConnectionError``), saying how many of how many bytes came,
  and of what, so a truncated reply is told from a refused connection (``got == 0``);
* ``TimeoutError`` when the socket's timeout or ``deadline`` (one :func:`time.monotonic`
  instant for all the reads, so a peer that sends one byte just before each timeout
  cannot stretch the wait) passes, saying the same. On Python 3.9, where
  ``socket.timeout`` is not yet a ``TimeoutError``, it is turned into one.

Worker streams (:mod:`papycluster.cluster.stream`) carry :func:`send_frame` /
:func:`recv_frame` frames: an unsigned 64-bit length and that many bytes.

Two loops are left out on purpose: the fifo transport reads a non-blocking pipe, not a
socket, and between reads it waits in ``poll`` while checking that the producer still
lives (its errors name the ticket); ``bench/transports.py``'s plain-socket baseline is
what the transports are measured against, so it stays as plain as it is.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import Any

from papycluster.errors import PapyError

#: The header of a stream frame: the payload's length.
FRAME = struct.Struct("!Q")
#: Frames up to this size go out as one buffer with their header (one system call).
SMALL = 64 * 1024


class PeerClosed(PapyError, ConnectionError):
    """The peer closed the connection; ``got`` bytes of the expected ones had come.

    A ``ConnectionError`` for the callers that handle a lost peer, and a
    :class:`~papycluster.errors.PapyError` like every error of the package.
    """

    def __init__(self, message: str, got: int) -> None:
        ConnectionError.__init__(self, message)
        self.got = got


def recv_into_exact(sock: socket.socket, view: memoryview,
                    deadline: float | None = None, what: str = "") -> None:
    """Fill ``view`` from ``sock``, or raise :class:`PeerClosed` / ``TimeoutError``.

    Without ``deadline`` each read is bounded by the socket's own timeout; with one the
    reads together are (the socket's timeout is then set to what is left before each
    read, and left so). ``what`` names the bytes in the errors ("the reply header").
    """
    n = view.nbytes
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out at the deadline after {got} of {n} bytes"
                                   f"{_of(what)}")
            sock.settimeout(left)
        try:
            k = sock.recv_into(view[got:])
        except socket.timeout:  # noqa: UP041 - an OSError, not a TimeoutError, on 3.9
            at = " at the deadline" if deadline is not None else ""  # the timeout was left
            raise TimeoutError(f"timed out{at} after {got} of {n} bytes{_of(what)}") from None
        if k == 0:
            raise PeerClosed(f"peer closed the connection after {got} of {n} bytes"
                             f"{_of(what)}", got)
        got += k


def recv_exact(sock: socket.socket, n: int, deadline: float | None = None,
               what: str = "") -> bytes:
    """Exactly ``n`` bytes from ``sock`` as ``bytes`` (see :func:`recv_into_exact`)."""
    buf = bytearray(n)
    recv_into_exact(sock, memoryview(buf), deadline, what)
    return bytes(buf)


def _of(what: str) -> str:
    return f" of {what}" if what else ""


def send_parts(sock: socket.socket, header: bytes, payload: memoryview) -> None:
    """``header`` then ``payload`` in as few system calls as the kernel allows."""
    if not hasattr(sock, "sendmsg"):  # Windows
        sock.sendall(header)
        sock.sendall(payload)
        return
    sent = sock.sendmsg([header, payload])
    if sent < len(header):
        sock.sendall(header[sent:])
        sent = len(header)
    if sent - len(header) < payload.nbytes:
        sock.sendall(payload[sent - len(header):])


def send_frame(sock: socket.socket, data: Any, lock: threading.Lock) -> None:
    """Send one frame; ``lock`` keeps frames of several threads whole."""
    header = FRAME.pack(len(data))
    with lock:
        if len(data) < SMALL:
            sock.sendall(header + bytes(data))
        else:
            sock.sendall(header)
            sock.sendall(data)


def recv_frame(sock: socket.socket) -> bytearray | None:
    """The next frame, or None at the end of the stream.

    It waits for the first byte without a bound (an idle peer is no error; the stream
    is closed from our side when its worker is dropped). Once a frame has begun, every
    read is bounded by the socket's timeout, and a stream that ends inside a frame is a
    :class:`PeerClosed` naming how much of it came.
    """
    select.select([sock], [], [])
    header = bytearray(FRAME.size)
    try:
        recv_into_exact(sock, memoryview(header), what="a frame header")
    except PeerClosed as exc:
        if exc.got == 0:
            return None
        raise
    (size,) = FRAME.unpack(header)
    data = bytearray(size)
    if size:
        recv_into_exact(sock, memoryview(data), what=f"a {size}-byte frame")
    return data
