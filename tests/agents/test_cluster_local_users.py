"""`papycluster down` must not kill what another user, or a reused pid, points it at.

The stop script sweeps the host's temp directory for ``papycluster-<user>-<cluster>-*``
run dirs. Another user (``nobody``, uid 65534, a real process of that uid; the tests
run as root) plants one whose agent.json names a process of ours; a stale agent.json
of ours names a pid that another process of ours has since; a run dir of ours is open
to others. The process named must survive each time, and a real agent still goes.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from papycluster.cluster import controller
from papycluster.cluster.launcher import run_local_script
from papycluster.cluster.remote import procs
from tests.plugins.helpers import agent_pids, run_dirs
from tests.transport.local_users import NOBODY, as_nobody, need_root


@pytest.fixture
def victim() -> Iterator[subprocess.Popen]:
    """A process of ours that looks like an agent (its own process group, and the
    agent's module and a --run-dir on its command line): what an attacker wants killed."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                             "-m", "papycluster.cluster.agent", "--run-dir", "x"],
                            start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def run_dir(cluster: str, name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"papycluster-{getpass.getuser()}-{cluster}-{name}"


def stop(cluster: str) -> dict:
    return run_local_script("stop", {"cluster": cluster, "scan": True, "grace": 1.0}, 60)


def still_running(proc: subprocess.Popen) -> bool:
    time.sleep(0.2)
    return proc.poll() is None


def test_a_run_dir_planted_by_another_user_is_not_swept(cluster_name: str,
                                                        victim: subprocess.Popen) -> None:
    need_root()
    planted = run_dir(cluster_name, "evil")
    as_nobody("""
        import json, os, sys
        os.mkdir(sys.argv[1], 0o700)
        with open(os.path.join(sys.argv[1], "agent.json"), "w") as f:
            json.dump({"pid": int(sys.argv[2]), "port": 1}, f)
    """, str(planted), str(victim.pid))
    try:
        res = stop(cluster_name)
        assert still_running(victim), "down killed the process a planted run dir named"
        assert res["killed"] == [] and res["removed"] == [] and res["ok"]
        assert res["refused"] == [[str(planted), f"belongs to uid {NOBODY}, not to this user"]]
        assert (planted / "agent.json").exists()
    finally:
        subprocess.run(["rm", "-rf", "--", str(planted)], check=True)


def test_a_reused_pid_in_a_stale_run_dir_of_ours_is_not_killed(
        cluster_name: str, victim: subprocess.Popen) -> None:
    """Our agent crashed long ago; its pid now belongs to another process of ours that
    even has the agent's command line: its start time gives it away."""
    stale = run_dir(cluster_name, "old")
    stale.mkdir(mode=0o700)
    now = procs.identity(victim.pid)
    assert now is not None
    recorded = {**now, "start": str(int(now["start"]) - 1000)}  # the agent that was
    (stale / "agent.json").write_text(json.dumps({"pid": victim.pid, "process": recorded}))
    res = stop(cluster_name)
    assert still_running(victim), "down killed a process that only had the agent's pid"
    assert res["killed"] == [] and res["removed"] == [str(stale)] and res["ok"]
    assert not stale.exists()


def test_a_run_dir_of_ours_open_to_others_is_not_trusted(cluster_name: str,
                                                         victim: subprocess.Popen) -> None:
    """Anyone could have written its agent.json: it is neither read nor removed."""
    opened = run_dir(cluster_name, "open")
    opened.mkdir()
    opened.chmod(0o777)
    (opened / "agent.json").write_text(json.dumps({"pid": victim.pid, "port": 1}))
    try:
        res = stop(cluster_name)
        assert still_running(victim)
        assert res["killed"] == [] and res["ok"]
        assert res["refused"] == [[str(opened), "mode 0777: open to other users"]]
    finally:
        subprocess.run(["rm", "-rf", "--", str(opened)], check=True)


def test_down_still_stops_agents_and_what_a_crashed_agent_left(cluster_name: str) -> None:
    """The recorded identity is the agent's own; the workers of an agent killed with
    SIGKILL (its forkserver) are still swept as its orphans."""
    assert controller.up_local(2, cluster=cluster_name).failed == []
    from papycluster.cluster.client import open_remote_worker
    from papycluster.cluster.state import load_state

    hosts = load_state().hosts
    for name, entry in hosts.items():
        info = json.loads((Path(entry.run_dir) / "agent.json").read_text())
        assert info["process"] == procs.identity(entry.pid), name
    w = open_remote_worker("local2")  # starts the forkserver and a worker on local2
    crashed = hosts["local2"].pid
    info = json.loads((Path(hosts["local2"].run_dir) / "agent.json").read_text())
    deadline = time.monotonic() + 10
    while len(procs.orphans(crashed, info)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the agent and, in its group, the forkserver and the worker
    assert len(procs.orphans(crashed, info)) >= 2, "local2 started no worker"
    os.kill(crashed, signal.SIGKILL)
    while procs.alive(crashed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs.orphans(crashed, info), "the crashed agent left nothing: nothing to test"
    try:
        w.close()
    except Exception:  # its agent is gone
        pass
    results = controller.down()
    assert all(r.ok for r in results), results
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []
