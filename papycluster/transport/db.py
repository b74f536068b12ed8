"""What the database transports (``sqlite``, ``mysql``) share.

A row per item: ``id`` (the row id, in the ticket), ``item_key`` (an optional user
key, so that a later run can find an item again), ``value`` (the bytes) and
``created``. In *consume* mode (the default) loading deletes the row and rows that
nobody loaded are deleted when the dumping process ends; with ``keep=True`` the row
is a checkpoint: loading leaves it, and :func:`~papycluster.workers.io.find_db_item`
finds it again by key in a later run.

Table names are validated (they cannot be SQL parameters); every value goes in as a
parameter, so keys and blobs are binary-safe and cannot inject SQL.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from papycluster.transport.base import TicketError

TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
DEFAULT_TABLE = "temp"
MAX_KEY = 255
PRUNE_AT = 65536


def check_table(table: Any) -> str:
    if not isinstance(table, str) or not TABLE_RE.match(table):
        raise ValueError(f"invalid table name {table!r}: use letters, digits and '_' "
                         "(at most 64, not starting with a digit)")
    return table


def check_key(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or len(key) > MAX_KEY:
        raise ValueError(f"an item key must be a str of at most {MAX_KEY} characters, "
                         f"got {key!r:.80}")
    return key


def split_item(item: Any, key: str | Callable[[Any], str] | None) -> tuple[Any, str | None]:
    """``(data, key)`` from an inbox item: ``data`` or ``(key, data)``; ``key`` may be a
    callable applied to the data, or one fixed string."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item[1], check_key(item[0])
    if callable(key):
        return item, check_key(key(item))
    return item, check_key(key)


def validate_table_field(tk: tuple, name: str, table: Any) -> None:
    if not isinstance(table, str) or not TABLE_RE.match(table):
        raise TicketError(tk, f"table name {table!r} is invalid", name)


class Unloaded:
    """Row ids this process dumped in consume mode, per database and table."""

    def __init__(self) -> None:
        self.rows: dict[tuple, set[int]] = {}
        self.lock = threading.Lock()

    def add(self, where: tuple, rowid: int) -> set[int] | None:
        """Remember ``rowid``; returns the set when it is time to prune it."""
        with self.lock:
            rows = self.rows.setdefault(where, set())
            rows.add(rowid)
            return rows if len(rows) >= PRUNE_AT else None

    def discard(self, where: tuple, rowid: int) -> None:
        with self.lock:
            rows = self.rows.get(where)
            if rows is not None:
                rows.discard(rowid)

    def replace(self, where: tuple, keep: set[int]) -> None:
        with self.lock:
            self.rows[where] = keep

    def take_all(self) -> dict[tuple, set[int]]:
        with self.lock:
            rows, self.rows = self.rows, {}
        return rows


def batches(ids: set[int], size: int = 500) -> list[list[int]]:
    ordered = sorted(ids)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]
