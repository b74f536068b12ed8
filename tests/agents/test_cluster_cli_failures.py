"""What the first real Windows runs showed (issue 19), on this machine's processes:
the demo's failure cause, ``down`` with nothing running, the stop script's report, and
the items counted by ``status``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import papycluster
from papycluster import NuMap
from papycluster.cli import main
from papycluster.cluster import controller
from papycluster.cluster.controller import local_cluster_name
from papycluster.cluster.remote import parse_result, render
from tests.plugins.helpers import run_dirs

REPO = Path(papycluster.__file__).resolve().parents[1]

# Put on PYTHONPATH, it keeps every agent from starting (and nothing else): the launch
# script sees the agent exit at once, as when an agent cannot start on a host.
_NO_AGENT = '''import sys
if "papycluster.cluster.agent" in getattr(sys, "orig_argv", ()):
    sys.stderr.write("sitecustomize: this agent may not start\\n")
    raise SystemExit(3)
'''


def _papycluster(tmp_path: Path, *args: str, pythonpath: list[str] | None = None
                 ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAPYCLUSTER_STATE": str(tmp_path / "state" / "state.json"),
           "PYTHONPATH": os.pathsep.join([*(pythonpath or []), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "papycluster", *args], env=env,
                          capture_output=True, text=True, timeout=150, cwd=tmp_path)


def test_demo_shows_why_no_agent_came_up(tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_AGENT)
    r = _papycluster(tmp_path, "demo", "--agents", "2", "--items", "5",
                     pythonpath=[str(site)])
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out.split("sitecustomize: this agent")[0], out
    assert "no cluster state" not in out, out
    assert "2/2 did not come up" in out
    assert "local1: agent failed" in out and "local2: agent failed" in out
    assert "sitecustomize: this agent may not start" in out  # the agents' own words
    # and nothing is left of the agents that did not start
    assert run_dirs(local_cluster_name("demo")) == []


def test_down_with_nothing_running_is_not_an_error(tmp_path: Path):
    r = _papycluster(tmp_path, "down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing is running" in r.stdout
    # a wrong hosts file stays a usage error
    bad = tmp_path / "hosts.toml"
    bad.write_text('[[host]]\nname = "a"\naddress = "x"\nworkers = "many"\n')
    r = _papycluster(tmp_path, "down", "-f", str(bad))
    assert r.returncode == 2 and "workers" in r.stderr, r.stdout + r.stderr


def test_down_in_process_with_nothing_running():
    assert controller.down() == []
    r = CliRunner().invoke(main, ["down"])
    assert r.exit_code == 0 and "nothing is running" in r.output


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to run the stop script as nobody")
def test_stop_script_reports_an_unremovable_run_dir_once_and_only_as_left(cluster_name):
    """A run dir that rmtree cannot remove (on Windows: a file still open) is 'left',
    once, however often and however spelled the controller and the scan name it."""
    base = tempfile.mkdtemp(prefix="papy-stop-")
    try:
        os.chmod(base, 0o1777)  # as /tmp: each removes only its own
        stuck = os.path.join(base, f"papycluster-nobody-{cluster_name}-n1")
        gone = os.path.join(base, f"papycluster-nobody-{cluster_name}-n2")
        for d in (stuck, gone):
            os.mkdir(d)
            Path(d, "agent.log").write_text("x")
            os.chown(d, 65534, 65534)
            os.chown(os.path.join(d, "agent.log"), 65534, 65534)
            os.chmod(d, 0o700)  # as an agent makes it: a dir open to others is not swept
        os.mkdir(os.path.join(stuck, "held"))  # root's: nobody cannot empty it
        Path(stuck, "held", "file").write_text("x")
        config = {"cluster": cluster_name, "scan": True, "grace": 1.0,
                  "run_dirs": [stuck, stuck + os.sep, gone]}
        env = {"PATH": os.environ.get("PATH", ""), "TMPDIR": base, "LOGNAME": "nobody",
               "USER": "nobody", "HOME": base}
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "/usr/bin/python3", "-"], input=render("stop", config),
                              capture_output=True, text=True, timeout=60, env=env)
        res = parse_result(proc.stdout)
        assert res is not None, proc.stderr
        assert res["ok"] is False
        assert res["left"] == [stuck], res
        assert res["removed"] == [gone], res
        assert not os.path.exists(gone)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_status_counts_every_item_done(local_cluster):
    """Fast tasklets' results travel several to a message: each is an item done."""
    numap = NuMap(worker_num=0, worker_remote=[("local1", 2), ("local2", 1)])
    numap.add_task(abs, [-i for i in range(60)])
    numap.start()
    try:
        assert sorted(numap) == list(range(60))
    finally:
        numap.stop()
    rows = controller.status()
    assert sum(r["items_done"] for r in rows) == 60, [
        (r["name"], r["items_done"]) for r in rows]
    r = CliRunner().invoke(main, ["status"], env={"COLUMNS": "200"})
    cells = [[c.strip() for c in line.split("│") if c.strip()]
             for line in r.output.splitlines() if "local" in line and "│" in line]
    assert sum(int(row[-1]) for row in cells) == 60, r.output


def test_a_share_a_host_cannot_see_is_named_with_its_path():
    from papycluster.cluster.negotiate import auto_transport, feasible

    linux = {"name": "n1", "os": "linux", "hostname": "n1",
             "shares": {"data": {"path": "/mnt/data", "exists": True}}}
    win = {"name": "w1", "os": "windows", "hostname": "w1",
           "shares": {"data": {"path": "T:\\data", "exists": False}}}
    why = feasible("file", linux, win, "data")
    assert why == "share 'data': w1 cannot see it (T:\\data is not there)"
    assert auto_transport(linux, win)[0] == "manager"
