"""Checkpoints: a pipeline's results kept in a database, so an interrupted run resumes.

``Plumber(checkpoint="sqlite:///path/run.db")`` (or ``"mysql://user:pw@host:3306/db"``)
stores every result that reaches an output piper under its input position. A later run
with the same checkpoint skips the input positions whose results are all stored, and
computes the rest; :meth:`Checkpoint.results` then gives each item exactly once.

Why positions work without knowing the data in advance: every piper of a checkpointed
pipeline takes one item and gives one (``consume == produce == 1``), and pipers keep
order, so the j-th output of a resumed run belongs to the j-th input position that was
not stored yet. Error items are not stored: a resumed run computes them again.

Writes are committed in small batches (and at pause and stop); a crash loses at most
the last uncommitted batch, whose items are simply computed again.
"""

from __future__ import annotations

import pickle
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from itertools import count
from typing import Any
from urllib.parse import unquote, urlparse

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}\Z")

#: Commit after this many results, or this many seconds, whichever comes first.
COMMIT_EVERY = 64
COMMIT_AFTER = 0.5


class Checkpoint:
    """Stored results of a pipeline's outputs, by output number and input position.

    ``url`` is ``sqlite:///absolute/path.db``, a plain file path (sqlite), or
    ``mysql://user:password@host:port/database``. ``name`` tells runs apart that share
    a database (a table per name).
    """

    def __init__(self, url: str, name: str = "papycluster", timeout: float = 10.0) -> None:
        if not NAME_RE.match(name):
            raise ValueError(f"checkpoint name {name!r}: use letters, digits and '_'")
        self.url = url
        self.table = f"papy_checkpoint_{name}"
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pending = 0
        self._last_commit = time.monotonic()
        parsed = urlparse(url)
        if parsed.scheme == "mysql":
            self._kind = "mysql"
            self._conn = _mysql_connect(parsed, timeout)
            self._param = "%s"
            self._upsert = (f"INSERT INTO {self.table} (output, idx, value) VALUES "
                            "(%s, %s, %s) ON DUPLICATE KEY UPDATE value = VALUES(value)")
            self._execute(f"CREATE TABLE IF NOT EXISTS {self.table} (output INT NOT NULL, "
                          "idx BIGINT NOT NULL, value LONGBLOB NOT NULL, "
                          "PRIMARY KEY (output, idx))")
        elif parsed.scheme in ("sqlite", ""):
            path = parsed.path if parsed.scheme else url
            self._kind = "sqlite"
            self._conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False,
                                         isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._param = "?"
            self._upsert = (f"INSERT OR REPLACE INTO {self.table} (output, idx, value) "
                            "VALUES (?, ?, ?)")
            self._execute(f"CREATE TABLE IF NOT EXISTS {self.table} (output INTEGER NOT "
                          "NULL, idx INTEGER NOT NULL, value BLOB NOT NULL, "
                          "PRIMARY KEY (output, idx))")
        else:
            raise ValueError(f"checkpoint {url!r}: use sqlite:///path or "
                             "mysql://user:password@host:port/database")
        self._begin()

    def __repr__(self) -> str:
        return f"Checkpoint({_redact(self.url)!r}, table={self.table!r})"

    def _execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def _begin(self) -> None:
        if self._kind == "sqlite":
            self._conn.execute("BEGIN")

    def done(self, outputs: int) -> set[int]:
        """Input positions whose results are stored for all ``outputs`` outputs."""
        with self._lock:
            rows = self._execute(f"SELECT idx FROM {self.table} WHERE output < "
                                 f"{self._param} GROUP BY idx HAVING COUNT(*) = "
                                 f"{self._param}", (outputs, outputs))
        return {int(idx) for (idx,) in rows}

    def put(self, output: int, index: int, value: Any) -> None:
        """Store one result (the same position stored twice keeps the last)."""
        blob = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._execute(self._upsert, (output, index, blob))
            self._pending += 1
            if (self._pending >= COMMIT_EVERY
                    or time.monotonic() - self._last_commit >= COMMIT_AFTER):
                self._commit()

    def flush(self) -> None:
        """Commit what is stored so far."""
        with self._lock:
            self._commit()

    def _commit(self) -> None:
        self._conn.commit()
        self._pending = 0
        self._last_commit = time.monotonic()
        self._begin()

    def results(self, output: int = 0) -> dict[int, Any]:
        """The stored results of output number ``output``, by input position, in order."""
        with self._lock:
            self._commit()
            rows = self._execute(f"SELECT idx, value FROM {self.table} WHERE output = "
                                 f"{self._param} ORDER BY idx", (output,))
        return {int(idx): pickle.loads(value) for idx, value in rows}

    def clear(self) -> None:
        """Forget every stored result of this checkpoint."""
        with self._lock:
            self._execute(f"DELETE FROM {self.table}")
            self._commit()

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.commit()
            finally:
                self._conn.close()


def skip_done(data: Iterable, done: set[int]) -> Iterator[Any]:
    """The items of ``data`` whose position is not in ``done``."""
    for index, item in enumerate(data):
        if index not in done:
            yield item


def pending_positions(done: set[int]) -> Iterator[int]:
    """The input positions a resumed run computes, in order."""
    return (index for index in count() if index not in done)


def _mysql_connect(parsed: Any, timeout: float) -> Any:
    import pymysql

    return pymysql.connect(host=parsed.hostname or "localhost", port=parsed.port or 3306,
                           user=unquote(parsed.username or ""),
                           password=unquote(parsed.password or ""),
                           database=parsed.path.lstrip("/") or None,
                           connect_timeout=int(timeout), read_timeout=int(timeout) * 3,
                           write_timeout=int(timeout) * 3, autocommit=False)


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
