"""Fuzzers (hypothesis) over the decoders a peer or a user feeds: tickets, tcp/udp frames,
hosts files.

What ``tests/transport/test_hostile.py`` already fuzzes (mutated live tickets through
``load_item``, unauthenticated junk to the tcp, udp and fifo servers) is not repeated;
this adds the ticket parser over arbitrary structures, the tcp server's request decoder
*after* a correct handshake, the tcp and udp loaders' reply decoders against a rogue
server, and the hosts-file reader over generated text and generated structures.
Examples are bounded so that the whole directory stays well under two minutes.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from papycluster import transport
from papycluster.cluster.errors import HostsFileError
from papycluster.cluster.hosts import ClusterConfig, parse_hosts
from papycluster.transport import auth as tauth
from papycluster.transport import curve, tcp, ticket, udp
from papycluster.workers import io

from .conftest import PEER_SECRET, Peer, bounded

FIXTURES_OK = [HealthCheck.function_scoped_fixture]
PAYLOAD = b"fuzz payload " * 20


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# the ticket decoder

SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                   st.floats(allow_nan=True), st.text(max_size=40), st.binary(max_size=40))
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=12)
NAMES = st.sampled_from(["tcp", "udp", "fifo", "shm", "file", "sqlite", "mysql", "zmq", "",
                         "TCP"])
FIELD = st.one_of(SCALAR, st.sampled_from(["127.0.0.1", "ab" * 16, "default",
                                           "papyc-" + "0" * 32 + ".item", "/dev/shm/x"]),
                  st.integers(0, 70000))
SHAPED = st.builds(lambda v, n, f, rest: ("papyc", v, n, f, *rest),
                   st.one_of(st.just(1), SCALAR), NAMES,
                   st.one_of(st.integers(-1, 4), SCALAR), st.lists(FIELD, max_size=7))


@settings(max_examples=400, deadline=None)
@given(st.one_of(VALUE, SHAPED))
def test_ticket_parser_gives_a_ticket_or_a_ticket_error(value: Any) -> None:
    """``ticket.parse`` never raises anything but TicketError, whatever it is given."""
    try:
        tr, flags, fields = ticket.parse(value)
    except transport.TicketError as exc:
        assert "ticket" in str(exc)
        return
    assert isinstance(value, tuple) and value[:2] == ("papyc", 2)
    assert tr.name == value[2] and len(fields) == len(tr.fields)
    assert not flags & ~(ticket.FLAG_STR | ticket.FLAG_KEEP)


def _set_env(mp: pytest.MonkeyPatch, share: str) -> None:
    for key in ("PAPYCLUSTER_SECRET_FILE", "PAPYCLUSTER_BIND_HOST", "PAPYCLUSTER_UDP_MAX_ITEM"):
        mp.delenv(key, raising=False)
    mp.setenv("PAPYCLUSTER_SECRET", PEER_SECRET)
    mp.setenv("PAPYCLUSTER_SHARES", json.dumps({"default": share}))
    mp.setenv("PAPYCLUSTER_ADVERTISE_HOST", "127.0.0.1")


@pytest.fixture(scope="module")
def fuzz_share(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private share; the module's peer process is spawned with this environment."""
    share = str(tmp_path_factory.mktemp("fuzz-share"))
    with pytest.MonkeyPatch.context() as mp:
        _set_env(mp, share)
        yield share


