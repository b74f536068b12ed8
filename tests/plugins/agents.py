"""Plugin of the root conftest: agents on this machine, started without SSH."""

from __future__ import annotations

import pytest

from tests.plugins.helpers import agent_pids, run_dirs


@pytest.fixture
def local_cluster(cluster_name):
    """Two agents on this machine by ``up_local`` (no SSH; native and Windows profile);
    ``down`` must leave no agent process and no run dir."""
    from papycluster.cluster import controller
    from papycluster.cluster.state import load_state

    result = controller.up_local(2, cluster=cluster_name, profiles=["native", "windows"])
    assert result.failed == [], result.failed
    yield load_state()
    controller.down()
    assert agent_pids(cluster_name) == []
    assert run_dirs(cluster_name) == []
