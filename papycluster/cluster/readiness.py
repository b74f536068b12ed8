"""Is the agent that was just started there yet, and what can its host do?

Both ways of starting agents (local subprocesses, and SSH in :mod:`.deploy`) end the
same way: wait until the new agent answers the cluster's handshake, then keep what its
host reported (OS, fork, fifo, shm, shares, transports) for the negotiation of
transports. This module holds that last step, so that neither launcher imports the
controller that drives them.
"""

from __future__ import annotations

import time
from typing import Any

from papycluster.cluster.client import AgentConnection
from papycluster.cluster.errors import HostError, VersionMismatchError

#: What the negotiation of transports needs to know of a host (see :mod:`.negotiate`).
CAPS = ("os", "fork", "fifo", "shm", "shares", "transports", "hostname", "address")


def wait_agent(name: str, address: str, port: int, secret: str,
               timeout: float) -> dict[str, Any]:
    """Connect and ask for info until the agent answers or ``timeout`` passes.

    A version mismatch fails at once (waiting would not change it); anything else is
    retried until the deadline, then named in a HostError ``agent failed``.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            conn = AgentConnection(address, port, secret, name,
                                   timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            try:
                return conn.info()
            finally:
                conn.close()
        except VersionMismatchError as exc:
            raise HostError(name, "version mismatch", str(exc))
        except Exception as exc:
            last = exc
            time.sleep(0.2)
    raise HostError(name, "agent failed", f"the agent does not answer on {address}:{port}: "
                    f"{last}")


def agent_caps(info: dict[str, Any]) -> dict[str, Any]:
    """The part of an agent's info that the cluster state keeps for negotiation."""
    return {k: info.get(k) for k in CAPS}
