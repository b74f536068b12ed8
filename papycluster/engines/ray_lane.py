"""The Ray lane: ``NuMap(worker_remote="ray://head:10001")`` or ``"ray"``.

``"ray"`` is the Ray this process has initialized (``ray.init(...)`` beforehand), or a
new local one; ``"ray://..."`` connects with Ray Client when Ray is not initialized
yet (a process talks to one Ray cluster: when Ray is initialized already, that one is
used). Ray is never shut down by a lane: the cluster, and its ``ray.init``, are the
caller's.

Each tasklet is one Ray task of :func:`papycluster.engines.runner.run` with
``max_retries`` from the NuMap (Ray retries a task whose worker died, never a user's
exception: :mod:`.runner` returns those); the task's function is ``ray.put`` once per
task and passed by reference. Items can stay in Ray's object store between two such
NuMaps: ``dump_item(inbox, "engine")`` (see :mod:`.ray_store`).
"""

from __future__ import annotations

from typing import Any

from papycluster.engine.lanes import Hub
from papycluster.engines import ray_store, runner
from papycluster.engines.base import EngineLane

try:
    import ray
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("NuMap(worker_remote='ray...') needs Ray: "
                      "pip install 'papycluster[ray]'") from exc

_run = ray.remote(runner.run)


def connect(target: Any, name: str, log_to_driver: bool) -> str | None:
    """Initialize Ray for ``target`` unless it is already; the address asked for
    (None: a local Ray)."""
    address = None if target == "ray" else str(target)
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, ignore_reinit_error=True,
                     log_to_driver=log_to_driver)
        except Exception as exc:
            raise ConnectionError(f"{name}: cannot start or reach Ray at {target!r}: "
                                  f"{exc}") from exc
    return address


class RayLane(EngineLane):
    kind = "ray"

    def __init__(self, hub: Hub, target: Any, size: int) -> None:
        address = connect(target, hub.name, hub.log_to_driver)
        self._task = _run.options(max_retries=hub.retries, num_cpus=1)
        super().__init__(hub, size, f"ray {address or 'local'}")
        self._store = ray_store.start_store(self.tag)  # the engine transport's items
        ray_store.register()  # a serial piper here may load an engine ticket

    def _define(self, defined: tuple) -> Any:
        return ray.put(defined)

    @staticmethod
    def _setup() -> Any:
        return ray_store.worker_setup

    def _release(self) -> None:
        ray.kill(self._store)  # Ray frees the items nobody loaded

    def _submit(self, key: str, stored: Any, item: Any, name: str) -> Any:
        return self._task.remote(key, stored, item)

    def _wait(self, handle: Any, timeout: float) -> bool:
        ready, _ = ray.wait([handle], timeout=timeout)
        return bool(ready)

    def _outcome(self, handle: Any) -> Any:
        return ray.get(handle)

    def _cancel(self, handle: Any) -> None:
        ray.cancel(handle)
