"""The stream transports (tcp, udp, fifo, shm, file) between real processes."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from papycluster import transport
from papycluster.transport import auth, curve, tcp, ticket
from papycluster.workers import io

from .peer import SECRET, Peer, PeerError, digest, make_data

STREAM = ["tcp", "udp", "fifo", "shm", "file"]
SIZES = [0, 1, 100_000, 3_000_001]


def still_there(tk: tuple) -> bool:
    """Whether the resource behind ``tk`` still exists on this host.

    Checked per ticket, not by listing /tmp or /dev/shm, so that other programs
    (another test run) that use papycluster at the same time do not matter.
    """
    kind = tk[2]
    if kind == "file":
        return os.path.exists(os.path.join(transport.shares.resolve(tk[4]), tk[5]))
    if kind == "shm":
        return os.path.exists("/dev/shm/" + tk[4])
    if kind == "fifo":
        return os.path.exists(tk[4])
    if kind == "tcp":
        try:
            socket.create_connection((tk[4], tk[5]), timeout=5).close()
        except ConnectionRefusedError:
            return False
        return True
    if kind == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((tk[4], tk[5]))
            sock.settimeout(2)
            sock.send(b"PU\x01\x01" + os.urandom(16))  # a HELLO: a live server answers
            try:
                sock.recv(2048)
            except ConnectionRefusedError:
                return False
            except TimeoutError:
                return True
            return True
    if kind == "sqlite":
        import sqlite3

        with sqlite3.connect(tk[4]) as conn:
            return conn.execute(f'SELECT COUNT(*) FROM "{tk[5]}" WHERE id = ?',
                                (tk[6],)).fetchone()[0] > 0
    raise ValueError(kind)


@pytest.mark.parametrize("kind", STREAM)
@pytest.mark.parametrize("size", SIZES)
def test_peer_dumps_we_load(module_peer: Peer, kind: str, size: int) -> None:
    tk = module_peer.call("dump", kind, size, size, {})
    assert isinstance(tk, tuple) and tk[:3] == ("papyc", ticket.VERSION, kind)
    assert all(type(f) in (str, int) for f in tk)
    data = io.load_item([tk])
    assert isinstance(data, (bytes, bytearray))
    assert len(data) == size and digest(data) == digest(make_data(size, size))


@pytest.mark.parametrize("kind", STREAM)
def test_we_dump_peer_loads(module_peer: Peer, kind: str) -> None:
    data = make_data(200_000, 7)
    tk = io.dump_item([data], kind)
    assert module_peer.call("load", tk, {}) == (len(data), digest(data))


@pytest.mark.parametrize("kind", STREAM)
def test_ticket_is_small(kind: str) -> None:
    import pickle

    tk = io.dump_item([bytes(5_000_000)], kind)
    try:
        assert len(pickle.dumps(tk)) < 300
    finally:
        io.load_item([tk])


@pytest.mark.parametrize("kind", STREAM)
def test_str_bytearray_and_memoryview(module_peer: Peer, kind: str) -> None:
    tk = module_peer.call("dump_value", kind, "héllo wörld", {})
    assert io.load_item([tk]) == "héllo wörld"
    import numpy as np

    array = np.arange(1000, dtype=np.int32)
    tk = io.dump_item([array], kind)
    back = io.load_item([tk])
    assert np.frombuffer(back, dtype=np.int32).tolist() == list(range(1000))


@pytest.mark.parametrize("kind", STREAM)
def test_keep_then_remove_then_stale(module_peer: Peer, kind: str) -> None:
    tk = module_peer.call("dump", kind, 70_000, 3, {})
    want = digest(make_data(70_000, 3))
    assert digest(io.load_item([tk], remove=False)) == want
    assert digest(io.load_item([tk])) == want
    with pytest.raises(transport.StaleTicketError) as err:
        io.load_item([tk], timeout=10)
    assert kind in str(err.value) and repr(tk)[:20] in str(err.value)


@pytest.mark.parametrize("kind", STREAM)
def test_not_bytes_is_a_clear_error(kind: str) -> None:
    with pytest.raises(TypeError, match="pickle_dumps"):
        io.dump_item([{"a": 1}], kind)


@pytest.mark.parametrize("kind", STREAM)
def test_peer_that_ended_gives_stale_ticket(kind: str) -> None:
    peer = Peer()
    try:
        tk = peer.call("dump", kind, 1000, 1, {})
    finally:
        peer.close()
    start = time.monotonic()
    with pytest.raises(transport.StaleTicketError) as err:
        io.load_item([tk], timeout=5)
    assert kind in str(err.value)
    assert time.monotonic() - start < 30


def test_unloaded_items_are_cleaned_when_the_process_ends(tmp_path: Path) -> None:
    peer = Peer()
    tickets = [peer.call("dump", kind, 100_000, i, {}) for i, kind in enumerate(STREAM * 3)]
    tickets.append(peer.call("dump_db", "sqlite", b"x" * 1000,
                             {"db": str(tmp_path / "c.sqlite")}))
    assert all(still_there(t) for t in tickets)
    peer.close()
    assert peer.process.exitcode == 0  # it returned from its loop, as engine workers do
    assert [t for t in tickets if still_there(t)] == []


def test_many_items_concurrently_from_one_server(module_peer: Peer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    tickets = [module_peer.call("dump", kind, 50_000 + i, i, {})
               for i in range(12) for kind in ("tcp", "udp", "fifo")]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda t: digest(io.load_item([t])), tickets))
    assert results == [digest(make_data(50_000 + i, i)) for i in range(12) for _ in range(3)]


def test_file_share_names_resolve_per_host(tmp_path: Path, module_peer: Peer) -> None:
    # The peer writes into share "data"; here, "data" is mounted somewhere else that
    # holds the same files (a bind mount stands in for NFS: a symlink).
    tk = module_peer.call("dump", "file", 1234, 5, {"share": "data"})
    assert tk[4] == "data" and "/" not in tk[5]
    elsewhere = tmp_path / "mnt"
    elsewhere.symlink_to(transport.shares.resolve("data"))
    transport.set_share("data", str(elsewhere))
    try:
        assert digest(io.load_item([tk])) == digest(make_data(1234, 5))
    finally:
        transport.set_share("data", None)


def test_unknown_share_is_named(module_peer: Peer) -> None:
    with pytest.raises(PeerError, match="share 'nowhere' is not configured"):
        module_peer.call("dump", "file", 10, 1, {"share": "nowhere"})


def test_files_and_shm_are_private(share: Path) -> None:
    import stat

    tk = io.dump_item([b"secret data"], "file")
    mode = (share / tk[5]).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    io.load_item([tk])
    tk = io.dump_item([b"secret data"], "shm")
    assert stat.S_IMODE(os.stat(f"/dev/shm/{tk[4]}").st_mode) == 0o600
    io.load_item([tk])
    tk = io.dump_item([b"secret data"], "fifo")
    assert stat.S_IMODE(os.stat(tk[4]).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(tk[4], tk[5])).st_mode) == 0o600
    io.load_item([tk])


def test_no_secret_means_this_run_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a configured secret the process uses its run's ephemeral one (and hands
    it to the workers it starts); a configured one always wins, and a bad one is still a
    clear error."""
    monkeypatch.delenv("PAPYCLUSTER_SECRET")
    monkeypatch.delenv("PAPYCLUSTER_SECRET_FILE", raising=False)
    ephemeral = auth.get_secret()
    assert len(ephemeral) >= 32 and auth.get_secret() == ephemeral
    assert auth.secret_for_children() == ephemeral
    monkeypatch.setenv("PAPYCLUSTER_SECRET", SECRET)
    assert auth.get_secret() == SECRET.encode() and auth.secret_for_children() is None
    monkeypatch.setenv("PAPYCLUSTER_SECRET", "short")
    with pytest.raises(transport.SecretError, match="too short"):
        auth.get_secret()


