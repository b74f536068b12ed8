"""Plugin of the root conftest: a cluster name and a private cluster state per test.

``state_file`` is not autouse here (a plugin's autouse fixture would reach every test of
the session, engine and transport included): the folders whose tests start or look up
clusters (tests/agents, tests/ssh, tests/cluster_units) opt in with an autouse fixture
of their own conftest.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from pathlib import Path

import pytest

from tests.plugins.helpers import agent_pids, run_dirs

_SET_BY_NEGOTIATION = ("PAPYCLUSTER_SECRET", "PAPYCLUSTER_SECRET_FILE",
                       "PAPYCLUSTER_ADVERTISE_HOST", "PAPYCLUSTER_HOST_NAME",
                       "PAPYCLUSTER_SHARES")


@pytest.fixture
def cluster_name() -> str:
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
def state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster_name: str):
    """Each test gets its own state file; whatever it left running is stopped after."""
    path = tmp_path / "state" / "state.json"
    monkeypatch.setenv("PAPYCLUSTER_STATE", str(path))
    # negotiation sets these in the controller process: undo it after each test
    for key in _SET_BY_NEGOTIATION:
        monkeypatch.delenv(key, raising=False)
    yield path
    # set by the code under test, not by monkeypatch, so monkeypatch alone would leave
    # them to the next test (a secret file of a state dir that is gone); it restores
    # whatever value the session had before
    for key in _SET_BY_NEGOTIATION:
        os.environ.pop(key, None)
    for pid in agent_pids(cluster_name):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    for d in run_dirs(cluster_name):
        shutil.rmtree(d, ignore_errors=True)
