"""ProxyJump: a host reached through a jump host, as a fabric gateway (no ssh binary).

The jump host is the test sshd itself: the controller logs in to it, opens a
``direct-tcpip`` channel back to the same sshd, and logs in again through that channel.
"""

from __future__ import annotations

from pathlib import Path

from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts
from tests.plugins.helpers import agent_pids, free_port, hosts_toml, run_dirs


def _config(sshd, cluster_name: str, remote_cache: Path, tmp_path: Path, jump_port: int):
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        f"Host viajump\n    HostName 127.0.0.1\n"
        f"    ProxyJump {sshd.user}@127.0.0.1:{jump_port}\n"
        f"Host 127.0.0.1\n    IdentityFile {sshd.key}\n")
    text = hosts_toml(sshd, cluster_name, [{"name": "a", "address": "viajump"}],
                      remote_cache)
    text = text.replace(f'ssh_config = "{sshd.dir}/no_ssh_config"',
                        f'ssh_config = "{ssh_config}"')
    return parse_hosts(text, "hosts.toml")


def _logins(sshd) -> int:
    return sshd.log.read_text().count("Accepted publickey")


def test_up_and_down_through_a_jump_host_without_an_ssh_binary(
        sshd, cluster_name, remote_cache, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no ssh client to shell out to
    config = _config(sshd, cluster_name, remote_cache, tmp_path, sshd.port)
    before = _logins(sshd)
    result = controller.up(config)
    assert result.up == ["a"], result.failed
    assert _logins(sshd) - before == 2  # the jump host, then the host through it
    rows = {r["name"]: r for r in controller.status()}
    assert rows["a"]["ok"], rows
    assert all(d.ok for d in controller.down())
    assert _logins(sshd) - before == 4
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []


def test_a_jump_host_that_refuses_is_named(sshd, cluster_name, remote_cache, tmp_path):
    closed = free_port()
    config = _config(sshd, cluster_name, remote_cache, tmp_path, closed)
    [r] = controller.up(config).results
    assert not r.ok and r.cause == "refused", r
    assert f"127.0.0.1:{closed} (jump host for 127.0.0.1:{sshd.port})" in r.detail, r
    assert agent_pids(cluster_name) == []
