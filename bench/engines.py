"""Benchmark: a two-stage pipeline on papycluster agents, on Dask and on Ray.

The same two stages (``make``: an item of ``size`` bytes from a number; ``measure``:
its length) run on, in one run and interleaved:

* ``agents``      two papycluster agents on this machine (``up_local``), one remote
                  worker each per stage,
* ``dask lane``   ``NuMap(worker_remote=client)`` on a Dask LocalCluster (2 worker
                  processes of 1 thread),
* ``ray lane``    ``NuMap(worker_remote="ray")`` on a local Ray (``num_cpus=2``),
* ``dask+store``, ``ray+store``  the lanes with the ``engine`` transport between the
                  stages (16 MB items only): only a ticket crosses the controller,
* ``dask+auto``, ``ray+auto``  the lanes with ``dump_item(..., "auto")`` between the
                  stages (16 MB items only), negotiated from the hosts the engine's
                  workers report (here one machine: ``shm``),
* ``dask map``    plain ``client.map(make)`` then ``client.map(measure)`` on the same
                  cluster, the baseline of the Dask lane,
* ``ray tasks``   plain Ray tasks ``measure.remote(make.remote(x))``, the baseline of
                  the Ray lane.

Each stage of a NuMap has ``--inflight`` tasklets in flight (its ``worker_num``); the
plain baselines submit everything at once. With 16 MB items a NuMap's item goes back
to the controller between the stages (as with agents and the manager path), while the
baselines keep it in the engine's store: that difference is part of the ratio.

Throughput counts from the first result to the last, so start-up does not count;
every configuration runs ``--reps`` times, interleaved, and the median is printed with
the lane's ratio to its engine's baseline (``x base``: > 1 is slower than the baseline).

    python bench/engines.py [--reps 3] [--trivial 400] [--big 12] [--inflight 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from papycluster import NuMap, Piper, Worker, workers  # noqa: E402
from papycluster.cluster.negotiate import negotiate_dagger  # noqa: E402
from papycluster.engine import Dagger  # noqa: E402

MB16 = 16 << 20


def make(inbox: list, size: int) -> bytes | int:
    x = inbox[0] if isinstance(inbox, list | tuple) else inbox
    return x + 1 if not size else bytes(size)


def measure(inbox: list) -> int:
    y = inbox[0] if isinstance(inbox, list | tuple) else inbox
    return y if isinstance(y, int) else len(y)  # bytes, or what load_item gives


def expected(n: int, size: int) -> list[int]:
    return [size] * n if size else [x + 1 for x in range(n)]


def timed(results, n: int, want: list[int], what: str) -> float:
    """Items per second from the first of ``n + 1`` results to the last."""
    got = [next(results)]
    t0 = time.perf_counter()
    got += list(results)
    elapsed = time.perf_counter() - t0
    if got != want:
        raise RuntimeError(f"{what}: wrong results ({len(got)} of {len(want)}): "
                           f"{[repr(g)[:200] for g in got[:3]]}")
    return n / elapsed


def pipeline(make_pool, n: int, size: int, what: str, transport: str | None = None
             ) -> float:
    if transport:  # the stages exchange a ticket, by the transport negotiated for it
        up = Piper(Worker((make, workers.io.dump_item), ((size,), (transport,))),
                   parallel=make_pool())
        down = Piper(Worker((workers.io.load_item, measure)), parallel=make_pool())
    else:
        up = Piper(Worker(make, (size,)), parallel=make_pool())
        down = Piper(Worker(measure), parallel=make_pool())
    dagger = Dagger()
    dagger.add_pipe((up, down))
    if transport:
        negotiate_dagger(dagger)  # what Plumber.start does: 'auto' is shm here
    dagger.connect([range(n + 1)])
    dagger.start()
    try:
        return timed(iter(down), n, expected(n + 1, size), what)
    finally:
        dagger.stop()
        dagger.disconnect(forced=True)


def dask_map(client, n: int, size: int) -> float:
    from distributed import as_completed

    firsts = client.map(make, range(n + 1), size=size, pure=False)
    seconds = client.map(measure, firsts, pure=False)
    done = as_completed(seconds)
    next(done)
    t0 = time.perf_counter()
    for _ in done:
        pass
    elapsed = time.perf_counter() - t0
    if client.gather(seconds) != expected(n + 1, size):
        raise RuntimeError("dask map: wrong results")
    return n / elapsed


def ray_tasks(ray, n: int, size: int) -> float:
    make_r, measure_r = ray.remote(make), ray.remote(measure)
    refs = [measure_r.remote(make_r.remote(x, size)) for x in range(n + 1)]
    ray.wait(refs, num_returns=1)
    t0 = time.perf_counter()
    ray.wait(refs, num_returns=len(refs))
    elapsed = time.perf_counter() - t0
    if ray.get(refs) != expected(n + 1, size):
        raise RuntimeError("ray tasks: wrong results")
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--trivial", type=int, default=400, help="trivial items")
    parser.add_argument("--big", type=int, default=12, help="16 MB items")
    parser.add_argument("--inflight", type=int, default=4, help="worker_num of a lane")
    opts = parser.parse_args()

    import ray
    from distributed import Client, LocalCluster

    from papycluster.cluster import controller
    from papycluster.cluster.state import load_state

    state_dir = tempfile.mkdtemp(prefix="bench-engines-")
    os.environ["PAPYCLUSTER_STATE"] = str(Path(state_dir) / "state.json")
    up = controller.up_local(2, cluster=f"be{os.getpid()}", workers=2)
    if up.failed:
        raise SystemExit(f"agents: {up.failed}")
    hosts = sorted(load_state().hosts)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    k = opts.inflight
    configs = {
        "agents": lambda n, s: pipeline(lambda: NuMap(
            worker_num=0, worker_remote=[(h, 1) for h in hosts]), n, s, "agents"),
        "dask lane": lambda n, s: pipeline(lambda: NuMap(
            worker_remote=client, worker_num=k), n, s, "dask lane"),
        "ray lane": lambda n, s: pipeline(lambda: NuMap(
            worker_remote="ray", worker_num=k), n, s, "ray lane"),
        "dask+store": lambda n, s: pipeline(lambda: NuMap(
            worker_remote=client, worker_num=k), n, s, "dask+store", "engine"),
        "ray+store": lambda n, s: pipeline(lambda: NuMap(
            worker_remote="ray", worker_num=k), n, s, "ray+store", "engine"),
        "dask+auto": lambda n, s: pipeline(lambda: NuMap(
            worker_remote=client, worker_num=k), n, s, "dask+auto", "auto"),
        "ray+auto": lambda n, s: pipeline(lambda: NuMap(
            worker_remote="ray", worker_num=k), n, s, "ray+auto", "auto"),
        "dask map": lambda n, s: dask_map(client, n, s),
        "ray tasks": lambda n, s: ray_tasks(ray, n, s),
    }
    workloads = [("trivial", opts.trivial, 0), ("16 MB", opts.big, MB16)]
    stored = ("dask+store", "ray+store", "dask+auto", "ray+auto")  # bytes items only
    rates: dict[tuple[str, str], list[float]] = {}
    try:
        for _, _, size in workloads:  # warm every pool up once
            for config, run in configs.items():
                if size or config not in stored:
                    run(2, size)
        for rep in range(opts.reps):
            for name, n, size in workloads:
                order = list(configs)
                order = order[rep % len(order):] + order[:rep % len(order)]
                for config in order:
                    if not size and config in stored:
                        continue
                    rates.setdefault((name, config), []).append(configs[config](n, size))
    finally:
        client.close()
        cluster.close()
        ray.shutdown()
        controller.down()
    base = {"dask lane": "dask map", "ray lane": "ray tasks", "dask+store": "dask map",
            "ray+store": "ray tasks", "dask+auto": "dask map", "ray+auto": "ray tasks"}
    print(f"\ntwo-stage pipeline, median of {opts.reps} (items/s from the first result; "
          f"lanes with worker_num={k}; {os.cpu_count()} cores)")
    print(f"{'items':<9}{'path':<12}{'items/s':>10}{'x base':>9}")
    for name, _, _ in workloads:
        for config in configs:
            if (name, config) not in rates:
                continue
            rate = statistics.median(rates[(name, config)])
            ratio = ""
            if config in base:
                ratio = f"{statistics.median(rates[(name, base[config])]) / rate:.2f}"
            print(f"{name:<9}{config:<12}{rate:>10.1f}{ratio:>9}")


if __name__ == "__main__":
    main()
