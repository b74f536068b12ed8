"""The ``papycluster`` command end to end: local agents, SSH hosts, check, demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import papycluster
from papycluster.cli import main
from papycluster.cluster.check import run_check
from papycluster.cluster.controller import local_cluster_name
from papycluster.cluster.state import state_path
from tests.plugins.helpers import agent_pids, free_port, hosts_toml, run_dirs


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False,
                              env={"COLUMNS": "200"})


def test_local_up_status_check_down(cluster_name):
    r = _invoke("up", "--local", "2", "--windows-profile", "1")
    assert r.exit_code == 0, r.output
    assert "2/2 up" in r.output and local_cluster_name() in r.output
    try:
        r = _invoke("status")
        assert r.exit_code == 0, r.output
        assert "local1" in r.output and "windows" in r.output and "items done" in r.output

        cells = {(c.sender, c.receiver, c.transport): c
                 for c in run_check(size=100_000, repeat=1)}
        # same host, both native: shared memory works; the Windows profile has none
        assert cells["local1", "local1", "shm"].status == "ok"
        assert cells["local1", "local2", "shm"].status == "n/a"
        assert "windows" in cells["local1", "local2", "shm"].detail
        assert cells["local1", "local2", "file"].status == "ok"
        assert cells["local2", "local1", "tcp"].status == "ok"
        assert all(c.status != "failed" for c in cells.values()), [
            c for c in cells.values() if c.status == "failed"]
        assert all(c.mb_per_s for c in cells.values() if c.status == "ok")

        r = _invoke("check", "--size", "10000", "--transport", "tcp", "--transport", "file")
        assert r.exit_code == 0, r.output
        assert "local2 -> local1" in r.output and "MB/s" in r.output
        lines = {ln.split()[1] + ln.split()[3]: ln for ln in r.output.splitlines()
                 if " -> " in ln and "sender" not in ln}
        assert lines["local1local1"].split()[5] == "shm"   # what negotiation would pick
        assert lines["local1local2"].split()[5] == "file"  # windows profile: no shm, no tcp
    finally:
        r = _invoke("down")
    assert r.exit_code == 0, r.output
    assert "2/2 host(s) clean" in r.output
    assert not state_path().exists()


def test_ssh_up_with_a_failing_host_then_down(sshd, cluster_name, remote_cache,
                                               tmp_path: Path):
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(hosts_toml(sshd, cluster_name,
                                [{"name": "alpha"}, {"name": "dead", "port": free_port()}],
                                remote_cache))
    r = _invoke("up", "-f", str(hosts))
    try:
        assert r.exit_code == 1, r.output           # one host failed
        assert "1/2 up" in r.output
        assert "refused" in r.output and "dead" in r.output
        r = _invoke("status")
        assert r.exit_code == 0 and "alpha" in r.output and "dead" not in r.output
    finally:
        r = _invoke("down")
    assert r.exit_code == 0, r.output
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []


def test_bad_hosts_file_exits_2_before_connecting(tmp_path: Path):
    hosts = tmp_path / "hosts.toml"
    hosts.write_text('[[host]]\nname = "a"\naddress = "x"\nworkers = "many"\n')
    r = CliRunner().invoke(main, ["up", "-f", str(hosts)])
    assert r.exit_code == 2
    assert f"{hosts}: line 4" in r.output and "workers" in r.output


def test_status_without_a_cluster():
    r = CliRunner().invoke(main, ["status"])
    assert r.exit_code == 2 and "no cluster is up" in r.output


def test_python_dash_m_papycluster_is_the_command(tmp_path: Path):
    """``python -m papycluster`` works where the script is not on PATH (Windows, venvs)."""
    env = {**os.environ, "PAPYCLUSTER_STATE": str(tmp_path / "state.json")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "papycluster", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert all(c in helped.stdout for c in ("up", "down", "status", "check", "demo"))
    assert papycluster.__version__ in run("--version").stdout
    status = run("status")  # a real command: no cluster in this state file
    assert status.returncode == 2 and "no cluster is up" in status.stderr + status.stdout


def test_demo_runs_across_agents_and_cleans_up():
    r = _invoke("demo", "--agents", "2", "--items", "40")
    assert r.exit_code == 0, r.output
    assert "40/40 items" in r.output
    assert "local1:" in r.output and "local2:" in r.output  # both agents did work
    name = local_cluster_name("demo")
    assert "demo-" in name
    assert agent_pids(name) == [] and run_dirs(name) == []
    assert not state_path().exists()
