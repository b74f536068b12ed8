"""The Dask lane: ``NuMap(worker_remote="dask://scheduler:8786")`` or a ``Client``.

Each tasklet is one ``client.submit`` of :func:`papycluster.engines.runner.run`, with
the task's function scattered once per task (a future every tasklet depends on, so a
worker fetches it once) and ``retries`` from the NuMap. A worker that dies while
running a tasklet is the scheduler's to recover: it runs the tasklet elsewhere, at most
``distributed.scheduler.allowed-failures`` times, then gives it up with
``KilledWorker``, which becomes that item's error (see :mod:`.base`).

Items can stay in the cluster between two such NuMaps: ``dump_item(inbox, "engine")``
(see :mod:`.dask_store`).

A lane built from an address owns its client and closes it at stop; a ``Client``
given by the caller stays the caller's.
"""

from __future__ import annotations

from typing import Any

from papycluster.engine.lanes import Hub
from papycluster.engines import dask_store, runner
from papycluster.engines.base import EngineLane

try:
    import distributed
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("NuMap(worker_remote='dask://...') needs Dask distributed: "
                      "pip install 'papycluster[dask]'") from exc

#: Seconds to reach the scheduler before the NuMap's start fails naming it.
CONNECT_TIMEOUT = 10.0


def worker_setup() -> str:
    """On a Dask worker: register the ``engine`` transport; the host of the address
    the scheduler reaches this worker by."""
    from urllib.parse import urlsplit

    dask_store.register()
    return urlsplit(distributed.get_worker().address).hostname or ""


def connect(target: Any, name: str) -> tuple[Any, bool]:
    """``(client, owned)`` for ``target``: a new client of the scheduler at a
    ``dask://`` address (owned: the caller closes it), or the ``Client`` given."""
    if not isinstance(target, str):
        return target, False
    address = "tcp://" + target.removeprefix("dask://")
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except Exception as exc:
        raise ConnectionError(f"{name}: cannot reach the Dask scheduler at {target!r}: "
                              f"{exc}") from exc
    return client, True


class DaskLane(EngineLane):
    kind = "dask"

    def __init__(self, hub: Hub, target: Any, size: int) -> None:
        self.client, self.owned = connect(target, hub.name)
        where = f"dask scheduler {self.client.scheduler.address}"
        dask_store.register()  # a serial piper here may load an engine ticket
        super().__init__(hub, size, where)

    def _define(self, defined: tuple) -> Any:
        # on every worker: a definition on one would draw every tasklet there (locality)
        return self.client.scatter([defined], hash=False, broadcast=True)[0]

    @staticmethod
    def _setup() -> Any:
        return worker_setup

    def _submit(self, key: str, stored: Any, item: Any, name: str) -> Any:
        return self.client.submit(runner.run, key, stored, item, pure=False,
                                  retries=self.hub.retries)

    def _wait(self, handle: Any, timeout: float) -> bool:
        try:
            distributed.wait(handle, timeout=timeout)
        except TimeoutError:
            return False
        return True

    def _outcome(self, handle: Any) -> Any:
        return handle.result(timeout=CONNECT_TIMEOUT)  # over: no wait

    def _cancel(self, handle: Any) -> None:
        handle.cancel()

    def _release(self) -> None:
        dask_store.sweep(self.client, self.tag)
        if self.owned:
            self.client.close(timeout=5)
