"""Benchmark: one transport alone between two plain processes, against its raw limit.

``bench/transports.py`` runs each transport inside a two-piper pipeline, where the
engine's own cost per item (a task to the worker, a result back, the ticket through
the manager) is part of every figure. This one keeps only the transport: a producer
process dumps an item and passes its ticket over a pipe, the consumer loads it and
answers, one item at a time. Each raw baseline has the very same shape (one item, one
message each way) and moves the same bytes with the plain tool:

* ``shm`` against a plain shared-memory copy into one reused segment;
* ``sqlite`` against plain ``sqlite3``: one autocommit ``INSERT`` of the blob in the
  producer, one ``SELECT`` of it in the consumer, on a database with the transport's
  pragmas (WAL, ``synchronous=NORMAL``, 64 KB pages); the transport also deletes the
  row it loaded and checks the item's MAC (``sqlite -MAC``: with the MAC off);
* ``mysql`` (with ``--mysql-socket``, a MariaDB the user may create a database in)
  against MariaDB reading and writing the same bytes itself: the producer writes the
  item to a file and runs ``INSERT ... VALUES (LOAD_FILE(path))``, the consumer runs
  ``SELECT value ... INTO DUMPFILE`` (the server's own throughput: no client protocol)
  and a plain PyMySQL ``INSERT``/``SELECT`` of the same row (what any Python client
  pays on the wire).

Medians of ``--reps`` interleaved repetitions; items/s from the second item on.

    python bench/direct.py [--reps 5] [--sizes '1 MB,16 MB'] [--only shm,sqlite]
    python bench/direct.py --only mysql --mysql-socket /path/to/mysqld.sock
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from transports import make_item, raw_shm_copy

SIZES = [("10 KB", 10_000), ("1 MB", 1 << 20), ("4 MB", 4 << 20), ("16 MB", 16 << 20)]
BUDGET = 256 << 20
MAX_ITEMS = 2000
MYSQL_DB = "papyc_bench_direct"
#: How long the consumer waits for a ticket before it calls the producer dead.
PRODUCER_TIMEOUT = 60.0


def count_for(size: int, quick: bool) -> int:
    n = max(8, min(MAX_ITEMS, BUDGET // size))
    return max(8, n // 4) if quick else n


def _timed(n: int, step: Callable[[int], None]) -> float:
    """Items per second of ``step(i)`` for i in 0..n, from the second item on."""
    t0 = 0.0
    for i in range(n + 1):
        step(i)
        if i == 0:
            t0 = time.perf_counter()
    return n / (time.perf_counter() - t0)


# -- a transport: dump in one process, load in the other ---------------------------

def _producer(kind: str, size: int, n: int, conn: Any, options: dict, mac_off: bool) -> None:
    from papycluster import transport
    from papycluster.transport import integrity

    integrity.bench_without_mac(mac_off)
    data = make_item(None, size)
    database = kind == "sqlite" or kind == "mysql"
    for _ in range(n + 1):
        tk = (transport.dump_db(data, kind, **options) if database
              else transport.dump(data, kind))
        conn.send(tk)
        conn.recv_bytes()
    conn.recv_bytes()  # the consumer is done: only now may this process end


def via_transport(kind: str, size: int, n: int, options: dict | None = None,
                  mac_off: bool = False) -> float:
    from papycluster import transport
    from papycluster.transport import integrity

    integrity.bench_without_mac(mac_off)
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    producer = ctx.Process(target=_producer, args=(kind, size, n, there, options or {},
                                                   mac_off))
    producer.start()
    password = (options or {}).get("password")

    def step(i: int) -> None:
        if not here.poll(PRODUCER_TIMEOUT):
            raise RuntimeError(f"{kind}: the producer sent no ticket for "
                               f"{PRODUCER_TIMEOUT:g} s (exit code {producer.exitcode})")
        tk = here.recv()
        data = transport.load(tk, password=password) if password is not None else \
            transport.load(tk)
        if len(data) != size:
            raise RuntimeError(f"{kind}: {len(data)} bytes, expected {size}")
        here.send_bytes(b"r")

    try:
        rate = _timed(n, step)
        here.send_bytes(b"done")
    finally:
        producer.join(60)
        if producer.is_alive():
            producer.kill()
        integrity.bench_without_mac(False)
    return rate


# -- raw sqlite3 --------------------------------------------------------------------

def _sqlite_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    conn.execute("PRAGMA page_size=65536")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, value BLOB)")
    return conn


def _sqlite_writer(path: str, size: int, n: int, conn: Any) -> None:
    db = _sqlite_connect(path)
    data = make_item(None, size)
    for _ in range(n + 1):
        rowid = db.execute("INSERT INTO raw (value) VALUES (?)", (data,)).lastrowid
        conn.send(rowid)
        conn.recv_bytes()
    db.close()


def raw_sqlite(path: str, size: int, n: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    _sqlite_connect(path).close()
    here, there = ctx.Pipe()
    writer = ctx.Process(target=_sqlite_writer, args=(path, size, n, there))
    writer.start()
    db = _sqlite_connect(path)

    def step(i: int) -> None:
        value = db.execute("SELECT value FROM raw WHERE id = ?", (here.recv(),)).fetchone()[0]
        if len(value) != size:
            raise RuntimeError("raw sqlite3: wrong size")
        here.send_bytes(b"r")

    try:
        rate = _timed(n, step)
    finally:
        writer.join(60)
        db.execute("DELETE FROM raw")
        db.close()
    return rate


# -- raw MariaDB --------------------------------------------------------------------

def _mysql_connect(sock: str, password: str) -> Any:
    import pymysql

    return pymysql.connect(unix_socket=sock, user="root", password=password,
                           database=MYSQL_DB, autocommit=True, max_allowed_packet=1 << 30)


def _mysql_writer(sock: str, password: str, size: int, n: int, conn: Any, server_side: bool,
                  scratch: str) -> None:
    db = _mysql_connect(sock, password)
    data = make_item(None, size)
    path = os.path.join(scratch, "item")
    with db.cursor() as cur:
        for _ in range(n + 1):
            if server_side:
                with open(path, "wb") as handle:
                    handle.write(data)
                cur.execute("INSERT INTO raw (value) VALUES (LOAD_FILE(%s))", (path,))
            else:
                cur.execute("INSERT INTO raw (value) VALUES (%s)", (data,))
            conn.send(cur.lastrowid)
            conn.recv_bytes()
    db.close()


def raw_mysql(sock: str, password: str, size: int, n: int, server_side: bool) -> float:
    scratch = tempfile.mkdtemp(prefix="papyc-bench-maria-")
    os.chmod(scratch, 0o777)  # the server (maybe another user) reads and writes here
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    writer = ctx.Process(target=_mysql_writer, args=(sock, password, size, n, there,
                                                     server_side, scratch))
    writer.start()
    db = _mysql_connect(sock, password)
    cur = db.cursor()

    def step(i: int) -> None:
        rowid = here.recv()
        if server_side:
            out = os.path.join(scratch, f"out{i}")
            cur.execute("SELECT value FROM raw WHERE id = %s INTO DUMPFILE %s", (rowid, out))
            got = os.path.getsize(out)
            os.unlink(out)
        else:
            cur.execute("SELECT value FROM raw WHERE id = %s", (rowid,))
            got = len(cur.fetchone()[0])
        if got != size:
            raise RuntimeError(f"raw mariadb: {got} bytes, expected {size}")
        here.send_bytes(b"r")

    try:
        rate = _timed(n, step)
    finally:
        writer.join(60)
        cur.execute("DELETE FROM raw")
        db.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return rate


def _mysql_setup(sock: str, password: str) -> None:
    import pymysql

    conn = pymysql.connect(unix_socket=sock, user="root", password=password,
                           autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {MYSQL_DB}")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {MYSQL_DB}.raw (id BIGINT UNSIGNED "
                    "AUTO_INCREMENT PRIMARY KEY, value LONGBLOB NOT NULL) ENGINE=InnoDB")
    conn.close()


# -- the table ----------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="", help="comma-separated labels, e.g. '1 MB'")
    parser.add_argument("--only", default="shm,sqlite", help="shm, sqlite, mysql")
    parser.add_argument("--mysql-socket", default="", help="a MariaDB server's socket")
    parser.add_argument("--mysql-password", default="")
    args = parser.parse_args()
    os.environ.setdefault("PAPYCLUSTER_SECRET", secrets.token_hex(32))
    only = args.only.split(",")
    sizes = [s for s in SIZES if not args.sizes or s[0] in args.sizes.split(",")]
    workdir = tempfile.mkdtemp(prefix="papyc-bench-direct-")
    db_path = os.path.join(workdir, "transport.sqlite")
    raw_path = os.path.join(workdir, "raw.sqlite")
    cases: dict[str, tuple[str, Callable[[int, int], float]]] = {}
    if "shm" in only:
        cases["shm"] = ("shm copy", lambda size, n: via_transport("shm", size, n))
        cases["shm copy"] = ("", raw_shm_copy)
    if "sqlite" in only:
        opts = {"db": db_path}
        cases["sqlite"] = ("sqlite3", lambda size, n: via_transport("sqlite", size, n, opts))
        cases["sqlite -MAC"] = ("sqlite3", lambda size, n: via_transport(
            "sqlite", size, n, opts, mac_off=True))
        cases["sqlite3"] = ("", lambda size, n: raw_sqlite(raw_path, size, n))
    if "mysql" in only:
        if not args.mysql_socket:
            sys.exit("--only mysql needs --mysql-socket")
        sock, pw = os.path.abspath(args.mysql_socket), args.mysql_password
        _mysql_setup(sock, pw)
        opts = {"unix_socket": sock, "user": "root", "password": pw, "db": MYSQL_DB}
        cases["mysql"] = ("mariadb file", lambda size, n: via_transport("mysql", size, n,
                                                                          opts))
        cases["pymysql"] = ("mariadb file", lambda size, n: raw_mysql(sock, pw, size, n,
                                                                      False))
        cases["mariadb file"] = ("", lambda size, n: raw_mysql(sock, pw, size, n, True))
    rates: dict[tuple[str, str], list[float]] = {}
    started = time.perf_counter()
    try:
        for rep in range(args.reps):
            names = list(cases)
            names = names[rep % len(names):] + names[:rep % len(names)]
            for label, size in sizes:
                for name in names:
                    try:
                        rate = cases[name][1](size, count_for(size, args.quick))
                    except Exception as exc:  # a path that cannot move this size
                        print(f"  {label} {name} failed: {exc}", file=sys.stderr)
                        rate = float("nan")
                    rates.setdefault((label, name), []).append(rate)
            print(f"  repetition {rep + 1}/{args.reps} done at "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\none transport between two plain processes, one item at a time; median of "
          f"{args.reps} interleaved repetitions, {os.cpu_count()} CPUs\n")
    head = f"{'size':<7} {'path':<13} {'items/s':>9} {'MB/s':>8} {'x raw':>6}  raw baseline"
    print(head)
    print("-" * len(head))
    for label, size in sizes:
        for name, (raw, _) in cases.items():
            rate = med[(label, name)]
            base = med.get((label, raw))
            ratio = f"{rate / base:.2f}" if base else ""
            print(f"{label:<7} {name:<13} {rate:>9.1f} {rate * size / 1e6:>8.1f} {ratio:>6}  "
                  f"{raw}")
        print()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
