"""NuMap on a real local Ray (num_cpus=2): semantics, faults."""

from __future__ import annotations

from papycluster import NuMap, WorkerLostError
from tests.engines import semantics
from tests.engines.conftest import hold_on_first_run, kill_when_running, pid_gone
from tests.plugins.helpers import collect


@semantics.cases
def test_numap_semantics_on_ray(ray_local, case):
    case("ray")


def test_worker_num_is_the_tasks_in_flight_on_ray(ray_local, tmp_path):
    semantics.worker_num_bounds_the_tasks_in_flight("ray", tmp_path, workers=2)


def test_a_killed_ray_worker_is_retried_by_ray(ray_local, tmp_path):
    """SIGKILL the Ray worker process running item 5: Ray runs the task again
    (max_retries from the NuMap's retries), and every item gives its result."""
    killer = kill_when_running(tmp_path)
    numap = NuMap(hold_on_first_run, range(12), args=(str(tmp_path),),
                  worker_remote="ray", worker_num=2)
    try:
        out = collect(iter(numap))
    finally:
        numap.stop()
    killer.join(5)
    assert pid_gone(int((tmp_path / "killed").read_text()))
    assert out == [2 * x for x in range(12)]


def test_a_task_ray_gives_up_is_one_error_item_naming_it(ray_local, tmp_path):
    killer = kill_when_running(tmp_path)
    numap = NuMap(hold_on_first_run, range(8), args=(str(tmp_path),),
                  worker_remote="ray", worker_num=2, retries=0)
    try:
        out = collect(iter(numap))
    finally:
        numap.stop()
    killer.join(5)
    assert pid_gone(int((tmp_path / "killed").read_text()))
    assert len(out) == 8
    assert [v for i, v in enumerate(out) if i != 5] == [2 * x for x in range(8) if x != 5]
    assert isinstance(out[5], WorkerLostError)
    assert "item 5 of task 0" in str(out[5]) and "ray local" in str(out[5])
    assert "WorkerCrashedError" in str(out[5])


@semantics.TRANSPORTS
def test_transports_between_pipers_on_ray_workers(ray_local, kind):
    semantics.transport_between_engine_workers("ray", kind)
