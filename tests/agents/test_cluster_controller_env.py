"""After ``down`` the controller's process is as it was: a later run in the same process
must not look for the secret file of a cluster that is gone."""

from __future__ import annotations

import os

from papycluster import NuMap
from papycluster.cluster import controller, negotiate


def _dump_tcp(x):
    from papycluster.workers import io

    return io.dump_item([bytes([x]) * 100], "tcp")


def test_down_undoes_the_controller_environment(cluster_name, monkeypatch):
    for key in ("PAPYCLUSTER_SECRET", "PAPYCLUSTER_SECRET_FILE",
                "PAPYCLUSTER_ADVERTISE_HOST", "PAPYCLUSTER_HOST_NAME"):
        monkeypatch.delenv(key, raising=False)
    result = controller.up_local(1, cluster=cluster_name)
    assert result.failed == [], result.failed
    try:
        negotiate.prepare_controller_env()  # what a pipeline on this cluster does
        secret_file = os.environ["PAPYCLUSTER_SECRET_FILE"]
        assert os.path.exists(secret_file)
        monkeypatch.setenv("PAPYCLUSTER_HOST_NAME", "mine")  # the user's own: kept
    finally:
        assert all(r.ok for r in controller.down())
    assert not os.path.exists(secret_file)
    assert "PAPYCLUSTER_SECRET_FILE" not in os.environ
    assert os.environ["PAPYCLUSTER_HOST_NAME"] == "mine"
    # A run after it: its own secret, not the cluster's vanished file.
    numap = NuMap(_dump_tcp, range(5), worker_num=1)
    try:
        from papycluster.workers import io

        assert [bytes(io.load_item([tk]))[:1] for tk in numap] == [bytes([x]) for x in range(5)]
    finally:
        numap.stop()
