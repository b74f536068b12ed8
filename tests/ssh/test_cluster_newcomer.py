"""A newcomer's first day on a host reached over real SSH (a bare host: the system
Python without papycluster, whose agent runs from the shipped bundle).

The user's functions live in modules beside the 'script' (a temp dir on the
controller's sys.path) whose files are removed before the host runs them, as on a
host that never had them: they must travel by value, their tracebacks must show the
user's file and line, and what they print must reach the controller's terminal.
"""

from __future__ import annotations

import importlib
import linecache
import sys
import textwrap
import traceback
import uuid

import pytest

from papycluster import NuMap
from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts
from papycluster.errors import RemoteTraceback
from tests.plugins.helpers import hosts_toml, run_dirs

HELPER = '''
def double(value):
    return value * 2
'''

MAIN = '''
import logging
import {helper}


def work(value):
    print("working on", value)
    logging.getLogger("usercode").warning("a warning about %s", value)
    if value == 3:
        raise ValueError("three is not welcome here")  # the user's own line
    return {helper}.double(value)


def flood(value):
    for i in range(3000):
        print(f"flood line {{i:05d}}")
    print("x" * 10000)
    return value


def quiet(value):
    print("said quietly", value)
    return value
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """Two user modules (one imports the other), imported, then their files gone."""
    tag = uuid.uuid4().hex[:8]
    helper, main = f"userhelp_{tag}", f"usermain_{tag}"
    (tmp_path / f"{helper}.py").write_text(textwrap.dedent(HELPER))
    (tmp_path / f"{main}.py").write_text(MAIN.format(helper=helper))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(main)
    for name in (helper, main):
        linecache.getlines(str(tmp_path / f"{name}.py"))  # the controller's view
        (tmp_path / f"{name}.py").unlink()
    yield module, str(tmp_path / f"{main}.py")
    for name in (helper, main):
        sys.modules.pop(name, None)


@pytest.fixture
def alpha(sshd, cluster_name, remote_cache):
    config = parse_hosts(hosts_toml(sshd, cluster_name, [{"name": "alpha"}],
                                    remote_cache), "h.toml")
    result = controller.up(config)
    assert result.up == ["alpha"], result.failed
    yield
    assert all(d.ok for d in controller.down())


def _agent_log(cluster_name: str) -> str:
    [run_dir] = [d for d in run_dirs(cluster_name) if d.name.endswith("-alpha")]
    return (run_dir / "agent.log").read_text(errors="replace")


def test_user_code_tracebacks_and_prints_from_a_bare_host(alpha, user_code, cluster_name,
                                                          capsys):
    module, path = user_code
    numap = NuMap(module.work, range(5), worker_num=0, worker_remote=[("alpha", 1)])
    results: list = []
    try:
        for _ in range(5):
            try:
                results.append(numap.next(timeout=60))
            except ValueError as exc:
                results.append(exc)
    finally:
        numap.stop()
    # the user's module and the helper module it imports ran there, by value
    assert results[:3] == [0, 2, 4] and results[4] == 8
    exc = results[3]
    assert isinstance(exc.__cause__, RemoteTraceback)
    text = "".join(traceback.format_exception(exc))
    assert f'File "{path}", line 10, in work' in text
    assert 'raise ValueError("three is not welcome here")  # the user\'s own line' in text
    assert "on alpha" in text

    out, err = capsys.readouterr()
    for value in range(5):
        assert f"(alpha) working on {value}\n" in out
        assert f"(alpha) a warning about {value}\n" in err  # logging's default: stderr
    # and the agent's log still has them
    log = _agent_log(cluster_name)
    assert "working on 4" in log and "a warning about 4" in log


def test_a_flood_is_bounded_and_the_flag_turns_it_off(alpha, user_code, cluster_name,
                                                      capsys, monkeypatch):
    module, _ = user_code
    numap = NuMap(module.flood, range(2), worker_num=0, worker_remote=[("alpha", 1)])
    try:
        assert [numap.next(timeout=60) for _ in range(2)] == [0, 1]
    finally:
        numap.stop()
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("(alpha) flood line")]
    dropped = sum(int(line.split("[")[1].split()[0]) for line in err.splitlines()
                  if "line(s) dropped" in line)
    assert len(lines) + dropped == 6000 and len(lines) <= 6000
    [long1, long2] = [line for line in out.splitlines() if line.startswith("(alpha) xxx")]
    assert long1 == long2 and "more characters cut]" in long1
    assert len(long1) < 8192 + 100

    monkeypatch.setenv("PAPYCLUSTER_LOG_TO_DRIVER", "0")
    numap = NuMap(module.quiet, range(3), worker_num=0, worker_remote=[("alpha", 1)])
    try:
        assert [numap.next(timeout=60) for _ in range(3)] == [0, 1, 2]
    finally:
        numap.stop()
    monkeypatch.delenv("PAPYCLUSTER_LOG_TO_DRIVER")
    numap = NuMap(module.quiet, range(3, 5), worker_num=0, worker_remote=[("alpha", 1)],
                  log_to_driver=False)  # the argument, as ray.init(log_to_driver=False)
    try:
        assert [numap.next(timeout=60) for _ in range(2)] == [3, 4]
    finally:
        numap.stop()
    out, err = capsys.readouterr()
    assert "said quietly" not in out + err
    log = _agent_log(cluster_name)
    assert "said quietly 2" in log and "said quietly 4" in log
