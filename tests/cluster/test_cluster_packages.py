"""The user's own code and packages on bare docker nodes (no numpy there).

``packages = [...]`` in the hosts file (per cluster and per host) makes ``up`` download
wheels on this machine for each node's platform and Python, ship them and unpack them
into papycluster's own site on the node; a function from a module beside the 'script'
(a temp dir here, its file removed: the nodes never had it) runs there by value and
uses numpy. A requirement no wheel satisfies fails ``up`` for that host, naming both.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from typing import TYPE_CHECKING

import pytest

from papycluster import NuMap
from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.state import load_state

if TYPE_CHECKING:  # the fixture comes from conftest.py
    from tests.cluster.harness import Harness

pytestmark = pytest.mark.timeout(900)

USER_MODULE = '''
def norm(value):
    import numpy

    vector = numpy.arange(value + 1, dtype=float)
    return numpy.__version__, float(numpy.sqrt((vector ** 2).sum()))


def has_six(value):
    import six

    return six.__name__
'''


def _with_packages(text: str, cluster: list[str], per_host: dict[str, list[str]]) -> str:
    lines = []
    for line in text.splitlines():
        lines.append(line)
        if line == "[cluster]":
            lines.append(f"packages = {cluster!r}".replace("'", '"'))
        for host, packages in per_host.items():
            if line == f'name = "{host}"':
                lines.append(f"packages = {packages!r}".replace("'", '"'))
    return "\n".join(lines) + "\n"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = "usernum_" + uuid.uuid4().hex[:8]
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    path.unlink()
    yield module
    sys.modules.pop(name, None)


def test_packages_and_user_modules_on_bare_nodes(cluster: Harness, papy: str, tmp_path,
                                                 user_module):
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    for node in (node1, node2):
        cluster.make_bare(node)
        bare = cluster.ssh_python(node, "import numpy\n")
        assert bare.rc != 0 and "numpy" in bare.err  # nothing of numpy there
    text = _with_packages(cluster.hosts_toml([node1, node2], cluster_name=papy,
                                             connect_timeout=5),
                          ["numpy==2.*"], {"node2": ["six"]})
    messages: list[tuple[str, str]] = []
    result = controller.up(parse_hosts(text, str(tmp_path / "hosts.toml")),
                           progress=lambda h, m: messages.append((h, m)))
    assert result.failed == [], result.failed
    assert any(h == "node1" and "shipping numpy-2." in m for h, m in messages), messages
    try:
        numap = NuMap(user_module.norm, range(4), worker_num=0,
                      worker_remote=[("node1", 1), ("node2", 1)])
        try:
            out = [numap.next(timeout=120) for _ in range(4)]
        finally:
            numap.stop()
        versions = {version for version, _ in out}
        assert len(versions) == 1 and versions.pop().startswith("2.")
        assert [round(v, 6) for _, v in out] == [0.0, 1.0, round(5 ** 0.5, 6),
                                                 round(14 ** 0.5, 6)]
        # the host's own key adds to the cluster's: six on node2 only
        numap = NuMap(user_module.has_six, range(1), worker_num=0,
                      worker_remote=[("node2", 1)])
        try:
            assert numap.next(timeout=120) == "six"
        finally:
            numap.stop()
        numap = NuMap(user_module.has_six, range(1), worker_num=0,
                      worker_remote=[("node1", 1)])
        try:
            with pytest.raises(ModuleNotFoundError):
                numap.next(timeout=120)
        finally:
            numap.stop()
        # the host's Python itself is left alone
        assert cluster.ssh_python(node1, "import numpy\n").rc != 0
    finally:
        assert all(d.ok for d in controller.down())

    # a second `up` finds the wheels and the site cached on the nodes
    messages.clear()
    result = controller.up(parse_hosts(text, str(tmp_path / "hosts.toml")),
                           progress=lambda h, m: messages.append((h, m)))
    try:
        assert result.failed == [], result.failed
        assert not any("shipping numpy" in m for _, m in messages), messages
    finally:
        assert all(d.ok for d in controller.down())


def test_a_package_without_a_fitting_wheel_names_host_and_package(cluster: Harness,
                                                                  papy: str, tmp_path):
    node1 = cluster.nodes["node1"]
    text = _with_packages(cluster.hosts_toml([node1], cluster_name=papy,
                                             connect_timeout=5), [],
                          {"node1": ["numpy==1.0.0"]})  # no wheel for Python 3.11
    result = controller.up(parse_hosts(text, str(tmp_path / "hosts.toml")))
    try:
        [failed] = result.failed
        assert failed.name == "node1" and failed.cause == "packages failed"
        assert "numpy==1.0.0" in failed.detail and "node1" in failed.detail
        assert "Python 3.11" in failed.detail and "x86_64" in failed.detail
        print(failed.detail)
    finally:
        if load_state(missing_ok=True) is not None:
            controller.down()
