"""Lanes that run a NuMap's tasklets on an existing Dask or Ray cluster.

papycluster's own agents serve a handful of hosts reached over SSH; a team that
already runs Dask distributed or Ray keeps its pipeline and points it there:
``NuMap(worker_remote="dask://scheduler:8786")`` (or a ``distributed.Client``),
``NuMap(worker_remote="ray://head:10001")`` or ``"ray"`` (the Ray this process has
initialized, or a new local one). ``worker_num`` is then the number of tasklets in
flight on the engine; the buffer, stride, ordering, skip and timeouts stay the NuMap's.

This package sits beside ``papycluster.cluster``: it imports the engine (its lane
interface, the worker protocol) and the engine finds it only through
:mod:`papycluster.hooks` (``'dask'``, ``'ray'``), so neither the engine nor the core
imports Dask or Ray; each is an optional extra (``papycluster[dask]``,
``papycluster[ray]``), imported when a lane of its kind is first built.

* :mod:`.base` -- the lane: a thread per concurrent tasklet, one engine task each.
* :mod:`.runner` -- what runs on an engine worker: the task's function, unpickled
  once per worker process, on one item.
* :mod:`.dask_lane`, :mod:`.ray_lane` -- the two engines.
"""
