"""papycluster: PaPy-compatible parallel pipelines across a handful of real machines.

The pipeline API is PaPy's (``Worker``, ``Piper``, ``Dagger``, ``Plumber``, ``NuMap``,
``imports``, ``workers``); see ``DESIGN.md`` for what runs where.

Names are imported on first use, so that ``papycluster.cli`` and a cluster agent
start without loading the whole engine.
"""

from __future__ import annotations

import importlib
from typing import Any

from papycluster import hooks

__version__ = "0.1.0"

_EXPORTS = {
    "Worker": "papycluster.engine",
    "Piper": "papycluster.engine",
    "Dagger": "papycluster.engine",
    "Plumber": "papycluster.engine",
    "NuMap": "papycluster.engine",
    "Checkpoint": "papycluster.engine",
    "imports": "papycluster.engine",
    "workers": "papycluster.workers",
    "WorkerError": "papycluster.errors",
    "PiperError": "papycluster.errors",
    "DaggerError": "papycluster.errors",
    "PlumberError": "papycluster.errors",
    "RemoteError": "papycluster.errors",
    "WorkerLostError": "papycluster.errors",
    "NuMapTimeoutError": "papycluster.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def _remote_lane(*args: Any, **kwargs: Any) -> Any:
    """The cluster layer's lane of remote workers, imported when a pool first needs it."""
    from papycluster.cluster.lane import RemoteLane

    return RemoteLane(*args, **kwargs)


def _dask_lane(*args: Any, **kwargs: Any) -> Any:
    """The lane of a Dask cluster (papycluster[dask]), imported when first needed."""
    from papycluster.engines.dask_lane import DaskLane

    return DaskLane(*args, **kwargs)


def _ray_lane(*args: Any, **kwargs: Any) -> Any:
    """The lane of a Ray cluster (papycluster[ray]), imported when first needed."""
    from papycluster.engines.ray_lane import RayLane

    return RayLane(*args, **kwargs)


def _dask_hosts(*args: Any, **kwargs: Any) -> Any:
    """The hosts of a Dask cluster's workers, for the negotiation (papycluster[dask])."""
    from papycluster.engines.hosts import dask_hosts

    return dask_hosts(*args, **kwargs)


def _ray_hosts(*args: Any, **kwargs: Any) -> Any:
    """The hosts of a Ray cluster's nodes, for the negotiation (papycluster[ray])."""
    from papycluster.engines.hosts import ray_hosts

    return ray_hosts(*args, **kwargs)


def _group_hosts(group: str) -> Any:
    """The hosts of a host group of the running cluster (``NuMap(worker_remote="all")``)."""
    from papycluster.cluster.lane import group_members

    return [(host, n) for host, n, _ in group_members(group)]


def _plan(plumber: Any) -> None:
    """The cluster layer's transport negotiation, imported when a Plumber needs it."""
    from papycluster.cluster.negotiate import negotiate_dagger

    negotiate_dagger(plumber)


# The root package wires the layers: the engine asks papycluster.hooks, never the
# cluster layer (see papycluster/hooks.py).
hooks.register_lane("remote", _remote_lane)
hooks.register_lane("dask", _dask_lane)
hooks.register_lane("ray", _ray_lane)
hooks.register_hosts("dask", _dask_hosts)
hooks.register_hosts("ray", _ray_hosts)
hooks.register_hosts("group", _group_hosts)
hooks.register_planner(_plan)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'papycluster' has no attribute {name!r}")
    if name == "workers":
        value = importlib.import_module(module)
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
