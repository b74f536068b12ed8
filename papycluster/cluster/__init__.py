"""The cluster: hosts file, SSH, deployment, agents, negotiation.

``connect()`` gives the running cluster (started by ``papycluster up``) as a Python
object: host info by name, remote workers, and NuMap pools on named hosts::

    from papycluster.cluster import connect
    cluster = connect()
    cluster.hosts                 # ['alpha', 'beta']
    cluster.info('alpha')         # OS, Python, capabilities, load, items done ...
    pool = cluster.pool('alpha', 2)   # NuMap(worker_num=0, worker_remote=[('alpha', 2)])
"""

from __future__ import annotations

from typing import Any

from papycluster.cluster.errors import AuthError, ClusterError, HostError, HostsFileError

__all__ = ["AuthError", "Cluster", "ClusterError", "HostError", "HostsFileError", "connect",
           "open_remote_worker"]


class Cluster:
    """A handle on the running cluster, read from the state that ``up`` wrote."""

    def __init__(self, state: Any) -> None:
        self.state = state

    @property
    def name(self) -> str:
        return self.state.cluster

    @property
    def hosts(self) -> list[str]:
        return sorted(self.state.hosts)

    def info(self, host: str, timeout: float = 10.0) -> dict[str, Any]:
        """Live health and capabilities of ``host``'s agent."""
        from papycluster.cluster.client import connect_agent

        conn = connect_agent(host, timeout, self.state)
        try:
            return conn.info()
        finally:
            conn.close()

    def worker(self, host: str, timeout: float = 10.0) -> Any:
        """One :class:`~papycluster.cluster.client.RemoteWorker` on ``host``."""
        from papycluster.cluster.client import open_remote_worker

        self._check(host)
        return open_remote_worker(host, timeout)

    def pool(self, host: str, n: int | None = None, **kwargs: Any) -> Any:
        """A NuMap whose ``n`` workers (default: the host's ``workers``) run on ``host``."""
        from papycluster.engine import NuMap

        self._check(host)
        n = n or self.state.hosts[host].workers or 1
        return NuMap(worker_num=0, worker_remote=[(host, n)], **kwargs)

    def _check(self, host: str) -> None:
        if host not in self.state.hosts:
            raise ClusterError(f"unknown host {host!r}; cluster {self.name!r} has "
                               f"{', '.join(self.hosts)}")

    def __repr__(self) -> str:
        return f"<Cluster {self.name!r} hosts={self.hosts}>"


def connect() -> Cluster:
    """The running cluster; :class:`ClusterError` if none is up."""
    from papycluster.cluster.state import load_state

    return Cluster(load_state())


def open_remote_worker(spec: str, timeout: float = 10.0) -> Any:
    from papycluster.cluster.client import open_remote_worker as _open

    return _open(spec, timeout)
