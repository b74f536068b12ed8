"""Read-ahead: ``load_item`` fetches the next item while the current one is worked on.

In process: a prefetched load gives the same bytes and the same errors as a plain one,
only stream transports read ahead, and at most ``MAX_AHEAD`` fetches are held. In a
pipeline of two process NuMaps: with a buffer deep enough for a worker to hold its next
tasklet, loads are served by read-ahead, every item arrives exactly once and nothing
is left on the producer's side; with PaPy's default buffer nothing is read ahead.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import pytest

from papycluster import NuMap, Piper, Worker, transport, workers
from papycluster.engine import Dagger
from papycluster.transport import StaleTicketError, TicketError, read_ahead

from .peer import Peer, make_data


def test_prefetched_load_gives_the_same_bytes(peer: Peer) -> None:
    tickets = [peer.call("dump", "tcp", 200_000, i, {}) for i in range(3)]
    before = read_ahead.hits()
    assert all(transport.prefetch(tk, remove=True) for tk in tickets)
    for i, tk in enumerate(tickets):
        assert bytes(transport.load(tk, remove=True)) == make_data(200_000, i)
    assert read_ahead.hits() - before == 3
    assert read_ahead.pending() == 0
    with pytest.raises(StaleTicketError):  # taken once, by the fetch
        transport.load(tickets[0], remove=True)


def test_prefetch_error_is_the_loads_error(peer: Peer) -> None:
    tk = peer.call("dump", "tcp", 1000, 0, {})
    assert bytes(transport.load(tk)) == make_data(1000, 0)
    assert transport.prefetch(tk, remove=True)  # already loaded: the fetch fails
    with pytest.raises(StaleTicketError, match="has no item"):
        transport.load(tk, remove=True)
    assert read_ahead.pending() == 0


def test_bad_tickets_and_other_transports_are_not_read_ahead(peer: Peer) -> None:
    assert transport.prefetch(("nonsense",)) is False
    assert transport.prefetch(["tcp", [1]]) is False
    with pytest.raises(TicketError):
        transport.load(("nonsense",))
    shm = peer.call("dump", "shm", 1000, 0, {})
    assert transport.prefetch(shm) is False  # a memcpy under the GIL: nothing to overlap
    assert bytes(transport.load(shm)) == make_data(1000, 0)
    assert read_ahead.pending() == 0


def test_at_most_max_ahead_fetches_are_held(peer: Peer) -> None:
    tickets = [peer.call("dump", "tcp", 100, i, {}) for i in range(read_ahead.MAX_AHEAD + 2)]
    started = [transport.prefetch(tk, remove=True) for tk in tickets]
    assert started == [True] * read_ahead.MAX_AHEAD + [False, False]
    assert read_ahead.pending() == read_ahead.MAX_AHEAD
    for i, tk in enumerate(tickets):  # the last two are plain loads
        assert bytes(transport.load(tk, remove=True)) == make_data(100, i)
    assert read_ahead.pending() == 0


def test_a_stuck_fetch_does_not_hold_up_the_exit_of_its_process() -> None:
    # A server that accepts and never answers: the fetch would wait its 30 s timeout.
    mute = socket.create_server(("127.0.0.1", 0))
    port = mute.getsockname()[1]
    code = textwrap.dedent(f"""
        from papycluster import transport
        from papycluster.transport import ticket
        tk = ticket.make("tcp", 0, "127.0.0.1", {port}, "ab" * 16, 10, "hmac")
        assert transport.prefetch(tk, remove=True, timeout=30)
        print("started", flush=True)
    """)
    began = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=20)
    finally:
        mute.close()
    assert out.returncode == 0, out.stderr
    assert "started" in out.stdout
    assert time.monotonic() - began < 10


# -- in a pipeline ----------------------------------------------------------------------

def make(inbox: list) -> bytes:
    i = inbox[0]
    return bytes([i % 251]) * (50_000 + i)


def slow_check(inbox: list) -> tuple[int, int, int]:
    """Item size, its first byte, and how many loads of this process read ahead."""
    time.sleep(0.01)  # long enough for the next tasklet to be waiting
    data = inbox[0]
    return len(data), data[0], read_ahead.hits()


@pytest.mark.parametrize("kind", ["tcp", "fifo"])
def test_pipeline_reads_ahead_with_a_deeper_buffer(kind: str) -> None:
    n = 40
    got = {}
    for buffer in (1, 4):
        up = Piper(Worker((make, workers.io.dump_item), ((), (kind,))),
                   parallel=NuMap(worker_num=1, buffer=buffer, start_method="spawn"))
        down = Piper(Worker((workers.io.load_item, slow_check)),
                     parallel=NuMap(worker_num=1, buffer=buffer, start_method="spawn"))
        dagger = Dagger()
        dagger.add_pipe((up, down))
        dagger.connect([range(n)])
        dagger.start()
        try:
            got[buffer] = list(down)
        finally:
            dagger.stop()
            dagger.disconnect(forced=True)
    for buffer, rows in got.items():
        assert [(size, first) for size, first, _ in rows] == \
            [(50_000 + i, i % 251) for i in range(n)], f"buffer {buffer}"
    assert got[1][-1][2] == 0  # PaPy's default: never a next tasklet to read ahead
    assert got[4][-1][2] >= n // 2  # most loads were served by a fetch started early
