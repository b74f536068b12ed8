"""The lanes of a NuMap: the remote lane is injected, and the engine loads no cluster.

``papycluster.hooks`` is where the cluster layer plugs its remote lane into the engine;
a lane registered there by a test runs a ``worker_remote`` pool like the real one, and
a pipeline of local workers never imports ``papycluster.cluster``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from papycluster import NuMap, hooks
from papycluster.engine.lanes import ThreadLane


def square(x: int) -> int:
    return x * x


class _InProcessLane(ThreadLane):
    """A 'remote' lane whose workers are threads of this process."""

    kind = "remote"
    local = False
    built: list[list[str]] = []

    def __init__(self, hub, specs: list[str]) -> None:
        super().__init__(hub, len(specs))
        self.built.append(specs)


@pytest.fixture
def in_process_remote_lane():
    saved = hooks.lane_factory("remote")
    _InProcessLane.built = []
    hooks.register_lane("remote", _InProcessLane)
    try:
        yield _InProcessLane
    finally:
        hooks.register_lane("remote", saved)


def test_a_worker_remote_pool_runs_on_the_registered_lane(in_process_remote_lane):
    numap = NuMap(square, range(20), worker_num=0, worker_remote=[("h1", 2), ("h2", 1)])
    try:
        assert list(numap) == [x * x for x in range(20)]
    finally:
        numap.stop()
    assert in_process_remote_lane.built == [["h1", "h1", "h2"]]


def test_local_and_remote_lanes_share_the_work(in_process_remote_lane):
    numap = NuMap(square, range(50), worker_type="thread", worker_num=1,
                  worker_remote=[("h", 1)])
    try:
        assert list(numap) == [x * x for x in range(50)]
    finally:
        numap.stop()
    assert in_process_remote_lane.built == [["h"]]


def test_an_unknown_lane_kind_is_named():
    with pytest.raises(LookupError, match="'fibre'"):
        hooks.lane_factory("fibre")


def test_a_local_pipeline_imports_nothing_of_the_cluster_layer():
    script = textwrap.dedent("""
        import sys
        from papycluster import NuMap, Piper, Plumber, Worker

        def inc(x):
            return x + 1

        numap = NuMap(worker_type="thread", worker_num=2)
        piper = Piper(Worker(inc), parallel=numap)
        plumber = Plumber()
        plumber.add_piper(piper)
        plumber.start([range(10)])
        plumber.run()
        plumber.wait()
        plumber.stop()
        loaded = sorted(m for m in sys.modules if m.startswith("papycluster.cluster"))
        print("LOADED", loaded)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout
