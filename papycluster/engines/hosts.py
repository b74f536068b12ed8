"""The hosts of an engine's workers, as the negotiation of transports needs them.

A pool on papycluster's agents names its hosts (``worker_remote``); a pool on Dask or
Ray runs on whatever workers the engine has. So before a Plumber starts, the
negotiation (``papycluster.cluster.negotiate``, through :mod:`papycluster.hooks`) asks
the engine: one short probe task pinned to each Dask worker, or to each live Ray node,
reports what an agent reports of its host (OS, fork, FIFOs, shared memory, the shares
of its ``PAPYCLUSTER_SHARES``) under the name the engine reaches it by, the one its
``tcp`` and ``udp`` tickets name (see :mod:`.runner`). The ladder then works as between
agents: workers all on one machine get ``shm``, on several machines ``tcp``, with a
Windows one ``file`` on a share they all see.

A tasklet may run on any worker, so a pool's hosts are all of them. The choice is made
at start: a worker that joins later on a new machine is not part of it (name the
transport, e.g. ``tcp``, for an engine whose workers come and go). Every wait is
bounded; a worker that does not answer in time is taken to offer ``tcp`` only, with a
warning that names it.
"""

from __future__ import annotations

import logging
from typing import Any

from papycluster.cluster.negotiate import local_caps

log = logging.getLogger("papycluster.negotiate")

#: Seconds the probes of one engine may take (a Ray node may first start a worker).
PROBE_TIMEOUT = 30.0


def probe(host: str, engine: str) -> dict[str, Any]:
    """On an engine worker: its host's capabilities, named ``host``, of ``engine``."""
    return dict(local_caps(host), engine=engine)


def unanswered(host: str, engine: str, why: str) -> dict[str, Any]:
    """What is assumed of a worker whose probe did not come back: tcp only."""
    log.warning("the worker of %s on %s did not report its host (%s); assuming it "
                "offers tcp only", engine, host, why)
    return {"name": host, "os": "unknown", "engine": engine,
            "transports": ["tcp", "manager"]}


def dask_hosts(target: Any, timeout: float = PROBE_TIMEOUT,
               log_to_driver: bool = False) -> list[dict[str, Any]]:
    """The capabilities of the host of each worker of the Dask cluster ``target``."""
    from urllib.parse import urlsplit

    import distributed

    from papycluster.engines.dask_lane import connect

    client, owned = connect(target, "transport negotiation")
    try:
        engine = f"dask scheduler {client.scheduler.address}"
        by_host: dict[str, str] = {}  # one worker per host is enough
        for address in client.nthreads():
            by_host.setdefault(urlsplit(address).hostname or address, address)
        futures = {host: client.submit(probe, host, engine, workers=[address],
                                       allow_other_workers=False, pure=False)
                   for host, address in by_host.items()}
        try:
            distributed.wait(list(futures.values()), timeout=timeout)
        except TimeoutError:
            pass
        hosts = []
        for host, future in futures.items():
            if future.status == "finished":
                hosts.append(future.result())
            else:
                hosts.append(unanswered(host, engine, f"probe {future.status} after "
                                                      f"{timeout:g} s"))
                future.cancel()
        return hosts
    finally:
        if owned:
            client.close(timeout=5)


def ray_hosts(target: Any, timeout: float = PROBE_TIMEOUT,
              log_to_driver: bool = False) -> list[dict[str, Any]]:
    """The capabilities of each live node of the Ray cluster ``target``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from papycluster.engines.ray_lane import connect

    connect(target, "transport negotiation", log_to_driver)
    engine = "ray"  # a process talks to one Ray cluster
    remote = ray.remote(probe)
    refs = {}
    for node in ray.nodes():
        if node.get("Alive"):
            pinned = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            host = node["NodeManagerAddress"]
            refs[host] = remote.options(num_cpus=0, scheduling_strategy=pinned,
                                        max_retries=0).remote(host, engine)
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    hosts = []
    for host, ref in refs.items():
        if ref in ready:
            try:
                hosts.append(ray.get(ref, timeout=timeout))
                continue
            except Exception as exc:
                why = repr(exc)
        else:
            why = f"no answer after {timeout:g} s"
            ray.cancel(ref)
        hosts.append(unanswered(host, engine, why))
    return hosts
