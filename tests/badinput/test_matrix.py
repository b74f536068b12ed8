"""The bad-input matrix (issue 6): every bad input a user can hand papycluster, one row each.

Each row is a :class:`Case`: an id naming the input, its category, and what it asserts.
Every case goes through a public API (the CLI, ``parse_hosts``/``load_hosts``,
``workers.io``, the agent and the transport listeners over real sockets, ``NuMap`` with
remote workers) with real parts (sshd, agents, processes, a mounted filesystem), and
checks three things where they apply:

* the error names the culprit (the file and line or key, the host, the transport and
  ticket, the share, the size and the limit, both versions);
* the call returns within a generous bound (run in a thread; a hang fails the test);
* nothing is lost or left behind (the good items and hosts of the same run survive; no
  file, process, run directory or state is left over).

``CASES`` is the authoritative list; ``test_matrix_is_complete`` checks its size.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from papycluster import NuMap, transport
from papycluster.cluster import controller, launcher
from papycluster.cluster.auth import MAGIC, NONCE
from papycluster.cluster.client import AgentConnection
from papycluster.cluster.errors import (
    AuthError,
    HostsFileError,
    VersionMismatchError,
)
from papycluster.cluster.hosts import load_hosts, parse_hosts
from papycluster.cluster.state import ClusterState, save_state
from papycluster.errors import WorkerLostError
from papycluster.transport import auth as tauth
from papycluster.transport import tcp, udp
from papycluster.transport import udp_wire as wire
from papycluster.transport.shares import ShareError
from papycluster.workers import io
from tests.plugins.helpers import agent_pids, free_port, hosts_toml, run_dirs
from tests.transport.peer import Peer, PeerError

from .conftest import PEER_SECRET, Env, bounded, expect_error

PAYLOAD = b"payload " * 64
WRONG_SECRET = "not-the-cluster-secret-" + "f" * 16


@dataclass(frozen=True)
class Case:
    """One bad input: ``id`` names it (the pytest id), ``asserts`` is the row's promise.

    ``run`` takes the test's ``request`` and fetches only the fixtures it needs, so a
    hosts-file case never starts an sshd and every case still shares one test function.
    """

    id: str
    category: str
    asserts: str
    run: Callable[[pytest.FixtureRequest], None]


CASES: list[Case] = []


def case(id: str, category: str, asserts: str) -> Callable:
    """Register the decorated function as a row of the matrix."""
    def register(fn: Callable[[pytest.FixtureRequest], None]) -> Callable:
        CASES.append(Case(id, category, asserts, fn))
        return fn
    return register


def fx(request: pytest.FixtureRequest, name: str) -> Any:
    """A fixture, set up on first use by the case that needs it."""
    return request.getfixturevalue(name)


# ---------------------------------------------------------------------------------------
# helpers

def cli(*args: str, timeout: float = 120.0) -> Any:
    """``papycluster ARGS`` through click's runner, in a thread (bounded), wide output."""
    from papycluster import cli as cli_mod

    # wide enough that every table row is one line (rich reads COLUMNS on each print)
    return bounded(lambda: CliRunner().invoke(cli_mod.main, list(args),
                                              env={"COLUMNS": "400"}),
                   timeout, f"papycluster {' '.join(args)}")


def row(output: str, host: str) -> str:
    """The line of a CLI table (or progress) that starts with ``host``'s cell."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        if host in cells[:2]:
            return line
    raise AssertionError(f"no row for {host!r} in:\n{output}")


def parse_bad(text: str, *needles: str) -> HostsFileError:
    """``parse_hosts`` on a bad file must raise HostsFileError naming the file and needles."""
    return expect_error(lambda: parse_hosts(text, "bad-hosts.toml"), HostsFileError,
                        "bad-hosts.toml", *needles, timeout=10, what="parse_hosts")


GOOD_HOST = '[[host]]\nname = "a"\naddress = "10.0.0.1"\n'


def items_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("papyc-"))


def collect(pool: NuMap, timeout: float = 60.0) -> list[Any]:
    """All results of ``pool``'s task; an exception result is kept as the item."""
    out: list[Any] = []
    while True:
        try:
            out.append(pool.next(timeout=timeout))
        except StopIteration:
            return out
        except Exception as exc:
            out.append(exc)


def remote_map(spec: str, n: int = 3) -> list[Any]:
    """Run ``abs`` over ``n`` items on the remote host ``spec``; every result or error."""
    pool = NuMap(worker_num=0, worker_remote=[(spec, 1)], heartbeat=5.0)
    pool.add_task(abs, range(-n, 0))
    pool.start()
    try:
        return collect(pool)
    finally:
        pool.stop()


# ---------------------------------------------------------------------------------------
# 1. malformed hosts files: each kind of mistake, named with file, line and key

