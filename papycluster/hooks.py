"""Where the layers above the engine plug into it, so that the engine imports none of them.

The engine runs pools of local workers by itself; what needs the cluster (a *lane* of
remote workers for ``NuMap(worker_remote=...)``, the transport negotiation a
``Plumber`` runs at start) it asks of this registry, by name. The cluster layer fills
it: the root package (``papycluster/__init__.py``) registers thin loaders that import
``papycluster.cluster`` only when a remote pool or a negotiation is first needed (and
``papycluster.engines``, with Dask or Ray, only for a NuMap on one of them), so
``from papycluster import NuMap`` alone still reaches remote workers, and
``papycluster.cli`` or an agent (which import the cluster layer, not the engine) load
nothing of the engine for it.

This module sits above both layers and imports neither (a registry that imported its
plug-ins would bring back the cycle it removes). Tests register their own lanes here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_lanes: dict[str, Callable[..., Any]] = {}
_planner: list[Callable[[Any], None]] = []
_hosts: dict[str, Callable[..., Any]] = {}


def register_lane(kind: str, factory: Callable[..., Any]) -> None:
    """Make ``factory(hub, specs)`` build the lanes of ``kind`` (see engine.lanes)."""
    _lanes[kind] = factory


def lane_factory(kind: str) -> Callable[..., Any]:
    """The factory registered for ``kind``; LookupError naming it when there is none."""
    try:
        return _lanes[kind]
    except KeyError:
        raise LookupError(f"no {kind!r} lane is registered (papycluster.hooks."
                          f"register_lane; the cluster layer registers 'remote')") from None


def register_planner(planner: Callable[[Any], None]) -> None:
    """Make ``planner(plumber)`` choose the transports of a Plumber's pipes at start."""
    _planner[:] = [planner]


def planner() -> Callable[[Any], None]:
    """The registered planner; LookupError when there is none."""
    if not _planner:
        raise LookupError("no transport planner is registered (papycluster.hooks."
                          "register_planner; the cluster layer registers one)")
    return _planner[0]


def register_hosts(kind: str, prober: Callable[..., Any]) -> None:
    """Make ``prober(target, timeout)`` list the hosts of the workers of an engine of
    ``kind`` (``'dask'``, ``'ray'``), as capability dicts: what the negotiation of
    transports needs of a pool that runs on it (see ``papycluster.engines.hosts``)."""
    _hosts[kind] = prober


def hosts_prober(kind: str) -> Callable[..., Any]:
    """The prober registered for ``kind``; LookupError naming it when there is none."""
    try:
        return _hosts[kind]
    except KeyError:
        raise LookupError(f"no host prober is registered for {kind!r} (papycluster."
                          "hooks.register_hosts)") from None
