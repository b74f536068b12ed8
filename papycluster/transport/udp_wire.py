"""The udp transport's wire: message layouts, protocol constants, datagram sending.

Why its own module: the server (:mod:`.udp_server`) and the loader (:mod:`.udp`) speak
the same messages; each layout is spelled once, here, so the two sides cannot drift
apart. The protocol itself is described in :mod:`papycluster.transport.udp`.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
from collections.abc import Callable

MAGIC = b"PU"
VERSION = 3  # 3: HELLO padded to the CHALLENGE's size; 2: data datagrams carry a CRC-32
T_HELLO, T_CHALLENGE, T_GET, T_INFO, T_WINDOW, T_DATA, T_DONE = range(1, 8)
NONCE = 16
MACLEN = 32
DEFAULT_CHUNK = 65000
MAX_CHUNK = 65400  # + a 20-byte header: under the 65507-byte IPv4 limit
DEFAULT_TIMEOUT = 60.0
#: How long one window may stay incomplete before its datagrams count as lost.
WINDOW_TIMEOUT = 1.0
#: A loader gives up on a producer that has answered nothing for this long (its
#: control messages resent meanwhile, with a pause that doubles from CONTROL_PAUSE up to
#: CONTROL_PAUSE_MAX): as the tcp loader's SILENCE, only silence tells a frozen host.
SILENCE = 10.0
CONTROL_PAUSE = 0.25
CONTROL_PAUSE_MAX = 2.0
#: Per peer address: this many greetings at once, then GREETING_RATE per second.
GREETING_BURST = 8
GREETING_RATE = 2.0
#: Peer addresses whose greeting budget is remembered (the oldest is forgotten first).
MAX_PEERS = 16384
#: A challenge not answered by a GET within this many seconds is forgotten.
CHALLENGE_LIFE = 15.0
#: The server's receive buffer, so that a burst of requests is queued, not dropped.
SERVER_RCVBUF = 2 << 20
SESSION_IDLE = 60.0
MAX_PENDING = 4096
RCVBUF = 8 << 20
#: The server's send buffer. On loopback a datagram counts against its sender until the
#: receiver has read it, so a small buffer stalls the sender after three datagrams.
SNDBUF = 8 << 20
#: Lets a privileged process go past net.core.rmem_max (Python does not name it).
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)

HEAD = struct.Struct("!2sBB")  # magic, version, type
# padded to CHALLENGE's size: no answer before authentication is bigger than its request
HELLO = struct.Struct("!2sBB16s48x")
CHALLENGE = struct.Struct("!2sBB16s16s32s")
GET = struct.Struct("!2sBB16s32sBII32s")  # snonce key remove first count mac
INFO = struct.Struct("!2sBB16sBQII")  # snonce status size count chunk
WINDOW = struct.Struct("!2sBB16sII32s")
DONE = struct.Struct("!2sBB16s32s")
DATA = struct.Struct("!2sBB8sII")  # tag seq crc32
assert HELLO.size == CHALLENGE.size
ST_OK, ST_MISSING = 0, 1


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


HAS_SENDMSG = hasattr(socket.socket, "sendmsg")


def poller(sock: socket.socket, write: bool) -> Callable[[float], bool]:
    """``wait(ms) -> ready`` for one socket: ``select.poll`` where there is one, else
    ``select.select`` (Windows has no poll)."""
    if hasattr(select, "poll"):
        poll = select.poll()
        poll.register(sock, select.POLLOUT if write else select.POLLIN)
        return lambda ms: bool(poll.poll(ms))
    if write:
        return lambda ms: bool(select.select([], [sock], [], max(0.0, ms / 1000))[1])
    return lambda ms: bool(select.select([sock], [], [], max(0.0, ms / 1000))[0])


def send_datagram(sock: socket.socket, data: bytes) -> None:
    """Send one datagram on a non-blocking socket, waiting at most a second for room."""
    try:
        sock.send(data)
    except BlockingIOError:
        if poller(sock, write=True)(1000):
            sock.send(data)
        # else: as good as lost on the way; the caller's timeouts handle it
