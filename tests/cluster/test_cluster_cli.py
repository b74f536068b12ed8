"""The ``papycluster`` command against the docker nodes, as a user runs it: ``up -f``
from a hosts file, ``status``, ``check`` (the full transport matrix), ``down``."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the fixture comes from conftest.py
    from tests.cluster.harness import Harness

pytestmark = pytest.mark.timeout(900)

AGENT = "papycluster.cluster.agent"


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.env = {**os.environ,
                    "PAPYCLUSTER_STATE": str(tmp_path / "state" / "state.json"),
                    "COLUMNS": "300", "NO_COLOR": "1"}
        for key in ("PAPYCLUSTER_SECRET", "PAPYCLUSTER_SECRET_FILE", "PAPYCLUSTER_HOSTS"):
            self.env.pop(key, None)
        self.cwd = tmp_path

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "papycluster.cli", *args],
                              env=self.env, cwd=self.cwd, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def cli(cluster: Harness, tmp_path: Path):
    run = Cli(tmp_path)
    yield run
    cluster.restore()
    if Path(run.env["PAPYCLUSTER_STATE"]).exists():
        run("down", timeout=120)
    for node in cluster.nodes.values():
        cluster.docker_exec(node, f"pkill -9 -f '{AGENT}'")


def hosts_file(cluster: Harness, tmp_path: Path, **kw) -> str:
    path = tmp_path / "hosts.toml"
    path.write_text(cluster.hosts_toml(cluster_name="c" + secrets.token_hex(4), **kw))
    return str(path)


def test_up_status_check_down(cluster: Harness, cli: Cli, tmp_path: Path):
    for node in cluster.nodes.values():
        cluster.make_bare(node)
    up = cli("up", "-f", hosts_file(cluster, tmp_path))
    assert up.returncode == 0, up.stdout + up.stderr
    assert "4/4 up" in up.stdout
    for node in cluster.nodes.values():
        assert re.search(rf"{node.name}\s+shipping papycluster", up.stdout), up.stdout

    status = cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {line.split()[1]: line for line in status.stdout.splitlines()
            if len(line.split()) > 1 and line.split()[1] in cluster.nodes}
    assert sorted(rows) == sorted(cluster.nodes), status.stdout
    for node in cluster.nodes.values():
        assert f"{node.ip}:" in rows[node.name]
    assert "windows (profile)" in rows["win1"]
    for node in cluster.linux_nodes:
        assert "linux" in rows[node.name]

    check = cli("check", "--size", "262144")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "failed" not in check.stdout
    pairs = set(re.findall(r"(\w+) -> (\w+)", check.stdout)) - {("sender", "receiver")}
    assert sorted(set(pairs)) == sorted((a, b) for a in cluster.nodes for b in cluster.nodes)

    down = cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "4/4 host(s) clean" in down.stdout
    for node in cluster.nodes.values():
        assert cluster.processes(node, "papycluster") == [], node.name
        assert cluster.temp_files(node) == [], node.name


@pytest.mark.parametrize("fault", ["docker kill", "network disconnect"])
def test_up_names_the_lost_node(cluster: Harness, cli: Cli, tmp_path: Path, fault: str):
    victim = cluster.nodes["node3"]
    (cluster.kill if fault == "docker kill" else cluster.disconnect)(victim)
    up = cli("up", "-f", hosts_file(cluster, tmp_path, connect_timeout=5))
    assert up.returncode == 1, up.stdout + up.stderr
    assert "3/4 up" in up.stdout
    [line] = [ln for ln in up.stdout.splitlines() if ln.split()[1:2] == [victim.name]
              and ("unreachable" in ln or "timeout" in ln)]
    assert victim.ip in line or "connect" in line, line
    # ./hosts.toml is there, so `down` sweeps node3 too, and says it cannot reach it
    down = cli("down", timeout=120)
    assert down.returncode == 1, down.stdout + down.stderr
    assert "3/4 host(s) clean" in down.stdout
    assert re.search(rf"{victim.name}: (unreachable|timeout)", down.stderr), down.stderr
    for node in cluster.nodes.values():
        if node is not victim:
            assert cluster.processes(node, "papycluster") == [], node.name
