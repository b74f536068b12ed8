"""Benchmark: papycluster.wire's read-exactly against a bare ``recv_into`` loop.

Every tcp request, reply header and item, and every worker-stream frame, is now read by
:func:`papycluster.wire.frames.recv_into_exact`, which adds a deadline check, a
``what`` for its errors and the Python 3.9 timeout translation to the loop each module
used to carry. This measures what that costs: a sender thread writes ``size``-byte
messages over a loopback TCP connection and the reader takes them one at a time with
either loop, into a preallocated buffer (as tcp's loader does). The two loops run
interleaved in the same process, so a busy machine slows both alike; the table gives
the median of each over ``--reps`` and their ratio (wire / bare; 1.00 = no cost).

On a loaded machine the socket rows scatter by tens of percent either way, so a second
table times the loops alone: a source whose ``recv_into`` returns at once (no kernel, no
copy), which isolates the Python cost per message that the new loop adds.

    python bench/wire.py [--reps 7] [--mb 64]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time

from papycluster.wire.frames import recv_into_exact

SIZES = [("9 B", 9), ("1 KB", 1024), ("64 KB", 64 << 10), ("1 MB", 1 << 20),
         ("16 MB", 16 << 20)]


def bare(sock: socket.socket, view: memoryview) -> None:
    """The loop tcp.py carried before (the baseline)."""
    got = 0
    n = view.nbytes
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k


#: Called as tcp's loader calls it for an item's header (no extra Python frame).
wire = recv_into_exact


def pair() -> tuple[socket.socket, socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(srv.getsockname(), timeout=30)
    b, _ = srv.accept()
    srv.close()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(30)
    return a, b


def measure(read, size: int, count: int) -> float:
    """Seconds to receive ``count`` messages of ``size`` bytes with ``read``."""
    a, b = pair()
    block = memoryview(b"x" * size)
    sender = threading.Thread(target=lambda: [a.sendall(block) for _ in range(count)])
    buf = memoryview(bytearray(size))
    try:
        t0 = time.perf_counter()
        sender.start()
        for _ in range(count):
            read(b, buf)
        elapsed = time.perf_counter() - t0
        sender.join(30)
    finally:
        a.close()
        b.close()
    return elapsed


class Instant:
    """A source that "receives" a whole message per call, at no cost (pure loop time)."""

    def recv_into(self, view: memoryview) -> int:
        return view.nbytes


def loop_cost(read, calls: int) -> float:
    """Nanoseconds per message of ``read`` itself, over ``calls`` messages."""
    src = Instant()
    view = memoryview(bytearray(9))
    t0 = time.perf_counter()
    for _ in range(calls):
        read(src, view)
    return (time.perf_counter() - t0) / calls * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--mb", type=int, default=64, help="bytes per measurement, in MB")
    args = parser.parse_args()
    print(f"read-exactly over loopback TCP, median of {args.reps} interleaved repetitions")
    print(f"{'size':<8}{'messages':>9}{'bare us/msg':>14}{'wire us/msg':>14}{'wire/bare':>11}")
    print("-" * 56)
    for label, size in SIZES:
        count = max(8, min(20000, (args.mb << 20) // size))
        times: dict[str, list[float]] = {"bare": [], "wire": []}
        for rep in range(args.reps):
            order = [("bare", bare), ("wire", wire)]
            for name, read in order if rep % 2 == 0 else order[::-1]:
                times[name].append(measure(read, size, count) / count * 1e6)
        b, w = statistics.median(times["bare"]), statistics.median(times["wire"])
        print(f"{label:<8}{count:>9}{b:>14.2f}{w:>14.2f}{w / b:>11.2f}")
    print()
    print(f"the loops alone (an instant source), median of {args.reps}")
    print(f"{'messages':>9}{'bare ns/msg':>14}{'wire ns/msg':>14}{'wire/bare':>11}")
    print("-" * 48)
    calls = 200_000
    times = {"bare": [], "wire": []}
    for rep in range(args.reps):
        order = [("bare", bare), ("wire", wire)]
        for name, read in order if rep % 2 == 0 else order[::-1]:
            times[name].append(loop_cost(read, calls))
    b, w = statistics.median(times["bare"]), statistics.median(times["wire"])
    print(f"{calls:>9}{b:>14.0f}{w:>14.0f}{w / b:>11.2f}")


if __name__ == "__main__":
    main()
