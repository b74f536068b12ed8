"""``mysql``: items as rows of a MariaDB/MySQL table, through PyMySQL (pure Python).

Any host that can reach the database server can load the item, so this is the
transport for hosts that share no disk, and, with ``keep=True``, a checkpoint store
that outlives the pipeline. The ticket carries where the database is (host, port or
socket path, user, database, table, row id) but never the password: a loader gets
it from ``password=``, from ``PAPYCLUSTER_MYSQL_PASSWORD``, or from an earlier dump
in the same process.

The server's ``max_allowed_packet`` bounds the item size: PyMySQL sends bytes as a
hexadecimal literal, twice their size, so an item must stay under half of it (8 MB on
MariaDB's default of 16 MB; measured with PyMySQL 1.2 and MariaDB 10.11); an item above
it fails with an error that says so.

Other users of the database may be able to change a row, so every row carries the MAC
of its item under the cluster secret (:mod:`~papycluster.transport.integrity`): in the
ticket, and in a ``mac`` column for :meth:`MysqlTransport.find`. The loader checks it
before it returns the bytes.
"""

from __future__ import annotations

import getpass
import os
import threading
import time
from typing import Any

from papycluster.transport import base, db, integrity, ticket
from papycluster.transport.base import StaleTicketError, TicketError, TransportError, log

USER_ENV = "PAPYCLUSTER_MYSQL_USER"
PASSWORD_ENV = "PAPYCLUSTER_MYSQL_PASSWORD"
DEFAULT_DB = "papydb"
CONNECT_TIMEOUT = 10
DEFAULT_TIMEOUT = 60.0


def _pymysql() -> Any:
    try:
        import pymysql
    except ImportError:  # pragma: no cover - a declared dependency
        raise TransportError("the mysql transport needs PyMySQL (pip install pymysql)") \
            from None
    return pymysql


class _State:
    def __init__(self) -> None:
        self.conns: dict[tuple, Any] = {}
        self.locks: dict[tuple, threading.Lock] = {}
        self.passwords: dict[tuple, str] = {}
        self.tables: set[tuple] = set()
        self.lock = threading.Lock()
        self.unloaded = db.Unloaded()

    def connect(self, where: tuple, password: str | None, timeout: float) -> tuple[Any, Any]:
        """A (connection, lock) pair for ``where`` = (host, port, user, database)."""
        host, port, user, database = where
        with self.lock:
            if password is not None:
                self.passwords[where[:3]] = password
            conn = self.conns.get(where)
            lock = self.locks.setdefault(where, threading.Lock())
        if conn is not None:
            try:
                with lock:
                    conn.ping(reconnect=False)
                return conn, lock
            except Exception:
                with self.lock:
                    self.conns.pop(where, None)
        if password is None:
            password = self.passwords.get(where[:3]) or os.environ.get(PASSWORD_ENV, "")
        pymysql = _pymysql()
        address: dict[str, Any] = ({"unix_socket": host} if host.startswith("/")
                                   else {"host": host, "port": port})
        try:
            conn = pymysql.connect(user=user, password=password, database=database,
                                   autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                   read_timeout=int(timeout), write_timeout=int(timeout),
                                   max_allowed_packet=1 << 30, charset="utf8mb4", **address)
        except pymysql.err.OperationalError as exc:
            raise TransportError(f"mysql: cannot connect to {user}@{host}:{port}/{database}: "
                                 f"{exc}") from None
        with self.lock:
            self.conns[where] = conn
        return conn, lock

    def close(self) -> None:
        for (where, table), ids in self.unloaded.take_all().items():
            if not ids:
                continue
            try:
                conn, lock = self.connect(where, None, DEFAULT_TIMEOUT)
                with lock, conn.cursor() as cur:
                    for batch in db.batches(ids):
                        marks = ",".join(["%s"] * len(batch))
                        cur.execute(f"DELETE FROM `{table}` WHERE id IN ({marks})", batch)
            except Exception as exc:
                log.warning("mysql: could not delete %d unloaded rows of %s/%s: %s",
                            len(ids), where, table, exc)
        with self.lock:
            conns, self.conns = self.conns, {}
        for conn in conns.values():
            try:
                conn.close()
            except Exception:
                pass


