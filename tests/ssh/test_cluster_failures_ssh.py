"""Each way a host can fail is named, in bounded time, without holding up the others."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from papycluster.cluster import controller, readiness
from papycluster.cluster.client import open_remote_worker
from papycluster.cluster.errors import ClusterError
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.state import load_state, state_path
from tests.plugins.helpers import agent_pids, free_port, hosts_toml, run_dirs

OLD_PYTHON = """#!/bin/sh
# pretends to be Python 3.6: knows --version, chokes on the probe's syntax
if [ "$1" = "--version" ]; then echo "Python 3.6.15"; exit 0; fi
cat >/dev/null
echo '  File "<stdin>", line 20' >&2
echo 'SyntaxError: invalid syntax' >&2
exit 1
"""


def _fake_python(tmp_path: Path) -> Path:
    p = tmp_path / "python3.6"
    p.write_text(OLD_PYTHON)
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return p


def test_failures_are_named_and_others_come_up(sshd, cluster_name, remote_cache, tmp_path):
    hosts = [
        {"name": "good"},
        {"name": "closed", "port": free_port()},
        {"name": "nowhere", "address": "no-such-host.invalid"},
        {"name": "badkey", "key": str(sshd.other_key)},
        {"name": "nopython", "python": "/nonexistent/bin/python3"},
        {"name": "oldpython", "python": str(_fake_python(tmp_path))},
    ]
    config = parse_hosts(hosts_toml(sshd, cluster_name, hosts, remote_cache), "h.toml")
    result = controller.up(config)  # bounded: the connect timeout is 5 s
    causes = {r.name: r.cause for r in result.results}
    assert causes == {"good": "", "closed": "refused", "nowhere": "unreachable",
                      "badkey": "auth failed", "nopython": "no Python",
                      "oldpython": "Python too old"}
    assert result.up == ["good"]
    details = {r.name: r.detail for r in result.failed}
    assert "3.6.15" in details["oldpython"]
    assert "/nonexistent/bin/python3" in details["nopython"]
    state = load_state()
    assert list(state.hosts) == ["good"]
    assert all(d.ok for d in controller.down())
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []


def test_host_key_mismatch_and_unknown_key(sshd, cluster_name, remote_cache, tmp_path):
    wrong = tmp_path / "known_hosts_wrong"
    other_pub = Path(str(sshd.other_key) + ".pub").read_text().split()
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other_pub[0]} {other_pub[1]}\n")
    text = hosts_toml(sshd, cluster_name, [{"name": "a"}], remote_cache).replace(
        str(sshd.known_hosts), str(wrong))
    result = controller.up(parse_hosts(text, "h.toml"))
    assert [(r.name, r.cause) for r in result.results] == [("a", "host key mismatch")]
    assert "ssh-keygen -R" in result.results[0].detail

    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    text = hosts_toml(sshd, cluster_name, [{"name": "a"}], remote_cache).replace(
        str(sshd.known_hosts), str(empty))
    result = controller.up(parse_hosts(text, "h.toml"))
    assert [(r.name, r.cause) for r in result.results] == [("a", "unknown host key")]
    assert "accept-new" in result.results[0].detail
    assert not state_path().exists()


def test_accept_new_records_the_key(sshd, cluster_name, remote_cache, tmp_path):
    known = tmp_path / "kh" / "known_hosts"
    text = hosts_toml(sshd, cluster_name, [{"name": "a"}], remote_cache,
                      host_key_policy="accept-new").replace(str(sshd.known_hosts), str(known))
    result = controller.up(parse_hosts(text, "h.toml"))
    assert result.up == ["a"], result.failed
    assert sshd.host_pub.split()[1] in known.read_text()
    assert all(d.ok for d in controller.down())


def test_down_after_a_crash_sweeps_with_the_hosts_file(sshd, cluster_name, remote_cache):
    config = parse_hosts(hosts_toml(sshd, cluster_name, [{"name": "a"}, {"name": "b"}],
                                    remote_cache), "h.toml")
    result = controller.up(config)
    assert sorted(result.up) == ["a", "b"], result.failed
    assert len(agent_pids(cluster_name, children=False)) == 2
    # crash: one agent dies hard (its run dir stays), and the controller loses its state
    os.kill(load_state().hosts["a"].pid, signal.SIGKILL)
    state_path().unlink()
    assert len(run_dirs(cluster_name)) == 2
    results = controller.down(config)
    assert all(r.ok for r in results), results
    assert agent_pids(cluster_name) == []
    assert run_dirs(cluster_name) == []


def test_up_on_a_running_cluster_starts_only_what_is_missing(sshd, cluster_name,
                                                              remote_cache):
    """New hosts and lost hosts are started; healthy agents are left alone."""
    one = hosts_toml(sshd, cluster_name, [{"name": "a"}], remote_cache)
    result = controller.up(parse_hosts(one, "h.toml"))
    assert result.up == ["a"], result.failed
    first = load_state()
    a_pid = first.hosts["a"].pid
    try:
        a_port = first.hosts["a"].agent_port
        two = one + "\n".join(["", "[[host]]", 'name = "b"', 'address = "127.0.0.1"',
                               f"agent_port = {free_port()}", ""])
        config = parse_hosts(two, "h.toml")
        assert config.host("a").agent_port == a_port
        result = controller.up(config)  # b joins
        assert result.up == ["a", "b"], result.failed
        assert result.results[0].info.get("kept") is True
        state = load_state()
        assert state.secret == first.secret and state.hosts["a"].pid == a_pid
        b_pid = state.hosts["b"].pid
        assert len(agent_pids(cluster_name, children=False)) == 2

        os.kill(b_pid, signal.SIGKILL)  # b is lost, then "back"
        result = controller.up(config)
        assert result.up == ["a", "b"], result.failed
        state = load_state()
        assert state.hosts["a"].pid == a_pid and state.hosts["b"].pid != b_pid
        assert all(row["ok"] for row in controller.status())

        w = open_remote_worker("b")  # the restarted agent serves with the same secret
        try:
            assert w.ping(5) is True
        finally:
            w.close()

        other = parse_hosts(one.replace(f'name = "{cluster_name}"', 'name = "other"'),
                            "h.toml")
        with pytest.raises(ClusterError, match="already up"):
            controller.up(other)  # another cluster is refused while this one runs
    finally:
        assert all(d.ok for d in controller.down())
    assert agent_pids(cluster_name) == []


def test_scripts_through_a_file_as_for_powershell(sshd, cluster_name, remote_cache,
                                                  monkeypatch):
    """The PowerShell path (script copied by SFTP, run, removed), exercised with sh."""
    from papycluster.cluster import shell

    monkeypatch.setattr(shell, "via_file", lambda shell: True)
    home = Path.home()
    before = set(home.glob(".papycluster-*.py"))
    config = parse_hosts(hosts_toml(sshd, cluster_name, [
        {"name": "a"}, {"name": "nopython", "python": "/nonexistent/python3"}],
        remote_cache), "h.toml")
    result = controller.up(config)
    assert {r.name: r.cause for r in result.results} == {"a": "", "nopython": "no Python"}
    assert all(d.ok for d in controller.down())
    assert set(home.glob(".papycluster-*.py")) == before
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []


@pytest.mark.parametrize("sftp", ["works", "cannot tell", "sees another home"])
def test_bundle_by_sftp_or_inside_the_launch_script(sshd, cluster_name, tmp_path,
                                                    monkeypatch, sftp):
    """SFTP places the bundle (making its folders); with no SFTP, or one that looks
    elsewhere than Python does, the launch script gets the bundle inside itself."""
    from papycluster.cluster import deploy

    if sftp != "works":
        monkeypatch.setattr(deploy, "_ship", lambda *args: sftp == "sees another home")
    cache = tmp_path / "not" / "yet" / "cache"  # the bundle must be shipped
    config = parse_hosts(hosts_toml(sshd, cluster_name, [{"name": "a"}], cache), "h.toml")
    messages: list[str] = []
    result = controller.up(config, progress=lambda h, m: messages.append(m))
    assert result.up == ["a"], result.failed
    inside = any("inside the launch script" in m for m in messages)
    assert inside == (sftp != "works"), messages
    # the zip alone (no temporary file left beside it), and pyzmq's wheel and site
    [zipped] = [p for p in cache.iterdir() if p.is_file()]
    assert zipped.suffix == ".zip"
    assert {p.name.split("-")[0] for p in cache.iterdir() if p.is_dir()} <= {"wheels",
                                                                            "site"}
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    rows = {r["name"]: r for r in controller.status()}
    assert Path(rows["a"]["package"]).is_relative_to(zipped)
    assert all(d.ok for d in controller.down())
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []


def test_ssh_config_alias_gives_hostname_port_user_and_key(sshd, cluster_name, remote_cache,
                                                           tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host labalpha\n    HostName 127.0.0.1\n    Port {sshd.port}\n"
                   f"    User {sshd.user}\n    IdentityFile {sshd.key}\n")
    text = (f'[cluster]\nname = "{cluster_name}"\nconnect_timeout = 5\n'
            f'known_hosts = "{sshd.known_hosts}"\nssh_config = "{cfg}"\n\n'
            f'[[host]]\nname = "a"\naddress = "labalpha"\ncache_dir = "{remote_cache}"\n'
            f"agent_port = {free_port()}\n")
    result = controller.up(parse_hosts(text, "h.toml"))
    assert result.up == ["a"], result.failed
    entry = load_state().hosts["a"]
    assert (entry.address, entry.connect) == ("labalpha", "127.0.0.1")
    assert all(d.ok for d in controller.down())


def test_keys_from_the_ssh_agent(sshd, cluster_name, remote_cache, tmp_path, monkeypatch):
    """No key in the hosts file and none in ~/.ssh: the SSH agent's key logs in."""
    import subprocess

    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on
        text = hosts_toml(sshd, cluster_name, [{"name": "a"}], remote_cache).replace(
            f'key = "{sshd.key}"', "")
        assert str(sshd.key) not in text
        config = parse_hosts(text, "h.toml")
        # an empty agent: no way in
        assert [r.cause for r in controller.up(config).results] == ["auth failed"]
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(sshd.key)], env=env, check=True, timeout=10,
                       capture_output=True)
        result = controller.up(config)
        assert result.up == ["a"], result.failed
        assert all(d.ok for d in controller.down())
    finally:
        agent.terminate()
        agent.wait(10)


def test_agent_started_but_unreachable_is_stopped_again(sshd, cluster_name, remote_cache,
                                                       monkeypatch):
    """As behind a firewall: the agent runs, but its port cannot be reached from here."""
    real_wait = readiness.wait_agent
    closed = free_port()
    monkeypatch.setattr(readiness, "wait_agent",
                        lambda name, address, port, secret, timeout:
                        real_wait(name, address, closed, secret, 2.0))
    config = parse_hosts(hosts_toml(sshd, cluster_name, [{"name": "a"}], remote_cache),
                         "h.toml")
    [r] = controller.up(config).results
    assert r.cause == "agent failed" and "it was stopped again" in r.detail, r
    assert agent_pids(cluster_name) == [] and run_dirs(cluster_name) == []
    assert not state_path().exists()
