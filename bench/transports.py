"""Benchmark: moving items between two pipers, per transport and item size.

A two-piper pipeline (two process NuMaps, one worker each) moves bytes items of
100 B, 10 KB, 1 MB and 16 MB (and a 16 MB numpy array, pickled out of band, if numpy
is installed). Each transport is compared with:

* the default *manager* path (the item goes back to the manager and out again),
* a *raw* baseline measured in the same run between two plain processes: a plain TCP
  socket (for tcp and udp), a plain shared-memory copy into a reused segment (for
  shm, fifo and file), or a plain sqlite3 insert, then select and delete, of the same
  bytes in a WAL database (for sqlite).

Every path runs with each NuMap ``buffer`` of ``--buffers`` (default 1 and 4): 1 is
PaPy's default here (stride x tasks), where each item waits for the previous one; with
a deeper buffer a worker holds its next tasklet and ``load_item`` reads its item ahead
(see ``papycluster.transport.read_ahead``), while the manager path does not gain from it
on two cores. "x manager" compares with the manager path at its best buffer.

``tcp`` items are served by ZeroMQ with CURVE (authenticated and encrypted, the
default); the ``tcp-clear`` rows run the same pipelines with encryption off in the
dumping worker (``PAPYCLUSTER_ENCRYPT=0``: the HMAC handshake, then the plain socket).

``file`` and ``sqlite`` items carry a MAC under the cluster secret (see
``papycluster.transport.integrity``); their rows ``file -MAC`` and ``sqlite -MAC`` run the
same pipelines with it switched off in both worker processes (a bench-only switch), and
"x -MAC" is the ratio of the two medians: what the MAC costs. The ``file`` rows use a
named share (a directory of this run, as an NFS or Samba share would be), where items
are hashed; in the host's temp directory (the default share) the owner check is the
proof and items are not hashed, so there ``file`` runs as its ``-MAC`` row.

Throughput is measured between the first and the last result, so pool start-up does
not count. Every configuration runs ``--reps`` times, interleaved (each repetition
goes through all configurations in a rotated order), and the median is printed.

    python bench/transports.py [--reps 3] [--quick] [--only tcp,shm] [--buffers 1,4]
    python bench/transports.py --only file,file-MAC,sqlite,sqlite-MAC   # the MAC's cost
    python bench/transports.py --mac       # the MAC's cost per item, in one process only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import secrets
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from timing import items_for, items_per_second

from papycluster import NuMap, Piper, Worker, workers

SIZES = [("100 B", 100), ("10 KB", 10_000), ("1 MB", 1 << 20), ("16 MB", 16 << 20)]
STREAM = ["tcp", "udp", "fifo", "shm", "file"]
RAW_FOR = {"tcp": "socket", "tcp-clear": "socket", "udp": "socket", "fifo": "shm copy",
           "shm": "shm copy", "file": "shm copy", "sqlite": "sqlite raw",
           "file-MAC": "shm copy", "sqlite-MAC": "sqlite raw"}
#: The raw baselines, each measured between two plain processes.
RAWS = ("socket", "shm copy", "sqlite raw")
#: The share of the ``file`` rows: a directory of this run, not the temp directory.
BENCH_SHARE = "bench"
#: Paths run a second time without the MAC, to show its cost ("x -MAC").
WITHOUT_MAC = {"file": "file-MAC", "sqlite": "sqlite-MAC"}
#: Roughly how many bytes (and at most how many items) one measurement moves.
BUDGET = 480 << 20
MAX_ITEMS = 1500
MIN_ITEMS = 8

_BLOCKS: dict[int, bytes] = {}
#: A fresh database file for the run (set in main; the workers get it as an argument).
SQLITE_DB = ""


def count_for(size: int, quick: bool) -> int:
    return items_for(size, quick, BUDGET, MAX_ITEMS, MIN_ITEMS)


# -- worker functions (top level, so they travel by reference) -----------------------

def make_item(inbox: Any, size: int) -> bytes:
    """The same random block every time: no generation cost inside the measurement."""
    block = _BLOCKS.get(size)
    if block is None:
        block = _BLOCKS[size] = random.Random(size).randbytes(size)
    return block


def make_array(inbox: Any, size: int) -> Any:
    import numpy as np

    block = _BLOCKS.get(-size)
    if block is None:
        block = _BLOCKS[-size] = np.random.default_rng(size).random(size // 8)
    return block


def mac_switch(inbox: Any, off: bool) -> Any:
    """First thing in both workers of a file or sqlite pipe: the MAC on (the default) or
    off, so that both variants run the same functions."""
    from papycluster.transport import integrity

    integrity.bench_without_mac(off)
    return inbox[0]


def encrypt_switch(inbox: Any, on: bool) -> Any:
    """First thing in the dumping worker of a tcp pipe: its items served by CURVE (the
    default) or by the HMAC socket in clear (``tcp-clear``, ``PAPYCLUSTER_ENCRYPT=0``)."""
    from papycluster.transport import curve

    os.environ[curve.ENCRYPT_ENV] = "1" if on else "0"
    return inbox[0]


def dump_to_bench_share(inbox: Any) -> tuple:
    return workers.io.dump_item(inbox, "file", share=BENCH_SHARE)


def nbytes(inbox: Any) -> int:
    item = inbox[0]
    return item.nbytes if hasattr(item, "nbytes") else len(item)


# -- pipelines -------------------------------------------------------------------

def run_pipeline(kind: str, size: int, n: int, array: bool = False, buffer: int = 1
                 ) -> float:
    """Items per second through two process NuMaps with transport ``kind``; ``buffer``
    items in flight per NuMap."""
    make = make_array if array else make_item
    up_funcs: list[Callable] = [make]
    up_args: list[tuple] = [(size,)]
    down_funcs: list[Callable] = []
    down_args: list[tuple] = []
    if kind in ("file", "sqlite", *WITHOUT_MAC.values()):
        off = kind.endswith("-MAC")
        kind = kind.removesuffix("-MAC")
        up_funcs.append(mac_switch)
        up_args.append((off,))
        down_funcs.append(mac_switch)
        down_args.append((off,))
    if kind in ("tcp", "tcp-clear"):
        up_funcs.append(encrypt_switch)
        up_args.append((kind == "tcp",))
        kind = "tcp"
    if array and kind != "manager":
        up_funcs.append(workers.io.pickle_dumps)
        up_args.append(())
    if kind == "file":
        up_funcs.append(dump_to_bench_share)
        up_args.append(())
        down_funcs.append(workers.io.load_item)
        down_args.append(())
    elif kind in STREAM:
        up_funcs.append(workers.io.dump_item)
        up_args.append((kind,))
        down_funcs.append(workers.io.load_item)
        down_args.append(())
    elif kind == "sqlite":
        up_funcs.append(workers.io.dump_db_item)
        up_args.append((kind, "temp", None, False, SQLITE_DB))
        down_funcs.append(workers.io.load_db_item)
        down_args.append(())
    if array and kind != "manager":
        down_funcs.append(workers.io.pickle_loads)
        down_args.append(())
    down_funcs.append(nbytes)
    down_args.append(())
    up = Piper(Worker(tuple(up_funcs), tuple(up_args)), parallel=NuMap(worker_num=1,
                                                                    buffer=buffer))
    down = Piper(Worker(tuple(down_funcs), tuple(down_args)),
                 parallel=NuMap(worker_num=1, buffer=buffer))
    return items_per_second(up, down, n, size, kind)


# -- raw baselines ---------------------------------------------------------------

def _raw_sender(port: int, size: int, n: int) -> None:
    """Streams the items back to back: the best a plain socket can do."""
    data = memoryview(make_item(None, size))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n + 1):
            sock.sendall(struct.pack("!Q", size))
            sock.sendall(data)
        sock.recv(1)


def raw_socket(size: int, n: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    listener = socket.create_server(("127.0.0.1", 0))
    sender = ctx.Process(target=_raw_sender, args=(listener.getsockname()[1], size, n))
    sender.start()
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = bytearray(8)
    scratch = memoryview(bytearray(size))
    t0 = 0.0
    with conn:
        for i in range(n + 1):
            # Into a buffer that stays mapped, then a fresh copy per item: the cheapest
            # way to hand out a new object per item (what every transport must do).
            _recv_into(conn, memoryview(header))
            _recv_into(conn, scratch[:struct.unpack("!Q", header)[0]])
            bytearray(scratch)
            if i == 0:
                t0 = time.perf_counter()
        elapsed = time.perf_counter() - t0
        conn.sendall(b"k")
    listener.close()
    sender.join(30)
    return n / elapsed


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < view.nbytes:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("raw sender went away")
        got += k


def _shm_writer(name: str, size: int, n: int, conn: Any) -> None:
    from multiprocessing import shared_memory

    # Attaching registers the name with the (shared) resource tracker again; the
    # parent's unlink unregisters it once for both.
    segment = shared_memory.SharedMemory(name=name)
    data = make_item(None, size)
    for _ in range(n + 1):
        segment.buf[:size] = data
        conn.send_bytes(b"w")
        conn.recv_bytes()
    segment.close()


def raw_shm_copy(size: int, n: int) -> float:
    from multiprocessing import shared_memory

    ctx = multiprocessing.get_context("spawn")
    segment = shared_memory.SharedMemory(create=True, size=size)
    here, there = ctx.Pipe()
    writer = ctx.Process(target=_shm_writer, args=(segment.name, size, n, there))
    writer.start()
    t0 = 0.0
    try:
        for i in range(n + 1):
            here.recv_bytes()
            bytearray(segment.buf[:size])  # a fresh copy per item
            here.send_bytes(b"r")
            if i == 0:
                t0 = time.perf_counter()
        elapsed = time.perf_counter() - t0
        writer.join(30)
    finally:
        segment.close()
        segment.unlink()
    return n / elapsed


def _sqlite_open(path: str) -> Any:
    import sqlite3

    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _sqlite_writer(path: str, size: int, n: int, conn: Any) -> None:
    db = _sqlite_open(path)
    data = make_item(None, size)
    for i in range(n + 1):
        db.execute("INSERT INTO items (id, value) VALUES (?, ?)", (i, data))
        conn.send_bytes(str(i).encode())
        conn.recv_bytes()
    db.close()


def raw_sqlite(size: int, n: int) -> float:
    """A plain sqlite3 write and read of the same bytes between two processes: the
    writer inserts a row (its own commit), the reader selects it and deletes it (a
    commit), in WAL with synchronous=NORMAL like the transport; what sqlite itself
    costs, without tickets, MACs or a pipeline."""
    path = os.path.join(os.path.dirname(SQLITE_DB), f"raw-{secrets.token_hex(4)}.sqlite")
    db = _sqlite_open(path)
    db.execute("PRAGMA page_size=65536")
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, value BLOB)")
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    writer = ctx.Process(target=_sqlite_writer, args=(path, size, n, there))
    writer.start()
    t0 = 0.0
    try:
        for i in range(n + 1):
            rowid = int(here.recv_bytes())
            (value,) = db.execute("SELECT value FROM items WHERE id = ?", (rowid,)).fetchone()
            db.execute("DELETE FROM items WHERE id = ?", (rowid,))
            here.send_bytes(b"r")
            if i == 0:
                t0 = time.perf_counter()
        elapsed = time.perf_counter() - t0
        writer.join(30)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(path + suffix)
    return n / elapsed


# -- the MAC's cost, in one process -------------------------------------------------

def _dump_load_us(kind: str, size: int, n: int) -> float:
    """Microseconds per item for ``n`` dump + load pairs of ``kind`` in this process."""
    from papycluster import transport

    data = make_item(None, size)
    t0 = time.perf_counter()
    for _ in range(n):
        if kind == "sqlite":
            transport.load(transport.dump_db(data, "sqlite", db=SQLITE_DB))
        else:
            transport.load(transport.dump(data, kind, share=BENCH_SHARE))
    return (time.perf_counter() - t0) / n * 1e6


def mac_cost(reps: int, quick: bool) -> None:
    """What the MAC adds to a dump and its load, with no pipeline around (less noise
    than the pipelines on a busy machine): with and without, interleaved, medians."""
    from papycluster.transport import integrity

    times: dict[tuple, list[float]] = {}
    for _ in range(reps):
        for label, size in SIZES:
            n = max(4, count_for(size, quick) // 4)
            for kind in ("file", "sqlite"):
                for off in (False, True):
                    integrity.bench_without_mac(off)
                    times.setdefault((label, kind, off), []).append(
                        _dump_load_us(kind, size, n))
    integrity.bench_without_mac(False)
    block = make_item(None, 16 << 20)
    hashing = []
    for _ in range(reps):
        t0 = time.perf_counter()
        integrity.sign("file", block, "name", len(block))
        hashing.append(time.perf_counter() - t0)
    print(f"\nthe MAC's cost: one dump + its load in one process, median of {reps} "
          f"interleaved repetitions, {os.cpu_count()} CPUs (x -MAC: items/s with the "
          "MAC / without)")
    print(f"HMAC-SHA256 alone: {len(block) / statistics.median(hashing) / 1e6:.0f} MB/s "
          "(a dump hashes the item once, its load once more)\n")
    head = f"{'size':<8} {'path':<7} {'with MAC us':>12} {'without us':>11} {'x -MAC':>7}"
    print(head)
    print("-" * len(head))
    for label, _ in SIZES:
        for kind in ("file", "sqlite"):
            on = statistics.median(times[(label, kind, False)])
            off = statistics.median(times[(label, kind, True)])
            print(f"{label:<8} {kind:<7} {on:>12.1f} {off:>11.1f} {off / on:>7.2f}")


# -- the table -------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a quarter of the items")
    parser.add_argument("--only", default="", help="comma-separated transports")
    parser.add_argument("--sizes", default="", help="comma-separated labels, e.g. '1 MB'")
    parser.add_argument("--buffers", default="1,4",
                        help="comma-separated NuMap buffers to run every path with")
    parser.add_argument("--mac", action="store_true",
                        help="only the MAC's cost per item (file, sqlite), in one process")
    args = parser.parse_args()
    os.environ.setdefault("PAPYCLUSTER_SECRET", secrets.token_hex(32))
    global SQLITE_DB
    workdir = tempfile.mkdtemp(prefix="papyc-bench-")
    SQLITE_DB = os.path.join(workdir, "bench.sqlite")
    share = os.path.join(workdir, "share")
    os.mkdir(share, 0o700)
    os.environ["PAPYCLUSTER_SHARES"] = json.dumps({BENCH_SHARE: share})  # workers inherit it
    try:
        if args.mac:
            mac_cost(args.reps, args.quick)
        else:
            _run(args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace) -> None:
    kinds = ["manager", "tcp", "tcp-clear", *STREAM[1:], "file-MAC", "sqlite", "sqlite-MAC"]
    if args.only:
        kinds = ["manager"] + [k for k in args.only.split(",") if k != "manager"]
    buffers = [int(b) for b in args.buffers.split(",")]
    sizes = [s for s in SIZES if not args.sizes or s[0] in args.sizes.split(",")]
    cases: list[tuple[str, str, int, bool, int]] = [
        (label, kind, size, False, buffer)
        for label, size in sizes for kind in kinds for buffer in buffers]
    raws = [(label, raw, size) for label, size in sizes for raw in RAWS]
    try:
        import numpy  # noqa: F401

        cases += [("16 MB numpy", kind, 16 << 20, True, buffer)
                  for kind in kinds if not kind.startswith("sqlite") for buffer in buffers]
    except ImportError:
        pass
    rates: dict[tuple, list[float]] = {}
    started = time.perf_counter()
    for rep in range(args.reps):
        order = cases[rep % len(cases):] + cases[:rep % len(cases)]
        for label, kind, size, array, buffer in order:
            n = count_for(size, args.quick)
            rates.setdefault((label, kind, buffer), []).append(
                run_pipeline(kind, size, n, array, buffer))
        for label, raw, size in raws:
            n = count_for(size, args.quick)
            fn = {"socket": raw_socket, "shm copy": raw_shm_copy,
                  "sqlite raw": raw_sqlite}[raw]
            rates.setdefault((label, raw, 0), []).append(fn(size, n))
        print(f"  repetition {rep + 1}/{args.reps} done at "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\npapycluster transports: two process NuMaps (1 worker each), median of "
          f"{args.reps} interleaved repetitions, {os.cpu_count()} CPUs")
    print("buffer: items in flight per NuMap (1 is PaPy's default here; deeper lets a "
          "worker read its next item ahead).\nx manager: against the manager path at "
          "its best buffer; x raw: against the raw baseline named at the right.\n")
    head = (f"{'size':<12} {'path':<10} {'buffer':>6} {'items/s':>10} {'MB/s':>9} "
            f"{'x manager':>10} {'x raw':>7} {'x -MAC':>7}  raw baseline")
    print(head)
    print("-" * len(head))
    labels = [label for label, _ in sizes] + (["16 MB numpy"] if any(c[3] for c in cases)
                                               else [])
    for label in labels:
        size = 16 << 20 if label == "16 MB numpy" else dict(sizes)[label]
        raw_label = "16 MB" if label == "16 MB numpy" else label
        base = max((med[(label, "manager", b)] for b in buffers
                    if (label, "manager", b) in med), default=None)
        rows = [(kind, b, med.get((label, kind, b))) for kind in kinds for b in buffers]
        if label != "16 MB numpy":
            rows += [(raw, 0, med.get((raw_label, raw, 0))) for raw in RAWS]
        for kind, buffer, rate in rows:
            if rate is None:
                continue
            mbs = rate * size / 1e6
            xman = f"{rate / base:.2f}" if base and kind != "manager" else ""
            raw_name = RAW_FOR.get(kind)
            raw = med.get((raw_label, raw_name, 0)) if raw_name else None
            xraw = f"{rate / raw:.2f}" if raw else ""
            shown = str(buffer) if buffer else ""
            bare = med.get((label, WITHOUT_MAC.get(kind, ""), buffer))
            xmac = f"{rate / bare:.2f}" if bare else ""
            print(f"{label:<12} {kind:<10} {shown:>6} {rate:>10.1f} {mbs:>9.1f} {xman:>10} "
                  f"{xraw:>7} {xmac:>7}  {raw_name or ''}")
        print()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
