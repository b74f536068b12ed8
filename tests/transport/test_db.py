"""sqlite and mysql: rows as items, consumed or kept as checkpoints, between processes."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from papycluster import transport
from papycluster.workers import io

from .peer import Peer, digest, make_data

EVIL_KEY = "it's'; DROP TABLE temp; -- \u00e9"


def rows(path: Path, table: str = "temp") -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(f'SELECT id, item_key FROM "{table}"').fetchall()


# --------------------------------------------------------------------------- sqlite

def test_sqlite_roundtrip_between_processes(module_peer: Peer, tmp_path: Path) -> None:
    db = str(tmp_path / "items.sqlite")
    data = bytes(range(256)) * 1000
    tk = module_peer.call("dump_db", "sqlite", data, {"db": db})
    assert tk[2] == "sqlite" and tk[4] == db
    assert rows(tmp_path / "items.sqlite") != []
    assert bytes(io.load_db_item([tk])) == data
    assert rows(tmp_path / "items.sqlite") == []  # consumed
    with pytest.raises(transport.StaleTicketError, match="sqlite ticket"):
        io.load_db_item([tk])


def test_sqlite_default_db_in_default_share(module_peer: Peer, share: Path) -> None:
    tk = module_peer.call("dump_db", "sqlite", b"x", {})
    assert tk[4] == str(share / f"papyc-sqlite-{os.geteuid()}" / "papycluster.sqlite")
    assert io.load_db_item([tk]) == b"x"


def test_sqlite_checkpoint_survives_and_is_found_by_key(tmp_path: Path) -> None:
    db = str(tmp_path / "ckpt.sqlite")
    first = Peer()
    try:
        tk = first.call("dump_db", "sqlite", ("item-7", b"seven"), {"db": db, "keep": True})
        assert first.call("dump_db", "sqlite", b"tmp", {"db": db}) is not None
    finally:
        first.close()  # the "run" ends: its consumed-mode row goes, the checkpoint stays
    assert [r[1] for r in rows(tmp_path / "ckpt.sqlite")] == ["item-7"]
    assert io.load_db_item([tk]) == b"seven"
    assert io.load_db_item([tk]) == b"seven"  # a checkpoint is not consumed
    later = Peer()  # a later run resumes
    try:
        found = later.call("find_db", "sqlite", "item-7", {"db": db})
        assert found is not None and found[2] == "sqlite"
        assert later.call("load_db", found, {}) == (5, digest(b"seven"))
        assert later.call("find_db", "sqlite", "item-8", {"db": db}) is None
    finally:
        later.close()


def test_sqlite_keys_and_values_are_parameters(tmp_path: Path) -> None:
    db = str(tmp_path / "evil.sqlite")
    tk = io.dump_db_item([b"\x00'\"\\;--"], "sqlite", key=EVIL_KEY, db=db, keep=True)
    assert io.load_db_item([tk]) == b"\x00'\"\\;--"
    assert io.find_db_item("sqlite", EVIL_KEY, db=db) == tk
    assert rows(tmp_path / "evil.sqlite")[0][1] == EVIL_KEY
    with pytest.raises(ValueError, match="invalid table name"):
        io.dump_db_item([b"x"], "sqlite", table='temp"; DROP TABLE temp; --', db=db)
    key_fn = io.dump_db_item([b"abc"], "sqlite", key=lambda d: f"len{len(d)}", db=db,
                             keep=True)
    assert key_fn[-2] == "len3"


def _hammer(db: str, n: int, seed: int, queue: Any) -> None:
    try:
        tickets = [io.dump_db_item([make_data(2000 + i, seed * 1000 + i)], "sqlite", db=db,
                                   keep=True) for i in range(n)]
        queue.put(("ok", tickets))
    except Exception as exc:  # reported, not swallowed
        queue.put(("err", repr(exc)))


def _drain(tickets: list, queue: Any) -> None:
    try:
        queue.put(("ok", [digest(io.load_db_item([t], remove=True)) for t in tickets]))
    except Exception as exc:
        queue.put(("err", repr(exc)))


def test_sqlite_many_writers_and_readers_at_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    db = str(tmp_path / "busy.sqlite")
    queue = ctx.Queue()
    writers = [ctx.Process(target=_hammer, args=(db, 60, s, queue)) for s in range(4)]
    for w in writers:
        w.start()
    results = [queue.get(timeout=120) for _ in writers]
    for w in writers:
        w.join(30)
    assert all(r[0] == "ok" for r in results), results
    tickets = [t for r in results for t in r[1]]
    assert len({t[6] for t in tickets}) == 240  # distinct row ids
    halves = [tickets[::2], tickets[1::2]]
    readers = [ctx.Process(target=_drain, args=(h, queue)) for h in halves]
    for r in readers:
        r.start()
    got = [queue.get(timeout=120) for _ in readers]
    for r in readers:
        r.join(30)
    assert all(g[0] == "ok" for g in got), got
    assert rows(tmp_path / "busy.sqlite") == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --------------------------------------------------------------------------- mysql

@pytest.fixture
def my(mariadb: Any) -> dict[str, Any]:
    return mariadb.kwargs()


def test_mysql_roundtrip_between_processes(module_peer: Peer, mariadb: Any,
                                           my: dict[str, Any]) -> None:
    data = bytes(range(256)) * 4000  # every byte value, 1 MB
    tk = module_peer.call("dump_db", "mysql", data, my)
    assert tk[2] == "mysql" and my["password"] not in repr(tk)
    assert mariadb.query("SELECT COUNT(*) FROM temp")[0][0] >= 1
    assert bytes(io.load_db_item([tk], password=my["password"])) == data
    assert mariadb.query("SELECT COUNT(*) FROM temp WHERE id = %s", (tk[9],))[0][0] == 0
    with pytest.raises(transport.StaleTicketError, match="mysql ticket"):
        io.load_db_item([tk], password=my["password"])


def test_mysql_password_from_env(module_peer: Peer, my: dict[str, Any],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tk = module_peer.call("dump_db", "mysql", b"pw", my)
    monkeypatch.setenv("PAPYCLUSTER_MYSQL_PASSWORD", my["password"])
    fresh = Peer()  # never connected: it must find the password in the environment
    try:
        assert fresh.call("load_db", tk, {}) == (2, digest(b"pw"))
    finally:
        fresh.close()


def test_mysql_checkpoint_key_and_cleanup(mariadb: Any, my: dict[str, Any]) -> None:
    run = Peer()
    try:
        kept = run.call("dump_db", "mysql", (EVIL_KEY, b"\x00kept\xff"),
                        {**my, "keep": True, "table": "ckpt"})
        gone = run.call("dump_db", "mysql", b"consumable", {**my, "table": "ckpt"})
        assert mariadb.query("SELECT COUNT(*) FROM ckpt")[0][0] == 2
    finally:
        run.close()  # consumed-mode rows nobody loaded go with the process
    assert mariadb.query("SELECT item_key FROM ckpt") == [(EVIL_KEY,)]
    with pytest.raises(transport.StaleTicketError):
        io.load_db_item([gone], password=my["password"])
    found = io.find_db_item("mysql", EVIL_KEY, table="ckpt", **my)
    assert found is not None and found[9] == kept[9]
    assert io.load_db_item([found], password=my["password"]) == b"\x00kept\xff"
    assert io.load_db_item([found], password=my["password"]) == b"\x00kept\xff"
    assert io.find_db_item("mysql", "nope", table="ckpt", **my) is None
    assert io.find_db_item("mysql", "nope", table="never_made", **my) is None


def test_mysql_large_item_and_bad_table(my: dict[str, Any]) -> None:
    data = make_data(12_000_000, 9)
    tk = io.dump_db_item([data], "mysql", **my)
    assert digest(io.load_db_item([tk], password=my["password"])) == digest(data)
    with pytest.raises(ValueError, match="invalid table name"):
        io.dump_db_item([b"x"], "mysql", table="a`b", **my)


def test_mysql_wrong_password_is_named(my: dict[str, Any]) -> None:
    bad = {**my, "password": "wrong", "user": "papy_nobody"}
    with pytest.raises(transport.TransportError, match="cannot connect to papy_nobody@"):
        io.dump_db_item([b"x"], "mysql", **bad)
