"""NuMap on a real Dask LocalCluster (worker processes): semantics, faults, bad input."""

from __future__ import annotations

import pytest

from papycluster import NuMap, WorkerLostError
from tests.engines import semantics
from tests.engines.conftest import hold_on_first_run, kill_when_running, pid_gone
from tests.plugins.helpers import collect


@semantics.cases
def test_numap_semantics_on_dask(dask_cluster, case):
    _, client = dask_cluster
    case(client)


def test_a_dask_address_works_as_a_client(dask_cluster):
    cluster, _ = dask_cluster
    address = "dask://" + cluster.scheduler_address.removeprefix("tcp://")
    semantics.results_in_order(address)


def test_worker_num_is_the_tasks_in_flight_on_dask(dask_cluster, tmp_path):
    _, client = dask_cluster
    semantics.worker_num_bounds_the_tasks_in_flight(client, tmp_path, workers=2)


def test_a_killed_dask_worker_is_retried_by_the_scheduler(dask_cluster, tmp_path):
    """SIGKILL the worker process running item 5: the scheduler runs it again on a
    worker that lives (its nanny starts a new one), and every item gives its result."""
    _, client = dask_cluster
    killer = kill_when_running(tmp_path)
    numap = NuMap(hold_on_first_run, range(12), args=(str(tmp_path),),
                  worker_remote=client, worker_num=2)
    try:
        out = collect(iter(numap))
    finally:
        numap.stop()
    killer.join(5)
    killed = int((tmp_path / "killed").read_text())
    assert pid_gone(killed)
    assert out == [2 * x for x in range(12)]
    client.wait_for_workers(2, timeout=60)  # the nanny's new worker, for the next tests


def test_a_task_the_scheduler_gives_up_is_one_error_item_naming_it(tmp_path):
    """With no failure allowed (allowed-failures 0, retries 0), the killed worker's item
    is one WorkerLostError naming the scheduler and KilledWorker; the others are right."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        killer = kill_when_running(tmp_path)
        numap = NuMap(hold_on_first_run, range(8), args=(str(tmp_path),),
                      worker_remote=client, worker_num=2, retries=0)
        try:
            out = collect(iter(numap))
        finally:
            numap.stop()
        killer.join(5)
    assert pid_gone(int((tmp_path / "killed").read_text()))
    assert len(out) == 8
    assert [v for i, v in enumerate(out) if i != 5] == [2 * x for x in range(8) if x != 5]
    assert isinstance(out[5], WorkerLostError)
    assert "KilledWorker" in str(out[5]) and "dask scheduler tcp://" in str(out[5])
    assert "item 5 of task 0" in str(out[5])


def test_an_unreachable_scheduler_fails_the_start_naming_it():
    from tests.plugins.helpers import free_port

    address = f"dask://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match=address.replace(".", r"\.")):
        NuMap(abs, [1], worker_remote=address, worker_num=1)


def test_a_string_that_names_no_engine_is_refused():
    with pytest.raises(ValueError, match="spark://x"):
        NuMap(worker_remote="spark://x")


@semantics.TRANSPORTS
def test_transports_between_pipers_on_dask_workers(dask_cluster, kind):
    _, client = dask_cluster
    semantics.transport_between_engine_workers(client, kind)
