"""Real old and oldest-supported Pythons on the host (pyenv builds, when present)."""

from __future__ import annotations

import operator
import pickle
from pathlib import Path

import cloudpickle
import pytest

from papycluster.cluster import controller
from papycluster.cluster.client import open_remote_worker
from papycluster.cluster.hosts import parse_hosts
from papycluster.engine.process import decode_results
from tests.plugins.helpers import agent_pids, hosts_toml, run_dirs

PYENV = Path.home() / ".pyenv" / "versions"


def _python(version: str) -> str:
    found = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.skip(f"no Python {version} build under {PYENV} on this machine")
    return str(found[-1])


@pytest.mark.parametrize("version", ["2.7", "3.6", "3.8"])
def test_real_old_python_is_too_old(sshd, cluster_name, remote_cache, version):
    config = parse_hosts(hosts_toml(sshd, cluster_name, [
        {"name": "old", "python": _python(version)}], remote_cache), "h.toml")
    [r] = controller.up(config).results
    assert (r.cause, version in r.detail) == ("Python too old", True), r


def test_python_39_host_runs_the_shipped_agent(sshd, cluster_name, remote_cache):
    config = parse_hosts(hosts_toml(sshd, cluster_name, [
        {"name": "py39", "python": _python("3.9")}], remote_cache), "h.toml")
    messages: list[str] = []
    result = controller.up(config, progress=lambda h, m: messages.append(m))
    assert result.up == ["py39"], result.failed
    assert any("warning: Python 3.9 there" in m for m in messages), messages
    try:
        assert result.results[0].info["python"].startswith("3.9.")
        # the zip's compiled code is for this Python: 3.9 runs from a copy unpacked
        # beside it (its own __pycache__), not from the zip (compiling in every process)
        package = Path(result.results[0].info["package"])
        assert package.parent.name.endswith(".cpython-39") and package.is_dir(), package
        assert list((package / "__pycache__").glob("*.cpython-39.pyc"))
        w = open_remote_worker("py39")
        try:
            # by reference (a stdlib function): portable across Python versions
            w.send(pickle.dumps(("def", "t", cloudpickle.dumps((operator.neg, (), {}))),
                                protocol=4))
            w.send(pickle.dumps(("run", [("t", 0, 5), ("t", 1, "x")]), protocol=4))
            out: list = []
            while len(out) < 2:
                out += decode_results(w.recv(30))
            out.sort(key=lambda r: r[1])
            assert out[0][2:] == (True, -5)
            ok, err = out[1][2:]
            # a remote error is still an item: a RemoteError on 3.9 (no add_note there)
            # with the type, the remote traceback and the host
            assert not ok and err.type_name == "TypeError" and "py39" in str(err)
            assert "bad operand type" in err.remote_traceback
        finally:
            w.close()
    finally:
        assert all(d.ok for d in controller.down())
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []
