"""A peer process for the transport tests: dumps and loads items on request.

It is started with ``spawn`` and ends by returning from its target, exactly as the
engine's worker processes do, so the per-process cleanup under test runs the same
way (multiprocessing finalizers, no ``atexit``).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import traceback
from typing import Any

SECRET = "test-secret-" + "0123456789abcdef" * 2


def make_data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def digest(data: Any) -> str:
    return hashlib.sha256(memoryview(data)).hexdigest()


def _serve(conn: Any) -> None:
    from papycluster.transport import tcp
    from papycluster.workers import io

    while True:
        try:
            command, *args = conn.recv()
        except EOFError:
            return
        try:
            if command == "exit":
                conn.send(("ok", None))
                return
            if command == "dump":
                kind, size, seed, options = args
                result = io.dump_item([make_data(size, seed)], kind, **options)
            elif command == "dump_value":
                kind, value, options = args
                result = io.dump_item([value], kind, **options)
            elif command == "dump_db":
                kind, value, options = args
                result = io.dump_db_item([value], kind, **options)
            elif command == "load":
                ticket, options = args
                data = io.load_item([ticket], **options)
                result = (len(data), digest(data))
            elif command == "load_db":
                ticket, options = args
                data = io.load_db_item([ticket], **options)
                result = (len(data), digest(data))
            elif command == "find_db":
                kind, key, options = args
                result = io.find_db_item(kind, key, **options)
            elif command == "pending":
                result = tcp.TRANSPORT.pending()
            elif command == "setenv":  # e.g. PAPYCLUSTER_ENCRYPT=0 for the next dumps
                name, value = args
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
                result = None
            else:
                raise ValueError(f"unknown command {command!r}")
        except Exception as exc:
            conn.send(("err", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        else:
            conn.send(("ok", result))


def main(conn: Any) -> None:
    try:
        _serve(conn)
    finally:
        conn.close()


class PeerError(Exception):
    pass


class Peer:
    """A handle on one spawned peer process."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=main, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def call(self, *command: Any, timeout: float = 60.0) -> Any:
        self.conn.send(command)
        if not self.conn.poll(timeout):
            raise PeerError(f"peer did not answer {command[0]!r} within {timeout}s")
        status, *rest = self.conn.recv()
        if status == "err":
            raise PeerError(rest[0] + "\n" + rest[1])
        return rest[0]

    def exit(self) -> None:
        """End the peer the way the engine ends a worker: it returns from its loop."""
        if self.process.is_alive():
            try:
                self.call("exit", timeout=10)
            except (OSError, EOFError, PeerError):
                pass
            self.process.join(10)

    def close(self) -> None:
        self.exit()
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()
