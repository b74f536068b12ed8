"""``sqlite``: items as rows of a database file that several processes write at once.

The file is opened in WAL mode with a busy timeout, so concurrent writers queue
inside SQLite (sleeping, not spinning) instead of failing with "database is locked"
or retrying forever as PaPy did. Each process keeps one connection per file.
A consuming read selects the row (WAL readers take no lock) and then deletes it in
a short write transaction. SQLite files must not be shared over NFS; for hosts that do not share a
disk use ``mysql``.

The default database is ``papycluster.sqlite`` in a directory of this user's own
(``papyc-sqlite-<uid>``, 0700) in the default share, created 0600 before SQLite opens it
(its ``-wal`` and ``-shm`` files take the same mode). A default directory or database
that belongs to another user, or that others may write (or, for the database, read),
is refused with an :class:`~papycluster.transport.base.UnsafePathError` naming it:
another user who could change a row would have the loader unpickle their bytes. Every
row also carries the MAC of its item (:mod:`~papycluster.transport.integrity`), in the
ticket and in a ``mac`` column (for :meth:`SqliteTransport.find`), checked before the
bytes are returned, whichever file the database is.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

from papycluster.transport import base, db, integrity, shares, ticket
from papycluster.transport.base import (
    StaleTicketError,
    TicketError,
    TransportError,
    log,
)

DEFAULT_DB = "papycluster.sqlite"
BUSY_TIMEOUT = 60.0
_BINARY = getattr(os, "O_BINARY", 0)


def _user_id() -> str:
    if hasattr(os, "geteuid"):
        return str(os.geteuid())
    import getpass

    return "".join(c if c.isalnum() or c in "._-" else "_" for c in getpass.getuser())


def default_dir() -> str:
    """This user's directory for the default database, in the default share."""
    return os.path.join(shares.resolve(shares.DEFAULT), f"papyc-sqlite-{_user_id()}")


def default_path() -> str:
    return os.path.join(default_dir(), DEFAULT_DB)


def prepare_default(path: str) -> None:
    """Make the default database's directory (0700) and file (0600) if they are missing,
    and refuse them, and the ``-wal`` and ``-shm`` beside, unless they are this user's
    and private. Runs before this process's first connection to the file."""
    directory = os.path.dirname(path)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise TransportError(f"sqlite: cannot make the default database's directory "
                             f"{directory}: {exc}") from None
    base.check_private(directory, "sqlite", kind="dir")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY
                         | getattr(os, "O_NOFOLLOW", 0), 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise TransportError(f"sqlite: cannot create the default database {path}: {exc}") \
            from None
    base.check_private(path, "sqlite")
    for extra in (path + "-wal", path + "-shm"):
        if os.path.lexists(extra):
            base.check_private(extra, "sqlite")


