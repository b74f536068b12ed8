"""Issue 20 over real SSH: what agents listen on, and a key file that is not there."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from papycluster import NuMap
from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.state import load_state
from tests.plugins.helpers import agent_pids, hosts_toml


def _listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket (v4) that one of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        local, state, inode = cols[1], cols[3], cols[9]
        if state == "0A" and inode in inodes:  # LISTEN
            addr, port = local.split(":")
            out.add((socket.inet_ntoa(bytes.fromhex(addr)[::-1]), int(port, 16)))
    return out


def _bind_env(_: object) -> tuple[str | None, str | None]:
    """Where a remote worker's tcp/udp servers would listen, and what they advertise."""
    from papycluster.transport import tcp

    return os.environ.get(tcp.BIND_ENV), tcp.advertise_host()


def test_agents_listen_on_their_address_unless_bind_says(sshd, cluster_name, remote_cache):
    """Before: every agent started over SSH listened on 0.0.0.0 (all interfaces)."""
    text = hosts_toml(sshd, cluster_name, [{"name": "own"},
                                           {"name": "wide", "bind": "0.0.0.0"}], remote_cache)
    result = controller.up(parse_hosts(text, "hosts.toml"))
    try:
        assert result.failed == [], result.failed
        state = load_state()
        by_port = {}
        for pid in agent_pids(cluster_name, children=False):
            for addr, port in _listening([pid]):
                by_port[port] = (addr, pid)
        own, wide = state.hosts["own"], state.hosts["wide"]
        own_addr, own_pid = by_port[own.agent_port]
        wide_addr, wide_pid = by_port[wide.agent_port]
        assert own_addr == "127.0.0.1"  # the address it advertises (reached over SSH)
        assert wide_addr == "0.0.0.0"   # asked for by the hosts file
        # nothing else of the default agent listens on all interfaces either
        assert all(a == "127.0.0.1" for a, _ in _listening([own_pid])), _listening([own_pid])
        # the workers' tcp/udp item servers follow the agent's bind
        for host, bind in (("own", None), ("wide", "0.0.0.0")):
            numap = NuMap(_bind_env, [0], worker_num=0, worker_remote=[(host, 1)])
            try:
                assert list(numap) == [(bind, "127.0.0.1")]
            finally:
                numap.stop()
        assert controller.status()[0]["ok"]
    finally:
        assert all(d.ok for d in controller.down())


def test_a_missing_key_file_is_named_as_such(sshd, cluster_name, remote_cache, tmp_path):
    """Before: the cause word was "unreachable"."""
    missing = tmp_path / "no_such_key"
    text = hosts_toml(sshd, cluster_name, [{"name": "a", "key": str(missing)}], remote_cache)
    result = controller.up(parse_hosts(text, "hosts.toml"))
    assert [(r.name, r.cause) for r in result.results] == [("a", "key file not found")]
    assert str(missing) in result.results[0].detail
    assert agent_pids(cluster_name) == []