class MysqlTransport(base.Transport):
    name = "mysql"
    fields = ("host", "port", "user", "database", "table", "rowid", "key", "mac")

    def __init__(self) -> None:
        self.state = base.ProcessState(_State)

    def _where(self, host: str | None, port: int | None, user: str | None,
               database: str | None, unix_socket: str | None) -> tuple:
        if unix_socket:
            host, port = os.path.abspath(unix_socket), 0
        else:
            host, port = host or "localhost", int(port or 3306)
        user = user or os.environ.get(USER_ENV) or getpass.getuser()
        return (host, port, user, database or DEFAULT_DB)

    def dump(self, data: memoryview, table: str = db.DEFAULT_TABLE, db_path: str | None = None,
             key: str | None = None, keep: bool = False, host: str | None = None,
             port: int | None = None, user: str | None = None, password: str | None = None,
             passwd: str | None = None, unix_socket: str | None = None,
             timeout: float | None = None, **options: Any) -> tuple:
        if options:
            raise TypeError(f"mysql dump_db_item got unknown options {sorted(options)}")
        db.check_table(table)
        where = self._where(host, port, user, db_path, unix_socket)
        state = self.state.get()
        conn, lock = state.connect(where, password if password is not None else passwd,
                                   DEFAULT_TIMEOUT if timeout is None else timeout)
        value = data.obj if type(data.obj) is bytes else data.tobytes()
        mac = integrity.sign(self.name, value, where[3], table, key or "")
        try:
            with lock, conn.cursor() as cur:
                if (where, table) not in state.tables:
                    cur.execute(f"CREATE TABLE IF NOT EXISTS `{table}` ("
                                "id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, "
                                "item_key VARCHAR(255) NULL, value LONGBLOB NOT NULL, "
                                "created DOUBLE NOT NULL, mac CHAR(32) NULL, "
                                "KEY item_key (item_key)) ENGINE=InnoDB")
                    cur.execute(f"SHOW COLUMNS FROM `{table}` LIKE 'mac'")
                    if cur.fetchone() is None:  # a table made by an older papycluster
                        try:
                            cur.execute(f"ALTER TABLE `{table}` ADD COLUMN mac CHAR(32) NULL")
                        except _pymysql().err.OperationalError as exc:
                            if not exc.args or exc.args[0] != 1060:  # duplicate column:
                                raise                               # another was first
                    state.tables.add((where, table))
                cur.execute(f"INSERT INTO `{table}` (item_key, value, created, mac) "
                            "VALUES (%s, %s, %s, %s)", (key, value, time.time(), mac))
                rowid = cur.lastrowid
        except Exception as exc:
            hint = (" (the item is larger than the server's max_allowed_packet)"
                    if "packet" in str(exc).lower() or "2006" in str(exc) else "")
            raise TransportError(f"mysql: cannot store {data.nbytes} bytes in {where} "
                                 f"table {table}: {exc}{hint}") from None
        if not keep:
            state.unloaded.add((where, table), rowid)
        return (*where, table, rowid, key or "", mac)

    def validate(self, fields: tuple, tk: tuple) -> None:
        host, port, user, database, table, rowid, key, mac = fields
        for value, what in ((host, "host"), (user, "user"), (database, "database"),
                            (key, "key")):
            ticket.check(tk, self.name, value, str, what)
        if not host or len(host) > 4096:
            raise TicketError(tk, f"host {host!r} is invalid", self.name)
        if not database or len(database) > 64 or "`" in database:
            raise TicketError(tk, f"database name {database!r} is invalid", self.name)
        ticket.check_int(tk, self.name, port, "port", 0, 65535)
        db.validate_table_field(tk, self.name, table)
        ticket.check_int(tk, self.name, rowid, "rowid", 1, 2**63 - 1)
        ticket.check_token(tk, self.name, mac, "mac")

    def load(self, fields: tuple, tk: tuple, remove: bool = True,
             timeout: float | None = None, password: str | None = None) -> Any:
        host, port, user, database, table, rowid, key, expected = fields
        where = (host, port, user, database)
        state = self.state.get()
        conn, lock = state.connect(where, password,
                                   DEFAULT_TIMEOUT if timeout is None else timeout)
        pymysql = _pymysql()
        try:
            with lock, conn.cursor() as cur:
                if remove:
                    conn.begin()
                    try:
                        cur.execute(f"SELECT value FROM `{table}` WHERE id = %s FOR UPDATE",
                                    (rowid,))
                        row = cur.fetchone()
                        cur.execute(f"DELETE FROM `{table}` WHERE id = %s", (rowid,))
                        conn.commit()
                    except BaseException:
                        conn.rollback()
                        raise
                else:
                    cur.execute(f"SELECT value FROM `{table}` WHERE id = %s", (rowid,))
                    row = cur.fetchone()
        except pymysql.err.ProgrammingError as exc:
            if exc.args and exc.args[0] == 1146:  # no such table
                raise StaleTicketError(tk, f"no table {table} in {database}", self.name) \
                    from None
            raise TransportError(f"mysql ticket {tk!r}: {exc}") from None
        except pymysql.err.MySQLError as exc:
            raise TransportError(f"mysql ticket {tk!r}: {exc}") from None
        if row is None:
            raise StaleTicketError(tk, f"no row {rowid} in {database}.{table} (already "
                                   "loaded?)", self.name)
        if remove:
            state.unloaded.discard((where, table), rowid)
        value = row[0]
        mac = integrity.signer(self.name, database, table, key)
        mac.update(value)
        integrity.verify(mac, expected, tk, self.name,
                         f"row {rowid} of {database}.{table} on {host}")
        return value

    def find(self, key: str, table: str = db.DEFAULT_TABLE, db_path: str | None = None,
             host: str | None = None, port: int | None = None, user: str | None = None,
             password: str | None = None, passwd: str | None = None,
             unix_socket: str | None = None) -> tuple | None:
        db.check_table(table)
        where = self._where(host, port, user, db_path, unix_socket)
        conn, lock = self.state.get().connect(
            where, password if password is not None else passwd, DEFAULT_TIMEOUT)
        pymysql = _pymysql()
        try:
            with lock, conn.cursor() as cur:
                cur.execute(f"SELECT id, mac FROM `{table}` WHERE item_key = %s ORDER BY id "
                            "DESC LIMIT 1", (key,))
                row = cur.fetchone()
        except (pymysql.err.ProgrammingError, pymysql.err.OperationalError) as exc:
            if exc.args and exc.args[0] in (1146, 1054):  # no such table, no such column
                return None
            raise
        if row is None:
            return None
        mac = row[1].decode("ascii", "replace") if isinstance(row[1], bytes) else row[1]
        if not (isinstance(mac, str) and ticket.TOKEN_RE.match(mac)):
            log.warning("mysql: row %s of %s.%s has no MAC (written by an older "
                        "papycluster?): not trusted, not found", row[0], where[3], table)
            return None
        return (*where, table, row[0], key, mac)

    def cleanup(self) -> None:
        self.state.close()


TRANSPORT = MysqlTransport()
