"""A Dask LocalCluster with worker processes and a local Ray, once per test session.

Both are small (2 worker processes of 1 thread; Ray with ``num_cpus=2``) for a 2-core
machine, and real: the kill tests kill their worker processes with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dask_cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        yield cluster, client


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def kill_when_running(mark_dir: Path, timeout: float = 60.0) -> threading.Thread:
    """A thread that SIGKILLs the process that wrote ``mark_dir/pid`` (the worker
    running the item :func:`hold_on_first_run` holds), then writes ``killed``."""
    def kill() -> None:
        pid_file = mark_dir / "pid"
        deadline = time.monotonic() + timeout
        while not pid_file.exists() or not pid_file.read_text():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        (mark_dir / "killed").write_text(str(pid))
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def hold_on_first_run(x: int, mark_dir: str, held: int = 5) -> int:
    """``2 * x``; the first run of item ``held`` writes its pid and waits to be killed."""
    mark = Path(mark_dir)
    if x == held and not (mark / "killed").exists():
        tmp = mark / "pid.tmp"
        tmp.write_text(str(os.getpid()))
        tmp.rename(mark / "pid")
        time.sleep(60)  # killed long before
    time.sleep(0.05)
    return 2 * x


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