@case("hosts-toml-syntax", "hosts file", "TOML syntax error: file and line number named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad('[cluster]\nname = lab\n' + GOOD_HOST, "not valid TOML", "line 2")


@case("hosts-unknown-table", "hosts file", "unknown top-level table [hosts] named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad('[hosts]\nname = "a"\n', "'hosts'", "unknown table")


@case("hosts-key-typo", "hosts file", "misspelt key: line, key and 'did you mean' named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad('[[host]]\nname = "a"\nadress = "10.0.0.1"\n', "line 3", "'adress'",
              "did you mean 'address'")


@case("hosts-port-wrong-type", "hosts file", "port given as a string: line and key named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad(GOOD_HOST + 'port = "22"\n', "line 4", "'port'", "must be an integer")


@case("hosts-port-out-of-range", "hosts file", "port 70000: the value and key named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad(GOOD_HOST + "port = 70000\n", "'port'", "70000")


@case("hosts-missing-address", "hosts file", "host without address: [[host]] #2 named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad(GOOD_HOST + '[[host]]\nname = "b"\n', "[[host]] #2", "missing 'address'")


@case("hosts-duplicate-name", "hosts file", "two hosts named 'a': both tables named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad(GOOD_HOST + GOOD_HOST, "duplicate host name 'a'", "[[host]] #1", "line 5")


@case("hosts-bad-name", "hosts file", "host name with a space: the name named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad('[[host]]\nname = "a b"\naddress = "x"\n', "bad host name 'a b'", "line 2")


@case("hosts-no-hosts", "hosts file", "no [[host]] table at all")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad('[cluster]\nname = "lab"\n', "no hosts")


@case("hosts-unknown-os", "hosts file", "os = 'plan9': value and key named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad(GOOD_HOST + 'os = "plan9"\n', "unknown OS 'plan9'", "'os'")


@case("hosts-share-not-a-path", "hosts file", "share path given as a number: share named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad(GOOD_HOST + "shares = { data = 3 }\n", "'shares.data'", "must be a string")


@case("hosts-workers-bool", "hosts file", "workers = true in [defaults]: key named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad("[defaults]\nworkers = true\n" + GOOD_HOST, "[defaults]", "'workers'", "bool")


@case("hosts-bad-policy", "hosts file", "host_key_policy = 'yolo': value and key named")
def _(request: pytest.FixtureRequest) -> None:
    parse_bad('[cluster]\nhost_key_policy = "yolo"\n' + GOOD_HOST, "'host_key_policy'",
              "'yolo'")


@case("hosts-not-utf8", "hosts file", "a binary file: load_hosts names the path")
def _(request: pytest.FixtureRequest) -> None:
    env: Env = fx(request, "env")
    path = env.tmp / "hosts.toml"
    path.write_bytes(b"\xff\xfe[[host]]\x00")
    expect_error(lambda: load_hosts(path), HostsFileError, str(path), "cannot read",
                 timeout=10)


@case("cli-up-missing-hosts-file", "hosts file",
      "`up -f` of a missing file: exit 2, path named, no state written")
def _(request: pytest.FixtureRequest) -> None:
    env: Env = fx(request, "env")
    missing = env.tmp / "nope.toml"
    r = cli("up", "-f", str(missing))
    assert r.exit_code == 2, r.output
    assert str(missing) in r.output and "no such file" in r.output
    assert not env.state.exists()


@case("cli-up-bad-hosts-file", "hosts file",
      "`up -f` of a file with a typo: exit 2, line and key named before any connection, "
      "no state, no agent")
def _(request: pytest.FixtureRequest) -> None:
    env: Env = fx(request, "env")
    sshd = fx(request, "sshd")
    cluster = env.named_cluster()
    text = hosts_toml(sshd, cluster, [{"name": "a"}], env.tmp / "cache")
    path = env.tmp / "hosts.toml"
    path.write_text(text.replace("workers = 2", "wrokers = 2"))
    before = sshd.log.read_text().count("Accepted publickey")
    r = cli("up", "-f", str(path))
    assert r.exit_code == 2, r.output
    assert str(path) in r.output and "'wrokers'" in r.output and "did you mean" in r.output
    assert sshd.log.read_text().count("Accepted publickey") == before  # never connected
    assert not env.state.exists() and agent_pids(cluster) == []


# ---------------------------------------------------------------------------------------
# 2. unreachable and misconfigured hosts (real sshd); the good host still comes up

def _up_with_bad_host(request: pytest.FixtureRequest, bad: dict, cause: str,
                      *needles: str) -> None:
    env: Env = fx(request, "env")
    sshd = fx(request, "sshd")
    cluster = env.named_cluster()
    path = env.tmp / "hosts.toml"
    path.write_text(hosts_toml(sshd, cluster, [{"name": "good"}, bad], fx(request, "ssh_cache")))
    r = cli("up", "-f", str(path))
    assert r.exit_code == 1, r.output
    line = row(r.output, bad["name"])
    assert cause in line, line
    for needle in needles:
        assert needle in r.output, r.output
    assert "up" in row(r.output, "good")  # the other host is not held up
    d = cli("down")
    assert d.exit_code == 0, d.output
    assert agent_pids(cluster) == [] and run_dirs(cluster) == []
    assert not env.state.exists()


@case("host-ssh-port-closed", "hosts",
      "SSH port closed: `up` names the host and 'refused'; the good host comes up; "
      "`down` leaves nothing")
def _(request: pytest.FixtureRequest) -> None:
    _up_with_bad_host(request, {"name": "closed", "port": free_port()}, "refused")


@case("host-unresolvable", "hosts", "address that does not resolve: host named, 'unreachable'")
def _(request: pytest.FixtureRequest) -> None:
    _up_with_bad_host(request, {"name": "nowhere", "address": "no-such-host.invalid"},
                      "unreachable")


@case("host-wrong-ssh-key", "hosts", "key not authorized: host named, 'auth failed'")
def _(request: pytest.FixtureRequest) -> None:
    _up_with_bad_host(request, {"name": "badkey", "key": str(fx(request, "sshd").other_key)},
                      "auth failed")


@case("host-no-python", "hosts", "python path that does not exist: host and path named")
def _(request: pytest.FixtureRequest) -> None:
    _up_with_bad_host(request, {"name": "nopy", "python": "/nonexistent/bin/python3"},
                      "no Python", "/nonexistent/bin/python3")


@case("host-key-mismatch", "hosts",
      "known_hosts holds another key: host named, 'host key mismatch', no state written")
def _(request: pytest.FixtureRequest) -> None:
    env: Env = fx(request, "env")
    sshd = fx(request, "sshd")
    wrong = env.tmp / "known_hosts_wrong"
    other = Path(str(sshd.other_key) + ".pub").read_text().split()
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    cluster = env.named_cluster()
    text = hosts_toml(sshd, cluster, [{"name": "spoofed"}], fx(request, "ssh_cache"))
    config = parse_hosts(text.replace(str(sshd.known_hosts), str(wrong)), "h.toml")
    result = bounded(lambda: controller.up(config), 120, "up")
    assert [(r.name, r.cause) for r in result.results] == [("spoofed", "host key mismatch")]
    assert not env.state.exists() and agent_pids(cluster) == []


# ---------------------------------------------------------------------------------------
# 3. a wrong secret on every listener

@pytest.fixture
def local_cluster(env: Env) -> Iterator[ClusterState]:
    """Two real local agents (``up_local``); taken down after the test."""
    from papycluster.cluster.state import load_state

    env.local_cluster()
    result = controller.up_local(2)
    assert result.up == ["local1", "local2"], result.failed
    state = load_state()
    assert state is not None
    try:
        yield state
    finally:
        if env.state.exists():
            controller.down()


@case("agent-wrong-secret", "secret",
      "client with a wrong secret: AuthError names the agent and its address; the agent "
      "keeps serving the right secret")
def _(request: pytest.FixtureRequest) -> None:
    state: ClusterState = fx(request, "local_cluster")
    h = state.hosts["local1"]
    expect_error(lambda: AgentConnection(h.connect, h.agent_port, WRONG_SECRET,
                                         "local1", 5.0),
                 AuthError, "agent local1", f"127.0.0.1:{h.agent_port}", "secret",
                 timeout=30)
    rows = bounded(controller.status, 30, "status")
    assert all(r["ok"] for r in rows), rows


@case("agent-impostor", "secret",
      "a listener on the agent's port that does not know the secret: the client refuses "
      "it, naming the agent")
def _(request: pytest.FixtureRequest) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def impostor() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(MAGIC + os.urandom(NONCE))
            conn.recv(1024)
            conn.sendall(os.urandom(32))  # a proof it cannot make
            conn.recv(1024)

    t = threading.Thread(target=impostor, daemon=True)
    t.start()
    try:
        expect_error(lambda: AgentConnection("127.0.0.1", port, "s" * 64, "alpha", 5.0),
                     AuthError, "agent alpha", "does not know the cluster secret",
                     timeout=30)
    finally:
        srv.close()
        t.join(5)


@case("agent-junk-client", "secret",
      "raw junk instead of the handshake on the agent's port: dropped within the handshake "
      "timeout, nothing answered; the agent keeps serving")
def _(request: pytest.FixtureRequest) -> None:
    state: ClusterState = fx(request, "local_cluster")
    h = state.hosts["local2"]

    def junk() -> bytes:
        with socket.create_connection(("127.0.0.1", h.agent_port), timeout=30) as sock:
            hello = tauth.recv_exact(sock, len(MAGIC) + NONCE)
            assert hello.startswith(MAGIC)
            sock.sendall(b"\x00" * 64 + os.urandom(500))  # a wrong proof, then brine-ish junk
            out = b""
            try:
                while chunk := sock.recv(4096):
                    out += chunk
            except ConnectionResetError:
                pass
            return out

    assert bounded(junk, 60, "junk client") == b""  # closed, not a byte of RPC answered
    rows = bounded(controller.status, 30, "status")
    assert sorted(r["name"] for r in rows if r["ok"]) == ["local1", "local2"], rows


def _wrong_secret_load(request: pytest.FixtureRequest, kind: str, *needles: str) -> None:
    peer = fx(request, "peer")
    mp = fx(request, "monkeypatch")
    tk = peer.call("dump_value", kind, PAYLOAD, {})
    mp.setenv("PAPYCLUSTER_SECRET", WRONG_SECRET)
    expect_error(lambda: io.load_item([tk], timeout=5), transport.TransportError,
                 f"{kind} ", f"127.0.0.1:{tk[5]}", *needles, timeout=60)
    mp.setenv("PAPYCLUSTER_SECRET", PEER_SECRET)
    assert bytes(bounded(lambda: io.load_item([tk], timeout=10), 60, "load")) == PAYLOAD


@case("tcp-wrong-secret", "secret",
      "tcp loader with another secret: error names the tcp server and the secret; the "
      "item is not lost (the right secret loads it after)")
def _(request: pytest.FixtureRequest) -> None:
    _wrong_secret_load(request, "tcp", "cluster secret")


@case("udp-wrong-secret", "secret",
      "udp loader with another secret: error names the udp server and the secret; the "
      "item is not lost")
def _(request: pytest.FixtureRequest) -> None:
    _wrong_secret_load(request, "udp", "cluster secret")


@case("tcp-impostor-server", "secret",
      "a tcp server that cannot prove the secret: the loader refuses its data, naming it")
def _(request: pytest.FixtureRequest) -> None:
    fx(request, "transport_env")
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def impostor() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(tauth.HELLO + os.urandom(tauth.NONCE))
            conn.recv(1024)
            conn.sendall(os.urandom(tauth.DIGEST))
            conn.recv(1024)

    t = threading.Thread(target=impostor, daemon=True)
    t.start()
    tk = ("papyc", 2, "tcp", 0, "127.0.0.1", port, "ab" * 16, 10, "hmac")
    try:
        expect_error(lambda: io.load_item([tk], timeout=5), transport.TransportError,
                     f"tcp server 127.0.0.1:{port}", "does not know the cluster secret",
                     timeout=30)
    finally:
        srv.close()
        t.join(5)


@case("tcp-no-secret", "secret",
      "tcp where no secret is set: the dump uses this run's ephemeral secret; another "
      "process (not started by this one, so without it) is refused with a SecretError "
      "that names both variables; the item is not lost")
def _(request: pytest.FixtureRequest) -> None:
    # The secret is read when this process's tcp server starts: end one that an earlier
    # test left running with another secret.
    transport.close_all()
    assert not tauth.configured()
    tk = bounded(lambda: io.dump_item([PAYLOAD], "tcp"), 10, "dump")
    stranger = Peer()  # spawned by hand, not a worker of ours: no run secret
    try:
        try:
            bounded(lambda: stranger.call("load", tk, {"timeout": 10}), 60, "load")
        except PeerError as exc:
            text = str(exc)
        else:
            pytest.fail("a process without the run secret loaded the item")
    finally:
        stranger.close()
    for needle in ("SecretError", f"tcp server 127.0.0.1:{tk[5]}", "PAPYCLUSTER_SECRET",
                   "PAPYCLUSTER_SECRET_FILE", "ephemeral secret"):
        assert needle in text, f"{needle!r} not named in: {text}"
    assert bytes(bounded(lambda: io.load_item([tk], timeout=10), 60, "load")) == PAYLOAD


@case("udp-short-secret", "secret",
      "a 5-byte secret: SecretError names the variable and the minimum length")
def _(request: pytest.FixtureRequest) -> None:
    # The secret is read when this process's udp server starts: end one that an earlier
    # test (tests/transport runs in the same process) left running.
    transport.close_all()
    fx(request, "monkeypatch").setenv("PAPYCLUSTER_SECRET", "short")
    expect_error(lambda: io.dump_item([PAYLOAD], "udp"), transport.SecretError,
                 "PAPYCLUSTER_SECRET", "too short", str(tauth.MIN_SECRET), timeout=10)


# ---------------------------------------------------------------------------------------
# 4. truncated and forged tickets

def _ticket_case(request: pytest.FixtureRequest, kind: str,
                 forge: Callable[[tuple], Any], error: type, *needles: str) -> None:
    """Load a forged variant of a live ticket: a clear error; the real item survives."""
    peer = fx(request, "peer")
    tk = peer.call("dump_value", kind, PAYLOAD, {})
    bad = forge(tk)
    expect_error(lambda: io.load_item([bad], timeout=5), error, *needles, timeout=60)
    assert bytes(bounded(lambda: io.load_item([tk], timeout=10), 60, "load")) == PAYLOAD


@case("ticket-truncated", "ticket", "a tcp ticket cut to 3 fields: 'truncated'; item kept")
def _(request: pytest.FixtureRequest) -> None:
    _ticket_case(request, "tcp", lambda tk: tk[:3], transport.TicketError, "truncated")


@case("ticket-missing-field", "ticket",
      "a tcp ticket without its wire: the transport and the expected fields named")
def _(request: pytest.FixtureRequest) -> None:
    _ticket_case(request, "tcp", lambda tk: tk[:-1], transport.TicketError,
                 "tcp ticket", "expected 5 fields (host, port, key, size, wire), got 4")


@case("ticket-forged-key", "ticket",
      "a tcp ticket with a guessed key: StaleTicketError names the server and key; the "
      "real item is still served")
def _(request: pytest.FixtureRequest) -> None:
    key = secrets.token_hex(16)
    _ticket_case(request, "tcp", lambda tk: (*tk[:6], key, *tk[7:]),
                 transport.StaleTicketError, "tcp ticket", f"has no item {key}")


@case("ticket-forged-size", "ticket",
      "a file ticket claiming one byte more: both sizes named; the file stays for the "
      "real ticket")
def _(request: pytest.FixtureRequest) -> None:
    n = len(PAYLOAD)
    _ticket_case(request, "file", lambda tk: (*tk[:6], n + 1, tk[7]), transport.TicketError,
                 "file ticket", f"has {n} bytes, the ticket says {n + 1}")


@case("ticket-forged-size-tcp", "ticket",
      "a tcp ticket with the real key but another size: both sizes named; the server keeps "
      "the item for the real ticket")
def _(request: pytest.FixtureRequest) -> None:
    n = len(PAYLOAD)
    _ticket_case(request, "tcp", lambda tk: (*tk[:7], n - 1, tk[8]), transport.TicketError,
                 "tcp ticket", f"holds {n} bytes", f"the ticket says {n - 1}")


@case("ticket-foreign-papy", "ticket", "a PaPy (seed) ticket: 'foreign ticket' and its header")
def _(request: pytest.FixtureRequest) -> None:
    expect_error(lambda: io.load_item([("file", "/tmp/x", 0)]), transport.TicketError,
                 "foreign ticket", "'file'", timeout=10)


@case("ticket-future-version", "ticket", "ticket version 3: both versions named")
def _(request: pytest.FixtureRequest) -> None:
    _ticket_case(request, "shm", lambda tk: ("papyc", 3, *tk[2:]), transport.TicketError,
                 "version 3 is not supported", "version 2")


@case("ticket-old-version", "ticket",
      "a version-1 tcp ticket (before tcp tickets said their wire): 'dump the item again'")
def _(request: pytest.FixtureRequest) -> None:
    _ticket_case(request, "tcp", lambda tk: ("papyc", 1, *tk[2:-1]), transport.TicketError,
                 "version 1 is not supported", "older papycluster", "dump the item again")


@case("ticket-path-traversal", "ticket",
      "a file ticket naming ../../etc/passwd: refused by the ticket check, the name named")
def _(request: pytest.FixtureRequest) -> None:
    _ticket_case(request, "file", lambda tk: (*tk[:5], "../../etc/passwd", 10, tk[7]),
                 transport.TicketError, "file ticket", "'../../etc/passwd'",
                 "not one papycluster makes")


@case("ticket-unknown-transport", "ticket", "a ticket of transport 'zmq': the name and "
      "the known transports named")
def _(request: pytest.FixtureRequest) -> None:
    expect_error(lambda: io.load_item([("papyc", 2, "zmq", 0, "x")]), transport.TicketError,
                 "unknown transport 'zmq'", "tcp", timeout=10)


@case("ticket-of-dead-process", "ticket",
      "a udp ticket whose process ended: StaleTicketError naming the udp server, in bounded "
      "time")
def _(request: pytest.FixtureRequest) -> None:
    peer = fx(request, "peer")
    tk = peer.call("dump_value", "udp", PAYLOAD, {})
    peer.close()
    expect_error(lambda: io.load_item([tk], timeout=10), transport.StaleTicketError,
                 "udp ticket", f"127.0.0.1:{tk[5]}", timeout=60)


# ---------------------------------------------------------------------------------------
# 5. truncated and forged frames (a rogue server that knows the secret, real sockets)

def _rogue_tcp(reply: Callable[[socket.socket], None]) -> tuple[socket.socket, int,
                                                                  threading.Thread]:
    """A tcp 'server' that passes the handshake, reads one request and sends ``reply``."""
    srv = socket.create_server(("127.0.0.1", 0))
    secret = tauth.get_secret()

    def serve() -> None:
        try:
            conn, peer = srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            if tauth.server_handshake(conn, secret, peer):
                tauth.recv_exact(conn, tcp._REQ.size)
                reply(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, srv.getsockname()[1], t


def _frame_case(request: pytest.FixtureRequest, reply: Callable[[socket.socket], None],
                size: int, *needles: str) -> None:
    fx(request, "transport_env")
    srv, port, t = _rogue_tcp(reply)
    tk = ("papyc", 2, "tcp", 0, "127.0.0.1", port, "cd" * 16, size, "hmac")
    try:
        expect_error(lambda: io.load_item([tk], timeout=3), transport.TransportError,
                     "tcp ticket", f"127.0.0.1:{port}", *needles, timeout=60)
    finally:
        srv.close()
        t.join(10)


@case("frame-tcp-truncated-payload", "frame",
      "reply header says 1000 bytes, 10 come, then close: 'failed mid-item' with the server")
def _(request: pytest.FixtureRequest) -> None:
    _frame_case(request, lambda c: c.sendall(struct.pack("!BQ", 0, 1000) + b"x" * 10),
                1000, "mid-item")


@case("frame-tcp-truncated-header", "frame",
      "3 bytes of a 9-byte reply header, then close: the server and the short read named")
def _(request: pytest.FixtureRequest) -> None:
    _frame_case(request, lambda c: c.sendall(b"\x00\x00\x00"), 10, "after 3 of 9 bytes")


@case("frame-tcp-forged-length", "frame",
      "reply header offers 99 bytes for a 10-byte ticket: both sizes named")
def _(request: pytest.FixtureRequest) -> None:
    _frame_case(request, lambda c: c.sendall(struct.pack("!BQ", 0, 99) + b"y" * 99), 10,
                "offers 99 bytes, the ticket says 10")


@case("frame-tcp-silent-server", "frame",
      "a server that authenticates and never answers: the load ends by its timeout, naming "
      "the server")
def _(request: pytest.FixtureRequest) -> None:
    # the rogue waits for the loader to give up and close (recv returns b"")
    _frame_case(request, lambda c: c.recv(1), 10, "timed out")


@case("frame-udp-forged-challenge", "frame",
      "a udp 'server' answering the greeting with a well-formed CHALLENGE but a forged "
      "proof (and junk): the loader refuses it, naming the udp server and the secret")
def _(request: pytest.FixtureRequest) -> None:
    fx(request, "transport_env")
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def forge() -> None:
        while not stop.is_set():
            try:
                data, addr = srv.recvfrom(2048)
            except OSError:
                continue
            if len(data) == wire.HELLO.size:
                cnonce = wire.HELLO.unpack(data)[3]
                srv.sendto(data[::-1], addr)  # junk first: it must be skipped
                srv.sendto(wire.CHALLENGE.pack(udp.MAGIC, udp.VERSION, udp.T_CHALLENGE,
                                               cnonce, os.urandom(16), os.urandom(32)), addr)

    t = threading.Thread(target=forge, daemon=True)
    t.start()
    tk = ("papyc", 2, "udp", 0, "127.0.0.1", port, "ef" * 16, 10, udp.DEFAULT_CHUNK)
    try:
        expect_error(lambda: io.load_item([tk], timeout=3), transport.TransportError,
                     "udp ticket", f"udp server 127.0.0.1:{port}",
                     "does not know the cluster secret", timeout=60)
    finally:
        stop.set()
        t.join(5)
        srv.close()


# ---------------------------------------------------------------------------------------
# 6. an oversized item

@case("udp-item-over-limit", "oversized",
      "a 100000-byte item with a 65536-byte udp limit: size and limit named; nothing held")
def _(request: pytest.FixtureRequest) -> None:
    fx(request, "transport_env")
    fx(request, "monkeypatch").setenv(udp.MAX_ITEM_ENV, "65536")
    before = udp.TRANSPORT.state.peek()
    pending = len(before.server.store) if before is not None and before.server else 0
    expect_error(lambda: io.dump_item([bytes(100_000)], "udp"), transport.TransportError,
                 "100000 bytes", "65536 bytes", udp.MAX_ITEM_ENV, timeout=10)
    after = udp.TRANSPORT.state.peek()
    assert (len(after.server.store) if after is not None and after.server else 0) == pending


@case("udp-ticket-over-limit", "oversized",
      "a udp ticket claiming 2**39 bytes: refused with size and limit before allocating")
def _(request: pytest.FixtureRequest) -> None:
    fx(request, "transport_env")
    tk = ("papyc", 2, "udp", 0, "127.0.0.1", free_port(), "0a" * 16, 2**39, 65000)
    expect_error(lambda: io.load_item([tk], timeout=3), transport.TicketError,
                 "udp ticket", f"{2**39} bytes", f"{udp.max_item()} bytes", timeout=10)


# ---------------------------------------------------------------------------------------
# 7. a full disk on a share, an unknown share

@case("share-full-disk", "disk",
      "a 2 MiB item into a share on a 1 MiB filesystem: error names the share and size; "
      "no partial file; the item dumped before is intact")
def _(request: pytest.FixtureRequest) -> None:
    fx(request, "transport_env")
    mnt: Path = fx(request, "tiny_share")
    io.set_share("tiny", str(mnt))
    try:
        small = io.dump_item([PAYLOAD], "file", share="tiny")
        assert len(items_in(mnt)) == 1
        expect_error(lambda: io.dump_item([bytes(2 << 20)], "file", share="tiny"),
                     transport.TransportError, "share 'tiny'", f"{2 << 20} bytes",
                     "No space left", timeout=30)
        assert items_in(mnt) == [small[5]]  # no partial file of the big item
        assert bytes(io.load_item([small])) == PAYLOAD
        assert items_in(mnt) == []
    finally:
        io.set_share("tiny", None)


@case("share-unknown", "disk", "dump to a share this host does not have: share and known "
      "shares named")
def _(request: pytest.FixtureRequest) -> None:
    fx(request, "transport_env")
    expect_error(lambda: io.dump_item([PAYLOAD], "file", share="nosuch"), ShareError,
                 "share 'nosuch'", "default", "PAPYCLUSTER_SHARES", timeout=10)


# ---------------------------------------------------------------------------------------
# 8. a stale cluster state (agents killed), a corrupt state, no state

def _kill_agents(state: ClusterState) -> None:
    """SIGKILL every agent of ``state`` and its children: the state file is now stale."""
    deadline = time.monotonic() + 20
    while agent_pids(state.cluster) and time.monotonic() < deadline:
        for pid in agent_pids(state.cluster):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
    assert agent_pids(state.cluster) == []


@case("state-stale-status", "state",
      "agents killed, state left: `status` exits 1 naming each dead host as down")
def _(request: pytest.FixtureRequest) -> None:
    state: ClusterState = fx(request, "local_cluster")
    _kill_agents(state)
    r = cli("status", timeout=60)
    assert r.exit_code == 1, r.output
    for host in ("local1", "local2"):
        line = row(r.output, host)
        assert "down" in line and "refused" in line.lower(), line


@case("state-stale-numap", "state",
      "agents killed: a NuMap on the dead host gives a WorkerLostError per item naming it")
def _(request: pytest.FixtureRequest) -> None:
    state: ClusterState = fx(request, "local_cluster")
    _kill_agents(state)
    results = bounded(lambda: remote_map("local1"), 120, "remote NuMap")
    assert len(results) == 3
    for r in results:
        assert isinstance(r, WorkerLostError), results
        assert "local1" in str(r), r


@case("state-stale-down", "state",
      "agents killed: `down` exits 0, removes the state, the run dirs and every process")
def _(request: pytest.FixtureRequest) -> None:
    env: Env = fx(request, "env")
    state: ClusterState = fx(request, "local_cluster")
    _kill_agents(state)
    assert run_dirs(state.cluster) != []
    r = cli("down", timeout=60)
    assert r.exit_code == 0, r.output
    assert not env.state.exists()
    assert agent_pids(state.cluster) == [] and run_dirs(state.cluster) == []


@case("state-stale-up", "state",
      "agents killed, state left: `up --local` says the state is stale, names its cluster and "
      "replaces it; the new agents answer")
def _(request: pytest.FixtureRequest) -> None:
    state: ClusterState = fx(request, "local_cluster")
    _kill_agents(state)
    r = cli("up", "--local", "2", timeout=120)
    assert r.exit_code == 0, r.output
    assert "stale state" in r.output and repr(state.cluster) in r.output, r.output
    rows = bounded(controller.status, 30, "status")
    assert sorted(x["name"] for x in rows if x["ok"]) == ["local1", "local2"], rows


@case("state-corrupt", "state", "a state file that is not JSON: `status` exits 2 naming it "
      "and the way out")
def _(request: pytest.FixtureRequest) -> None:
    env: Env = fx(request, "env")
    env.state.parent.mkdir(parents=True)
    env.state.write_text('{"cluster": "x", "secr')
    r = cli("status", timeout=30)
    assert r.exit_code == 2, r.output
    assert str(env.state) in r.output and "unreadable" in r.output and "down" in r.output


@case("state-none-remote-pool", "state",
      "no cluster is up: a NuMap on host 'alpha' gives WorkerLostError naming it and "
      "'papycluster up'")
def _(request: pytest.FixtureRequest) -> None:
    results = bounded(lambda: remote_map("alpha", 2), 60, "remote NuMap")
    assert len(results) == 2 and all(isinstance(r, WorkerLostError) for r in results)
    assert all("'alpha'" in str(r) and "papycluster up" in str(r) for r in results), results


@case("remote-unknown-host", "state",
      "a NuMap on 'nosuch' of a running cluster: names it and the cluster's hosts; the "
      "cluster is untouched")
def _(request: pytest.FixtureRequest) -> None:
    fx(request, "local_cluster")
    results = bounded(lambda: remote_map("nosuch", 2), 60, "remote NuMap")
    assert all(isinstance(r, WorkerLostError) for r in results), results
    assert all("'nosuch'" in str(r) and "local1, local2" in str(r) for r in results)
    assert bounded(lambda: remote_map("local2", 2), 60, "remote NuMap") == [2, 1]


# ---------------------------------------------------------------------------------------
# 9. a version mismatch between controller and agent (a real agent of another release)

@pytest.fixture
def old_agent(env: Env, other_version: Path) -> Iterator[ClusterState]:
    """A real agent started from the copy that says ``0.0.0-other``, in a state file."""
    from papycluster import __version__
    from papycluster.cluster.auth import new_secret

    cluster = env.named_cluster()
    secret = new_secret()
    res = launcher.run_local_script("launch", {
        "name": "oldhost", "cluster": cluster, "run_dir": "", "secret": secret,
        "bind": "127.0.0.1", "advertise": "127.0.0.1", "port": 0, "profile": "native",
        "shares": {}, "workers": 1, "pythonpath": [str(other_version)], "timeout": 30}, 60)
    assert res["ok"], res
    probe = AgentConnection("127.0.0.1", res["port"], secret, "oldhost", 5.0,
                            check_version=False)
    try:
        assert probe.info()["version"] == "0.0.0-other" != __version__
    finally:
        probe.close()
    state = ClusterState(cluster=cluster, secret=secret, hosts={"oldhost": {
        "address": "127.0.0.1", "connect": "127.0.0.1", "agent_port": res["port"],
        "pid": res["pid"], "run_dir": res["run_dir"], "local": True, "os": "linux",
        "profile": "native", "workers": 1, "shares": {}, "ssh": None}})
    save_state(state)
    try:
        yield state
    finally:
        if env.state.exists():
            controller.down()


@case("version-connect", "version",
      "connecting to an agent of another version: VersionMismatchError names the host and "
      "both versions")
def _(request: pytest.FixtureRequest) -> None:
    from papycluster import __version__

    state: ClusterState = fx(request, "old_agent")
    h = state.hosts["oldhost"]
    expect_error(lambda: AgentConnection("127.0.0.1", h.agent_port, state.secret,
                                         "oldhost", 5.0),
                 VersionMismatchError, "agent oldhost", "0.0.0-other", __version__,
                 timeout=30)


@case("version-status", "version",
      "`status` with an agent of another version: exit 1, the host's row names both versions; "
      "`down` still stops it")
def _(request: pytest.FixtureRequest) -> None:
    from papycluster import __version__

    env: Env = fx(request, "env")
    state: ClusterState = fx(request, "old_agent")
    r = cli("status", timeout=60)
    assert r.exit_code == 1, r.output
    line = row(r.output, "oldhost")
    assert "0.0.0-other" in line and __version__ in line, line
    d = cli("down", timeout=60)
    assert d.exit_code == 0, d.output
    assert agent_pids(state.cluster) == [] and not env.state.exists()


@case("version-remote-pool", "version",
      "a NuMap on an agent of another version: WorkerLostError per item naming both versions")
def _(request: pytest.FixtureRequest) -> None:
    fx(request, "old_agent")
    results = bounded(lambda: remote_map("oldhost", 2), 60, "remote NuMap")
    assert all(isinstance(r, WorkerLostError) for r in results), results
    assert all("oldhost" in str(r) and "0.0.0-other" in str(r) for r in results)


@case("version-up", "version",
      "`up --local` that starts an agent of another version: exit 1, 'version mismatch' "
      "with both versions; the agent is stopped, no state written")
def _(request: pytest.FixtureRequest) -> None:
    from papycluster import __version__

    env: Env = fx(request, "env")
    other: Path = fx(request, "other_version")
    cluster = env.local_cluster()
    # the real launcher, pointed at the other release's package
    fx(request, "monkeypatch").setattr(launcher, "local_pythonpath", lambda: str(other))
    r = cli("up", "--local", "1", timeout=120)
    assert r.exit_code == 1, r.output
    line = row(r.output, "local1")
    assert "version mismatch" in line and "0.0.0-other" in line and __version__ in line, line
    assert agent_pids(cluster) == [] and run_dirs(cluster) == []
    assert not env.state.exists()


@case("version-up-ssh", "version",
      "`up -f` ships a bundle of another version to a host over SSH: exit 1, the host's row "
      "says 'version mismatch' with both versions; the agent is stopped, no state written")
def _(request: pytest.FixtureRequest) -> None:
    from papycluster import __version__
    from papycluster.cluster import bundle

    env: Env = fx(request, "env")
    sshd = fx(request, "sshd")
    other: Path = fx(request, "other_version")
    mp = fx(request, "monkeypatch")
    real_package_dir = bundle.package_dir
    # the real bundler and shipper, given the other release's package directory
    mp.setattr(bundle, "package_dir", lambda name: other / "papycluster"
               if name == "papycluster" else real_package_dir(name))
    mp.setattr(bundle, "_bundle_cache", {})
    mp.setenv("XDG_CACHE_HOME", str(env.tmp / "xdg-cache"))  # its zip stays in tmp
    cluster = env.named_cluster()
    path = env.tmp / "hosts.toml"
    path.write_text(hosts_toml(sshd, cluster, [{"name": "mixed"}], env.tmp / "remote-cache"))
    r = cli("up", "-f", str(path))
    assert r.exit_code == 1, r.output
    line = row(r.output, "mixed")
    assert "version mismatch" in line and "0.0.0-other" in line and __version__ in line, line
    assert "stopped again" in r.output, r.output  # the detail may wrap onto the next line
    assert agent_pids(cluster) == [] and run_dirs(cluster) == []
    assert not env.state.exists()


# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input(bad: Case, request: pytest.FixtureRequest) -> None:
    bad.run(request)


def test_matrix_is_complete() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 30
    assert {c.category for c in CASES} >= {"hosts file", "hosts", "secret", "ticket",
                                           "frame", "oversized", "disk", "state", "version"}
