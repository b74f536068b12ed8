"""NuMap on a real Dask LocalCluster (worker processes): semantics, faults, bad input."""

from __future__ import annotations

import pickle

import pytest

from papycluster import NuMap, workers
from tests.engines import semantics


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
    out = semantics.killed_worker_run(client, tmp_path, 12)
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
        out = semantics.killed_worker_run(client, tmp_path, 8, retries=0)
    semantics.assert_only_item_5_lost(out, "KilledWorker", "dask scheduler tcp://")


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
    # an engine item is a published dataset until its load removes it
    assert [n for n in client.list_datasets() if n.startswith("papyc-")] == []


def dump_engine(n: int) -> tuple:
    return workers.io.dump_item([b"y" * (n << 20)], "engine")


def test_the_engine_transport_keeps_items_in_the_dask_cluster(dask_cluster):
    """Only tickets (a dataset's name) reach the controller; the loader on another
    task gets the bytes from the cluster, and a load removes the dataset."""
    _, client = dask_cluster
    up = NuMap(dump_engine, [1, 2, 3], worker_remote=client, worker_num=2)
    try:
        tickets = list(up)
        assert all(len(pickle.dumps(t)) < 200 for t in tickets)
        assert len([n for n in client.list_datasets() if n.startswith("papyc-")]) == 3
        loaded = NuMap(load_size, tickets, worker_remote=client, worker_num=2)
        try:
            assert list(loaded) == [1 << 20, 2 << 20, 3 << 20]
        finally:
            loaded.stop()
        assert [n for n in client.list_datasets() if n.startswith("papyc-")] == []
        # what nobody loads is removed when the NuMap that dumped it stops
        left = NuMap(dump_engine, [1], worker_remote=client, worker_num=1)
        assert len(list(left)) == 1
        assert len([n for n in client.list_datasets() if n.startswith("papyc-")]) == 1
        left.stop()
        assert [n for n in client.list_datasets() if n.startswith("papyc-")] == []
    finally:
        up.stop()


def load_size(ticket: tuple) -> int:
    return len(workers.io.load_item([ticket]))


@pytest.mark.parametrize("requested, chosen", [("auto", "shm"), ("engine", "engine")])
def test_the_transport_is_negotiated_from_the_dask_workers_hosts(dask_cluster, requested,
                                                                  chosen):
    """The workers and the controller are one machine: 'auto' is shm; 'engine' stays."""
    _, client = dask_cluster
    assert semantics.negotiated_between_engine_workers(client, requested) == chosen


def test_each_dask_worker_host_is_reported_once(dask_cluster):
    import socket

    from papycluster.engines.hosts import dask_hosts

    cluster, client = dask_cluster
    hosts = dask_hosts(client)
    assert [h["name"] for h in hosts] == ["127.0.0.1"]  # two workers, one host
    assert hosts[0]["hostname"] == socket.gethostname() and hosts[0]["shm"] is True
    assert hosts[0]["engine"] == f"dask scheduler {cluster.scheduler_address}"


def test_a_dask_worker_that_does_not_answer_is_taken_for_tcp_only(dask_cluster, caplog):
    """The probe's worker is frozen (SIGSTOP): the answer comes in bounded time, the
    host assumed to offer tcp, with a warning naming it."""
    import os
    import signal

    from papycluster.engines.hosts import dask_hosts

    _, client = dask_cluster
    first = next(iter(client.nthreads()))  # the worker probed for 127.0.0.1
    pid = client.run(os.getpid, workers=[first])[first]
    os.kill(pid, signal.SIGSTOP)
    try:
        hosts = dask_hosts(client, timeout=2)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert hosts == [{"name": "127.0.0.1", "os": "unknown", "engine": hosts[0]["engine"],
                      "transports": ["tcp", "manager"]}]
    assert "127.0.0.1 did not report its host" in caplog.text
