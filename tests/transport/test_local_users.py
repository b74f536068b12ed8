"""Another user of the host or of a share must not run code as us through our items.

Each test is an attack made by a real second user, ``nobody`` (uid 65534), while the
tests run as root: a file swapped on a share anyone can write, a row rewritten in a
database, a segment, a file or fifos planted and named by a forged ticket, the default
sqlite database prepared in advance. The payload is a pickle that creates a marker file
when it is unpickled: the victim's ``load_item`` + ``pickle_loads`` must refuse before
that, with an error naming the transport and the path or ticket.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from papycluster import transport
from papycluster.transport import shares, ticket
from papycluster.transport import sqlite as sqlite_mod
from papycluster.workers import io

from .local_users import NOBODY, as_nobody, evil_pickle, need_root, open_dir

ITEM = {"result": "B" * 2000, "n": 7}


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """Where the attacker's code, once unpickled by us, leaves its trace."""
    path = tmp_path / "attacker-code-ran"
    yield path
    assert not path.exists(), "the attacker's pickle was loaded: its code ran as the victim"


@pytest.fixture
def open_share() -> Iterator[Path]:
    with open_dir("papyc-share-") as path:
        shares.set_share("open", str(path))
        try:
            yield path
        finally:
            shares.set_share("open", None)