def _prepare_explicit(path: str) -> None:
    """A database the user named: create it 0600 if it is new (SQLite would use 0644)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY, 0o600))
    except OSError:  # it exists (then it is the user's choice), or SQLite will say why
        pass


def _prepare(path: str) -> None:
    if path == default_path():
        prepare_default(path)
    else:
        _prepare_explicit(path)


class _Conn:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.tables: set[str] = set()
        self.conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                    check_same_thread=False)
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self.conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
                # Big pages: a 1 MB blob is 16 pages, not 256 (only a new file takes it).
                self.conn.execute("PRAGMA page_size=65536")
                mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                # NORMAL in WAL mode: never corrupt; a power cut may lose the last items.
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.execute("PRAGMA mmap_size=268435456")
                self.conn.execute("PRAGMA cache_size=-16384")
                break
            except sqlite3.OperationalError as exc:
                # Switching to WAL needs a moment of exclusive access; the busy handler
                # covers most races, this bounded wait covers the rest.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if str(mode).lower() != "wal":
            log.warning("sqlite: %s is in %s mode, not WAL (a network file system?)", path,
                        mode)

    def ensure(self, table: str) -> None:
        if table in self.tables:
            return
        self.conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (id INTEGER PRIMARY KEY '
                          "AUTOINCREMENT, item_key TEXT, value BLOB NOT NULL, "
                          "created REAL NOT NULL, mac TEXT)")
        self.conn.execute(f'CREATE INDEX IF NOT EXISTS "{table}_item_key" ON "{table}" '
                          "(item_key)")
        columns = {row[1] for row in self.conn.execute(f'PRAGMA table_info("{table}")')}
        if "mac" not in columns:  # a table made by an older papycluster
            try:
                self.conn.execute(f'ALTER TABLE "{table}" ADD COLUMN mac TEXT')
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):  # another process was first
                    raise
        self.tables.add(table)


class _State:
    def __init__(self) -> None:
        self.conns: dict[str, _Conn] = {}
        self.lock = threading.Lock()
        self.unloaded = db.Unloaded()

    def conn(self, path: str, check: Any = None) -> _Conn:
        """This process's connection to ``path``; ``check(path)`` runs before it is made.

        The check may open and close the file (to read its header): that is only safe
        while this process holds no SQLite connection to it, because closing any
        descriptor of a file drops every POSIX lock the process holds on it, SQLite's
        included. Another process could then checkpoint and reset the WAL under ours, and
        commits made after that would be lost (seen: the last deletes of a reader came
        back after it ended). Hence here, under the lock, before the first connection.
        """
        with self.lock:
            conn = self.conns.get(path)
            if conn is None:
                if check is not None:
                    check(path)
                conn = self.conns[path] = _Conn(path)
            return conn

    def close(self) -> None:
        for (path, table), ids in self.unloaded.take_all().items():
            if not ids:
                continue
            try:
                conn = self.conn(path)
                with conn.lock:
                    for batch in db.batches(ids):
                        marks = ",".join("?" * len(batch))
                        conn.conn.execute(f'DELETE FROM "{table}" WHERE id IN ({marks})',
                                          batch)
            except sqlite3.Error as exc:
                log.warning("sqlite: could not delete %d unloaded rows of %s/%s: %s",
                            len(ids), path, table, exc)
        with self.lock:
            conns, self.conns = self.conns, {}
        for conn in conns.values():
            conn.conn.close()


class SqliteTransport(base.Transport):
    name = "sqlite"
    fields = ("db", "table", "rowid", "key", "mac")

    def __init__(self) -> None:
        self.state = base.ProcessState(_State)

    def dump(self, data: memoryview, table: str = db.DEFAULT_TABLE, db_path: str | None = None,
             key: str | None = None, keep: bool = False, **options: Any) -> tuple:
        if options:
            raise TypeError(f"sqlite dump_db_item takes table=, db=, key=, keep=; not "
                            f"{sorted(options)}")
        db.check_table(table)
        path = os.path.abspath(db_path) if db_path else default_path()
        state = self.state.get()
        mac = integrity.sign(self.name, data, table, key or "")
        try:
            conn = state.conn(path, check=_prepare)
            with conn.lock:
                conn.ensure(table)
                cursor = conn.conn.execute(
                    f'INSERT INTO "{table}" (item_key, value, created, mac) VALUES '
                    "(?, ?, ?, ?)", (key, data, time.time(), mac))
                rowid = cursor.lastrowid
        except sqlite3.Error as exc:
            raise TransportError(f"sqlite: cannot store an item in {path} table {table}: "
                                 f"{exc}") from None
        if not keep:
            rows = state.unloaded.add((path, table), rowid)
            if rows is not None:
                self._prune(state, path, table, rows)
        return (path, table, rowid, key or "", mac)

    def _prune(self, state: _State, path: str, table: str, rows: set[int]) -> None:
        conn = state.conn(path)
        alive: set[int] = set()
        with conn.lock:
            for batch in db.batches(set(rows)):
                marks = ",".join("?" * len(batch))
                alive.update(r[0] for r in conn.conn.execute(
                    f'SELECT id FROM "{table}" WHERE id IN ({marks})', batch))
        state.unloaded.replace((path, table), alive)

    def validate(self, fields: tuple, tk: tuple) -> None:
        path, table, rowid, key, mac = fields
        ticket.check(tk, self.name, path, str, "db")
        if not os.path.isabs(path):
            raise TicketError(tk, f"db path {path!r} is not absolute", self.name)
        db.validate_table_field(tk, self.name, table)
        ticket.check_int(tk, self.name, rowid, "rowid", 1, 2**63 - 1)
        ticket.check(tk, self.name, key, str, "key")
        ticket.check_token(tk, self.name, mac, "mac")

    def load(self, fields: tuple, tk: tuple, remove: bool = True,
             timeout: float | None = None) -> Any:
        path, table, rowid, key, expected = fields

        def is_database(path: str) -> None:
            if path == default_path():
                try:
                    base.check_private(os.path.dirname(path), self.name, tk, kind="dir")
                    base.check_private(path, self.name, tk)
                except FileNotFoundError:
                    raise StaleTicketError(tk, f"no database {path}", self.name) from None
            try:
                with open(path, "rb") as handle:
                    header = handle.read(16)
            except OSError as exc:
                raise StaleTicketError(tk, f"cannot open database file {path}: {exc}",
                                       self.name) from None
            if header != b"SQLite format 3\x00":
                # Never let a forged ticket make SQLite open (and add -wal files beside)
                # something that is not a database.
                raise TicketError(tk, f"{path} is not an SQLite database", self.name)

        state = self.state.get()
        try:
            conn = state.conn(path, check=is_database)
            with conn.lock:
                # Read first (a WAL reader takes no lock), then delete in a short write
                # transaction: holding the write lock while copying a big blob out
                # would make the dumpers wait in SQLite's coarse busy sleeps.
                row = conn.conn.execute(f'SELECT value FROM "{table}" WHERE id = ?',
                                        (rowid,)).fetchone()
                if remove and row is not None:
                    conn.conn.execute(f'DELETE FROM "{table}" WHERE id = ?', (rowid,))
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                raise StaleTicketError(tk, f"no table {table} in {path}", self.name) from None
            raise TransportError(f"sqlite ticket {tk!r}: {exc}") from None
        if row is None:
            raise StaleTicketError(tk, f"no row {rowid} in {path} table {table} (already "
                                   "loaded?)", self.name)
        if remove:
            state.unloaded.discard((path, table), rowid)
        value = row[0]
        mac = integrity.signer(self.name, table, key)
        mac.update(value)
        integrity.verify(mac, expected, tk, self.name, f"row {rowid} of {path} table {table}")
        return value

    def find(self, key: str, table: str = db.DEFAULT_TABLE, db_path: str | None = None
             ) -> tuple | None:
        """Fields of the newest row with ``key``, or None."""
        db.check_table(table)
        path = os.path.abspath(db_path) if db_path else default_path()
        if not os.path.isfile(path):
            return None
        conn = self.state.get().conn(path, check=_prepare)
        with conn.lock:
            try:
                row = conn.conn.execute(f'SELECT id, mac FROM "{table}" WHERE item_key = ? '
                                        "ORDER BY id DESC LIMIT 1", (key,)).fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc) or "no such column" in str(exc):
                    return None
                raise
        if row is None:
            return None
        if not (isinstance(row[1], str) and ticket.TOKEN_RE.match(row[1])):
            log.warning("sqlite: row %s of %s table %s has no MAC (written by an older "
                        "papycluster?): not trusted, not found", row[0], path, table)
            return None
        return (path, table, row[0], key, row[1])

    def cleanup(self) -> None:
        self.state.close()


TRANSPORT = SqliteTransport()