def test_secret_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                          module_peer: Peer) -> None:
    from .peer import SECRET

    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    monkeypatch.delenv("PAPYCLUSTER_SECRET")
    monkeypatch.setenv("PAPYCLUSTER_SECRET_FILE", str(path))
    tk = module_peer.call("dump", "tcp", 10, 1, {})
    assert digest(io.load_item([tk])) == digest(make_data(10, 1))


def test_wrong_secret_is_refused_and_logged(module_peer: Peer, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    tk = module_peer.call("dump", "tcp", 10, 1, {})
    monkeypatch.setenv("PAPYCLUSTER_SECRET", "x" * 40)
    with pytest.raises(transport.TransportError, match="refused|secret"):
        io.load_item([tk], timeout=5)
    monkeypatch.undo()
    # The server gave nothing away: the item is still there.
    assert digest(io.load_item([tk])) == digest(make_data(10, 1))
    # And in-process, the plain (unencrypted) server logs the refusal.
    monkeypatch.setenv(curve.ENCRYPT_ENV, "0")
    mine = io.dump_item([b"abc"], "tcp")
    assert mine[-1] == "hmac"
    with socket.create_connection(("127.0.0.1", mine[5]), timeout=5) as sock, \
            caplog.at_level("WARNING", logger="papycluster.transport"):
        hello = auth.recv_exact(sock, len(auth.HELLO) + auth.NONCE)
        assert hello.startswith(auth.HELLO)
        sock.sendall(os.urandom(auth.NONCE + auth.DIGEST))
        sock.settimeout(5)
        assert sock.recv(100) == b""  # closed without a word
    for _ in range(50):
        if "refused" in caplog.text:
            break
        time.sleep(0.1)
    assert "does not know the cluster secret" in caplog.text
    assert tcp.TRANSPORT.pending() >= 1
    assert io.load_item([mine]) == b"abc"


def test_client_refuses_a_server_without_the_secret() -> None:
    """A fake server that cannot prove the secret never gets to send data we'd read."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def fake() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(auth.HELLO + os.urandom(auth.NONCE))
            auth.recv_exact(conn, auth.NONCE + auth.DIGEST)
            conn.sendall(os.urandom(auth.DIGEST))
            conn.sendall(b"\x00" + (5).to_bytes(8, "big") + b"evil!")

    thread = threading.Thread(target=fake, daemon=True)
    thread.start()
    tk = ticket.make("tcp", 0, "127.0.0.1", port, "0" * 32, 5, "hmac")
    with pytest.raises(transport.TransportError, match="does not know the cluster secret"):
        io.load_item([tk], timeout=5)
    thread.join(5)
    listener.close()


def test_timeouts_bound_a_silent_server() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        tk = ticket.make("tcp", 0, "127.0.0.1", listener.getsockname()[1], "0" * 32, 5)
        start = time.monotonic()
        with pytest.raises(transport.TransportError, match="tcp ticket"):
            io.load_item([tk], timeout=1)
        assert time.monotonic() - start < 20
    finally:
        listener.close()


def test_load_item_refuses_db_tickets_and_the_other_way_round() -> None:
    tk = io.dump_item([b"x"], "file")
    with pytest.raises(transport.TicketError, match="load_item|reads"):
        io.load_db_item([tk])
    io.load_item([tk])
    with pytest.raises(ValueError, match="dump_db_item"):
        io.dump_item([b"x"], "sqlite")
    with pytest.raises(ValueError, match="unknown transport"):
        io.dump_item([b"x"], "carrier-pigeon")


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_advertise_and_bind_host_come_from_the_environment(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster sets the address per host; the server listens only there."""
    monkeypatch.setenv("PAPYCLUSTER_ADVERTISE_HOST", "127.0.0.2")
    peer = Peer()  # spawned with this environment
    try:
        tk = peer.call("dump", kind, 5000, 8, {})
        assert tk[4] == "127.0.0.2"
        assert digest(io.load_item([tk])) == digest(make_data(5000, 8))
        if kind == "tcp":  # bound to the advertised address, not to every interface
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", tk[5]), timeout=5).close()
    finally:
        peer.close()


def test_shm_segments_are_reused_not_leaked(module_peer: Peer) -> None:
    before = set(os.listdir("/dev/shm"))
    names = set()
    for i in range(20):
        tk = module_peer.call("dump", "shm", 300_000, i, {})
        names.add(tk[4])
        assert digest(io.load_item([tk])) == digest(make_data(300_000, i))
    assert len(names) == 1  # one segment, loaded and released, reused 20 times
    assert len(set(os.listdir("/dev/shm")) - before) <= 1


def test_papy_positional_arguments_are_accepted() -> None:
    # PaPy: dump_item(inbox, type, prefix, suffix, dir, timeout, buffer)
    tk = io.dump_item([b"papy"], "file", "tmp_papy_file", ".x", None, 320, 4096)
    assert io.load_item([tk]) == b"papy"
    with pytest.raises(ValueError, match="name a share"):
        io.dump_item([b"papy"], "file", None, None, "/tmp")


def test_a_forked_child_does_not_keep_our_server_alive() -> None:
    """A child forked after we started serving closes its copy of our listener."""
    import multiprocessing

    tk = io.dump_item([b"x"], "tcp")
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    child.start()
    try:
        transport.close_all()  # this process ends its servers, as at its exit
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", tk[5]), timeout=5).close()
        with pytest.raises(transport.StaleTicketError):
            io.load_item([tk], timeout=5)
    finally:
        child.kill()
        child.join(10)


def test_registry_loads_on_a_host_without_posix_only_modules(tmp_path: Path) -> None:
    """A Windows host has no fcntl, _posixshmem or fork: file and tcp must still work."""
    import subprocess
    import sys

    script = tmp_path / "nofork.py"
    script.write_text(
        "import builtins, os, sys\n"
        "real = builtins.__import__\n"
        "def fake(name, *a, **k):\n"
        "    if name in ('fcntl', '_posixshmem'):\n"
        "        raise ImportError(name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = fake\n"
        "del os.register_at_fork\n"
        "from papycluster.workers import io\n"
        "from papycluster.transport import registry\n"
        "assert registry.names() == ['fifo', 'file', 'mysql', 'shm', 'sqlite', 'tcp', 'udp']\n"
        "for kind in ('file', 'tcp'):\n"
        "    assert io.load_item([io.dump_item([b'win'], kind)]) == b'win'\n"
        "try:\n"
        "    io.dump_item([b'x'], 'shm')\n"
        "except Exception as exc:\n"
        "    assert 'no POSIX shared memory' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('shm without _posixshmem')\n"
        "print('ok')\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_reused_shm_segment_never_serves_the_old_ticket(module_peer: Peer) -> None:
    first = module_peer.call("dump", "shm", 200_000, 1, {})
    assert digest(io.load_item([first])) == digest(make_data(200_000, 1))
    second = module_peer.call("dump", "shm", 200_000, 2, {})
    assert second[4] == first[4]  # the same segment, reused
    with pytest.raises(transport.StaleTicketError):
        io.load_item([first])  # the old ticket: stale, never the new item's bytes
    assert digest(io.load_item([second])) == digest(make_data(200_000, 2))