@pytest.fixture
def default_in(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point this process's default share at a directory for one test."""
    saved = shares._overrides.get("default")  # None: the environment's, as it was

    def use(path: Path | str) -> None:
        shares.set_share("default", str(path))
    yield use
    shares.set_share("default", saved)


def load_and_unpickle(tk: tuple, **options: Any) -> Any:
    loader = io.load_db_item if tk[2] in ("sqlite", "mysql") else io.load_item
    return io.pickle_loads([loader([tk], **options)])


def tag() -> str:
    return secrets.token_hex(6)


# ------------------------------------------------------------ sqlite default database

def test_the_default_sqlite_database_is_private(default_in: Any) -> None:
    with open_dir("papyc-dbhome-") as home:
        default_in(home)
        tk = io.dump_db_item([io.pickle_dumps([ITEM])], "sqlite")
        path = Path(tk[4])
        assert path.parent == home / f"papyc-sqlite-{os.geteuid()}"
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
        out = as_nobody("""
            import sys
            try:
                open(sys.argv[1], "rb").read()
                print("read")
            except PermissionError:
                print("denied")
        """, str(path))
        assert out.strip() == "denied"
        assert load_and_unpickle(tk) == ITEM


def test_a_default_sqlite_database_prepared_by_another_user_is_refused(
        default_in: Any, marker: Path) -> None:
    """nobody prepares, in a share anyone can write, both the old default database
    (``papycluster.sqlite``, 0666) and our database directory, with a planted row."""
    with open_dir("papyc-dbhome-") as home:
        default_in(home)
        mine = home / f"papyc-sqlite-{os.geteuid()}"
        as_nobody("""
            import os, sqlite3, sys
            home, mine, evil = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
            os.mkdir(mine, 0o777); os.chmod(mine, 0o777)
            for path in (os.path.join(home, "papycluster.sqlite"),
                         os.path.join(mine, "papycluster.sqlite")):
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o666)); os.chmod(path, 0o666)
                with sqlite3.connect(path) as c:
                    c.execute("CREATE TABLE temp (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                              "item_key TEXT, value BLOB NOT NULL, created REAL NOT NULL, "
                              "mac TEXT)")
                    c.execute("INSERT INTO temp (id, value, created) VALUES (1, ?, 0)",
                              (evil,))
        """, str(home), str(mine), evil_pickle(marker, 200).hex())
        with pytest.raises(transport.UnsafePathError, match=f"sqlite: refusing {mine}: it "
                           f"belongs to uid {NOBODY}"):
            io.dump_db_item([io.pickle_dumps([ITEM])], "sqlite")
        # A ticket naming the planted row is refused the same way, before any read.
        forged = ticket.make("sqlite", 0, str(mine / "papycluster.sqlite"), "temp", 1, "",
                             "0" * 32)
        with pytest.raises(transport.UnsafePathError, match=str(mine)):
            load_and_unpickle(forged)


@pytest.mark.parametrize("what", ["database", "directory"])
def test_a_default_sqlite_database_that_others_may_write_is_refused(
        default_in: Any, tmp_path: Path, what: str) -> None:
    default_in(tmp_path)
    path = Path(sqlite_mod.default_path())
    path.parent.mkdir(mode=0o700)
    path.touch(0o600)
    culprit = path if what == "database" else path.parent
    culprit.chmod(0o666 if what == "database" else 0o777)
    with pytest.raises(transport.UnsafePathError,
                       match=f"refusing {culprit}: its mode 0{culprit.stat().st_mode & 0o777:o}"
                             " lets other users"):
        io.dump_db_item([b"x"], "sqlite")


# ------------------------------------------------------ items bound to their ticket

def test_a_file_swapped_on_an_open_share_is_refused_before_unpickling(
        open_share: Path, marker: Path) -> None:
    tk = io.dump_item([io.pickle_dumps([ITEM])], "file", share="open")
    path, size = open_share / tk[5], tk[6]
    # No sticky bit: nobody may unlink our 0600 file and put one of the same size there.
    as_nobody("""
        import os, sys
        path, evil = sys.argv[1], bytes.fromhex(sys.argv[2])
        os.unlink(path)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, evil); os.close(fd)
    """, str(path), evil_pickle(marker, size).hex())
    assert path.stat().st_uid == NOBODY and path.stat().st_size == size
    with pytest.raises(transport.ItemIntegrityError,
                       match=rf"file ticket .*{tk[5]}.*does not match the MAC"):
        load_and_unpickle(tk)


def test_a_sqlite_row_rewritten_by_another_user_is_refused_before_unpickling(
        tmp_path: Path, marker: Path) -> None:
    """A database the user chose to share (0666 in a directory others may write)."""
    with open_dir("papyc-shared-db-") as where:
        db = where / "shared.sqlite"
        tk = io.dump_db_item([("ckpt-1", io.pickle_dumps([ITEM]))], "sqlite", db=str(db),
                             keep=True)
        for name in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            name.chmod(0o666)
        as_nobody("""
            import sqlite3, sys
            with sqlite3.connect(sys.argv[1]) as c:
                c.execute("UPDATE temp SET value = ? WHERE id = ?",
                          (bytes.fromhex(sys.argv[3]), int(sys.argv[2])))
        """, str(db), str(tk[6]), evil_pickle(marker, 300).hex())
        with pytest.raises(transport.ItemIntegrityError,
                           match=rf"sqlite ticket .*row {tk[6]} of {db} table temp does "
                                 "not match the MAC"):
            load_and_unpickle(tk)
        # Found again by key (a checkpoint), with the MAC stored beside it: refused too.
        found = io.find_db_item("sqlite", "ckpt-1", db=str(db))
        assert found == tk
        with pytest.raises(transport.ItemIntegrityError):
            load_and_unpickle(found)


def test_a_mysql_row_rewritten_by_another_database_user_is_refused(
        mariadb: Any, marker: Path) -> None:
    my = mariadb.kwargs()
    table = "attacked"  # its own table: other tests count the rows of "temp"
    tk = io.dump_db_item([("ckpt-1", io.pickle_dumps([ITEM]))], "mysql", table=table,
                         keep=True, **my)
    import pymysql

    admin = pymysql.connect(unix_socket=mariadb.socket, user="root", password="",
                            database=mariadb.database, autocommit=True)
    try:
        with admin.cursor() as cur:  # another user of the server (its root)
            assert cur.execute(f"UPDATE {table} SET value = %s WHERE id = %s",
                               (evil_pickle(marker, 300), tk[9])) == 1
    finally:
        admin.close()
    with pytest.raises(transport.ItemIntegrityError,
                       match=rf"mysql ticket .*row {tk[9]} of papytest.{table} .*does not "
                             "match"):
        load_and_unpickle(tk, password=my["password"])
    found = io.find_db_item("mysql", "ckpt-1", table=table, **my)
    assert found == tk  # the MAC stored with the row is the ticket's
    with pytest.raises(transport.ItemIntegrityError):
        load_and_unpickle(found, password=my["password"])


# --------------------------------------------- forged tickets naming planted objects

def test_a_forged_shm_ticket_naming_a_planted_segment_is_refused(marker: Path) -> None:
    name = f"papyc_{tag()}_{secrets.token_hex(16)}"
    payload = evil_pickle(marker, 300)
    segment = struct.pack("<QQQ", 1, 5, len(payload)).ljust(64, b"\0") + payload
    as_nobody("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
        os.fchmod(fd, 0o666); os.write(fd, sys.stdin.buffer.read()); os.close(fd)
    """, f"/dev/shm/{name}", data=segment.ljust(1 << 16, b"\0"))
    try:
        forged = ticket.make("shm", 0, name, 5, len(payload))
        with pytest.raises(transport.UnsafePathError,
                           match=f"shm: refusing /dev/shm/{name}: it belongs to uid {NOBODY}"):
            load_and_unpickle(forged)
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_a_segment_of_ours_that_others_may_write_is_refused(marker: Path) -> None:
    name = f"papyc_{tag()}_{secrets.token_hex(16)}"
    payload = evil_pickle(marker, 300)
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.write(fd, (struct.pack("<QQQ", 1, 5, len(payload)).ljust(64, b"\0") + payload)
                 .ljust(1 << 16, b"\0"))
        os.fchmod(fd, 0o666)
        with pytest.raises(transport.UnsafePathError, match="its mode 0666 lets other users"):
            load_and_unpickle(ticket.make("shm", 0, name, 5, len(payload)))
    finally:
        os.close(fd)
        os.unlink(f"/dev/shm/{name}")


def test_a_forged_file_ticket_naming_a_planted_file_is_refused(
        open_share: Path, default_in: Any, marker: Path) -> None:
    """In the host's temp directory by its owner; on a share (owner meaningless on NFS or
    Samba) by the MAC, whatever the forged ticket says."""
    name = f"papyc-{tag()}-{secrets.token_hex(16)}.item"
    payload = evil_pickle(marker, 300)
    temp = Path(tempfile.gettempdir())
    plant = """
        import os, sys
        for d in sys.argv[3:]:
            fd = os.open(os.path.join(d, sys.argv[1]), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                         0o644)
            os.write(fd, bytes.fromhex(sys.argv[2])); os.close(fd)
    """
    as_nobody(plant, name, payload.hex(), str(temp), str(open_share))
    try:
        default_in(temp)
        forged = ticket.make("file", 0, "default", name, len(payload), "0" * 32)
        with pytest.raises(transport.UnsafePathError,
                           match=f"file: refusing {temp / name}: it belongs to uid {NOBODY}"):
            load_and_unpickle(forged)
        forged = ticket.make("file", 0, "open", name, len(payload), secrets.token_hex(16))
        with pytest.raises(transport.ItemIntegrityError, match="does not match the MAC"):
            load_and_unpickle(forged)
    finally:
        (temp / name).unlink()


def test_items_in_the_temp_directory_carry_no_mac_and_load(default_in: Any) -> None:
    """The owner and mode checks are the proof there, as for shm: no hash on that path."""
    default_in(tempfile.gettempdir())
    tk = io.dump_item([io.pickle_dumps([ITEM])], "file")
    assert tk[-1] == "" and (Path(tempfile.gettempdir()) / tk[5]).stat().st_mode & 0o077 == 0
    assert load_and_unpickle(tk) == ITEM


def test_a_ticket_without_a_mac_is_refused_on_a_share(open_share: Path, default_in: Any,
                                                      marker: Path) -> None:
    """Dropping the MAC from a ticket does not turn the check off: outside the temp
    directory, where owners say nothing, a ticket without one is refused unread."""
    name = f"papyc-{tag()}-{secrets.token_hex(16)}.item"
    payload = evil_pickle(marker, 300)
    as_nobody("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, bytes.fromhex(sys.argv[2])); os.close(fd)
    """, str(open_share / name), payload.hex())
    forged = ticket.make("file", 0, "open", name, len(payload), "")
    with pytest.raises(transport.ItemIntegrityError, match="carries no MAC"):
        load_and_unpickle(forged)
    # An item of ours on the share, its MAC dropped on the way: refused as well.
    tk = io.dump_item([io.pickle_dumps([ITEM])], "file", share="open")
    with pytest.raises(transport.ItemIntegrityError, match="carries no MAC"):
        load_and_unpickle((*tk[:-1], ""))
    # In the temp directory, a planted file under a ticket without a MAC: its owner.
    temp = Path(tempfile.gettempdir())
    default_in(temp)
    as_nobody("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, bytes.fromhex(sys.argv[2])); os.close(fd)
    """, str(temp / name), payload.hex())
    try:
        forged = ticket.make("file", 0, "default", name, len(payload), "")
        with pytest.raises(transport.UnsafePathError, match=f"belongs to uid {NOBODY}"):
            load_and_unpickle(forged)
    finally:
        (temp / name).unlink()


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_forged_file_ticket_naming_a_link_or_a_fifo_is_refused(open_share: Path,
                                                                 kind: str) -> None:
    """A link to one of our files is not followed; a fifo does not block the loader."""
    name = f"papyc-{tag()}-{secrets.token_hex(16)}.item"
    as_nobody("""
        import os, sys
        if sys.argv[2] == "symlink":
            os.symlink("/etc/shadow", sys.argv[1])
        else:
            os.mkfifo(sys.argv[1], 0o666)
    """, str(open_share / name), kind)
    forged = ticket.make("file", 0, "open", name, 10, "0" * 32)
    reason = "a symbolic link" if kind == "symlink" else "not a regular file"
    with pytest.raises(transport.UnsafePathError, match=reason):
        io.load_item([forged])


def test_a_forged_fifo_ticket_naming_planted_fifos_is_refused() -> None:
    directory = f"/dev/shm/papyc-fifo-{tag()}-{secrets.token_hex(16)}"
    key = secrets.token_hex(16)
    as_nobody("""
        import os, sys
        d, key = sys.argv[1], sys.argv[2]
        os.mkdir(d); os.chmod(d, 0o777)
        os.mkfifo(os.path.join(d, "ctl"), 0o666); os.mkfifo(os.path.join(d, key), 0o666)
    """, directory, key)
    try:
        forged = ticket.make("fifo", 0, directory, key, 100)
        with pytest.raises(transport.UnsafePathError,
                           match=f"fifo: refusing {directory}: it belongs to uid {NOBODY}"):
            io.load_item([forged], timeout=2)
    finally:
        for entry in ("ctl", key):
            os.unlink(os.path.join(directory, entry))
        os.rmdir(directory)


def test_fifos_of_ours_that_others_may_open_are_refused() -> None:
    """Our own directory left open to others: anyone could have swapped the fifos."""
    directory = f"/dev/shm/papyc-fifo-{tag()}-{secrets.token_hex(16)}"
    key = secrets.token_hex(16)
    os.mkdir(directory)
    os.chmod(directory, 0o777)
    for entry in ("ctl", key):
        os.mkfifo(os.path.join(directory, entry), 0o600)
    try:
        with pytest.raises(transport.UnsafePathError,
                           match=f"refusing {directory}: its mode 0777 lets other users"):
            io.load_item([ticket.make("fifo", 0, directory, key, 100)], timeout=2)
    finally:
        for entry in ("ctl", key):
            os.unlink(os.path.join(directory, entry))
        os.rmdir(directory)


def test_items_of_ours_still_load(open_share: Path, default_in: Any, tmp_path: Path) -> None:
    """The checks refuse what is not ours, not our own items, wherever they are."""
    default_in(tempfile.gettempdir())
    data = io.pickle_dumps([ITEM])
    for tk in (io.dump_item([data], "file"), io.dump_item([data], "file", share="open"),
               io.dump_item([data], "shm"), io.dump_item([data], "fifo"),
               io.dump_db_item([data], "sqlite", db=str(tmp_path / "mine.sqlite"))):
        assert load_and_unpickle(tk) == ITEM, tk[2]
    with sqlite3.connect(tmp_path / "mine.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM temp").fetchone()[0] == 0