@pytest.fixture
def fuzz_env(fuzz_share: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same secret and share in this process, for each test (after ``env`` cleared them)."""
    _set_env(monkeypatch, fuzz_share)


@pytest.fixture(scope="module")
def fuzz_peer(fuzz_share: str) -> Iterator[Peer]:
    p = Peer()
    try:
        yield p
    finally:
        p.close()


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURES_OK)
@given(name=st.text(max_size=80), size=st.integers(-5, 2**50))
def test_file_tickets_with_any_name_never_escape_the_share(fuzz_env: None, name: str,
                                                           size: int) -> None:
    """A file ticket with any name and size: TransportError, never a read elsewhere."""
    tk = ("papyc", 2, "file", 0, "default", name, size)
    with pytest.raises(transport.TransportError, match="ticket"):
        io.load_item([tk], timeout=1)


# ---------------------------------------------------------------------------------------
# tcp frames: the server's request decoder after a correct handshake

_REQ = tcp._REQ


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES_OK)
@given(junk=st.binary(min_size=1, max_size=120))
def test_tcp_server_after_handshake_serves_only_a_real_key(fuzz_env: None, fuzz_peer: Peer,
                                                          junk: bytes) -> None:
    """Authenticated junk requests: no crash, no item served for a key it does not hold."""
    fuzz_peer.call("setenv", curve.ENCRYPT_ENV, "0")  # the plain server and its handshake
    try:
        tk = fuzz_peer.call("dump_value", "tcp", PAYLOAD, {})
    finally:
        fuzz_peer.call("setenv", curve.ENCRYPT_ENV, None)
    host, port = tk[4], tk[5]
    with socket.create_connection((host, port), timeout=10) as sock:
        tauth.client_handshake(sock, PEER_SECRET.encode(), "fuzz")
        sock.sendall(junk)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # it already closed on a bad op, with our bytes unread (a reset)
            pass
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:  # it closed on a bad op with our bytes unread
            pass
    # only 'no such item' replies, at most one per leading well-formed request: a junk
    # key is never a real one, and a bad op ends the connection
    leading = 0
    while (leading + 1) * _REQ.size <= len(junk) and junk[leading * _REQ.size] == 1:
        leading += 1
    missing = struct.pack("!BQ", 1, 0)
    assert reply == missing * (len(reply) // len(missing))
    assert len(reply) // len(missing) <= leading
    # the server lives on and still serves the real item
    assert bytes(io.load_item([tk], timeout=10)) == PAYLOAD


# ---------------------------------------------------------------------------------------
# tcp and udp frames: the loaders' reply decoders against a rogue server

class RogueTcp:
    """Passes the handshake (it knows the secret), then answers each request with junk."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    if tauth.server_handshake(conn, PEER_SECRET.encode(), peer):
                        tauth.recv_exact(conn, _REQ.size)
                        conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def rogue_tcp(fuzz_share: str) -> Iterator[RogueTcp]:
    rogue = RogueTcp()
    try:
        yield rogue
    finally:
        rogue.close()


@settings(max_examples=80, deadline=None, suppress_health_check=FIXTURES_OK)
@given(reply=st.one_of(
    st.binary(max_size=40),
    st.builds(lambda status, length, body: struct.pack("!BQ", status, length) + body,
              st.integers(0, 255), st.integers(0, 2**64 - 1), st.binary(max_size=40))),
       size=st.integers(0, 64))
def test_tcp_loader_decodes_any_reply_safely(fuzz_env: None, rogue_tcp: RogueTcp, reply: bytes,
                                             size: int) -> None:
    """Any reply: the loader returns exactly ``size`` bytes the server sent, or a
    TransportError naming the tcp ticket, in bounded time (never a huge allocation)."""
    rogue_tcp.reply = reply
    tk = ("papyc", 2, "tcp", 0, "127.0.0.1", rogue_tcp.port, "ab" * 16, size, "hmac")
    try:
        data = bounded(lambda: io.load_item([tk], timeout=2), 30, "tcp load")
    except transport.TransportError as exc:
        assert "tcp" in str(exc) and f"127.0.0.1:{rogue_tcp.port}" in str(exc)
    else:
        assert reply[:9] == struct.pack("!BQ", 0, size)
        assert bytes(data) == reply[9:9 + size] and len(data) == size


@pytest.fixture(scope="module")
def rogue_udp(fuzz_share: str) -> Iterator[dict]:
    """A udp 'server' that answers each datagram with the current junk datagrams."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    box: dict[str, Any] = {"port": sock.getsockname()[1], "replies": [], "stop": False}

    def serve() -> None:
        while not box["stop"]:
            try:
                _, addr = sock.recvfrom(4096)
            except OSError:
                continue
            for datagram in box["replies"]:
                sock.sendto(datagram, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        box["stop"] = True
        thread.join(5)
        sock.close()


UDP_DATAGRAM = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda kind, rest: struct.pack("!2sBB", b"PU", udp.VERSION, kind) + rest,
              st.integers(0, 9), st.binary(max_size=120)))


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURES_OK)
@given(replies=st.lists(UDP_DATAGRAM, max_size=4))
def test_udp_loader_decodes_any_datagram_safely(fuzz_env: None, rogue_udp: dict,
                                                replies: list[bytes]) -> None:
    """Forged datagrams (no valid proof): TransportError naming the udp server, bounded."""
    rogue_udp["replies"] = replies
    port = rogue_udp["port"]
    tk = ("papyc", 2, "udp", 0, "127.0.0.1", port, "ab" * 16, 100, udp.DEFAULT_CHUNK)
    with pytest.raises(transport.TransportError, match=f"udp server 127.0.0.1:{port}"):
        bounded(lambda: io.load_item([tk], timeout=0.5), 30, "udp load")


# ---------------------------------------------------------------------------------------
# the hosts-file reader

VALID = """[cluster]
name = "lab"
connect_timeout = 5

[defaults]
user = "papy"
workers = 2
shares = { data = "/mnt/data" }

[[host]]
name = "alpha"
address = "10.0.0.5"
port = 22

[[host]]
name = "beta"
address = "10.0.0.6"
os = "windows"
shares = { data = '\\\\filer\\data' }
"""


def _check_hosts(text: str) -> None:
    try:
        config = parse_hosts(text, "fuzz-hosts.toml")
    except HostsFileError as exc:
        assert "fuzz-hosts.toml" in str(exc)
        return
    assert isinstance(config, ClusterConfig) and config.hosts
    assert len({h.name for h in config.hosts}) == len(config.hosts)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_hosts_reader_on_any_text(text: str) -> None:
    _check_hosts(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 8),
                          st.text(alphabet='[]{}"\'=#.,\n \\abcxyz0129_-', max_size=6)),
                min_size=1, max_size=4))
def test_hosts_reader_on_mutated_files(edits: list[tuple[int, int, str]]) -> None:
    """A valid file with a few characters cut or inserted (the typos people make)."""
    text = VALID
    for pos, cut, insert in edits:
        pos %= len(text) + 1
        text = text[:pos] + insert + text[pos + cut:]
    _check_hosts(text)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else "nan"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(value)


def _toml(doc: dict[str, Any]) -> str:
    """A small TOML writer for the generated documents (tables and arrays of tables)."""
    lines: list[str] = []
    for section, body in doc.items():
        if isinstance(body, list) and body and all(isinstance(b, dict) for b in body):
            for table in body:
                lines.append(f"[[{section}]]")
                lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
        elif isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in body.items()]
        else:
            lines.insert(0, f"{json.dumps(section)} = {_toml_value(body)}")
    return "\n".join(lines) + "\n"


KEYS = st.sampled_from(["name", "address", "user", "port", "key", "python", "workers", "os",
                        "agent_port", "shares", "profile", "shell", "cache_dir",
                        "connect_timeout", "start_timeout", "known_hosts", "ssh_config",
                        "host_key_policy", "adress", "nmae", ""])
LEAF = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1),
                 st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=12), st.sampled_from(
                     ["alpha", "10.0.0.1", "linux", "Windows", "plan9", "native", "windows",
                      "sh", "powershell", "strict", "accept-new", "a b", "x" * 70]))
TOML_VALUE = st.recursive(LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
TABLE = st.dictionaries(KEYS, TOML_VALUE, max_size=6)
HOST = st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["a", "b", "a b"]), LEAF),
                              "address": LEAF}, optional={"extra": TABLE}).map(
    lambda d: {**{k: v for k, v in d.items() if k != "extra"}, **d.get("extra", {})})
DOC = st.fixed_dictionaries({}, optional={
    "cluster": TABLE, "defaults": TABLE, "host": st.one_of(st.lists(HOST, max_size=3), LEAF),
    "other": TABLE})


@settings(max_examples=300, deadline=None)
@given(DOC)
def test_hosts_reader_on_generated_structures(doc: dict[str, Any]) -> None:
    _check_hosts(_toml(doc))


def test_fuzzers_left_no_item_behind(fuzz_env: None) -> None:
    """The file tickets above never created, read or removed anything in the share."""
    share = json.loads(os.environ["PAPYCLUSTER_SHARES"])["default"]
    assert os.listdir(share) == []
