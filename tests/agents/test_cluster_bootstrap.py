"""deploy/bootstrap.sh: start and stop an agent by hand from a shipped bundle."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from papycluster.cluster.auth import new_secret
from papycluster.cluster.bundle import build_bundle
from papycluster.cluster.client import AgentConnection
from papycluster.cluster.remote import parse_result
from tests.plugins.helpers import agent_pids, free_port, run_dirs

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "bootstrap.sh"


def _run(args: list[str], stdin: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run(["sh", str(SCRIPT), *args], input=stdin, capture_output=True,
                          text=True, timeout=90, env=env)


def test_bootstrap_sh_starts_and_stops_an_agent(cluster_name, tmp_path):
    bundle, _ = build_bundle()
    secret = new_secret()
    port = free_port()
    res = _run([str(bundle), "--name", "boot", "--cluster", cluster_name, "--port",
                str(port), "--python", "/usr/bin/python3", "--advertise", "127.0.0.1"],
               secret + "\n", tmp_path)
    result = parse_result(res.stdout)
    assert result and result["ok"], res.stdout + res.stderr
    assert result["port"] == port
    try:
        [pid] = agent_pids(cluster_name, children=False)
        assert pid == result["pid"]
        assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        conn = AgentConnection("127.0.0.1", port, secret, "boot")
        try:
            info = conn.info()
        finally:
            conn.close()
        assert info["name"] == "boot" and info["executable"] == "/usr/bin/python3"
        assert list((tmp_path / "cache" / "papycluster").glob("manual-*/papycluster"))
    finally:
        stop = _run([str(bundle), "--stop", "--cluster", cluster_name], "", tmp_path)
    stopped = parse_result(stop.stdout)
    assert stopped and stopped["ok"], stop.stdout + stop.stderr
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []


def test_bootstrap_sh_refuses_without_secret_or_python(cluster_name, tmp_path):
    bundle, _ = build_bundle()
    res = _run([str(bundle), "--name", "boot", "--cluster", cluster_name], "", tmp_path)
    assert res.returncode == 2 and "no secret on stdin" in res.stderr
    res = _run([str(bundle), "--name", "boot", "--python", "/nonexistent/python"], "x\n",
               tmp_path)
    assert res.returncode == 2 and "no Python" in res.stderr
    assert agent_pids(cluster_name) == []


def test_bootstrap_ps1_keeps_the_secret_off_the_command_line():
    """No PowerShell here to run it: check what must hold in its text."""
    text = (ROOT / "deploy" / "bootstrap.ps1").read_text()
    assert "[Console]::In.ReadLine()" in text and "ValueFromPipeline" in text
    assert "$config | & $py.Source -c $runner launch" in text
    # the runner passes no double quote to a native program (PowerShell 5.1 mangles them)
    runner = text[text.index("$runner = "):text.index("$env:PYTHONPATH")]
    assert runner.startswith("$runner = 'import json") and '"' not in runner
