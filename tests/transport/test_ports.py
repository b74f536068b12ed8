"""A fixed port range (``PAPYCLUSTER_PORTS``, the hosts file's ``ports``) on real sockets.

A firewall that opens only a range needs every listener inside it: the tcp and udp item
servers of a real child process, and a clear error, naming the range, once it is full.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from papycluster.wire.ports import PORTS_ENV, bind_port, parse_ports
from tests.plugins.helpers import free_port, free_range

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("spec, expect", [
    ("20000-20100", range(20000, 20101)), (" 3000 ", range(3000, 3001)),
    ("1-65535", range(1, 65536))])
def test_a_range_is_parsed_with_both_ends(spec, expect):
    assert parse_ports(spec) == expect


@pytest.mark.parametrize("spec, words", [
    ("20100-20000", "first <= last"), ("0-10", "1 <= first"), ("1-70000", "65535"),
    ("a-b", "not a range"), ("", "not a range"), ("20000-", "not a range")])
def test_a_bad_range_says_what_is_wrong(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_ports(spec)


def test_listeners_bind_inside_the_range_and_a_full_range_is_a_clear_error(monkeypatch):
    ports = free_range(3)
    monkeypatch.setenv(PORTS_ENV, f"{ports.start}-{ports.stop - 1}")
    held = []
    try:
        for _ in ports:
            s = socket.socket()
            held.append(s)
            assert bind_port(s, "127.0.0.1", "a test listener") in ports
        assert sorted(s.getsockname()[1] for s in held) == list(ports)
        s = socket.socket()
        held.append(s)
        with pytest.raises(OSError) as info:
            bind_port(s, "127.0.0.1", "a test listener")
        msg = str(info.value)
        assert f"{PORTS_ENV}={ports.start}-{ports.stop - 1}" in msg
        assert "a test listener" in msg and "3 ports" in msg and "widen" in msg
    finally:
        for s in held:
            s.close()


def test_without_a_range_any_free_port_is_taken(monkeypatch):
    monkeypatch.delenv(PORTS_ENV, raising=False)
    with socket.socket() as s:
        assert bind_port(s, "127.0.0.1", "a test listener") > 0


CHILD = textwrap.dedent("""
    import json, sys
    from papycluster.transport.tcp import TcpServer
    from papycluster.transport.udp_server import UdpServer
    from papycluster.transport.base import TransportError
    out = {}
    for name, server in (("tcp", TcpServer), ("udp", UdpServer)):
        try:
            out[name] = server().port
        except TransportError as exc:
            out[name] = str(exc)
    print(json.dumps(out))
""")


def run_child(spec: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, PAPYCLUSTER_SECRET="x" * 32,
               PAPYCLUSTER_ADVERTISE_HOST="127.0.0.1")
    env[PORTS_ENV] = spec
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_item_servers_of_a_process_listen_in_its_range():
    ports = free_range(4)
    got = run_child(f"{ports.start}-{ports.stop - 1}")
    assert got["tcp"] in ports and got["udp"] in ports, got


def test_an_item_server_with_its_range_taken_names_the_transport_and_the_range():
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        got = run_child(str(port))
    assert got["tcp"].startswith("tcp: cannot listen on '127.0.0.1'"), got
    assert f"{PORTS_ENV}={port}" in got["tcp"] and "the tcp item server" in got["tcp"]
