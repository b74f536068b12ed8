"""``papycluster check``: every transport between every pair of hosts, tried for real.

For each ordered pair (sender, receiver), including a host with itself, and each
transport that negotiation says the pair can use, a worker on the sender dumps a
random item with ``workers.io.dump_item``, and a worker on the receiver loads it with
``workers.io.load_item`` and returns its SHA-256; the item counts as moved only if the
digests match. ``manager`` is the baseline: the bytes go through the controller.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cloudpickle

from papycluster.cluster.client import RemoteWorker, open_remote_worker
from papycluster.cluster.negotiate import MANAGER, feasible
from papycluster.cluster.state import load_state

TRANSPORTS = ("shm", "fifo", "tcp", "udp", "file", MANAGER)


@dataclass
class Cell:
    sender: str
    receiver: str
    transport: str
    status: str           # "ok", "failed" or "n/a"
    detail: str = ""
    mb_per_s: float | None = None


def _produce(inbox: Any, size: int, type: str, **options: Any) -> tuple[Any, str]:
    """On the sender: make a random item, dump it; return (ticket, its digest)."""
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    if type == MANAGER:
        return data, digest
    from papycluster.workers.io import dump_item

    return dump_item((data,), type, **options), digest


def _consume(inbox: Any, type: str) -> str:
    """On the receiver: load the item (or take it, on the manager path); its digest."""
    if type == MANAGER:
        return hashlib.sha256(bytes(inbox[0])).hexdigest()
    from papycluster.workers.io import load_item

    return hashlib.sha256(bytes(load_item(inbox))).hexdigest()


class _Runner:
    """Calls one function on one remote worker and waits for its one result."""

    def __init__(self, worker: RemoteWorker) -> None:
        self.worker = worker
        self.n = 0

    def __call__(self, func: Callable, item: Any, timeout: float, *args: Any,
                 **kwargs: Any) -> Any:
        from papycluster.engine.process import decode_results

        self.n += 1
        key = f"check{self.n}"
        self.worker.send(pickle.dumps(("def", key, cloudpickle.dumps(
            (func, args, kwargs)))))
        self.worker.send(pickle.dumps(("run", [(key, 0, (item,))]), protocol=5))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from {self.worker.name} in {timeout:g} s")
            for _, _, ok, value in decode_results(self.worker.recv(left)):
                self.worker.send(pickle.dumps(("drop", key)))
                if not ok:
                    raise value
                return value


def run_check(hosts: list[str] | None = None, transports: tuple[str, ...] = TRANSPORTS,
              size: int = 1 << 20, repeat: int = 3, timeout: float = 30.0,
              progress: Callable[[str, str], None] = lambda h, m: None) -> list[Cell]:
    """The matrix as a list of cells (see the module docstring)."""
    state = load_state()
    assert state is not None
    names = hosts or sorted(state.hosts)
    caps = {n: dict(state.hosts[n].caps, name=n) for n in names}
    workers: dict[str, RemoteWorker] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            opened = dict(zip(names, pool.map(
                lambda n: _try_open(n, timeout), names), strict=True))
        for n, w in opened.items():
            if isinstance(w, RemoteWorker):
                workers[n] = w
        cells: list[Cell] = []
        for a in names:
            for b in names:
                for t in transports:
                    cells.append(_one(a, b, t, caps, workers, opened, size, repeat,
                                      timeout, progress))
        return cells
    finally:
        for w in workers.values():
            w.close()


def _try_open(name: str, timeout: float) -> RemoteWorker | Exception:
    try:
        return open_remote_worker(name, timeout)
    except Exception as exc:
        return exc


def _one(a: str, b: str, t: str, caps: dict[str, dict[str, Any]],
         workers: dict[str, RemoteWorker], opened: dict[str, Any], size: int,
         repeat: int, timeout: float,
         progress: Callable[[str, str], None]) -> Cell:
    options: dict[str, Any] = {}
    if t == "file" and a != b:
        from papycluster.cluster.negotiate import common_shares

        shares = common_shares(caps[a], caps[b])
        if shares:
            options["share"] = shares[0]
    why = feasible(t, caps[a], caps[b], options.get("share"))
    if why is not None:
        return Cell(a, b, t, "n/a", why)
    for n in (a, b):
        if n not in workers:
            return Cell(a, b, t, "failed", f"{n} unreachable: {opened.get(n)}")
    send, recv = _Runner(workers[a]), _Runner(workers[b])
    best = None
    try:
        for _ in range(max(1, repeat)):
            # the item is made on the sender, so only the transport moves it; the time
            # is the receiver's load (for the manager path: the trip through us too)
            started = time.perf_counter()
            ticket, want = send(_produce, None, timeout, size, t, **options)
            if t != MANAGER:
                started = time.perf_counter()
            got = recv(_consume, ticket, timeout, t)
            elapsed = time.perf_counter() - started
            if got != want:
                return Cell(a, b, t, "failed", "the item arrived corrupted")
            best = elapsed if best is None else min(best, elapsed)
    except Exception as exc:
        progress(f"{a}->{b}", f"{t} failed: {exc}")
        return Cell(a, b, t, "failed", f"{type(exc).__name__}: {exc}")
    rate = size / best / 1e6 if best else None
    detail = f"share {options['share']}" if options.get("share") else ""
    progress(f"{a}->{b}", f"{t} ok, {rate:.0f} MB/s" if rate else f"{t} ok")
    return Cell(a, b, t, "ok", detail, rate)
