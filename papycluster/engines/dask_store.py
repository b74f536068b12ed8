"""The ``engine`` transport on Dask: items kept in the cluster, never on the controller.

``dump_item(inbox, "engine")`` on a Dask worker scatters the item into the cluster
and publishes it under a random name (``papyc-<run>-<128 random bits>``); the ticket is
that name, a few dozen bytes through the controller. ``load_item`` on another worker
(or on the controller) gets the published dataset and unpublishes it (``remove``), so
the scheduler lets go of the data. What nobody loaded is unpublished when the lane of
the NuMap that dumped it closes (its ``<run>`` tag, see ``DaskLane``): items that
nobody loaded are removed when their pool stops, as with the other transports.

A published dataset lives in the scheduler's namespace, which every client of the
cluster can read: this transport is as private as the Dask cluster is (its TLS and
who may connect), not behind papycluster's secret. Registered on each engine worker by
the lane's setup (:func:`papycluster.engines.dask_lane.worker_setup`) and on the
controller by the lane.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import distributed

from papycluster.engines import runner
from papycluster.transport import registry
from papycluster.transport.base import ProducerLostError, TicketError, Transport

NAME_RE = re.compile(r"papyc-[0-9a-f]{12}-[0-9a-f]{32}\Z")
#: Seconds a load waits for the scheduler and the data by default.
LOAD_TIMEOUT = 60.0


def _client() -> Any:
    """The worker's client on a Dask worker; the default client elsewhere."""
    return distributed.get_client()


class DaskStore(Transport):
    name = "engine"
    fields = ("dataset",)

    def dump(self, data: memoryview, **options: Any) -> tuple:
        client = _client()
        name = f"papyc-{runner.run_tag()}-{secrets.token_hex(16)}"
        [future] = client.scatter([bytes(data)], hash=False)
        client.publish_dataset(future, name=name)
        return (name,)

    def validate(self, fields: tuple, ticket: tuple) -> None:
        if len(fields) != 1 or not isinstance(fields[0], str) or not NAME_RE.match(
                fields[0]):
            raise TicketError(ticket, "an engine ticket holds one dataset name "
                              "papyc-<run>-<key>", self.name)

    def load(self, fields: tuple, ticket: tuple, remove: bool = True,
             timeout: float | None = None) -> Any:
        client = _client()
        name = fields[0]
        timeout = LOAD_TIMEOUT if timeout is None else timeout
        try:
            future = client.get_dataset(name)
        except KeyError:
            raise ProducerLostError(ticket, f"no dataset {name} on the Dask scheduler "
                                    "(loaded already, or its pool stopped)",
                                    self.name) from None
        try:
            data = future.result(timeout=timeout)
        except Exception as exc:
            raise ProducerLostError(ticket, f"dataset {name}: {type(exc).__name__}: {exc}",
                                    self.name) from None
        if remove:
            client.unpublish_dataset(name)
        return data


def sweep(client: Any, tag: str) -> int:
    """Unpublish what the NuMap of run ``tag`` dumped and nobody loaded."""
    prefix = f"papyc-{tag}-"
    names = [n for n in client.list_datasets() if str(n).startswith(prefix)]
    for name in names:
        client.unpublish_dataset(name)
    return len(names)


TRANSPORT = DaskStore()


def register() -> None:
    if "engine" not in registry.names() or registry.get("engine") is not TRANSPORT:
        registry.register(TRANSPORT)
