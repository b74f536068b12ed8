"""Malformed, truncated, foreign and stale tickets; hostile bytes sent to the servers.

Hypothesis makes the tickets and frames. Every bad ticket must give a
``TransportError`` (``TicketError`` for a bad one) that names the ticket, in
bounded time; no server may crash, serve an item, or deserialize anything.
Only loopback addresses and ports that we know are closed are ever targeted.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from papycluster import transport
from papycluster.transport import auth, curve, fifo, ticket
from papycluster.workers import io

from .peer import Peer

PAYLOAD = b"the quick brown fox " * 10


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLOSED = _closed_port()


@pytest.fixture(scope="module")
def tickets(module_peer: Peer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """One live, reusable ticket per transport, dumped by another process."""
    out = {kind: module_peer.call("dump_value", kind, PAYLOAD, {})
           for kind in ("tcp", "udp", "fifo", "shm", "file")}
    # tcp without encryption: the HMAC-authenticated plain socket
    module_peer.call("setenv", curve.ENCRYPT_ENV, "0")
    try:
        out["tcp-hmac"] = module_peer.call("dump_value", "tcp", PAYLOAD, {})
    finally:
        module_peer.call("setenv", curve.ENCRYPT_ENV, None)
    assert (out["tcp"][-1], out["tcp-hmac"][-1]) == ("curve", "hmac")
    db = str(tmp_path_factory.mktemp("db") / "h.sqlite")
    out["sqlite"] = module_peer.call("dump_db", "sqlite", PAYLOAD, {"db": db, "keep": True})
    return out


ODD = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                st.floats(allow_nan=False), st.text(max_size=40), st.binary(max_size=40),
                st.sampled_from(["", "papyc", "tcp", "../../etc/passwd", "/etc/passwd",
                                 "a" * 32, "0" * 31, "127.0.0.1", "x" * 300, CLOSED, 0,
                                 65536, -1, 2**64]),
                st.tuples(st.integers()), st.lists(st.integers(), max_size=3))

MUTATION = st.tuples(st.sampled_from(["tcp", "tcp-hmac", "udp", "fifo", "shm", "file",
                                      "sqlite"]),
                     st.sampled_from(["replace", "truncate", "extend", "list"]),
                     st.integers(0, 12), ODD)


def _mutate(tk: tuple, how: str, index: int, value: object) -> object:
    if how == "replace":
        index %= len(tk)
        if tk[index] == value or (index == 2 and value in ("tcp", "udp", "fifo", "shm",
                                                           "file", "sqlite")):
            return tk[:index] + ("changed-" + str(value),) + tk[index + 1:]
        if index in (4, 5) and tk[2] in ("tcp", "udp") and isinstance(value, int):
            value = CLOSED if index == 5 else value  # only ports we know are closed
        if index == 4 and tk[2] in ("tcp", "udp") and isinstance(value, str) and value:
            value = "127.0.0.1" if len(value) < 256 else value
        return tk[:index] + (value,) + tk[index + 1:]
    if how == "truncate":
        return tk[:index % len(tk)]
    if how == "extend":
        return (*tk, value)
    return list(tk)


def _is_db(tk: object) -> bool:
    return isinstance(tk, tuple) and len(tk) > 2 and tk[2] in ("sqlite", "mysql")


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(MUTATION)
def test_mutated_tickets_fail_cleanly(tickets: dict[str, tuple], mutation: tuple) -> None:
    kind, how, index, value = mutation
    bad = _mutate(tickets[kind], how, index, value)
    start = time.monotonic()
    try:
        if _is_db(bad):
            data = io.load_db_item([bad], remove=False, timeout=2)
        else:
            data = io.load_item([bad], remove=False, timeout=2)
    except transport.TransportError as exc:
        assert "ticket" in str(exc)
        if isinstance(bad, tuple) and len(bad) > 3 and bad[:2] == ("papyc", ticket.VERSION) \
                and isinstance(exc, transport.TicketError) and exc.transport:
            assert exc.transport in str(exc)
    else:
        # A mutation that kept the ticket valid (e.g. the keep or text flag) reads it.
        assert (data.encode() if isinstance(data, str) else bytes(data)) == PAYLOAD
    assert time.monotonic() - start < 30


@settings(max_examples=200, deadline=None)
@given(ODD | st.tuples(st.just("papyc"), st.integers(-3, 3), st.sampled_from(
    ["tcp", "udp", "fifo", "shm", "file", "sqlite", "mysql", "zmq"]), st.integers(-1, 4),
    ODD, ODD, ODD))
def test_arbitrary_values_are_not_tickets(value: object) -> None:
    with pytest.raises(transport.TransportError, match="ticket"):
        io.load_item([value], timeout=2)


def test_stale_and_foreign_tickets_are_named(tickets: dict[str, tuple]) -> None:
    with pytest.raises(transport.TicketError, match="foreign ticket"):
        io.load_item([("file", "/tmp/x", 0)])  # a PaPy ticket
    with pytest.raises(transport.TicketError, match="version 3 is not supported"):
        io.load_item([("papyc", 3, *tickets["tcp"][2:])])
    # a version-1 tcp ticket (before tcp tickets said their wire)
    with pytest.raises(transport.TicketError, match=r"version 1 is not supported .*"
                       "made by an older papycluster: dump the item again"):
        io.load_item([("papyc", 1, *tickets["tcp"][2:-1])])
    with pytest.raises(transport.TicketError, match=r"file ticket .*not one papycluster makes"):
        io.load_item([(*tickets["file"][:5], "../../../etc/passwd", 10, tickets["file"][7])])
    with pytest.raises(transport.TicketError, match="sqlite ticket .*not an SQLite database"):
        io.load_db_item([(*tickets["sqlite"][:4], "/etc/passwd", *tickets["sqlite"][5:])])


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=200))
def test_tcp_server_refuses_hostile_frames(tickets: dict[str, tuple], junk: bytes) -> None:
    host, port = tickets["tcp-hmac"][4:6]
    with socket.create_connection((host, port), timeout=5) as sock:
        hello = auth.recv_exact(sock, len(auth.HELLO) + auth.NONCE)
        assert hello.startswith(auth.HELLO)
        sock.sendall(junk.ljust(auth.NONCE + auth.DIGEST, b"\x00") + b"\x01" + b"a" * 33)
        sock.settimeout(5)
        try:
            assert sock.recv(100) == b""  # refused: closed, nothing served
        except ConnectionResetError:
            pass


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=1500))
def test_udp_server_ignores_hostile_datagrams(tickets: dict[str, tuple], junk: bytes) -> None:
    host, port = tickets["udp"][4:6]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(junk, (host, port))
        sock.sendto(b"PU\x01" + junk, (host, port))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=100))
def test_fifo_server_ignores_hostile_requests(tickets: dict[str, tuple], junk: bytes) -> None:
    ctl = os.path.join(tickets["fifo"][4], fifo.CTL)
    fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, junk + b"\n")
    finally:
        os.close(fd)


def test_servers_survived_the_hostile_tests(tickets: dict[str, tuple]) -> None:
    for kind in ("tcp", "tcp-hmac", "udp", "fifo", "shm", "file"):
        assert bytes(io.load_item([tickets[kind]], remove=False, timeout=10)) == PAYLOAD, kind
    assert bytes(io.load_db_item([tickets["sqlite"]])) == PAYLOAD


def test_tickets_from_a_dead_process_fail_fast(tmp_path: Path) -> None:
    peer = Peer()
    try:
        dead = {k: peer.call("dump_value", k, b"x", {}) for k in ("tcp", "udp", "fifo")}
    finally:
        peer.close()
    for kind, tk in dead.items():
        start = time.monotonic()
        with pytest.raises(transport.StaleTicketError, match=f"{kind} ticket"):
            io.load_item([tk], timeout=5)
        assert time.monotonic() - start < 30
