"""Read-ahead: start loading an item before the worker function asks for it.

A pull transport costs one round trip plus the transfer per item, and a worker that
loads items one after the other waits for both every time. But a worker process often
holds its next tasklet already (its NuMap or its agent sent it while the current one
ran). The engine then calls ``Worker.prefetch`` on that tasklet; for
``workers.io.load_item`` this starts the load here, on a background thread, and the
later ``load`` of the same ticket takes the bytes (or the very exception) from here.
The transfer of the next item overlaps the work on the current one.

Bounds: only transports whose loads wait on I/O outside the GIL read ahead
(:data:`TRANSPORTS`); at most :data:`MAX_AHEAD` items per process are fetched or
held at once (memory: ``MAX_AHEAD`` times the item size), by :data:`THREADS` daemon
threads, so a stuck fetch never holds up the exit of its process. Every fetch is a
normal ``load`` with the ticket's own timeout. An item read ahead and then never asked
for (its process was told to exit) is gone with the process: it was already taken from
its source, as if it had been loaded.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

TRANSPORTS = ("tcp", "udp", "fifo", "file")
MAX_AHEAD = 4
THREADS = 2


class _ReadAhead:
    """This process's fetches in flight or done, by (ticket, remove)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fetches: dict[Hashable, Future] = {}
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.hits = 0  # loads served from a fetch started here

    def _run(self) -> None:
        while True:
            future, fetch = self.jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fetch())
            except BaseException as exc:  # handed to the load that takes it
                future.set_exception(exc)

    def start(self, key: Hashable, fetch: Callable[[], Any]) -> bool:
        with self.lock:
            if key in self.fetches or len(self.fetches) >= MAX_AHEAD:
                return False
            future: Future = Future()
            self.fetches[key] = future
            if len(self.threads) < THREADS:
                thread = threading.Thread(target=self._run, daemon=True,
                                          name=f"papycluster-read-ahead-{len(self.threads)}")
                thread.start()
                self.threads.append(thread)
        self.jobs.put((future, fetch))
        return True

    def take(self, key: Hashable) -> Future | None:
        if not self.fetches:  # the common case: no lock
            return None
        with self.lock:
            future = self.fetches.pop(key, None)
            if future is not None:
                self.hits += 1
            return future


_state = _ReadAhead()


def start(key: Hashable, fetch: Callable[[], Any]) -> bool:
    """Run ``fetch()`` in the background for a later :func:`take` of ``key``.

    False if ``key`` is already being fetched or :data:`MAX_AHEAD` fetches are held.
    """
    return _state.start(key, fetch)


def take(key: Hashable) -> Future | None:
    """The fetch started for ``key`` (removed from the table), or None."""
    try:
        return _state.take(key)
    except TypeError:  # an unhashable (so malformed) ticket was never fetched ahead
        return None


def pending() -> int:
    """How many fetches this process holds (for tests and status)."""
    return len(_state.fetches)


def hits() -> int:
    """How many loads of this process were served by a fetch started ahead."""
    return _state.hits


def _forget_after_fork() -> None:
    # A forked child has none of its parent's threads: it starts empty.
    global _state
    _state = _ReadAhead()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
