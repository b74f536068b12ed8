"""The ``engine`` transport on Ray: items kept in Ray's object store, off the controller.

Each Ray lane starts a small actor, ``papyc-store-<run>`` (its run tag). On a Ray
worker, ``dump_item(inbox, "engine")`` has that actor put the item in the object
store, so that the actor owns it and it outlives the worker process, which Ray may end
when idle (Ray 2.56 removed ``ray.put(_owner=)``, so the item goes through the actor's
process once). The actor keeps the reference under a random key; the ticket is
``papyc-<run>-<key>``, a few dozen bytes through the controller. ``load_item`` asks
the actor for the reference (dropping it there with ``remove``) and reads the object
from the node that holds it. When the lane closes it ends the actor, and Ray frees
what nobody loaded.

Like Ray's own objects, this is as private as the Ray cluster is, not behind
papycluster's secret.
"""

from __future__ import annotations

import secrets
from typing import Any

import ray

from papycluster.engines import runner
from papycluster.engines.dask_store import NAME_RE
from papycluster.transport import registry
from papycluster.transport.base import ProducerLostError, TicketError, Transport

#: Seconds a load waits for the actor and the object by default.
LOAD_TIMEOUT = 60.0


@ray.remote(num_cpus=0)
class Store:
    """The references of one lane's dumped items, by key."""

    def __init__(self) -> None:
        self.refs: dict[str, Any] = {}

    def keep(self, key: str, data: bytes) -> None:
        self.refs[key] = ray.put(data)  # owned by this actor, not by the worker

    def take(self, key: str, remove: bool) -> list:
        ref = self.refs.pop(key, None) if remove else self.refs.get(key)
        return [] if ref is None else [ref]


def start_store(tag: str) -> Any:
    return Store.options(name=f"papyc-store-{tag}").remote()


_stores: dict[str, Any] = {}


def _store(tag: str) -> Any:
    store = _stores.get(tag)
    if store is None:
        store = _stores[tag] = ray.get_actor(f"papyc-store-{tag}")
    return store


class RayStore(Transport):
    name = "engine"
    fields = ("object",)

    def dump(self, data: memoryview, **options: Any) -> tuple:
        tag = runner.run_tag()
        store = _store(tag)
        key = secrets.token_hex(16)
        ray.get(store.keep.remote(key, bytes(data)))
        return (f"papyc-{tag}-{key}",)

    def validate(self, fields: tuple, ticket: tuple) -> None:
        if len(fields) != 1 or not isinstance(fields[0], str) or not NAME_RE.match(
                fields[0]):
            raise TicketError(ticket, "an engine ticket holds one name papyc-<run>-<key>",
                              self.name)

    def load(self, fields: tuple, ticket: tuple, remove: bool = True,
             timeout: float | None = None) -> Any:
        _, tag, key = fields[0].split("-")
        timeout = LOAD_TIMEOUT if timeout is None else timeout
        try:
            wrapped = ray.get(_store(tag).take.remote(key, remove), timeout=timeout)
            if not wrapped:
                raise KeyError("loaded already, or its pool stopped")
            return ray.get(wrapped[0], timeout=timeout)
        except Exception as exc:
            raise ProducerLostError(ticket, f"{fields[0]}: {type(exc).__name__}: {exc}",
                                    self.name) from None


TRANSPORT = RayStore()


def register() -> None:
    if "engine" not in registry.names() or registry.get("engine") is not TRANSPORT:
        registry.register(TRANSPORT)


def worker_setup() -> str:
    """On a Ray worker: register the ``engine`` transport; the node's address."""
    register()
    return ray.util.get_node_ip_address()
