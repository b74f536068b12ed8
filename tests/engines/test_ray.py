"""NuMap on a real local Ray (num_cpus=2): semantics, faults."""

from __future__ import annotations

import pickle

import pytest

from papycluster import NuMap, workers
from papycluster.transport import ProducerLostError
from tests.engines import semantics
from tests.plugins.helpers import collect


@semantics.cases
def test_numap_semantics_on_ray(ray_local, case):
    case("ray")


def test_worker_num_is_the_tasks_in_flight_on_ray(ray_local, tmp_path):
    semantics.worker_num_bounds_the_tasks_in_flight("ray", tmp_path, workers=2)


def test_a_killed_ray_worker_is_retried_by_ray(ray_local, tmp_path):
    """SIGKILL the Ray worker process running item 5: Ray runs the task again
    (max_retries from the NuMap's retries), and every item gives its result."""
    out = semantics.killed_worker_run("ray", tmp_path, 12)
    assert out == [2 * x for x in range(12)]


def test_a_task_ray_gives_up_is_one_error_item_naming_it(ray_local, tmp_path):
    out = semantics.killed_worker_run("ray", tmp_path, 8, retries=0)
    semantics.assert_only_item_5_lost(out, "ray local", "WorkerCrashedError")


@semantics.TRANSPORTS
def test_transports_between_pipers_on_ray_workers(ray_local, kind):
    semantics.transport_between_engine_workers("ray", kind)


def dump_engine(n: int) -> tuple:
    return workers.io.dump_item([b"y" * (n << 20)], "engine")


def load_size(ticket: tuple) -> int:
    return len(workers.io.load_item([ticket]))


def test_the_engine_transport_keeps_items_in_rays_object_store(ray_local):
    """Only tickets reach the controller; a loader gets the bytes from Ray's store, a
    load removes the item, and what nobody loaded goes when the dumping NuMap stops."""
    up = NuMap(dump_engine, [1, 2, 3, 4], worker_remote="ray", worker_num=2)
    try:
        tickets = list(up)
        assert all(len(pickle.dumps(t)) < 200 for t in tickets)
        loaded = NuMap(load_size, tickets[:3] + tickets[:1], worker_remote="ray",
                       worker_num=1)
        try:
            out = collect(iter(loaded))
        finally:
            loaded.stop()
        assert out[:3] == [1 << 20, 2 << 20, 3 << 20]
        assert isinstance(out[3], ProducerLostError)  # loaded already: removed
        assert "loaded already" in str(out[3])
    finally:
        up.stop()
    loaded = NuMap(load_size, tickets[3:], worker_remote="ray", worker_num=1)
    try:
        out = collect(iter(loaded))
    finally:
        loaded.stop()
    assert isinstance(out[0], ProducerLostError)  # its pool stopped: freed


@pytest.mark.parametrize("requested, chosen", [("auto", "shm"), ("engine", "engine")])
def test_the_transport_is_negotiated_from_the_ray_workers_hosts(ray_local, requested,
                                                                  chosen):
    """The workers and the controller are one machine: 'auto' is shm; 'engine' stays."""
    assert semantics.negotiated_between_engine_workers("ray", requested) == chosen


def test_each_live_ray_node_is_reported(ray_local):
    import socket

    from papycluster.engines.hosts import ray_hosts

    hosts = ray_hosts("ray")
    assert [h["name"] for h in hosts] == [ray_local.util.get_node_ip_address()]
    assert hosts[0]["hostname"] == socket.gethostname() and hosts[0]["engine"] == "ray"
