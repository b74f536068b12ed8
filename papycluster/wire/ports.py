"""The ports papycluster listens on: any free one, or one of a range a firewall opens.

``PAPYCLUSTER_PORTS="20000-20100"`` bounds every port that an item server (``tcp``,
``udp``) or an agent's worker-stream listener binds in this process and its children.
``up`` sets it on each agent from the hosts file's ``ports`` (cluster, defaults or
host), and the agent's workers inherit it; on the controller it is the user's to set.
Unset, the system picks any free port, as before.

Within the range a listener starts at a random port and tries the next ones in turn,
so that the processes of one host seldom race for the same port; when every port is
taken, the error names the range and how many it holds, in bounded time (one bind per
port). It runs on agents too: Python 3.9, standard library only.
"""

from __future__ import annotations

import errno
import os
import random
import socket

PORTS_ENV = "PAPYCLUSTER_PORTS"


def parse_ports(spec: str) -> range:
    """``"20000-20100"`` (both ends included) or ``"20000"`` as a range of ports;
    ValueError saying what is wrong with ``spec``."""
    text = spec.strip()
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise ValueError(f"ports {spec!r} is not a range such as \"20000-20100\"") from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"ports {spec!r}: need 1 <= first <= last <= 65535")
    return range(first, last + 1)


def configured() -> range | None:
    """The range in ``PAPYCLUSTER_PORTS``, None when it is unset or empty."""
    spec = os.environ.get(PORTS_ENV, "")
    return parse_ports(spec) if spec.strip() else None


def candidates() -> list[int] | None:
    """The ports of the configured range in the order to try them (from a random
    one on); None when no range is configured (any free port will do)."""
    ports = configured()
    if ports is None:
        return None
    start = random.randrange(len(ports))
    return [ports[(start + i) % len(ports)] for i in range(len(ports))]


def exhausted(what: str, host: str) -> OSError:
    """The error of a listener that found every port of the range taken."""
    ports = configured() or range(0)
    return OSError(errno.EADDRINUSE,
                   f"{what}: every port of {PORTS_ENV}={os.environ.get(PORTS_ENV)} is "
                   f"taken on {host or 'this host'} ({len(ports)} ports); widen 'ports' "
                   "in the hosts file, or free some")


def bind_port(sock: socket.socket, host: str, what: str) -> int:
    """Bind ``sock`` to ``host`` on a port of the configured range (any port when
    none is); the port. OSError (EADDRINUSE) naming ``what`` and the range when every
    port of it is taken."""
    order = candidates()
    if order is None:
        sock.bind((host, 0))
        return sock.getsockname()[1]
    for port in order:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        return port
    raise exhausted(what, host)
