"""``papycluster check -f hosts.toml`` before any ``up``, against a real sshd on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.preflight import _reach_from_here, run_preflight
from tests.plugins.helpers import free_port, hosts_toml


def _config(sshd, cluster_name, remote_cache, hosts):
    return parse_hosts(hosts_toml(sshd, cluster_name, hosts, remote_cache), "hosts.toml")


def _port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_ready_hosts_pass_and_every_pair_reaches_the_other(sshd, cluster_name, remote_cache,
                                                           tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    config = _config(sshd, cluster_name, remote_cache, [
        {"name": "alpha", "shares": {"data": str(share)}}, {"name": "beta"}])
    found = run_preflight(config)
    assert found.ok, [(h.name, h.problems) for h in found.hosts]
    alpha = next(h for h in found.hosts if h.name == "alpha")
    assert alpha.facts["python"].startswith("3.") and alpha.facts["os"] == "linux"
    assert alpha.listened_on_agent_port and alpha.listen_port == config.host("alpha").agent_port
    for a, b in [("controller", "alpha"), ("controller", "beta"), ("alpha", "beta"),
                 ("beta", "alpha")]:
        r = found.pair(a, b)
        assert r is not None and r.ok, (a, b, r)
    # nothing is left behind: no listener, no probe file in the share
    assert all(_port_closed(h.agent_port) for h in config.hosts)
    assert list(share.iterdir()) == []


def test_each_problem_names_the_host_the_cause_and_the_fix(sshd, cluster_name, remote_cache,
                                                          tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    holder = socket.socket()  # another program holds gamma's agent port
    holder.bind(("0.0.0.0", 0))
    holder.listen(1)
    config = _config(sshd, cluster_name, remote_cache, [
        {"name": "alpha"},
        {"name": "badkey", "key": str(sshd.other_key)},
        {"name": "nopython", "python": "/nonexistent/python3"},
        {"name": "noshare", "shares": {"data": str(not_a_folder)}},
        {"name": "gamma", "agent_port": holder.getsockname()[1]},
        {"name": "nosshd", "port": free_port()}])
    started = time.monotonic()
    try:
        found = run_preflight(config)
    finally:
        holder.close()
    assert time.monotonic() - started < 120  # bounded (connect_timeout 5, start 30)
    assert not found.ok
    causes = {h.name: [p.cause for p in h.problems] for h in found.hosts}
    assert causes == {"alpha": [], "badkey": ["auth failed"], "nopython": ["no Python"],
                      "noshare": ["share"], "gamma": ["check failed"],
                      "nosshd": ["refused"]}, causes
    by_name = {h.name: h for h in found.hosts}
    assert "authorized_keys" in by_name["badkey"].problems[0].fix
    assert "python =" in by_name["nopython"].problems[0].fix
    assert str(not_a_folder) in by_name["noshare"].problems[0].detail
    assert "in use" in by_name["gamma"].problems[0].detail
    # gamma's pairs were probed on a spare port, and still reach
    assert not by_name["gamma"].listened_on_agent_port
    assert found.pair("alpha", "gamma").ok and found.pair("controller", "gamma").ok


def test_a_running_agent_of_this_cluster_is_not_a_problem(sshd, cluster_name, remote_cache):
    config = _config(sshd, cluster_name, remote_cache, [{"name": "alpha"}])
    assert controller.up(config).failed == []
    try:
        found = run_preflight(config)
    finally:
        controller.down()
    assert found.ok, found.hosts[0].problems
    assert "held by this cluster's agent" in found.hosts[0].facts["agent_port"]


def test_a_port_that_answers_something_else_or_nothing_is_not_reached():
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    port = other.getsockname()[1]

    def answer() -> None:
        conn, _ = other.accept()
        conn.sendall(b"SSH-2.0-OpenSSH\r\n")
        conn.close()

    import threading
    threading.Thread(target=answer, daemon=True).start()
    r = _reach_from_here("h", "127.0.0.1", port, "a" * 32)
    other.close()
    assert not r.ok and "not the preflight listener" in r.detail
    started = time.monotonic()
    r = _reach_from_here("h", "127.0.0.1", free_port(), "a" * 32)
    assert not r.ok and "refused" in r.detail.lower()
    assert time.monotonic() - started < 60  # retried only while a listener may start


def test_cli_exit_status_says_whether_up_would_work(sshd, cluster_name, remote_cache,
                                                    tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(hosts_toml(sshd, cluster_name, [{"name": "alpha"}, {"name": "beta"}],
                               remote_cache))
    bad = tmp_path / "bad.toml"
    bad.write_text(hosts_toml(sshd, cluster_name, [{"name": "alpha"},
                                                   {"name": "badkey",
                                                    "key": str(sshd.other_key)}],
                              remote_cache))
    broken = tmp_path / "broken.toml"
    broken.write_text("[cluster\nname = 1\n")

    def run(path):
        return subprocess.run([sys.executable, "-m", "papycluster", "check", "-f", str(path)],
                              capture_output=True, text=True, timeout=180)

    ok = run(good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2/2 hosts ready" in ok.stdout and "alpha -> beta" in ok.stdout
    failed = run(bad)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "badkey" in failed.stdout and "auth failed" in failed.stdout
    assert "authorized_keys" in failed.stdout
    assert run(broken).returncode == 2
